// The serving replica with the test backend, in one actor system (label caf): usage and
// responses, streams in order ending with [DONE], drain (finishes in-flight work, refuses new,
// times out), max ongoing requests, cancel, deadlines, the health probe through the request path,
// and load reports. Waits are bounded and on named conditions; a stuck backend is the test
// model's stall_after_requests, not a long sleep.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <caf/all.hpp>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include "actors/serving/messages.h"
#include "actors/serving/replica.h"
#include "actors/serving/test_model.h"
#include "runtime/error.h"

namespace troupe::serving {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

constexpr auto kLimit = 10s;  // every bounded wait; none comes near it when things work

// What the replica sends to its owner, its autoscaler and stream_to (one collector plays all).
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<ResponseChunk> chunks;
  std::vector<LoadReport> loads;
  std::vector<ReplicaStateChanged> states;

  // Waits until `done()` holds (under the lock), at most kLimit.
  bool WaitFor(const std::function<bool()>& done) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, kLimit, done);
  }
  bool SawState(const std::string& name, ReplicaState state) {
    for (const auto& s : states) {
      if (s.name == name && s.state == state) return true;
    }
    return false;
  }
  // The chunks of request `id` so far, concatenated; `count` gets how many.
  std::string Stream(uint64_t id, size_t* count) {
    std::string out;
    *count = 0;
    for (const auto& c : chunks) {
      if (c.request_id != id) continue;
      EXPECT_EQ(c.index, *count) << "chunks of request " << id << " out of order";
      ++*count;
      out += c.data;
    }
    return out;
  }
};

caf::behavior Collector(caf::event_based_actor*, std::shared_ptr<Inbox> inbox) {
  auto keep = [inbox](auto add) {
    std::lock_guard<std::mutex> lock(inbox->mu);
    add(*inbox);
    inbox->cv.notify_all();
  };
  return {
      [keep](ResponseChunk& c) { keep([&](Inbox& in) { in.chunks.push_back(std::move(c)); }); },
      [keep](LoadReport& r) { keep([&](Inbox& in) { in.loads.push_back(std::move(r)); }); },
      [keep](ReplicaStateChanged& s) { keep([&](Inbox& in) { in.states.push_back(std::move(s)); }); },
  };
}

InferenceRequest Completion(uint64_t id, const std::string& body) {
  InferenceRequest req;
  req.id = id;
  req.deployment = "d";
  req.path = kCompletionPath;
  req.body = body;
  return req;
}

class ReplicaTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& r : replicas_) caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(collector_, caf::exit_reason::kill);
  }

  runtime::ActorRef Ref(const caf::actor& a) { return runtime::ActorRef(a, 1, a.id()); }

  // Spawns a replica whose owner (and stream_to, autoscaler if asked) is the collector, and waits
  // until it is ready.
  caf::actor Start(ReplicaConfig config) {
    config.deployment = "d";
    config.owner = Ref(collector_);
    const std::string name = config.name;
    caf::actor replica = SpawnServingReplica(system_, std::move(config));
    replicas_.push_back(replica);
    EXPECT_TRUE(inbox_->WaitFor([&] { return inbox_->SawState(name, ReplicaState::kReady); }))
        << name << " never became ready";
    return replica;
  }

  // The reply to `req` (sent now), or its error.
  StatusOr<InferenceResponse> Call(const caf::actor& replica, InferenceRequest req) {
    StatusOr<InferenceResponse> out = DeadlineExceededError("no reply");
    self_->request(replica, kLimit, std::move(req))
        .receive([&](InferenceResponse& r) { out = std::move(r); },
                 [&](caf::error& e) { out = runtime::ToStatus(e); });
    return out;
  }

  ReplicaStatus Query(const caf::actor& replica) {
    ReplicaStatus out;
    self_->request(replica, kLimit, ReplicaQuery{})
        .receive([&](ReplicaStatus& s) { out = s; }, [&](caf::error& e) { ADD_FAILURE() << runtime::ErrorText(e); });
    return out;
  }

  // Polls until the replica holds `n` requests (each poll is a round trip; bounded).
  bool AwaitOngoing(const caf::actor& replica, uint32_t n) {
    const auto end = std::chrono::steady_clock::now() + kLimit;
    while (std::chrono::steady_clock::now() < end) {
      if (Query(replica).ongoing == n) return true;
    }
    return false;
  }

  caf::actor_system_config config_;
  caf::actor_system system_{config_};
  caf::scoped_actor self_{system_};
  std::shared_ptr<Inbox> inbox_ = std::make_shared<Inbox>();
  caf::actor collector_ = system_.spawn(Collector, inbox_);
  std::vector<caf::actor> replicas_;
};

TEST_F(ReplicaTest, ServesARequestWithItsUsageAndTheModelsWords) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.model.first_token_latency = 2ms;
  config.model.tokens_per_second = 2000;
  caf::actor replica = Start(config);
  const std::string body = R"({"model":"m","prompt":"one two three","max_tokens":5})";
  auto reply = Call(replica, Completion(1, body));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->request_id, 1u);
  EXPECT_EQ(reply->http_status, 200u);
  EXPECT_EQ(reply->prompt_tokens, 3u);
  EXPECT_EQ(reply->completion_tokens, 5u);
  EXPECT_GE(reply->first_token_us, 2000) << "not before the first-token latency";
  EXPECT_EQ(reply->replica, "d/v1/replica-0");
  Json j = Json::parse(reply->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["usage"]["total_tokens"], 8);
  auto parsed = ParseTestRequest(kCompletionPath, body, config.model);
  ASSERT_TRUE(parsed.ok());
  std::string text;
  for (const auto& t : CompletionTokens(*parsed, config.model.seed)) text += t;
  EXPECT_EQ(j["choices"][0]["text"], text);
  EXPECT_EQ(Query(replica).completed, 1u);

  auto bad = Call(replica, Completion(2, R"({"prompt":"x","max_tokens":"many"})"));
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("max_tokens"), std::string::npos) << bad.status();
}

TEST_F(ReplicaTest, AStreamsChunksArriveInOrderAndEndWithDone) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.model.tokens_per_second = 2000;
  caf::actor replica = Start(config);
  InferenceRequest req;
  req.id = 7;
  req.path = kChatPath;
  req.body = R"({"messages":[{"role":"user","content":"hello"}],"max_tokens":20,"stream":true,
                 "stream_options":{"include_usage":true}})";
  req.stream = true;
  req.stream_to = Ref(collector_);
  auto reply = Call(replica, req);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->body.empty()) << "the body went as chunks";
  EXPECT_EQ(reply->completion_tokens, 20u);
  EXPECT_EQ(reply->prompt_tokens, 1u);
  const std::string done = "data: [DONE]\n\n";
  ASSERT_TRUE(inbox_->WaitFor([&] {
    size_t n = 0;
    std::string s = inbox_->Stream(7, &n);
    return s.size() >= done.size() && s.compare(s.size() - done.size(), done.size(), done) == 0;
  })) << "no [DONE]";
  size_t chunks = 0;
  std::string stream;
  {
    std::lock_guard<std::mutex> lock(inbox_->mu);
    stream = inbox_->Stream(7, &chunks);
  }
  EXPECT_GT(chunks, 1u) << "paced tokens come in several chunks";
  std::string content;
  int events = 0;
  for (size_t pos = 0; pos < stream.size();) {
    size_t end = stream.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    std::string data = stream.substr(pos + 6, end - pos - 6);
    pos = end + 2;
    if (data == "[DONE]") {
      EXPECT_EQ(pos, stream.size()) << "[DONE] is last";
      continue;
    }
    Json e = Json::parse(data);
    ++events;
    if (!e["choices"].empty() && e["choices"][0]["delta"].contains("content")) {
      content += e["choices"][0]["delta"]["content"].get<std::string>();
    }
    if (e["choices"].empty()) {
      EXPECT_EQ(e["usage"]["completion_tokens"], 20);
    }
  }
  EXPECT_EQ(events, 22) << "20 tokens, the finish chunk, the usage chunk";
  EXPECT_FALSE(content.empty());
}

TEST_F(ReplicaTest, DrainFinishesInFlightWorkRefusesNewWorkThenStops) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  // Every request (the start probe too) takes 1 s to its first token: long enough to drain
  // around one, and far more than the few round trips between its start and the refusal.
  config.model.first_token_latency = 1s;
  caf::actor replica = Start(config);
  auto in_flight = self_->request(replica, kLimit, Completion(1, R"({"prompt":"a b","max_tokens":2})"));
  ASSERT_TRUE(AwaitOngoing(replica, 1));
  auto drained = self_->request(replica, kLimit, Drain{});
  ASSERT_TRUE(inbox_->WaitFor([&] { return inbox_->SawState("d/v1/replica-0", ReplicaState::kDraining); }));
  auto refused = Call(replica, Completion(2, R"({"prompt":"x"})"));
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("draining; the request did not start"), std::string::npos)
      << refused.status();
  in_flight.receive([&](InferenceResponse& r) { EXPECT_EQ(r.completion_tokens, 2u); },
                    [&](caf::error& e) { ADD_FAILURE() << "the in-flight request failed: " << runtime::ErrorText(e); });
  drained.receive(
      [&](DrainReply& r) {
        EXPECT_EQ(r.finished, 1u);
        EXPECT_EQ(r.abandoned, 0u);
      },
      [&](caf::error& e) { ADD_FAILURE() << runtime::ErrorText(e); });
  EXPECT_TRUE(inbox_->WaitFor([&] { return inbox_->SawState("d/v1/replica-0", ReplicaState::kStopped); }));
}

TEST_F(ReplicaTest, PastTheDrainTimeoutWhatRemainsFailsUnavailableAndTheReplicaStops) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.stall_after_requests = 1;  // the start probe passes, then the backend is stuck
  caf::actor replica = Start(config);
  auto stuck = self_->request(replica, kLimit, Completion(1, R"({"prompt":"x"})"));
  ASSERT_TRUE(AwaitOngoing(replica, 1));
  self_->monitor(replica);
  auto drained = self_->request(replica, kLimit, Drain{100});
  stuck.receive([&](InferenceResponse&) { ADD_FAILURE() << "a stuck request answered"; },
                [&](caf::error& e) {
                  Status s = runtime::ToStatus(e);
                  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
                  EXPECT_NE(s.message().find("drain timeout (100 ms)"), std::string::npos) << s;
                });
  drained.receive(
      [&](DrainReply& r) {
        EXPECT_EQ(r.finished, 0u);
        EXPECT_EQ(r.abandoned, 1u);
      },
      [&](caf::error& e) { ADD_FAILURE() << runtime::ErrorText(e); });
  bool down = false;
  self_->receive([&](caf::down_msg& m) { down = m.source == replica.address(); },
                 caf::after(kLimit) >> [] {});
  EXPECT_TRUE(down) << "the replica did not exit";
}

TEST_F(ReplicaTest, BeyondMaxOngoingRequestsARequestIsRefusedBeforeItStarts) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.max_ongoing_requests = 2;
  config.stall_after_requests = 1;
  caf::actor replica = Start(config);
  auto a = self_->request(replica, kLimit, Completion(1, R"({"prompt":"x"})"));
  auto b = self_->request(replica, kLimit, Completion(2, R"({"prompt":"x"})"));
  auto c = Call(replica, Completion(3, R"({"prompt":"x"})"));
  EXPECT_EQ(c.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("replica full; not started"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("max_ongoing_requests 2"), std::string::npos) << c.status();
  EXPECT_EQ(Query(replica).ongoing, 2u);
  // Room again once one ends (cancelled here).
  self_->send(replica, CancelRequest{1});
  a.receive([](InferenceResponse&) { ADD_FAILURE(); },
            [](caf::error& e) { EXPECT_EQ(runtime::ToStatus(e).code(), StatusCode::kCancelled); });
  auto d = self_->request(replica, kLimit, Completion(4, R"({"prompt":"x"})"));
  EXPECT_EQ(Query(replica).ongoing, 2u) << "the fourth request took the freed place";
  (void)b;
  (void)d;
}

TEST_F(ReplicaTest, ACancelledStreamStopsProducingTokens) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.model.tokens_per_second = 200;  // 1000 tokens: 5 s, cancelled long before
  caf::actor replica = Start(config);
  InferenceRequest req = Completion(5, R"({"prompt":"x","max_tokens":1000,"stream":true})");
  req.stream = true;
  req.stream_to = Ref(collector_);
  auto streaming = self_->request(replica, kLimit, req);
  ASSERT_TRUE(inbox_->WaitFor([&] {
    size_t n = 0;
    inbox_->Stream(5, &n);
    return n >= 2;
  }));
  // A cancel from another sender names another request (ids are per sender): nothing stops.
  caf::scoped_actor other{system_};
  other->send(replica, CancelRequest{5});
  other->request(replica, kLimit, ReplicaQuery{})  // after the cancel: one sender's messages keep their order
      .receive([](ReplicaStatus& s) { EXPECT_EQ(s.ongoing, 1u); }, [](caf::error&) { ADD_FAILURE(); });
  self_->send(replica, CancelRequest{5});
  streaming.receive([](InferenceResponse&) { ADD_FAILURE() << "answered despite the cancel"; },
                    [](caf::error& e) {
                      Status s = runtime::ToStatus(e);
                      EXPECT_EQ(s.code(), StatusCode::kCancelled) << s;
                      EXPECT_NE(s.message().find("cancelled"), std::string::npos) << s;
                    });
  size_t after_cancel = 0;
  {
    std::lock_guard<std::mutex> lock(inbox_->mu);
    inbox_->Stream(5, &after_cancel);
  }
  EXPECT_EQ(Query(replica).ongoing, 0u);
  // Another stream of 5 tokens spans several token periods (5 ms each): request 5 would have
  // sent more chunks by then had it gone on.
  InferenceRequest next = Completion(6, R"({"prompt":"x","max_tokens":5,"stream":true})");
  next.stream = true;
  next.stream_to = Ref(collector_);
  ASSERT_TRUE(Call(replica, next).ok());
  std::lock_guard<std::mutex> lock(inbox_->mu);
  size_t now = 0;
  EXPECT_EQ(inbox_->Stream(5, &now).find("[DONE]"), std::string::npos);
  EXPECT_EQ(now, after_cancel) << "chunks after the cancel";
}

TEST_F(ReplicaTest, ADeadlineStopsTheRequest) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.stall_after_requests = 1;
  SteadyClock clock;
  caf::actor replica = Start(config);
  InferenceRequest late = Completion(1, R"({"prompt":"x"})");
  late.deadline_unix_ms = clock.UnixMs() - 5;
  auto refused = Call(replica, late);
  EXPECT_EQ(refused.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(refused.status().message().find("did not start"), std::string::npos) << refused.status();

  InferenceRequest soon = Completion(2, R"({"prompt":"x"})");
  soon.deadline_unix_ms = clock.UnixMs() + 100;
  auto reply = Call(replica, soon);
  EXPECT_EQ(reply.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(reply.status().message().find("passed its deadline"), std::string::npos) << reply.status();
  EXPECT_GE(clock.UnixMs(), soon.deadline_unix_ms) << "not before the deadline";
  EXPECT_EQ(Query(replica).ongoing, 0u) << "the work stopped";
}

TEST_F(ReplicaTest, TheHealthProbeGoesThroughTheRequestPathSoAStuckBackendFailsIt) {
  ReplicaConfig healthy;
  healthy.name = "d/v1/replica-0";
  caf::actor good = Start(healthy);
  self_->request(good, kLimit, HealthProbe{1000})
      .receive(
          [&](HealthProbeReply& r) {
            EXPECT_EQ(r.replica, "d/v1/replica-0");
            EXPECT_EQ(r.state, ReplicaState::kReady);
            EXPECT_GE(r.latency_us, 0);
          },
          [&](caf::error& e) { ADD_FAILURE() << runtime::ErrorText(e); });

  ReplicaConfig stuck = healthy;
  stuck.name = "d/v1/replica-1";
  stuck.stall_after_requests = 1;
  caf::actor bad = Start(stuck);
  EXPECT_EQ(Query(bad).state, ReplicaState::kReady) << "a plain ping still passes";
  self_->request(bad, kLimit, HealthProbe{100})
      .receive([&](HealthProbeReply&) { ADD_FAILURE() << "a stuck backend passed the probe"; },
               [&](caf::error& e) {
                 Status s = runtime::ToStatus(e);
                 EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s;
                 EXPECT_NE(s.message().find("request path is stuck"), std::string::npos) << s;
               });
  EXPECT_EQ(Query(bad).ongoing, 0u) << "probes are not requests";
}

TEST_F(ReplicaTest, AStartingReplicaRefusesAndAStuckStartStopsIt) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.model.first_token_latency = 5s;
  config.start_timeout = 100ms;
  caf::actor replica = SpawnServingReplica(system_, [&] {
    ReplicaConfig c = config;
    c.owner = Ref(collector_);
    return c;
  }());
  replicas_.push_back(replica);
  auto refused = Call(replica, Completion(1, R"({"prompt":"x"})"));
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("starting"), std::string::npos) << refused.status();
  ASSERT_TRUE(inbox_->WaitFor([&] { return inbox_->SawState("d/v1/replica-0", ReplicaState::kStopped); }));
  std::lock_guard<std::mutex> lock(inbox_->mu);
  EXPECT_NE(inbox_->states.back().reason.find("first health probe failed"), std::string::npos)
      << inbox_->states.back().reason;
}

TEST_F(ReplicaTest, LoadReportsCarryTheOngoingRequests) {
  ReplicaConfig config;
  config.name = "d/v1/replica-0";
  config.stall_after_requests = 1;
  config.autoscaler = Ref(collector_);
  caf::actor replica = Start(config);
  auto stuck = self_->request(replica, kLimit, Completion(1, R"({"prompt":"x"})"));
  ASSERT_TRUE(inbox_->WaitFor([&] {
    for (const auto& l : inbox_->loads) {
      if (l.ongoing == 1) return true;
    }
    return false;
  })) << "no report of the request in flight";
  std::lock_guard<std::mutex> lock(inbox_->mu);
  EXPECT_EQ(inbox_->loads.back().source, "d/v1/replica-0");
  EXPECT_EQ(inbox_->loads.back().deployment, "d");
  (void)stuck;
}

// The test backend's knobs of the spec (startup_delay, fail_every, crash_after) take effect on
// the replica: it is starting for the delay, fails every n-th request with Internal, and exits
// with an error when its n-th request arrives.
TEST_F(ReplicaTest, StartupDelayKeepsTheReplicaStartingThatLong) {
  ReplicaConfig config;
  config.name = "d/v1/slow";
  config.startup_delay = 300ms;
  const auto spawned = std::chrono::steady_clock::now();
  caf::actor replica = SpawnServingReplica(system_, [&] {
    ReplicaConfig c = config;
    c.deployment = "d";
    c.owner = Ref(collector_);
    return c;
  }());
  replicas_.push_back(replica);
  auto early = Call(replica, Completion(1, R"({"prompt": "hi", "max_tokens": 1})"));
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition) << early.status();
  EXPECT_NE(early.status().message().find("is starting"), std::string::npos) << early.status();
  ASSERT_TRUE(inbox_->WaitFor([&] { return inbox_->SawState(config.name, ReplicaState::kReady); }));
  const auto took = std::chrono::steady_clock::now() - spawned;
  EXPECT_GE(took, 300ms) << "ready before its startup_delay";
  EXPECT_TRUE(Call(replica, Completion(2, R"({"prompt": "hi", "max_tokens": 1})")).ok());
}

TEST_F(ReplicaTest, FailEveryFailsEachNthRequestWithInternal) {
  ReplicaConfig config;
  config.name = "d/v1/flaky";
  config.fail_every_requests = 3;
  caf::actor replica = Start(config);
  std::vector<StatusCode> codes;
  for (uint64_t id = 1; id <= 6; ++id) {
    codes.push_back(Call(replica, Completion(id, R"({"prompt": "hi", "max_tokens": 1})")).status().code());
  }
  EXPECT_EQ(codes, (std::vector<StatusCode>{StatusCode::kOk, StatusCode::kOk, StatusCode::kInternal, StatusCode::kOk,
                                            StatusCode::kOk, StatusCode::kInternal}));
  // Health probes never fail: the replica stays ready.
  EXPECT_EQ(Query(replica).state, ReplicaState::kReady);
}

TEST_F(ReplicaTest, CrashAfterStopsTheReplicaWithAnErrorAtItsNthRequest) {
  ReplicaConfig config;
  config.name = "d/v1/crashy";
  config.crash_after_requests = 2;
  caf::actor replica = Start(config);
  self_->monitor(replica);
  EXPECT_TRUE(Call(replica, Completion(1, R"({"prompt": "hi", "max_tokens": 1})")).ok());
  auto crashed = Call(replica, Completion(2, R"({"prompt": "hi", "max_tokens": 1})"));
  ASSERT_FALSE(crashed.ok());
  EXPECT_EQ(crashed.status().code(), StatusCode::kUnavailable) << crashed.status();
  bool down = false;
  self_->receive([&](caf::down_msg& msg) {
    down = true;
    EXPECT_TRUE(static_cast<bool>(msg.reason)) << "an error exit, so its deployment replaces it";
    EXPECT_NE(runtime::ErrorText(msg.reason).find("crash_after 2"), std::string::npos) << runtime::ErrorText(msg.reason);
  }, caf::after(kLimit) >> [] {});
  EXPECT_TRUE(down) << "the replica did not exit";
  EXPECT_TRUE(inbox_->WaitFor([&] { return inbox_->SawState(config.name, ReplicaState::kStopped); }));
}

}  // namespace
}  // namespace troupe::serving
