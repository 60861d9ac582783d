// The serving load test at full size (issue 20, docs/serving.md "The load test"): on a real local
// cluster (`troupe up`, a head and two CPU nodes on loopback) a test-model deployment takes a QPS
// step from a tenth of one replica's capacity to ten replicas' worth and back, from a paced
// open-loop load generator; the autoscaler's real policy (short windows) sizes it up to about ten
// replicas and down again, and no request fails on the way.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/serving/deployment_spec.h"
#include "cluster/client.h"
#include "common/logging.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

// One replica's capacity: max_ongoing_requests requests of kLatency each at once. The autoscaler's
// target per replica is the same 2 requests, so ten replicas' worth of load asks for ten replicas.
constexpr int kMaxOngoing = 2;
constexpr auto kLatency = 50ms;
constexpr double kReplicaCapacity = kMaxOngoing * 1000.0 / kLatency.count();  // requests/s
constexpr int kMaxReplicas = 12;
// The first step down: to this many replicas' worth.
constexpr size_t kMidFactor = 3;
// A one-token completion: the test model answers after its first_token_latency (kLatency).
constexpr const char* kBody = R"({"prompt": "load", "max_tokens": 1})";

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One request the generator sent.
struct Sent {
  int64_t sent_unix_ms = 0;
  int64_t done_unix_ms = 0;
  // How long after its time it was sent (the pacer late, or every worker busy).
  double late_ms = 0;
  Status status;
  std::string replica;
};

// An open-loop load generator: a pacing thread makes one request due every 1/rate s (SetRate),
// whatever the answers, and `workers` threads send the due ones with Client::Infer. A due request
// waits for a worker only while all `workers` are in flight (Sent::late_ms says how long), so the
// offered rate does not fall with the latency unless the backlog passes `workers`.
class PacedLoad {
 public:
  PacedLoad(cluster::Client* client, const std::string& deployment, int workers, double rate)
      : interval_(Interval(rate)), next_due_(Clock::now()) {
    pacer_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_) {
        const uint64_t generation = generation_;
        const Clock::time_point due = next_due_;
        // Pacing: the next request's time comes, or Stop or SetRate ends the wait.
        if (cv_.wait_until(lock, due, [&] { return stop_ || generation_ != generation; })) continue;
        next_due_ += interval_;
        due_.push_back(due);
        work_.notify_one();
      }
    });
    for (int i = 0; i < workers; ++i) {
      threads_.emplace_back([this, client, deployment] {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
          work_.wait(lock, [this] { return stop_ || !due_.empty(); });
          if (stop_) break;
          const Clock::time_point due = due_.front();
          due_.pop_front();
          lock.unlock();
          Sent sent;
          sent.late_ms = std::chrono::duration<double, std::milli>(Clock::now() - due).count();
          sent.sent_unix_ms = UnixMs();
          auto response = client->Infer(deployment, "/v1/completions", kBody, 20s);
          sent.done_unix_ms = UnixMs();
          if (response.ok()) {
            sent.replica = response->replica;
          } else {
            sent.status = response.status();
          }
          lock.lock();
          sent_.push_back(std::move(sent));
        }
      });
    }
  }
  ~PacedLoad() { Stop(); }

  // From now on `rate` requests/s, the first due at once.
  void SetRate(double rate) {
    std::lock_guard<std::mutex> lock(mu_);
    interval_ = Interval(rate);
    next_due_ = Clock::now();
    ++generation_;
    cv_.notify_all();
  }

  // Stops sending (requests due and not yet sent are dropped), waits for the requests in flight
  // (each has a 20 s deadline) and returns them all.
  std::vector<Sent> Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
      work_.notify_all();
    }
    if (pacer_.joinable()) pacer_.join();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return sent_;
  }

  // Waits up to `d` unless stopped (the main thread's sampling pace).
  void Pause(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, d, [this] { return stop_; });
  }

 private:
  static Clock::duration Interval(double rate) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / rate));
  }

  std::mutex mu_;
  std::condition_variable cv_;    // the pacer's and Pause's
  std::condition_variable work_;  // the workers'
  bool stop_ = false;
  uint64_t generation_ = 0;
  Clock::duration interval_;
  Clock::time_point next_due_;
  std::deque<Clock::time_point> due_;
  std::vector<Sent> sent_;
  std::thread pacer_;
  std::vector<std::thread> threads_;
};

// A head and two nodes of 8 CPUs each (declared; one CPU a replica, so 16 replicas fit).
std::string ClusterYaml() {
  return "cluster:\n  name: load\n  token: load-test-token\n  log_level: warn\n"
         "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
         "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
         "nodes:\n"
         "  - name: a\n    cpus: 8\n    memory: 8GiB\n    data_dir: node-a\n"
         "  - name: b\n    cpus: 8\n    memory: 8GiB\n    data_dir: node-b\n";
}

// The deployment: min 1, max 12, a target of kMaxOngoing per replica, short windows (stable 2 s,
// panic 1 s) so the test is short, and a scale-down delay of 1 s: a 2 s window's average of a
// steady load near a boundary (22 requests: 11 or 12 replicas) moves across it from one tick to
// the next, and without a delay the count went 12 -> 11 -> 12 -> 11 in 200 ms under a steady
// ten replicas' worth (seen here with an 8 s hold). The rest of the policy as deployed.
constexpr int64_t kStableWindowMs = 2000;  // the spec's autoscaling.stable_window

std::string SpecYaml() {
  return "name: load\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 0, first_token_latency: " +
         std::to_string(kLatency.count()) + "ms}}\nreplicas: {min: 1, max: " + std::to_string(kMaxReplicas) +
         ", initial: 1}\nautoscaling: {target_ongoing_requests: " + std::to_string(kMaxOngoing) +
         ", stable_window: " + std::to_string(kStableWindowMs) + "ms, panic_window: 1s, scale_down_delay: 1s}\nmax_ongoing_requests: " + std::to_string(kMaxOngoing) +
         "\nrouting: power_of_two_choices\ndrain_timeout: 10s\n";
}

struct Event {
  int64_t unix_ms = 0;
  std::string what;
  std::string why;
};

class ServingLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    cluster_ = LocalCluster::Start("troupe-serving-load", "load", ClusterYaml());
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
  }

  Json Show() {
    auto body = client_->DeploymentCommand("show", "load", "", 5s);
    return body.ok() ? Json::parse(*body).at("status") : Json{{"error", body.status().ToString()}};
  }

  std::vector<Event> Events() {
    auto body = client_->DeploymentCommand("events", "load", "", 5s);
    std::vector<Event> out;
    if (!body.ok()) return out;
    const Json events = Json::parse(*body, nullptr, false);
    for (const auto& e : events.is_array() ? events : Json::array()) {
      out.push_back({e.value("unix_ms", int64_t{0}), e.value("what", ""), e.value("why", "")});
    }
    return out;
  }

  std::string EventsText() {
    std::string out;
    for (const auto& e : Events()) out += std::to_string(e.unix_ms) + " " + e.what + " (" + e.why + ")\n";
    return out;
  }

  static int Count(const Json& status, const std::string& state) {
    return status.value("replicas_by_state", Json::object()).value(state, 0);
  }

  std::unique_ptr<LocalCluster> cluster_;
  cluster::Client* client_ = nullptr;
};

// "autoscaler: 1 -> 12 replicas": (1, 12); nullopt for other events.
std::optional<std::pair<int, int>> Decision(const std::string& what) {
  int from = 0, to = 0;
  if (std::sscanf(what.c_str(), "autoscaler: %d -> %d replicas", &from, &to) != 2) return std::nullopt;
  return std::make_pair(from, to);
}

TEST_F(ServingLoad, AStepFromATenthOfOneReplicaToTenReplicasWorthScalesUpAndDownAndNoRequestFails) {
#if defined(__SANITIZE_THREAD__)
  // Under ASan it passes (2x slower); under TSan the 400 requests/s step through a head and two
  // nodes ran past ctest's 300 s (every hop 5-15x slower), so its figures would mean nothing.
  // The release and ASan passes run it; the TSan pass runs the same routing, replicas and
  // autoscaler through Serving.*, RouterTest.* and AutoscalerTest.* at their own rates.
  GTEST_SKIP() << "the 400 requests/s load step is minutes under ThreadSanitizer; the release and ASan passes run it";
#endif
  auto spec = serving::ParseDeploymentSpec(SpecYaml(), "load spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto deployed = client_->Deploy(*spec, 10s);
  ASSERT_TRUE(deployed.ok()) << deployed.status();
  const auto ready_deadline = Clock::now() + 30s;
  Json st = Show();
  while (Count(st, "ready") != 1 && Clock::now() < ready_deadline) st = Show();
  ASSERT_EQ(Count(st, "ready"), 1) << st.dump() << "\n" << EventsText();

  const double low = 0.1 * kReplicaCapacity, high = 10 * kReplicaCapacity;
  // 256 workers: the step's backlog while one replica serves (360 requests/s over its capacity
  // until new replicas are ready) stays in flight at the router, which is what the autoscaler sees.
  PacedLoad load(client_, "load", 256, low);
  // The stable window (2 s) fills with the low load first.
  const auto low_until = Clock::now() + 2s;
  while (Clock::now() < low_until) load.Pause(100ms);

  // The step. Replicas are watched through the client (`troupe serve show`) every 50 ms.
  const int64_t step_unix_ms = UnixMs();
  const auto step_at = Clock::now();
  load.SetRate(high);
  int peak_ready = 0;
  std::optional<double> ten_ready_s;
  const auto up_deadline = step_at + 25s;
  while (Clock::now() < up_deadline) {
    st = Show();
    peak_ready = std::max(peak_ready, Count(st, "ready"));
    if (Count(st, "ready") >= 10) {
      ten_ready_s = std::chrono::duration<double>(Clock::now() - step_at).count();
      break;
    }
    load.Pause(50ms);
  }
  ASSERT_TRUE(ten_ready_s.has_value()) << "never 10 replicas ready under ten replicas' worth of load (" << peak_ready
                                       << " at most): " << st.dump() << "\n" << EventsText();
  // Stay loaded a stable window and a half: the count holds (no oscillation under steady load).
  int low_while_loaded = Count(st, "ready");
  const auto hold_until = Clock::now() + 3s;
  while (Clock::now() < hold_until) {
    st = Show();
    peak_ready = std::max(peak_ready, Count(st, "ready"));
    low_while_loaded = std::min(low_while_loaded, Count(st, "ready") + Count(st, "starting"));
    load.Pause(50ms);
  }

  // Back down in two steps: to three replicas' worth, so that the replicas drained on the way
  // still hold requests, then to a tenth of one replica, down to one replica.
  const int64_t drop_unix_ms = UnixMs();
  const auto drop_at = Clock::now();
  load.SetRate(kMidFactor * kReplicaCapacity);
  std::optional<double> mid_s, one_left_s;
  const auto down_deadline = drop_at + 30s;
  while (Clock::now() < down_deadline) {
    st = Show();
    if (st.value("replicas", Json::array()).size() <= kMidFactor + 1) {
      mid_s = std::chrono::duration<double>(Clock::now() - drop_at).count();
      break;
    }
    load.Pause(50ms);
  }
  ASSERT_TRUE(mid_s.has_value()) << "not down to " << kMidFactor + 1 << " replicas 30 s after the load dropped to "
                                 << kMidFactor << " replicas' worth: " << st.dump() << "\n" << EventsText();
  const int64_t low_unix_ms = UnixMs();
  load.SetRate(low);
  while (Clock::now() < down_deadline) {
    st = Show();
    if (st.value("replicas", Json::array()).size() == 1 && Count(st, "ready") == 1) {
      one_left_s = std::chrono::duration<double>(Clock::now() - drop_at).count();
      break;
    }
    load.Pause(50ms);
  }
  const std::vector<Sent> sent = load.Stop();
  ASSERT_TRUE(one_left_s.has_value()) << "not back to one replica 30 s after the load dropped: " << st.dump() << "\n"
                                      << EventsText();

  // Every request answered.
  std::vector<const Sent*> failed;
  std::set<std::string> answered_by;
  std::vector<int64_t> step_latency_ms, loaded_latency_ms;  // the step's first second; the rest of it
  size_t sent_high = 0, late = 0;
  double late_max_ms = 0;
  for (const auto& s : sent) {
    if (!s.status.ok()) failed.push_back(&s);
    if (s.status.ok()) answered_by.insert(s.replica);
    if (s.sent_unix_ms >= step_unix_ms && s.sent_unix_ms < drop_unix_ms) {
      ++sent_high;
      (s.sent_unix_ms < step_unix_ms + 1000 ? step_latency_ms : loaded_latency_ms)
          .push_back(s.done_unix_ms - s.sent_unix_ms);
    }
    late_max_ms = std::max(late_max_ms, s.late_ms);
    if (s.late_ms > 20) ++late;
  }
  auto percentile = [](std::vector<int64_t> v, double q) {
    if (v.empty()) return int64_t{-1};
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
  };
  const double loaded_s = (drop_unix_ms - step_unix_ms) / 1000.0;
  std::printf("load: %zu requests, %zu failed; the step offered %.0f requests/s (%.0f x one replica's %.0f), the "
              "generator sent %.0f/s over %.1f s (%zu of %zu sent over 20 ms after their time, at most %.0f ms: "
              "the pacer or every worker busy); latency in the step's first second p50 %lld ms p99 %lld ms, after it p50 %lld ms p99 %lld ms "
              "(the model: %lld ms); %zu replicas answered\n",
              sent.size(), failed.size(), high, high / kReplicaCapacity, kReplicaCapacity, sent_high / loaded_s,
              loaded_s, late, sent.size(), late_max_ms, static_cast<long long>(percentile(step_latency_ms, 0.5)),
              static_cast<long long>(percentile(step_latency_ms, 0.99)),
              static_cast<long long>(percentile(loaded_latency_ms, 0.5)),
              static_cast<long long>(percentile(loaded_latency_ms, 0.99)), static_cast<long long>(kLatency.count()),
              answered_by.size());
  for (const Sent* f : failed) {
    std::printf("  failed, sent at %+lld ms: %s\n", static_cast<long long>(f->sent_unix_ms - step_unix_ms),
                f->status.ToString().c_str());
  }
  EXPECT_TRUE(failed.empty()) << failed.size() << " of " << sent.size() << " requests failed, first: "
                              << failed.front()->status;
  EXPECT_GE(low_while_loaded, 10) << "the count fell while the load stayed at ten replicas' worth";

  // The timeline from the deployment's events.
  const std::vector<Event> events = Events();
  std::optional<int64_t> first_order, first_down, tenth_ready, last_stopped;
  int ready_after_step = 0, peak_desired = 1;
  uint64_t finished_in_drain = 0;
  std::map<std::string, int64_t> draining_since;
  std::set<std::string> drained, stopped_after_draining;
  for (const auto& e : events) {
    EXPECT_EQ(e.what.find("stopped without draining"), std::string::npos) << e.what << " (" << e.why << ")";
    EXPECT_EQ(e.what.find(" exited"), std::string::npos) << e.what << " (" << e.why << ")";
    if (auto d = Decision(e.what)) {
      peak_desired = std::max(peak_desired, d->second);
      if (d->second > d->first && e.unix_ms >= step_unix_ms && !first_order) first_order = e.unix_ms;
      if (d->second < d->first) {
        if (!first_down && e.unix_ms >= drop_unix_ms) first_down = e.unix_ms;
        // Under ten replicas' worth the count may come back from the panic's peak to ten, no lower.
        EXPECT_TRUE(e.unix_ms >= drop_unix_ms || d->second >= 10)
            << "scaled down below the load while loaded: " << e.what << " (" << e.why << ")";
      }
      // (At three replicas' worth, 6-8 requests in flight, the count may settle at 4 or 5, and a
      // decision within a stable window (2 s) of the drop to a tenth still averages that load: a
      // 4 -> 5 there is the window's lag, seen once in a CI rehearsal. A scale-up decided from
      // the low load alone is oscillation.)
      EXPECT_FALSE(d->second > d->first && e.unix_ms >= low_unix_ms + kStableWindowMs)
          << "scaled up again after the load dropped to a tenth (oscillation): " << e.what << " (" << e.why << ")";
    }
    if (e.what.rfind("replica ", 0) != 0) continue;
    const std::string name = e.what.substr(8, e.what.find(' ', 8) - 8);
    if (e.what.find(" ready on node ") != std::string::npos && e.unix_ms >= step_unix_ms &&
        ++ready_after_step == 9) {
      tenth_ready = e.unix_ms;  // the 9 new ones beside the first: ten serving
    }
    if (e.what == "replica " + name + " draining") draining_since[name] = e.unix_ms;
    if (e.what == "replica " + name + " drained") {
      drained.insert(name);
      unsigned long finished = 0, abandoned = 1;
      EXPECT_EQ(std::sscanf(e.why.c_str(), "%lu request(s) finished, %lu failed", &finished, &abandoned), 2) << e.why;
      EXPECT_EQ(abandoned, 0u) << name << " failed requests at the drain timeout: " << e.why;
      finished_in_drain += finished;
    }
    if (e.what == "replica " + name + " stopped after draining") {
      stopped_after_draining.insert(name);
      last_stopped = e.unix_ms;
    }
  }
  ASSERT_TRUE(first_order.has_value()) << EventsText();
  ASSERT_TRUE(first_down.has_value()) << EventsText();
  EXPECT_GE(peak_desired, 10);
  EXPECT_GE(draining_since.size(), 9u) << "ten or more replicas down to one: nine or more drained\n" << EventsText();
  // Every drained replica finished its requests (above: none failed at the drain timeout) and
  // stopped; none was sent a request after it began draining (a request sent 250 ms or more after
  // that and answered by it would be one the router should not have given it). Requests sent to it
  // before and answered after it began draining are the ones its drain finished.
  uint64_t answered_while_draining = 0;
  for (const auto& [name, since] : draining_since) {
    EXPECT_TRUE(drained.count(name)) << name << " began draining and never reported drained\n" << EventsText();
    EXPECT_TRUE(stopped_after_draining.count(name)) << name << " never stopped after draining\n" << EventsText();
    for (const auto& s : sent) {
      if (!s.status.ok() || s.replica != name) continue;
      EXPECT_LE(s.sent_unix_ms, since + 250)
          << name << " answered a request sent " << s.sent_unix_ms - since << " ms after it began draining";
      if (s.sent_unix_ms <= since && s.done_unix_ms > since) ++answered_while_draining;
    }
  }
  auto at = [](std::optional<int64_t> t, int64_t from) {
    return t ? std::to_string(*t - from) + " ms" : std::string("never");
  };
  std::printf("timeline (from the step, %.0f -> %.0f requests/s at 0 ms): first new replica ordered +%s; 10 "
              "replicas ready +%s (events), seen by show at +%.0f ms; peak %d desired, %d ready; load down to "
              "%.0f/s at +%lld ms and to %.0f/s at +%lld ms; first scale-down +%s (%s after the drop); one replica "
              "left %.0f ms after the drop; %zu drained (last stopped %s after the drop), %llu request(s) finished "
              "in their drains (%llu answered after their drain began, as the client saw them), none abandoned\n",
              low, high, at(first_order, step_unix_ms).c_str(), at(tenth_ready, step_unix_ms).c_str(),
              *ten_ready_s * 1000, peak_desired, peak_ready, kMidFactor * kReplicaCapacity,
              static_cast<long long>(drop_unix_ms - step_unix_ms), low,
              static_cast<long long>(low_unix_ms - step_unix_ms), at(first_down, step_unix_ms).c_str(),
              at(first_down, drop_unix_ms).c_str(), *one_left_s * 1000, drained.size(),
              at(last_stopped, drop_unix_ms).c_str(), static_cast<unsigned long long>(finished_in_drain),
              static_cast<unsigned long long>(answered_while_draining));
}

}  // namespace
}  // namespace troupe
