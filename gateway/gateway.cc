#include "gateway/gateway.h"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <caf/all.hpp>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <nlohmann/json.hpp>

#include "actors/api/api_keys.h"
#include "actors/api/http_server.h"
#include "actors/api/messages.h"
#include "actors/api/openai.h"
#include "actors/serving/deployment.h"
#include "actors/serving/messages.h"
#include "cluster/admission.h"
#include "gateway/head_retry.h"
#include "gateway/scrape_registration.h"

namespace troupe::gateway {

namespace {

using api::HttpHeaders;
using api::HttpRequest;
using api::HttpResponder;
using api::OpenAiError;
using Json = nlohmann::json;
using Ms = std::chrono::milliseconds;

// Local messages to the gateway's session actor (never on the wire).
// `done` gets the api actor the call went to: a reservation is settled with the actor that made
// it, never with a restarted head's (reservation ids start again at 1 there).
struct AdmitCall {
  api::Admit admit;
  std::function<void(StatusOr<api::AdmitReply>, runtime::ActorRef)> done;
};
struct CommandCall {
  api::ApiCommand command;
  std::function<void(StatusOr<api::ApiCommandReply>, runtime::ActorRef)> done;
};
struct SettleCall {
  api::Settle settle;
  runtime::ActorRef to;  // the api actor that admitted it (one lost with its head drops it)
};
struct InferCall {
  cluster::AdmitAndInfer call;
  std::chrono::milliseconds timeout;
  std::function<void(StatusOr<cluster::AdmitAndInferReply>, runtime::ActorRef)> done;
};
// Runs `fn` on the session actor after `delay` (a retry's back-off; no thread waits).
struct RunLater {
  std::chrono::milliseconds delay;
  std::function<void()> fn;
};
struct RunNow {
  std::function<void()> fn;
};

}  // namespace
}  // namespace troupe::gateway

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gateway::AdmitCall)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gateway::CommandCall)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gateway::SettleCall)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gateway::InferCall)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gateway::RunLater)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gateway::RunNow)

namespace troupe::gateway {
namespace {

using flush_atom = caf::atom_constant<caf::atom("gwflush")>;

// The reply type R of a std::function<void(StatusOr<R>)>.
template <class F>
struct ReplyOf;
template <class R>
struct ReplyOf<std::function<void(StatusOr<R>, runtime::ActorRef)>> {
  using type = R;
};
using gone_atom = caf::atom_constant<caf::atom("gwgone")>;
using head_checked_atom = caf::atom_constant<caf::atom("gwheadck")>;

// How long a stream whose response arrived waits for chunks still on their way (chunks come
// from the replica straight to the gateway, the response through the router: two paths).
constexpr Ms kStreamTailWait{2000};
// Asking the head's api actor (Admit, admin commands).
constexpr Ms kApiTimeout{5000};

int64_t UnixMs() {
  return std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string BearerKey(const HttpRequest& req) {
  std::string auth = req.Header("authorization");
  constexpr std::string_view kBearer = "bearer ";
  if (auth.size() > kBearer.size()) {
    bool match = true;
    for (size_t i = 0; i < kBearer.size(); ++i) match = match && std::tolower(auth[i]) == kBearer[i];
    if (match) {
      std::string key = auth.substr(kBearer.size());
      while (!key.empty() && key.front() == ' ') key.erase(key.begin());
      while (!key.empty() && key.back() == ' ') key.pop_back();
      return key;
    }
  }
  return req.Header("x-api-key");
}

void RespondError(const std::shared_ptr<HttpResponder>& out, const OpenAiError& error, HttpHeaders headers = {}) {
  headers.emplace_back("content-type", "application/json");
  out->Respond(error.http_status, std::move(headers), error.Json());
}

void RespondJson(const std::shared_ptr<HttpResponder>& out, unsigned status, std::string body,
                 HttpHeaders headers = {}) {
  headers.emplace_back("content-type", "application/json");
  out->Respond(status, std::move(headers), std::move(body));
}

// A deployment as the gateway routes to it: its router and the tenant that owns it.
struct Route {
  runtime::ActorRef router;
  std::string tenant;
};

}  // namespace

struct Gateway::Impl : std::enable_shared_from_this<Impl> {
  cluster::ClusterConfig config;
  cluster::Client* client = nullptr;
  std::unique_ptr<api::HttpServer> server;
  std::unique_ptr<ScrapeRegistration> scrape;  // in the head's Prometheus targets while serving
  std::string host;
  // Blocking cluster calls (name lookups, deployment lists) run here, never on an io thread.
  boost::asio::thread_pool pool{2};
  std::atomic<bool> stopping{false};

  mutable std::mutex mu;
  runtime::ActorRef api_actor;                          // under mu
  std::map<std::string, Route> routes;                  // by deployment, under mu
  std::atomic<uint64_t> next_request{0};

  std::atomic<uint64_t> requests{0}, admitted{0}, refused{0}, completed{0}, failed{0}, cancelled{0}, in_flight{0};

  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>* responses = nullptr;
  prometheus::Family<prometheus::Histogram>* duration = nullptr;
  prometheus::Histogram* ttft = nullptr;
  prometheus::Gauge* in_flight_gauge = nullptr;

  void InitMetrics() {
    responses = &prometheus::BuildCounter()
                     .Name("troupe_gateway_responses_total")
                     .Help("HTTP responses of the gateway by endpoint and status code")
                     .Register(*registry);
    duration = &prometheus::BuildHistogram()
                    .Name("troupe_gateway_request_duration_seconds")
                    .Help("Time from a request read whole to its response ended, by endpoint")
                    .Register(*registry);
    ttft = &prometheus::BuildHistogram()
                .Name("troupe_gateway_time_to_first_token_seconds")
                .Help("Streamed requests: time from the request read whole to the first event written")
                .Register(*registry)
                .Add({}, prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
    retries_counter = &prometheus::BuildCounter()
                           .Name("troupe_gateway_head_retries_total")
                           .Help("Model requests sent to the head again after it was lost (one per attempt)")
                           .Register(*registry)
                           .Add({});
    in_flight_gauge = &prometheus::BuildGauge()
                           .Name("troupe_gateway_requests_in_flight")
                           .Help("Model requests admitted and not yet ended")
                           .Register(*registry)
                           .Add({});
  }

  void Count(const std::string& endpoint, unsigned status, std::chrono::steady_clock::time_point start) {
    responses->Add({{"endpoint", endpoint}, {"code", std::to_string(status)}}).Increment();
    static const prometheus::Histogram::BucketBoundaries kBuckets{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                                  0.1,    0.25,  0.5,    1,     2.5,  5,    10, 30};
    duration->Add({{"endpoint", endpoint}}, kBuckets)
        .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

  // ---- lookups ----

  runtime::ActorRef ApiActor() {
    std::lock_guard<std::mutex> lock(mu);
    return api_actor;
  }
  // Looks the api actor up again, off the io threads (after a failed ask: the head restarted).
  // One lookup at a time, however many requests failed meanwhile; logged once per outage.
  std::atomic<bool> refreshing{false};
  std::atomic<bool> api_lost_logged{false};
  void RefreshApiActor() {
    if (refreshing.exchange(true)) return;
    boost::asio::post(pool, [self = shared_from_this()] {
      auto found = self->client->ApiActor(kApiTimeout, /*refresh=*/true);
      if (!found.ok()) {
        if (!self->api_lost_logged.exchange(true)) {
          spdlog::warn("gateway: the head's api actor cannot be reached: {} (requests get 503 until it is back)",
                       found.status().ToString());
        }
        self->refreshing = false;
        return;
      }
      {
        std::lock_guard<std::mutex> lock(self->mu);
        self->api_actor = *found;
      }
      if (self->api_lost_logged.exchange(false)) spdlog::info("gateway: the head's api actor is reachable again");
      self->refreshing = false;
    });
  }

  // `done` (on a pool thread, or at once from the cache) with the deployment's route, or NotFound.
  void WithRouter(const std::string& deployment, bool refresh, std::function<void(StatusOr<Route>)> done) {
    if (!refresh) {
      std::optional<Route> cached;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (auto it = routes.find(deployment); it != routes.end()) cached = it->second;
      }
      if (cached) {
        done(std::move(*cached));  // outside the lock: `done` may take it (ForgetRouter)
        return;
      }
    }
    boost::asio::post(pool, [self = shared_from_this(), deployment, done = std::move(done)] {
      auto shown = self->client->DeploymentCommand("show", deployment, "", kApiTimeout);
      if (!shown.ok()) {
        done(shown.status());
        return;
      }
      Route route;
      try {
        const Json record = Json::parse(*shown);
        route.tenant = record.at("spec").value("tenant", std::string("default"));
      } catch (const std::exception& e) {
        done(InternalError("the head's record of deployment '" + deployment + "' did not parse: " + e.what()));
        return;
      }
      auto found = self->client->runtime().LookupName(self->client->head().node(), serving::RouterName(deployment),
                                                      kApiTimeout);
      if (!found.ok()) {
        done(found.status());
        return;
      }
      route.router = *found;
      {
        std::lock_guard<std::mutex> lock(self->mu);
        self->routes[deployment] = route;
      }
      done(std::move(route));
    });
  }
  void ForgetRouter(const std::string& deployment) {
    std::lock_guard<std::mutex> lock(mu);
    routes.erase(deployment);
  }

  // ---- the request handler (io threads; never blocks) ----

  void Handle(HttpRequest req, std::shared_ptr<HttpResponder> out) {
    const auto start = std::chrono::steady_clock::now();
    const std::string path(req.Path());
    if (path == "/healthz") {
      RespondJson(out, 200, R"({"status":"ok"})");
      return;
    }
    if (path == "/readyz") {
      const bool ready = !stopping.load() && ApiActor().valid();
      RespondJson(out, ready ? 200 : 503, ready ? R"({"status":"ready"})" : R"({"status":"not ready"})");
      return;
    }
    if (path == "/metrics") {
      prometheus::TextSerializer serializer;
      in_flight_gauge->Set(static_cast<double>(in_flight.load()));
      out->Respond(200, {{"content-type", "text/plain; version=0.0.4"}}, serializer.Serialize(registry->Collect()));
      return;
    }
    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      if (req.method != "POST") {
        RespondError(out, OpenAiError::ForStatus(405, "use POST for " + path), {{"allow", "POST"}});
        return;
      }
      Completion(std::move(req), std::move(out), path, start);
      return;
    }
    if (path == "/v1/models") {
      if (req.method != "GET") {
        RespondError(out, OpenAiError::ForStatus(405, "use GET for /v1/models"), {{"allow", "GET"}});
        return;
      }
      Models(std::move(req), std::move(out), start);
      return;
    }
    if (path.rfind("/v1/admin/", 0) == 0) {
      Admin(std::move(req), std::move(out), start);
      return;
    }
    RespondError(out, OpenAiError::ForStatus(404, "no endpoint " + req.method + " " + path +
                                                      " (this gateway serves /v1/chat/completions, /v1/completions, "
                                                      "/v1/models, /v1/admin/..., /healthz, /readyz, /metrics)",
                                             "not_found"));
  }

  // The gateway's session actor: every Admit, Settle and admin command goes to the head's api
  // actor from it, so the head sees one long-lived sender per gateway and, when it goes down
  // (the gateway died), frees the reservations it holds.
  caf::actor session;

  void StartSession() {
    std::weak_ptr<Impl> weak = shared_from_this();
    session = client->runtime().system().spawn([weak](caf::event_based_actor* self) -> caf::behavior {
      auto ask = [self, weak](auto msg, auto done, std::chrono::milliseconds timeout = kApiTimeout) {
        using Reply = typename ReplyOf<std::decay_t<decltype(done)>>::type;
        auto impl = weak.lock();
        runtime::ActorRef actor = impl ? impl->ApiActor() : runtime::ActorRef();
        if (!actor.valid()) {
          if (impl) impl->RefreshApiActor();
          done(UnavailableError("the head's api actor is not reachable yet; retry shortly"), actor);
          return;
        }
        self->request(actor.handle(), timeout, std::move(msg))
            .then([done, actor](Reply& reply) { done(std::move(reply), actor); },
                  [weak, done, actor](caf::error& error) {
                    Status status = runtime::ToStatus(error);
                    if (status.ok()) status = InternalError("the api actor failed without a reason");
                    if (auto impl = weak.lock()) {
                      if (status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kNotFound ||
                          status.code() == StatusCode::kDeadlineExceeded) {
                        impl->RefreshApiActor();
                      }
                    }
                    done(std::move(status), actor);
                  });
      };
      return {
          [ask](AdmitCall& call) { ask(std::move(call.admit), std::move(call.done)); },
          [ask](CommandCall& call) { ask(std::move(call.command), std::move(call.done)); },
          [ask](InferCall& call) { ask(std::move(call.call), std::move(call.done), call.timeout); },
          [self](SettleCall& call) {
            if (call.to.valid()) self->send(call.to.handle(), std::move(call.settle));
          },
          [self](RunLater& later) { self->delayed_send(self, later.delay, RunNow{std::move(later.fn)}); },
          [](RunNow& now) { now.fn(); },
      };
    });
  }

  // Asks the api actor through the session actor; `done` runs on an actor thread.
  void AskApi(api::Admit msg, std::function<void(StatusOr<api::AdmitReply>, runtime::ActorRef)> done) {
    caf::anon_send(session, AdmitCall{std::move(msg), std::move(done)});
  }
  void AskApi(api::ApiCommand msg, std::function<void(StatusOr<api::ApiCommandReply>)> done) {
    caf::anon_send(session, CommandCall{std::move(msg), [done = std::move(done)](StatusOr<api::ApiCommandReply> reply,
                                                                                  runtime::ActorRef) {
                     done(std::move(reply));
                   }});
  }
  void AskApi(cluster::AdmitAndInfer msg,
              std::function<void(StatusOr<cluster::AdmitAndInferReply>, runtime::ActorRef)> done) {
    // The router's deadline (request_timeout) answers first; this one only if the head is gone.
    const Ms timeout = config.gateway.request_timeout + Ms(2000);
    caf::anon_send(session, InferCall{std::move(msg), timeout, std::move(done)});
  }
  void RunAfter(Ms delay, std::function<void()> fn) { caf::anon_send(session, RunLater{delay, std::move(fn)}); }

  // True (and 401 answered) when the request carries no key: nothing to ask the head.
  bool NoKey(const std::string& key, const std::shared_ptr<HttpResponder>& out, const std::string& endpoint,
             std::chrono::steady_clock::time_point start) {
    if (!key.empty()) return false;
    RespondError(out, OpenAiError::ForStatus(401,
                                             "no API key: send it as 'Authorization: Bearer KEY' (troupe key create "
                                             "makes one)",
                                             "invalid_api_key"));
    Count(endpoint, 401, start);
    return true;
  }

  static HttpHeaders RefusalHeaders(const api::AdmitReply& reply) {
    HttpHeaders headers(reply.headers.begin(), reply.headers.end());
    if (reply.http_status == 429 && reply.retry_after_s > 0) {
      headers.emplace_back("retry-after", std::to_string(reply.retry_after_s));
    }
    return headers;
  }

  void Completion(HttpRequest req, std::shared_ptr<HttpResponder> out, const std::string& path,
                  std::chrono::steady_clock::time_point start) {
    ++requests;
    const std::string endpoint = path == "/v1/completions" ? "completions" : "chat";
    const std::string key = BearerKey(req);
    if (NoKey(key, out, endpoint, start)) return;
    api::CompletionRequest parsed;
    const auto kind = path == "/v1/completions" ? api::CompletionEndpoint::kCompletions : api::CompletionEndpoint::kChat;
    // OpenAI's /v1/completions default max_tokens is 16; chat has none: the model's context
    // bounds it there. A reservation needs a bound, so chat without one reserves 16 as well,
    // and settles the real count.
    if (auto error = api::ParseCompletionRequest(kind, req.body, 16, &parsed)) {
      RespondError(out, *error);
      Count(endpoint, error->http_status, start);
      return;
    }
    api::Admit admit;
    admit.api_key = key;
    admit.deployment = parsed.model;
    admit.action = static_cast<uint32_t>(api::Action::kCallModel);
    admit.prompt_tokens = parsed.PromptTokenEstimate(config.gateway.prompt_bytes_per_token);
    admit.max_tokens = parsed.CompletionTokenBound();
    auto self = shared_from_this();
    // The model must name a deployment before anything is reserved or metered under its name
    // (usage rows and metric labels are per model: a client must not make up new ones). A
    // missing one is a 404 once the key is known to be good, so an unknown caller learns
    // nothing of what is deployed.
    WithRouter(parsed.model, false, [self, req = std::move(req), out, parsed, endpoint, start,
                                     admit = std::move(admit)](StatusOr<Route> route) mutable {
      if (!route.ok() && route.status().code() == StatusCode::kNotFound) {
        api::Admit check;
        check.api_key = admit.api_key;
        check.action = static_cast<uint32_t>(api::Action::kListModels);
        self->AskApi(std::move(check), [self, out, parsed, endpoint, start](StatusOr<api::AdmitReply> reply,
                                                                            runtime::ActorRef by) {
          if (!reply.ok()) {
            RespondError(out, OpenAiError::ForStatus(503, "the gateway cannot reach the cluster's key and limit "
                                                          "service (" + reply.status().ToString() + "); retry shortly"));
            self->Count(endpoint, 503, start);
            return;
          }
          if (reply->admitted && reply->reservation != 0) {
            ++self->in_flight;
            self->Settle(*reply, by, "", 0, 0, false);
          }
          if (!reply->admitted) {
            ++self->refused;
            RespondError(out, OpenAiError::ForStatus(reply->http_status, reply->message, reply->error_type),
                         RefusalHeaders(*reply));
            self->Count(endpoint, reply->http_status, start);
            return;
          }
          RespondError(out, ModelNotFound(parsed.model));
          self->Count(endpoint, 404, start);
        });
        return;
      }
      if (route.ok() && !parsed.stream) {
        self->AdmitAndCall(std::move(req), out, std::move(parsed), std::move(admit), std::move(*route), endpoint,
                           start, std::nullopt, runtime::ActorRef(), HeadRetries{});
        return;
      }
      self->AdmitAndDispatch(std::move(req), out, std::move(parsed), std::move(admit), endpoint, start, HeadRetries{});
    });
  }

  // ---- retries through a head restart (gateway/head_retry.h; docs/gateway.md "A head restart") ----

  HeadRetryPolicy retry_policy;
  std::atomic<uint64_t> head_retries{0}, retried_requests{0};
  prometheus::Counter* retries_counter = nullptr;

  // One request's retries: its deadline (kept across attempts: a retry does not extend it) and
  // its failed attempts.
  struct HeadRetries {
    int64_t deadline_unix_ms = 0;
    uint32_t failures = 0;
    std::chrono::steady_clock::time_point first_failure;
  };
  HeadRetries Deadlined(HeadRetries retries) const {
    if (retries.deadline_unix_ms == 0) retries.deadline_unix_ms = UnixMs() + config.gateway.request_timeout.count();
    return retries;
  }

  static double Uniform() {
    thread_local std::mt19937_64 rng{std::random_device()()};
    return static_cast<double>(rng() >> 11) * 0x1.0p-53;
  }

  // After a failed attempt that ended as `outcome`: `again` runs after the back-off, with the
  // failure counted (true), or *why says why the request is not sent again (false).
  bool ScheduleRetry(CallOutcome outcome, const HeadRetries& retries, std::function<void(HeadRetries)> again,
                     std::string* why) {
    HeadRetries next = retries;
    const auto now = std::chrono::steady_clock::now();
    if (next.failures++ == 0) next.first_failure = now;
    const HeadRetryDecision decision =
        DecideHeadRetry(retry_policy, outcome, next.failures, std::chrono::duration_cast<Ms>(now - next.first_failure),
                        Ms(next.deadline_unix_ms - UnixMs()), Uniform());
    if (!decision.retry || stopping.load()) {
      *why = stopping.load() ? "the gateway is stopping" : decision.why;
      return false;
    }
    ++head_retries;
    retries_counter->Increment();
    if (next.failures == 1) ++retried_requests;
    RunAfter(decision.delay, [again = std::move(again), next] { again(next); });
    return true;
  }

  // A retry after the head was lost: the deployment's router is looked up again first (the
  // restarted head's; that head may still be reading its deployments back, so a lookup that
  // finds no router or no head is one more failed attempt), then `send` runs with it. `fail`
  // answers the request when no retry is left.
  void ResendAfterHeadLoss(const std::string& model, HeadRetries retries, std::function<void(Route, HeadRetries)> send,
                           std::function<void(const Status&, const std::string&)> fail) {
    ForgetRouter(model);
    auto self = shared_from_this();
    WithRouter(model, true, [self, model, retries, send, fail](StatusOr<Route> route) {
      if (route.ok()) {
        send(std::move(*route), retries);
        return;
      }
      const CallOutcome outcome =
          route.status().code() == StatusCode::kNotFound ? CallOutcome::kHeadLost : OutcomeOf(route.status());
      std::string why;
      if (self->ScheduleRetry(
              outcome, retries,
              [self, model, send, fail](HeadRetries next) { self->ResendAfterHeadLoss(model, next, send, fail); },
              &why)) {
        return;
      }
      fail(route.status(), why);
    });
  }

  // The answer to a request whose head was lost and not back in time (or whose route was not).
  void HeadLostAnswer(const std::shared_ptr<HttpResponder>& out, const std::string& model, const Status& status,
                      const std::string& why, const std::string& endpoint, std::chrono::steady_clock::time_point start) {
    OpenAiError error = status.code() == StatusCode::kNotFound
                            ? RouteError(model, status)
                            : OpenAiError::ForStatus(503, "the gateway cannot reach the cluster's head (" +
                                                              status.ToString() + "); not sent again: " + why +
                                                              "; retry shortly");
    RespondError(out, error);
    Count(endpoint, error.http_status, start);
  }

  // A streamed request (or one whose route is not known yet): admitted, then Dispatch. A stream
  // is sent again, admitted afresh, when the head is lost before the admission's answer or
  // before the stream's first chunk (`resend`).
  void AdmitAndDispatch(HttpRequest req, std::shared_ptr<HttpResponder> out, api::CompletionRequest parsed,
                        api::Admit admit, std::string endpoint, std::chrono::steady_clock::time_point start,
                        HeadRetries retries) {
    auto self = shared_from_this();
    retries = Deadlined(retries);
    // Sends the request again after a head loss (true), or says why not.
    std::function<bool(CallOutcome, std::string*)> resend = [self, req, out, parsed, admit, endpoint, start,
                                                             retries](CallOutcome outcome, std::string* why) {
      const std::string model = parsed.model;
      return self->ScheduleRetry(
          outcome, retries,
          [self, model, req, out, parsed, admit, endpoint, start](HeadRetries next) {
            self->ResendAfterHeadLoss(
                model, next,
                [self, req, out, parsed, admit, endpoint, start](Route, HeadRetries n) {
                  self->AdmitAndDispatch(req, out, parsed, admit, endpoint, start, n);
                },
                [self, out, model, endpoint, start](const Status& status, const std::string& why) {
                  self->HeadLostAnswer(out, model, status, why, endpoint, start);
                });
          },
          why);
    };
    AskApi(std::move(admit), [self, req = std::move(req), out, parsed, endpoint, start, resend,
                              retries](StatusOr<api::AdmitReply> reply, runtime::ActorRef by) mutable {
      if (!reply.ok()) {
        std::string why;
        if (resend(OutcomeOf(reply.status()), &why)) return;
        RespondError(out, OpenAiError::ForStatus(503, "the gateway cannot reach the cluster's key and limit service (" +
                                                          reply.status().ToString() + "); not sent again: " + why +
                                                          "; retry shortly"));
        self->Count(endpoint, 503, start);
        return;
      }
      if (!reply->admitted) {
        ++self->refused;
        RespondError(out, OpenAiError::ForStatus(reply->http_status, reply->message, reply->error_type),
                     RefusalHeaders(*reply));
        self->Count(endpoint, reply->http_status, start);
        return;
      }
      ++self->admitted;
      ++self->in_flight;
      self->Dispatch(std::move(req), out, std::move(parsed), std::move(*reply), std::move(by), endpoint, start,
                     retries.deadline_unix_ms, std::move(resend));
    });
  }

  // Settles `admit`'s reservation once, with `by`, the api actor that made it (after the request
  // ended however it ended). A reservation of a head lost since dies with it: nothing to settle.
  void Settle(const api::AdmitReply& admit, const runtime::ActorRef& by, const std::string& deployment,
              uint32_t prompt, uint32_t completion, bool error) {
    --in_flight;
    api::Settle settle;
    settle.reservation = admit.reservation;
    settle.deployment = deployment;
    settle.prompt_tokens = prompt;
    settle.completion_tokens = completion;
    settle.error = error;
    caf::anon_send(session, SettleCall{std::move(settle), by});
  }

  // A streamed completion, admitted: to the deployment's router, the replica's chunks to this
  // gateway (Stream).
  void Dispatch(HttpRequest req, std::shared_ptr<HttpResponder> out, api::CompletionRequest parsed,
                api::AdmitReply admit, runtime::ActorRef by, std::string endpoint,
                std::chrono::steady_clock::time_point start, int64_t deadline_unix_ms,
                std::function<bool(CallOutcome, std::string*)> resend) {
    auto self = shared_from_this();
    const std::string deployment = parsed.model;
    WithRouter(deployment, false, [self, req = std::move(req), out, parsed = std::move(parsed),
                                   admit = std::move(admit), by = std::move(by), endpoint, start, deadline_unix_ms,
                                   resend = std::move(resend)](StatusOr<Route> route) mutable {
      if (route.ok() && route->tenant != admit.tenant) route = NotFoundError("another tenant's deployment");
      StatusOr<runtime::ActorRef> router = route.ok() ? StatusOr<runtime::ActorRef>(route->router)
                                                      : StatusOr<runtime::ActorRef>(route.status());
      if (!router.ok()) {
        const OpenAiError e = RouteError(parsed.model, router.status());
        RespondError(out, e, HttpHeaders(admit.headers.begin(), admit.headers.end()));
        ++self->failed;
        self->Settle(admit, by, parsed.model, 0, 0, /*error=*/true);
        self->Count(endpoint, e.http_status, start);
        return;
      }
      serving::InferenceRequest request;
      request.id = ++self->next_request;
      request.deployment = parsed.model;
      request.path = std::string(req.Path());
      request.body = std::move(req.body);
      request.stream = parsed.stream;
      request.deadline_unix_ms = deadline_unix_ms;
      self->Stream(std::move(request), *router, out, std::move(parsed), std::move(admit), std::move(by), endpoint,
                   start, std::move(resend));
    });
  }

  static OpenAiError ModelNotFound(const std::string& model) {
    return OpenAiError::ForStatus(404,
                                  "The model '" + model +
                                      "' does not exist (no deployment of that name; GET /v1/models lists what "
                                      "this key may call)",
                                  "model_not_found");
  }
  // The answer for a deployment whose route failed: 404 (no such deployment, or another
  // tenant's: OpenAI answers 404 for a model an organization cannot see) or 503 (its router
  // cannot be reached).
  static OpenAiError RouteError(const std::string& model, const Status& status) {
    if (status.code() == StatusCode::kNotFound) return ModelNotFound(model);
    return OpenAiError::ForStatus(503, "the router of '" + model + "' cannot be reached: " + status.message());
  }

  // A whole (not streamed) completion: admitted at the head and sent on to the deployment's
  // router there, in one message (cluster/admission.h). `admitted` (by `admitted_by`): a retry,
  // after the router moved, of a call admitted before (its reservation is reused, not admitted
  // again). A call the head never answered because it was lost is sent again after the head is
  // back, admitted afresh (`retries`; docs/gateway.md "A head restart"); one it answered never is.
  void AdmitAndCall(HttpRequest req, std::shared_ptr<HttpResponder> out, api::CompletionRequest parsed,
                    api::Admit admit, Route route, std::string endpoint, std::chrono::steady_clock::time_point start,
                    std::optional<api::AdmitReply> admitted, runtime::ActorRef admitted_by, HeadRetries retries) {
    retries = Deadlined(retries);
    cluster::AdmitAndInfer call;
    call.admit = admit;
    call.deployment_tenant = route.tenant;
    call.router = route.router;
    call.reservation = admitted ? admitted->reservation : 0;
    call.request.id = ++next_request;
    call.request.deployment = parsed.model;
    call.request.path = std::string(req.Path());
    call.request.body = req.body;  // the request keeps its body for a retry
    call.request.deadline_unix_ms = retries.deadline_unix_ms;
    const bool retry = admitted.has_value();
    auto self = shared_from_this();
    AskApi(std::move(call), [self, req = std::move(req), out, parsed = std::move(parsed), admit = std::move(admit),
                             endpoint, start, admitted, admitted_by, retry,
                             retries](StatusOr<cluster::AdmitAndInferReply> reply, runtime::ActorRef by) mutable {
      if (!reply.ok()) {
        // No answer from the head. Lost (not merely slow): send it again once the head is back,
        // admitted afresh. The reservation of an earlier admission died with the head (a head
        // that lives settles it as cancelled when this gateway's session ends or it expires).
        std::string why;
        const std::string model = parsed.model;
        auto again = [self, model, req, out, parsed, admit, endpoint, start](HeadRetries next) {
          self->ResendAfterHeadLoss(
              model, next,
              [self, req, out, parsed, admit, endpoint, start](Route route, HeadRetries n) {
                self->AdmitAndCall(req, out, parsed, admit, std::move(route), endpoint, start, std::nullopt,
                                   runtime::ActorRef(), n);
              },
              [self, out, model, endpoint, start](const Status& status, const std::string& why) {
                self->HeadLostAnswer(out, model, status, why, endpoint, start);
              });
        };
        if (self->ScheduleRetry(OutcomeOf(reply), retries, std::move(again), &why)) {
          if (admitted) --self->in_flight;
          return;
        }
        if (admitted) {
          ++self->failed;
          self->Settle(*admitted, admitted_by, parsed.model, 0, 0, /*error=*/true);
        }
        RespondError(out, OpenAiError::ForStatus(503, "the gateway cannot reach the cluster's key and limit service (" +
                                                          reply.status().ToString() + "); not sent again: " + why +
                                                          "; retry shortly"));
        self->Count(endpoint, 503, start);
        return;
      }
      if (!admitted) {
        if (!reply->admit.admitted) {
          ++self->refused;
          RespondError(out, OpenAiError::ForStatus(reply->admit.http_status, reply->admit.message,
                                                   reply->admit.error_type),
                       RefusalHeaders(reply->admit));
          self->Count(endpoint, reply->admit.http_status, start);
          return;
        }
        ++self->admitted;
        ++self->in_flight;
        admitted = std::move(reply->admit);
        admitted_by = by;
      }
      HttpHeaders headers(admitted->headers.begin(), admitted->headers.end());
      const Status error = reply->error();
      if (!error.ok()) {
        // A router looked up before and gone since (the deployment was deployed again, or the
        // head restarted): look it up again, once, and call it with the same reservation.
        const auto code = error.code();
        const bool router_gone =
            reply->dispatched ? code == StatusCode::kNotFound ||
                                    (code == StatusCode::kUnavailable &&
                                     error.message().find("died while serving") == std::string::npos)
                              : code == StatusCode::kUnavailable;
        if (router_gone && !retry) {
          self->ForgetRouter(parsed.model);
          const std::string model = parsed.model;
          self->WithRouter(model, true, [self, req = std::move(req), out, parsed = std::move(parsed),
                                         admit = std::move(admit), endpoint, start, admitted, admitted_by,
                                         retries](StatusOr<Route> route) mutable {
            if (route.ok() && route->tenant != admitted->tenant) route = NotFoundError("another tenant's deployment");
            if (!route.ok()) {
              const OpenAiError e = RouteError(parsed.model, route.status());
              RespondError(out, e, HttpHeaders(admitted->headers.begin(), admitted->headers.end()));
              ++self->failed;
              self->Settle(*admitted, admitted_by, parsed.model, 0, 0, /*error=*/true);
              self->Count(endpoint, e.http_status, start);
              return;
            }
            self->AdmitAndCall(std::move(req), out, std::move(parsed), std::move(admit), std::move(*route), endpoint,
                               start, std::move(admitted), admitted_by, retries);
          });
          return;
        }
        // Not dispatched and NotFound: a deployment of another tenant (to this key, no such model).
        const OpenAiError e =
            !reply->dispatched && code == StatusCode::kNotFound ? ModelNotFound(parsed.model) : api::ErrorFromStatus(error);
        RespondError(out, e, std::move(headers));
        ++self->failed;
        self->Settle(*admitted, admitted_by, parsed.model, 0, 0, /*error=*/true);
        self->Count(endpoint, e.http_status, start);
        return;
      }
      serving::InferenceResponse& response = reply->response;
      uint32_t prompt = response.prompt_tokens, completion = response.completion_tokens;
      if (prompt == 0 && completion == 0) {
        if (auto usage = api::UsageFromBody(response.body)) {
          prompt = usage->prompt_tokens;
          completion = usage->completion_tokens;
        } else {
          // No count from the backend: charge what was reserved.
          prompt = parsed.PromptTokenEstimate(self->config.gateway.prompt_bytes_per_token);
          completion = parsed.CompletionTokenBound();
        }
      }
      const unsigned status = response.http_status == 0 ? 200 : response.http_status;
      if (!response.replica.empty()) headers.emplace_back("x-troupe-replica", response.replica);
      if (retries.failures > 0) headers.emplace_back("x-troupe-head-retries", std::to_string(retries.failures));
      RespondJson(out, status, std::move(response.body), std::move(headers));
      if (status < 400) {
        ++self->completed;
      } else {
        ++self->failed;
      }
      self->Settle(*admitted, admitted_by, parsed.model, prompt, completion, status >= 400);
      self->Count(endpoint, status, start);
    });
  }

  // A streamed request: an actor of this process receives the replica's chunks (stream_to) and
  // the router's reply, and writes each chunk to the client as it comes.
  // A stream whose router is lost with the head before its first chunk is sent again
  // (`resend`); one that has sent a chunk to the client ends with an error event.
  void Stream(serving::InferenceRequest request, runtime::ActorRef router, std::shared_ptr<HttpResponder> out,
              api::CompletionRequest parsed, api::AdmitReply admit, runtime::ActorRef by, std::string endpoint,
              std::chrono::steady_clock::time_point start, std::function<bool(CallOutcome, std::string*)> resend) {
    struct Call {
      std::shared_ptr<Impl> impl;
      std::shared_ptr<HttpResponder> out;
      api::CompletionRequest parsed;
      api::AdmitReply admit;
      runtime::ActorRef api;  // the api actor that admitted it
      std::function<bool(CallOutcome, std::string*)> resend;
      std::string endpoint;
      std::chrono::steady_clock::time_point start;
      api::StreamUsageScanner scanner;
      bool started = false;
      bool finished = false;
      bool response_seen = false;
      uint64_t next_index = 0;
      uint64_t replica_request_id = 0;
      caf::actor replica;  // the chunks' sender: where a cancel goes
      serving::InferenceResponse response;
      Status error;
      uint32_t events = 0;
    };
    auto call = std::make_shared<Call>();
    call->impl = shared_from_this();
    call->out = out;
    call->parsed = std::move(parsed);
    call->admit = std::move(admit);
    call->api = std::move(by);
    call->resend = std::move(resend);
    call->endpoint = std::move(endpoint);
    call->start = start;
    const Ms timeout = config.gateway.request_timeout + Ms(1000);
    auto& runtime = client->runtime();
    auto finish = [](const std::shared_ptr<Call>& c) {
      if (c->finished) return;
      c->finished = true;
      Impl& impl = *c->impl;
      if (!c->error.ok() && !c->started) {
        const OpenAiError error = api::ErrorFromStatus(c->error);
        RespondError(c->out, error, HttpHeaders(c->admit.headers.begin(), c->admit.headers.end()));
        ++impl.failed;
        impl.Settle(c->admit, c->api, c->parsed.model, 0, 0, true);
        impl.Count(c->endpoint, error.http_status, c->start);
        return;
      }
      if (!c->error.ok()) {
        // Mid-stream: the client has a 200 already; an error event says what happened.
        const OpenAiError error = api::ErrorFromStatus(c->error);
        c->out->Write("data: " + error.Json() + "\n\n");
      }
      if (!c->started) {
        c->out->StartStream(200, {{"content-type", "text/event-stream"}, {"cache-control", "no-cache"}});
      }
      if (!c->scanner.done()) c->out->Write("data: [DONE]\n\n");
      c->out->End();
      uint32_t prompt = c->response.prompt_tokens, completion = c->response.completion_tokens;
      if (prompt == 0 && completion == 0) {
        if (c->scanner.usage()) {
          prompt = c->scanner.usage()->prompt_tokens;
          completion = c->scanner.usage()->completion_tokens;
        } else {
          prompt = c->parsed.PromptTokenEstimate(impl.config.gateway.prompt_bytes_per_token);
          completion = c->parsed.CompletionTokenBound();
        }
      }
      const bool failed = !c->error.ok();
      if (failed) {
        ++impl.failed;
      } else {
        ++impl.completed;
      }
      impl.Settle(c->admit, c->api, c->parsed.model, prompt, completion, failed);
      impl.Count(c->endpoint, 200, c->start);
    };
    auto cancel = [](const std::shared_ptr<Call>& c) {
      if (c->finished) return;
      c->finished = true;
      Impl& impl = *c->impl;
      ++impl.cancelled;
      // The replica stops producing tokens (anonymous: it matches the request of that id, which
      // the router numbered; docs/serving.md "The protocol").
      if (c->replica) caf::anon_send(c->replica, serving::CancelRequest{c->replica_request_id});
      uint32_t completion = 0;
      if (c->scanner.usage()) completion = c->scanner.usage()->completion_tokens;
      // Tokens made before the cancel are unknown without a usage event: charge one per event
      // (the test model and vLLM send one token an event), at most the reservation.
      if (completion == 0) completion = std::min(c->events, c->parsed.CompletionTokenBound());
      impl.Settle(c->admit, c->api, c->parsed.model, c->parsed.PromptTokenEstimate(impl.config.gateway.prompt_bytes_per_token),
                  completion, false);
      impl.Count(c->endpoint, 499, c->start);
    };
    caf::actor actor = runtime.system().spawn([call, router, request = std::move(request), timeout, finish,
                                               cancel](caf::event_based_actor* self) mutable -> caf::behavior {
      request.stream_to = call->impl->client->runtime().Ref(caf::actor_cast<caf::actor>(self));
      self->request(router.handle(), timeout, std::move(request))
          .then(
              [self, call, finish](serving::InferenceResponse& response) {
                call->response = std::move(response);
                call->response_seen = true;
                if (call->scanner.done()) {
                  finish(call);
                  self->quit();
                } else {
                  self->delayed_send(self, kStreamTailWait, flush_atom::value);
                }
              },
              [self, call, finish](caf::error& error) {
                if (call->scanner.done()) {
                  // The replica's stream ended whole ([DONE]) and only the router's reply, which
                  // comes through the head, was lost: the client has its answer.
                  finish(call);
                  self->quit();
                  return;
                }
                const Status status = runtime::ToStatus(error);
                if (!call->started && call->events == 0 && call->resend &&
                    (IsReceiverLost(error) || status.code() == StatusCode::kUnavailable)) {
                  // Lost with its head, or the router's own Unavailable (a replica's failure)?
                  // The head is lost when its api actor cannot be found now or is another one
                  // (a restarted head): asked off the actor threads, answered to this actor.
                  call->error = status;
                  boost::asio::post(call->impl->pool, [impl = call->impl, api = call->api,
                                                       stream = caf::actor_cast<caf::actor>(self)] {
                    auto now = impl->client->ApiActor(Ms(1000), /*refresh=*/true);
                    caf::anon_send(stream, head_checked_atom::value, !now.ok() || !(*now == api));
                  });
                  return;
                }
                call->error = status;
                if (call->error.ok()) call->error = InternalError("the stream failed without a reason");
                finish(call);
                self->quit();
              });
      return {
          [self, call, finish](serving::ResponseChunk& chunk) {
            if (call->finished) return;
            if (!call->started) {
              call->started = true;
              call->impl->ttft->Observe(
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - call->start).count());
              HttpHeaders headers(call->admit.headers.begin(), call->admit.headers.end());
              headers.emplace_back("content-type", "text/event-stream");
              headers.emplace_back("cache-control", "no-cache");
              call->out->StartStream(200, std::move(headers));
            }
            if (!call->replica) {
              call->replica = caf::actor_cast<caf::actor>(self->current_sender());
              call->replica_request_id = chunk.request_id;
            }
            ++call->events;
            call->scanner.Feed(chunk.data);
            call->out->Write(std::move(chunk.data));
            if (call->response_seen && call->scanner.done()) {
              finish(call);
              self->quit();
            }
          },
          [self, call, finish](flush_atom) {
            finish(call);
            self->quit();
          },
          [self, call, finish](head_checked_atom, bool head_lost) {
            if (call->finished) {
              self->quit();
              return;
            }
            // Nothing was written yet: the stream is sent again, admitted afresh (the reservation
            // died with the head). Chunks of the first try that still come go to this quit actor.
            std::string why;
            if (head_lost && !call->started && call->events == 0 && call->resend(CallOutcome::kHeadLost, &why)) {
              call->finished = true;
              --call->impl->in_flight;
              self->quit();
              return;
            }
            finish(call);  // with the router's error
            self->quit();
          },
          [self, call, cancel](gone_atom) {
            cancel(call);
            self->quit();
          },
      };
    });
    out->OnClose([weak = caf::actor_cast<caf::weak_actor_ptr>(actor)] {
      if (auto strong = caf::actor_cast<caf::actor>(weak)) caf::anon_send(strong, gone_atom::value);
    });
  }

  void Models(HttpRequest req, std::shared_ptr<HttpResponder> out, std::chrono::steady_clock::time_point start) {
    const std::string key = BearerKey(req);
    if (NoKey(key, out, "models", start)) return;
    api::Admit admit;
    admit.api_key = key;
    admit.action = static_cast<uint32_t>(api::Action::kListModels);
    auto self = shared_from_this();
    AskApi(std::move(admit), [self, out, start](StatusOr<api::AdmitReply> reply, runtime::ActorRef by) {
      if (!reply.ok()) {
        RespondError(out, OpenAiError::ForStatus(503, "the gateway cannot reach the cluster: " +
                                                          reply.status().ToString()));
        self->Count("models", 503, start);
        return;
      }
      if (!reply->admitted) {
        RespondError(out, OpenAiError::ForStatus(reply->http_status, reply->message, reply->error_type),
                     RefusalHeaders(*reply));
        self->Count("models", reply->http_status, start);
        return;
      }
      if (reply->reservation != 0) {
        ++self->in_flight;
        self->Settle(*reply, by, "", 0, 0, false);
      }
      boost::asio::post(self->pool, [self, out, start, reply = std::move(*reply)] {
        auto listed = self->client->DeploymentCommand("list", "", "", kApiTimeout);
        if (!listed.ok()) {
          const OpenAiError error = api::ErrorFromStatus(listed.status());
          RespondError(out, error);
          self->Count("models", error.http_status, start);
          return;
        }
        std::vector<api::ModelEntry> models;
        const bool all = reply.deployments.size() == 1 && reply.deployments[0] == "*";
        try {
          const Json list = Json::parse(*listed);
          const Json& items = list.is_array() ? list : list.value("deployments", Json::array());
          for (const auto& item : items) {
            const Json& spec = item.contains("spec") ? item["spec"] : item;
            std::string name = spec.value("name", item.value("name", std::string()));
            if (name.empty()) continue;
            if (spec.value("tenant", std::string("default")) != reply.tenant) continue;
            if (!all && std::find(reply.deployments.begin(), reply.deployments.end(), name) == reply.deployments.end()) {
              continue;
            }
            api::ModelEntry entry;
            entry.id = name;
            entry.owned_by = reply.tenant.empty() ? "troupe" : reply.tenant;
            const Json& status = item.contains("status") ? item["status"] : Json::object();
            entry.created_unix_s = status.value("deployed_unix_ms", int64_t{0}) / 1000;
            models.push_back(std::move(entry));
          }
        } catch (const std::exception& e) {
          RespondError(out, OpenAiError::ForStatus(500, std::string("the head's deployment list did not parse: ") +
                                                            e.what()));
          self->Count("models", 500, start);
          return;
        }
        RespondJson(out, 200, api::ModelListJson(models));
        self->Count("models", 200, start);
      });
    });
  }

  // The admin API: the same operations as `troupe key|tenant|usage|audit`, authorized by the
  // caller's key and role at the head (docs/gateway.md "Admin API").
  void Admin(HttpRequest req, std::shared_ptr<HttpResponder> out, std::chrono::steady_clock::time_point start) {
    const std::string key = BearerKey(req);
    if (NoKey(key, out, "admin", start)) return;
    const std::string path(req.Path());
    std::string rest = path.substr(std::string("/v1/admin/").size());
    std::string name;
    if (auto slash = rest.find('/'); slash != std::string::npos) {
      name = rest.substr(slash + 1);
      rest = rest.substr(0, slash);
    }
    std::string op;
    if (rest == "keys" && req.method == "POST" && name.empty()) op = "key.create";
    else if (rest == "keys" && req.method == "GET" && name.empty()) op = "key.list";
    else if (rest == "keys" && req.method == "DELETE" && !name.empty()) op = "key.revoke";
    else if (rest == "tenants" && req.method == "POST" && name.empty()) op = "tenant.create";
    else if (rest == "tenants" && req.method == "GET" && name.empty()) op = "tenant.list";
    else if (rest == "usage" && req.method == "GET") op = "usage";
    if (op.empty()) {
      RespondError(out, OpenAiError::ForStatus(404, "no admin endpoint " + req.method + " " + path +
                                                        " (POST|GET /v1/admin/keys, DELETE /v1/admin/keys/ID, "
                                                        "POST|GET /v1/admin/tenants, GET /v1/admin/usage; the "
                                                        "audit log is read with `troupe audit`)",
                                               "not_found"));
      Count("admin", 404, start);
      return;
    }
    std::string body = req.body;
    if (op == "tenant.create") {
      // POST /v1/admin/tenants {"name": ..., "limits": {...}}
      try {
        const Json parsed = Json::parse(body.empty() ? "{}" : body);
        if (!parsed.is_object() || !parsed.contains("name") || !parsed["name"].is_string()) {
          RespondError(out, OpenAiError::InvalidRequest("the body must be a JSON object with a string 'name'", "name"));
          Count("admin", 400, start);
          return;
        }
        name = parsed["name"].get<std::string>();
      } catch (const std::exception&) {
        RespondError(out, OpenAiError::InvalidRequest("the body is not valid JSON"));
        Count("admin", 400, start);
        return;
      }
    }
    if (op == "usage" && body.empty()) body = "{}";
    api::ApiCommand command;
    command.op = op;
    command.name = name;
    command.body = body;
    command.api_key = key;
    command.caller = "http@" + req.remote;
    auto self = shared_from_this();
    AskApi(std::move(command), [self, out, start](StatusOr<api::ApiCommandReply> reply) {
      if (!reply.ok()) {
        const OpenAiError error = api::ErrorFromStatus(reply.status());
        RespondError(out, error);
        self->Count("admin", error.http_status, start);
        return;
      }
      RespondJson(out, 200, std::move(reply->json));
      self->Count("admin", 200, start);
    });
  }
};

StatusOr<std::unique_ptr<Gateway>> Gateway::Start(const cluster::ClusterConfig& config, cluster::Client* client,
                                                  std::chrono::milliseconds timeout) {
  auto impl = std::make_shared<Impl>();
  impl->config = config;
  impl->client = client;
  impl->InitMetrics();
  impl->retry_policy.budget = config.gateway.head_retry_budget;
  ASSIGN_OR_RETURN(impl->api_actor, client->ApiActor(timeout));
  impl->StartSession();
  api::HttpServerConfig http;
  RETURN_IF_ERROR(api::ParseListenAddress(config.gateway.listen, &http));
  http.max_body_bytes = config.gateway.max_body_bytes;
  http.max_header_bytes = config.gateway.max_header_bytes;
  http.read_timeout = config.gateway.read_timeout;
  http.idle_timeout = config.gateway.idle_timeout;
  impl->host = http.host;
  std::weak_ptr<Impl> weak = impl;
  auto server = api::HttpServer::Start(http, [weak](HttpRequest req, std::shared_ptr<HttpResponder> out) {
    if (auto self = weak.lock()) {
      self->Handle(std::move(req), std::move(out));
    } else {
      RespondError(out, OpenAiError::ForStatus(503, "the gateway is stopping"));
    }
  });
  if (!server.ok()) {
    return Status(server.status().code(), "gateway.listen " + config.gateway.listen + ": " + server.status().message());
  }
  impl->server = std::move(*server);
  impl->scrape = ScrapeRegistration::Start(client, client->runtime().node_name(),
                                           MetricsAddressFor(http.host, impl->server->port()), config.failure_timeout);
  return std::unique_ptr<Gateway>(new Gateway(std::move(impl)));
}

Gateway::~Gateway() { Stop(); }

uint16_t Gateway::port() const { return impl_->server->port(); }

std::string Gateway::url() const {
  const std::string& host = impl_->host;
  const bool v6 = host.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port());
}

void Gateway::Stop() {
  if (impl_->stopping.exchange(true)) return;
  if (impl_->scrape) impl_->scrape->Stop();
  impl_->server->Stop();
  impl_->pool.join();
  caf::anon_send_exit(impl_->session, caf::exit_reason::user_shutdown);
}

GatewayStats Gateway::stats() const {
  GatewayStats s;
  s.requests = impl_->requests.load();
  s.admitted = impl_->admitted.load();
  s.refused = impl_->refused.load();
  s.completed = impl_->completed.load();
  s.failed = impl_->failed.load();
  s.cancelled = impl_->cancelled.load();
  s.in_flight = impl_->in_flight.load();
  s.head_retries = impl_->head_retries.load();
  s.retried_requests = impl_->retried_requests.load();
  return s;
}

}  // namespace troupe::gateway
