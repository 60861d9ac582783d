// serving_bench: the router's cost per request. A client actor calls a no-op replica actor through
// troupe's router and directly, in the same run and the same actor system (configured as a node's
// runtime configures it: work sharing on 2 threads, LazyClock): round-trip latency (p50, p99, one
// request at a time) and no-op requests per second with many in flight, each beside its direct
// baseline. Then the autoscaler's reaction: test-model replicas behind a router and a real
// autoscaler, a load step from one replica's worth to four, timed to the first scale-up ordered
// and to all four replicas serving.
#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <condition_variable>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "actors/serving/autoscaler.h"
#include "actors/serving/replica.h"
#include "actors/serving/router.h"
#include "bench/common/report.h"
#include "common/logging.h"
#include "runtime/internal/lazy_clock.h"

namespace troupe::bench {
namespace {

using namespace std::chrono_literals;
using SteadyTime = std::chrono::steady_clock;
using serving::InferenceRequest;
using serving::InferenceResponse;

struct Options {
  bool quick = false;
  std::string json;
  std::string only;  // for profiling: "rtt" or "rate", through the router only
};

// What a driver measured: each request's round trip (ns) or, for a rate run, the total time.
struct Run {
  std::vector<int64_t> rtt_ns;
  double seconds = 0;
  uint64_t errors = 0;
};

InferenceRequest NoOpRequest(uint64_t id) {
  InferenceRequest request;
  request.id = id;
  request.deployment = "bench";
  request.path = "/v1/completions";
  request.body = R"({"model":"bench","prompt":"hi","max_tokens":1})";
  return request;
}

// The replica that does nothing: it answers every request at once.
caf::behavior NoOpReplica() {
  return {[](InferenceRequest& request) {
    InferenceResponse response;
    response.request_id = request.id;
    response.replica = "bench/v1/replica-0";
    return response;
  }};
}

// Sends `n` requests to `target`, `window` at a time (1: one after another, each timed), then
// hands back what it measured.
caf::behavior Driver(caf::event_based_actor* self, caf::actor target, uint64_t n, uint64_t window,
                     std::shared_ptr<std::promise<Run>> done) {
  struct State {
    Run run;
    uint64_t sent = 0, answered = 0;
    SteadyTime::time_point start;
  };
  auto st = std::make_shared<State>();
  if (window == 1) st->run.rtt_ns.reserve(n);
  std::shared_ptr<std::function<void()>> send_one = std::make_shared<std::function<void()>>();
  *send_one = [self, target, n, window, done, st, send_one] {
    const uint64_t id = ++st->sent;
    const auto t0 = SteadyTime::now();
    auto on_answer = [self, n, window, done, st, send_one, t0](bool ok) {
      if (window == 1) st->run.rtt_ns.push_back((SteadyTime::now() - t0).count());
      if (!ok) ++st->run.errors;
      if (++st->answered == n) {
        st->run.seconds = std::chrono::duration<double>(SteadyTime::now() - st->start).count();
        done->set_value(std::move(st->run));
        self->quit();
        send_one->operator=(nullptr);  // the closure holds itself: break the cycle
        return;
      }
      if (st->sent < n) (*send_one)();
    };
    self->request(target, 30s, NoOpRequest(id))
        .then([on_answer](InferenceResponse&) { on_answer(true); }, [on_answer](caf::error&) { on_answer(false); });
  };
  st->start = SteadyTime::now();
  for (uint64_t k = 0; k < window && k < n; ++k) (*send_one)();
  return {[](int) {}};
}

Run Drive(caf::actor_system& system, const caf::actor& target, uint64_t n, uint64_t window) {
  auto done = std::make_shared<std::promise<Run>>();
  auto result = done->get_future();
  system.spawn(Driver, target, n, window, done);
  if (result.wait_for(120s) != std::future_status::ready) {
    std::cerr << "serving_bench: no answer to " << n << " requests within 120 s\n";
    std::exit(1);
  }
  return result.get();
}

double Percentile(std::vector<int64_t> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return static_cast<double>(v[i]) / 1000.0;  // us
}

// ---- Autoscaler reaction ----

// What the reaction run's actors saw, read by the main thread (under `mu`).
struct ReactionLog {
  std::mutex mu;
  std::condition_variable changed;
  bool stepped = false;
  SteadyTime::time_point step_at, ordered_at;
  uint32_t first_desired = 0;  // the first scale-up's count
  uint32_t early = 0;  // a scale-up's count ordered before the step (the load before it is too high)
  // Replica -> when it first answered after the step.
  std::map<std::string, SteadyTime::time_point> first_answer;
  uint64_t ok = 0, errors = 0;
};

using step_atom = caf::atom_constant<caf::atom("bench_step")>;
using stop_atom = caf::atom_constant<caf::atom("bench_stop")>;

// Closed-loop clients: `concurrency` requests through `router` in flight at all times (each one
// answered is sent again) until stop_atom; step_atom{n} raises the concurrency to n.
caf::behavior LoadDriver(caf::event_based_actor* self, caf::actor router, uint32_t concurrency,
                         std::shared_ptr<ReactionLog> log) {
  struct State {
    uint32_t concurrency = 0, in_flight = 0;
    uint64_t next_id = 0;
    bool stopping = false;
  };
  auto st = std::make_shared<State>();
  st->concurrency = concurrency;
  auto fill = std::make_shared<std::function<void()>>();
  *fill = [self, router, st, log, fill] {
    while (!st->stopping && st->in_flight < st->concurrency) {
      ++st->in_flight;
      auto done = [self, st, log, fill](const std::string* replica) {
        --st->in_flight;
        {
          std::lock_guard<std::mutex> lock(log->mu);
          if (replica == nullptr) {
            ++log->errors;
          } else {
            ++log->ok;
            if (log->stepped) log->first_answer.emplace(*replica, SteadyTime::now());
          }
        }
        log->changed.notify_all();
        if (st->stopping && st->in_flight == 0) {
          self->quit();
          fill->operator=(nullptr);  // the closure holds itself: break the cycle
          return;
        }
        (*fill)();
      };
      self->request(router, 30s, NoOpRequest(++st->next_id))
          .then([done](InferenceResponse& r) { done(&r.replica); }, [done](caf::error&) { done(nullptr); });
    }
  };
  (*fill)();
  return {
      [st, fill](step_atom, uint32_t n) {
        st->concurrency = n;
        (*fill)();
      },
      [self, st, fill](stop_atom) {
        st->stopping = true;
        if (st->in_flight == 0) {
          self->quit();
          fill->operator=(nullptr);
        }
      },
  };
}

// The deployment actor's part, reduced to what the reaction needs: a ScaleDecision up spawns
// test-model replicas at once (in-process: no placement, no process start), which enter the
// router's set when ready; the autoscaler hears the count after every change, as from a
// deployment actor. Scale-downs are not acted on (the run ends at the step's peak). A decision
// after the step is logged as the reaction's "ordered".
caf::behavior BenchDeployment(caf::event_based_actor* self, caf::actor router, std::shared_ptr<caf::actor> autoscaler,
                              serving::ReplicaConfig replica_template, std::shared_ptr<ReactionLog> log) {
  struct State {
    std::vector<serving::ReplicaInfo> spawned;
    std::set<std::string> ready;
    uint64_t generation = 0;
  };
  auto st = std::make_shared<State>();
  auto ref = [](const caf::actor& a) { return runtime::ActorRef(a, 1, a.id()); };
  return {
      [=](serving::ScaleDecision& decision) {
        if (decision.desired <= st->spawned.size()) return;
        {
          std::lock_guard<std::mutex> lock(log->mu);
          if (!log->stepped && !st->spawned.empty()) log->early = decision.desired;
          if (log->stepped && log->first_desired == 0) {
            log->ordered_at = SteadyTime::now();
            log->first_desired = decision.desired;
          }
        }
        while (st->spawned.size() < decision.desired) {
          serving::ReplicaConfig config = replica_template;
          config.name = "bench/v1/replica-" + std::to_string(st->spawned.size());
          config.owner = ref(caf::actor_cast<caf::actor>(self));
          config.autoscaler = ref(*autoscaler);
          serving::ReplicaInfo info;
          info.replica = ref(serving::SpawnServingReplica(self->home_system(), config));
          info.name = config.name;
          info.version = "v1";
          info.max_ongoing_requests = config.max_ongoing_requests;
          st->spawned.push_back(std::move(info));
        }
        self->send(*autoscaler, serving::ReplicaCount{"bench", static_cast<uint32_t>(st->spawned.size())});
      },
      [=](stop_atom) {
        for (const auto& r : st->spawned) caf::anon_send_exit(r.replica.handle(), caf::exit_reason::user_shutdown);
        self->quit();
      },
      [=](serving::ReplicaStateChanged& changed) {
        if (changed.state != serving::ReplicaState::kReady) return;
        st->ready.insert(changed.name);
        serving::ReplicaSet set{"bench", ++st->generation, {}};
        for (const auto& r : st->spawned) {
          if (st->ready.count(r.name) != 0) set.replicas.push_back(r);
        }
        self->send(router, std::move(set));
      },
  };
}
// One reaction run's figures (ms from the step).
struct Reaction {
  double ordered_ms = 0, serving_ms = 0;
  uint32_t first_desired = 0;
  uint64_t ok = 0, errors = 0;
};

// The reaction run: one replica of the test model (50 ms a request, max_ongoing_requests 4), a
// router and an autoscaler with the spec's defaults (target 2 requests in flight per replica,
// stable window 60 s, panic window 2 s, threshold 2x, tick 100 ms; max 8 replicas). 2 closed-loop
// clients (one replica's worth: its target) run for `settle`, then 8 (4 replicas' worth: 4 in
// flight at the replica, 4 queued at the router). Measured: the step to the first scale-up the
// deployment actor gets, and to the 4th replica's first answer (all 4 serving). Exits (1) if the
// 4 do not all answer within 20 s or a request fails.
Reaction RunReaction(caf::actor_system& system, std::chrono::milliseconds settle) {
  constexpr uint32_t kBefore = 2, kAfter = 8, kPeak = 4;
  auto log = std::make_shared<ReactionLog>();
  auto ref = [](const caf::actor& a) { return runtime::ActorRef(a, 1, a.id()); };
  serving::RouterConfig router_config;
  router_config.deployment = "bench";
  router_config.name = "0";
  auto router = serving::SpawnRouter(system, router_config);
  serving::ReplicaConfig replica;
  replica.deployment = "bench";
  replica.max_ongoing_requests = 4;
  replica.model.first_token_latency = 50ms;
  replica.model.tokens_per_second = 0;  // every token with the first: 50 ms a request
  auto autoscaler_ref = std::make_shared<caf::actor>();
  auto deployment = system.spawn(BenchDeployment, router, autoscaler_ref, replica, log);
  serving::AutoscalerInit init;
  init.deployment = "bench";
  init.config.min_replicas = 1;
  init.config.max_replicas = 8;
  init.config.initial_replicas = 1;
  init.target = ref(deployment);
  auto autoscaler = serving::SpawnAutoscaler(system, init);
  if (!autoscaler.ok()) {
    std::cerr << "serving_bench: " << autoscaler.status() << "\n";
    std::exit(1);
  }
  *autoscaler_ref = *autoscaler;
  caf::anon_send(router, serving::SetAutoscaler{ref(*autoscaler)});
  caf::anon_send(deployment, serving::ScaleDecision{"bench", 1, 0, false, "initial"});
  auto driver = system.spawn(LoadDriver, router, kBefore, log);

  auto fail = [&](const std::string& why) {
    std::cerr << "serving_bench: autoscaler reaction: " << why << "\n";
    std::exit(1);
  };
  std::unique_lock<std::mutex> lock(log->mu);
  // The load before the step, for `settle` (the windows' history); a failed request ends it.
  if (log->changed.wait_for(lock, settle, [&] { return log->errors != 0; })) fail("a request failed before the step");
  if (log->early != 0) fail(std::to_string(log->early) + " replicas ordered before the step");
  log->stepped = true;
  log->step_at = SteadyTime::now();
  caf::anon_send(driver, step_atom::value, kAfter);
  if (!log->changed.wait_for(lock, 20s, [&] { return log->first_answer.size() >= kPeak || log->errors != 0; }) ||
      log->errors != 0) {
    fail(std::to_string(log->first_answer.size()) + " of " + std::to_string(kPeak) +
         " replicas answered within 20 s of the step, " + std::to_string(log->errors) + " requests failed");
  }
  auto ms = [&](SteadyTime::time_point t) { return std::chrono::duration<double, std::milli>(t - log->step_at).count(); };
  Reaction r;
  r.ordered_ms = ms(log->ordered_at);
  for (const auto& [name, at] : log->first_answer) r.serving_ms = std::max(r.serving_ms, ms(at));
  r.first_desired = log->first_desired;
  r.ok = log->ok;
  lock.unlock();
  caf::anon_send(driver, stop_atom::value);
  caf::anon_send(deployment, stop_atom::value);
  caf::anon_send_exit(*autoscaler, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  return r;
}

int Main(const Options& o) {
  caf::actor_system_config config;
  config.set("scheduler.policy", caf::atom("sharing"));
  config.set("scheduler.max-threads", 2);
  runtime::internal::InstallLazyClock(config);
  caf::actor_system system{config};
  system.await_actors_before_shutdown(false);

  auto replica = system.spawn(NoOpReplica);
  serving::RouterConfig router_config;
  router_config.deployment = "bench";
  router_config.name = "bench";
  auto router = serving::SpawnRouter(system, router_config);
  serving::ReplicaInfo info;
  info.replica = runtime::ActorRef(replica, 1, replica.id());
  info.name = "bench/v1/replica-0";
  info.max_ongoing_requests = 1u << 20;  // never full: the queue is not measured here
  caf::anon_send(router, serving::ReplicaSet{"bench", 1, {info}});

  const uint64_t rtt_n = o.quick ? 5000 : 50000;
  const uint64_t rate_n = o.quick ? 50000 : 500000;
  const uint64_t window = 256;
  Drive(system, router, 2000, 1);  // warm up both paths (and the allocator)
  Drive(system, replica, 2000, 1);

  if (!o.only.empty()) {
    if (o.only == "rtt") {
      Run r = Drive(system, router, rtt_n, 1);
      std::printf("router rtt p50 %.2f us p99 %.2f us\n", Percentile(r.rtt_ns, 0.5), Percentile(r.rtt_ns, 0.99));
    } else {
      Run r = Drive(system, router, rate_n, window);
      std::printf("router rate %.0f req/s\n", static_cast<double>(rate_n) / r.seconds);
    }
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(replica, caf::exit_reason::user_shutdown);
    return 0;
  }

  // Rounds taking turns (router first in even rounds, direct first in odd ones): what else runs
  // on a shared 2-core machine moves one round's figure by 20% or more.
  const int rounds = o.quick ? 2 : 5;
  std::vector<int64_t> via_router, direct;
  double router_rate = 0, direct_rate = 0;
  uint64_t errors = 0;
  for (int round = 0; round < rounds; ++round) {
    for (int k = 0; k < 2; ++k) {
      const bool use_router = (round + k) % 2 == 0;
      Run rtt = Drive(system, use_router ? router : replica, rtt_n / rounds, 1);
      Run rate = Drive(system, use_router ? router : replica, rate_n / rounds, window);
      errors += rtt.errors + rate.errors;
      auto& samples = use_router ? via_router : direct;
      samples.insert(samples.end(), rtt.rtt_ns.begin(), rtt.rtt_ns.end());
      double& best = use_router ? router_rate : direct_rate;
      best = std::max(best, static_cast<double>(rate_n / rounds) / rate.seconds);
    }
  }
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(replica, caf::exit_reason::user_shutdown);
  if (errors != 0) {
    std::cerr << "serving_bench: " << errors << " requests failed\n";
    return 1;
  }

  const double r50 = Percentile(via_router, 0.5), d50 = Percentile(direct, 0.5);
  const double r99 = Percentile(via_router, 0.99), d99 = Percentile(direct, 0.99);
  std::vector<ReportRow> rows = {
      {"round trip p50", "us", r50, d50, "direct", "", true},
      {"round trip p99", "us", r99, d99, "direct", "", true},
      {"router overhead p50", "us", r50 - d50, 1000, "Ray Serve (documented, low end)", "<= 50", r50 - d50 <= 50},
      {"router overhead p99", "us", r99 - d99, 1000, "Ray Serve (documented, low end)", "<= 200", r99 - d99 <= 200},
      {"no-op requests", "req/s", router_rate, direct_rate, "direct", ">= 50000", router_rate >= 50000},
  };
  // The autoscaler's reaction: the median of the runs (one with --quick). The settle covers the
  // panic window (2 s), so its average starts from the load before the step.
  const int reaction_runs = o.quick ? 1 : 5;
  std::vector<Reaction> reactions;
  for (int k = 0; k < reaction_runs; ++k) reactions.push_back(RunReaction(system, 2200ms));
  auto median = [&](double Reaction::*field) {
    std::vector<double> v;
    for (const auto& r : reactions) v.push_back(r.*field);
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double ordered_ms = median(&Reaction::ordered_ms), serving_ms = median(&Reaction::serving_ms);
  rows.push_back({"scale-up ordered", "ms", ordered_ms, 2000, "Knative panic (published, low end)", "<= 1000",
                  ordered_ms <= 1000});
  rows.push_back({"scale-up serving", "ms", serving_ms, 40000, "Ray Serve defaults (published)", "", true});
  PrintReport("router", rows);
  std::printf("(%zu timed round trips per path, one at a time; the rate: the best of %d runs of %llu requests, %llu "
              "in flight. Ray Serve documents 1-2 ms of router overhead and 3-4k QPS per router on 8 cores)\n",
              via_router.size(), rounds, static_cast<unsigned long long>(rate_n / rounds),
              static_cast<unsigned long long>(window));
  std::printf("(autoscaler: a step from 2 to 8 clients in flight, 1 to 4 replicas' worth at the target of 2; the "
              "median of %d runs:",
              reaction_runs);
  for (const auto& r : reactions) {
    std::printf(" ordered %.0f ms (%u replicas), all 4 serving %.0f ms;", r.ordered_ms, r.first_desired, r.serving_ms);
  }
  std::printf(" in-process test model: no placement or process start. Knative's panic mode takes 2-6 s (2 s tick), "
              "Ray Serve about 40 s with its defaults: 10 s metric push, 30 s upscale delay)\n");
  if (!o.json.empty() && !WriteReportJson(o.json, "serving", o.quick, rows)) return 1;
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  using namespace troupe::bench;
  (void)troupe::InitLogging("warn");
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--quick") {
      o.quick = true;
    } else if (arg == "--json" && i + 1 < argc) {
      o.json = argv[++i];
    } else if (arg == "--only" && i + 1 < argc && (std::string(argv[i + 1]) == "rtt" || std::string(argv[i + 1]) == "rate")) {
      o.only = argv[++i];
    } else {
      std::cerr << "usage: serving_bench [--quick] [--json PATH] [--only rtt|rate]\n";
      return 2;
    }
  }
  return Main(o);
}
