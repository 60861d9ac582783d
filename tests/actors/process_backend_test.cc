// The replica with the process backend against tests/fakes/fake_openai_server.py (Python standard
// library only: it starts in tens of milliseconds): ready once /health answers 200, a request
// with its usage, an error answer passed on, a stream in order, a cancel, the server killed -9
// mid-request (Unavailable, the replica stops), a server never ready within ready_timeout, a
// command that cannot start. Label caf (an actor system). Every wait is bounded and on a named
// condition.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <thread>

#include "actors/serving/test_model.h"
#include "tests/actors/process_replica_harness.h"

namespace troupe::serving {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr auto kLimit = 20s;  // every bounded wait; none comes near it when things work
const char* const kPython = "/usr/bin/python3";

class ProcessBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("troupe-process-backend-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    harness_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  ProcessBackendConfig Fake(std::vector<std::string> env = {}) {
    ProcessBackendConfig config;
    config.command = {kPython, std::string(TROUPE_SOURCE_DIR) + "/tests/fakes/fake_openai_server.py"};
    env.push_back("FAKE_PID_FILE=" + (dir_ / "pid").string());
    config.env = std::move(env);
    config.health_poll_interval = 20ms;
    config.ready_timeout = kLimit;
    config.log_path = (dir_ / "server.log").string();
    return config;
  }

  // The fake server's pid, once it has written it (bounded wait on the file).
  pid_t ServerPid() {
    const auto end = std::chrono::steady_clock::now() + kLimit;
    while (std::chrono::steady_clock::now() < end) {
      std::ifstream in(dir_ / "pid");
      pid_t pid = 0;
      if (in >> pid && pid > 0) return pid;
      std::this_thread::yield();
    }
    ADD_FAILURE() << "the fake server never wrote its pid";
    return 0;
  }

  // True once no process `pid` exists (reaped), bounded.
  static bool Gone(pid_t pid) {
    const auto end = std::chrono::steady_clock::now() + kLimit;
    while (std::chrono::steady_clock::now() < end) {
      if (kill(pid, 0) != 0 && errno == ESRCH) return true;
      std::this_thread::yield();
    }
    return false;
  }

  fs::path dir_;
  std::unique_ptr<harness::ProcessReplicaHarness> harness_ = std::make_unique<harness::ProcessReplicaHarness>(kLimit);
};

TEST_F(ProcessBackendTest, ReadyAfterHealthThenServesWithUsage) {
  harness_->Spawn(Fake({"FAKE_READY_AFTER=3"}));
  ASSERT_TRUE(harness_->AwaitState(ReplicaState::kReady)) << "never ready";
  auto r = harness_->Call(harness_->Request(1, kCompletionPath, R"({"prompt":"two words","max_tokens":3})", false));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->http_status, 200u);
  EXPECT_EQ(r->prompt_tokens, 2u);
  EXPECT_EQ(r->completion_tokens, 3u);
  EXPECT_EQ(r->replica, "d/v1/replica-0");
  EXPECT_EQ(Json::parse(r->body)["choices"][0]["text"], "t0 t1 t2");
  // The health polls before 200 reached the server: its log says so (its output, line by line).
  std::ifstream log(dir_ / "server.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("fake server listening on port"), std::string::npos) << text;
  EXPECT_NE(text.find("\"GET /health HTTP/1.1\" 503"), std::string::npos) << text;

  // A chat request, and an error answer passed on as it is (status and body).
  auto chat = harness_->Call(
      harness_->Request(2, kChatPath, R"({"messages":[{"role":"user","content":"a b c"}],"max_tokens":2})", false));
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  EXPECT_EQ(Json::parse(chat->body)["choices"][0]["message"]["content"], "t0 t1");
  EXPECT_EQ(chat->prompt_tokens, 3u);
  auto bad = harness_->Call(harness_->Request(3, kCompletionPath, R"({"prompt":"x","max_tokens":"ten"})", false));
  ASSERT_TRUE(bad.ok()) << bad.status().ToString();
  EXPECT_EQ(bad->http_status, 400u);
  EXPECT_NE(bad->body.find("max_tokens: must be an integer"), std::string::npos);

  // The health probe is a GET of the health path, then a one-token completion.
  bool probed = false;
  harness_->self()->request(harness_->replica(), kLimit, HealthProbe{5000})
      .receive([&](HealthProbeReply& reply) { probed = reply.state == ReplicaState::kReady; },
               [&](caf::error& e) { ADD_FAILURE() << runtime::ErrorText(e); });
  EXPECT_TRUE(probed);
}

// A server whose /health answers while its completions hang (a stuck request path): the replica
// is ready (its health polls pass) but a HealthProbe fails, DeadlineExceeded, at its timeout.
TEST_F(ProcessBackendTest, AHealthProbeFailsWhenCompletionsHangWhileTheHealthEndpointAnswers) {
  harness_->Spawn(Fake({"FAKE_HANG_COMPLETIONS=1"}));
  ASSERT_TRUE(harness_->AwaitState(ReplicaState::kReady)) << "never ready";
  Status probed = OkStatus();
  harness_->self()->request(harness_->replica(), kLimit, HealthProbe{300})
      .receive([&](HealthProbeReply&) {}, [&](caf::error& e) { probed = runtime::ToStatus(e); });
  EXPECT_EQ(probed.code(), StatusCode::kDeadlineExceeded) << probed.ToString();
  EXPECT_NE(probed.message().find("the request path is stuck"), std::string::npos) << probed.ToString();
}

TEST_F(ProcessBackendTest, AStreamComesInOrderAsWholeEventsEndingWithDone) {
  harness_->Spawn(Fake());
  ASSERT_TRUE(harness_->AwaitState(ReplicaState::kReady));
  auto r = harness_->Call(harness_->Request(
      7, kChatPath,
      R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}})",
      true));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "");
  EXPECT_EQ(r->prompt_tokens, 1u);
  EXPECT_EQ(r->completion_tokens, 5u);
  EXPECT_GT(r->first_token_us, 0);
  std::string all;
  size_t count = 0;
  ASSERT_TRUE(harness_->mail()->Await(kLimit, [&] {
    all = harness_->mail()->Joined(7, &count);
    return all.size() >= 14 && all.compare(all.size() - 14, 14, "data: [DONE]\n\n") == 0;
  })) << all;
  EXPECT_GE(count, 1u);
  for (const auto& c : harness_->mail()->chunks) {
    ASSERT_GE(c.data.size(), 2u);
    EXPECT_EQ(c.data.compare(c.data.size() - 2, 2, "\n\n"), 0) << "not whole events: " << c.data;
  }
  size_t at = 0;
  for (int i = 0; i < 5; ++i) {
    const size_t next = all.find("\"content\": \"t" + std::to_string(i) + "\"", at);
    ASSERT_NE(next, std::string::npos) << "token " << i << " missing or out of order in " << all;
    at = next;
  }
}

TEST_F(ProcessBackendTest, ACancelClosesTheConnectionAndTheReplicaServesOn) {
  harness_->Spawn(Fake());
  ASSERT_TRUE(harness_->AwaitState(ReplicaState::kReady));
  auto pending = harness_->self()->request(harness_->replica(), kLimit,
                                           harness_->Request(9, kCompletionPath, R"({"prompt":"hang","stream":true})",
                                                             true));
  size_t count = 0;
  ASSERT_TRUE(harness_->mail()->Await(kLimit, [&] { return !harness_->mail()->Joined(9, &count).empty(); }));
  harness_->self()->send(harness_->replica(), CancelRequest{9});
  StatusOr<InferenceResponse> out = InternalError("no reply");
  pending.receive([&](InferenceResponse& r) { out = std::move(r); },
                  [&](caf::error& e) { out = runtime::ToStatus(e); });
  EXPECT_EQ(out.status().code(), StatusCode::kCancelled) << out.status().ToString();
  auto next = harness_->Call(harness_->Request(10, kCompletionPath, R"({"prompt":"x","max_tokens":1})", false));
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(next->completion_tokens, 1u);
}

TEST_F(ProcessBackendTest, TheServerKilledMidRequestFailsItUnavailableAndStopsTheReplica) {
  harness_->Spawn(Fake());
  ASSERT_TRUE(harness_->AwaitState(ReplicaState::kReady));
  const pid_t pid = ServerPid();
  ASSERT_GT(pid, 0);
  auto pending = harness_->self()->request(harness_->replica(), kLimit,
                                           harness_->Request(4, kCompletionPath, R"({"prompt":"hang","stream":true})",
                                                             true));
  size_t count = 0;
  ASSERT_TRUE(harness_->mail()->Await(kLimit, [&] { return !harness_->mail()->Joined(4, &count).empty(); }))
      << "the first event never came";
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  StatusOr<InferenceResponse> out = InternalError("no reply");
  pending.receive([&](InferenceResponse& r) { out = std::move(r); },
                  [&](caf::error& e) { out = runtime::ToStatus(e); });
  EXPECT_EQ(out.status().code(), StatusCode::kUnavailable) << out.status().ToString();
  auto stopped = harness_->AwaitState(ReplicaState::kStopped);
  ASSERT_TRUE(stopped) << "the replica did not stop";
  EXPECT_NE(stopped->reason.find("killed by signal"), std::string::npos) << stopped->reason;
  EXPECT_NE(stopped->reason.find("server.log"), std::string::npos) << stopped->reason;
  EXPECT_TRUE(Gone(pid));
}

TEST_F(ProcessBackendTest, AServerNotReadyWithinTheReadyTimeoutStopsTheReplicaAndIsKilled) {
  ProcessBackendConfig config = Fake({"FAKE_NEVER_READY=1"});
  // Long enough for Python to start on a busy machine (its pid file is written first thing):
  // the server runs, answers 503, and is killed at the timeout.
  config.ready_timeout = 1500ms;
  harness_->Spawn(config);
  const pid_t pid = ServerPid();
  ASSERT_GT(pid, 0);
  auto stopped = harness_->AwaitState(ReplicaState::kStopped);
  ASSERT_TRUE(stopped) << "the replica did not stop";
  EXPECT_FALSE(harness_->mail()->Find(ReplicaState::kReady));
  EXPECT_NE(stopped->reason.find("did not answer GET /health with 200 within the ready timeout (1500 ms; last: "),
            std::string::npos)
      << stopped->reason;
  EXPECT_TRUE(Gone(pid)) << "the server outlived its replica";
}

TEST_F(ProcessBackendTest, ACommandThatCannotStartStopsTheReplica) {
  ProcessBackendConfig config = Fake();
  config.command = {"/nonexistent/troupe-no-such-server"};
  harness_->Spawn(config);
  auto stopped = harness_->AwaitState(ReplicaState::kStopped);
  ASSERT_TRUE(stopped);
  EXPECT_NE(stopped->reason.find("cannot start its server `/nonexistent/troupe-no-such-server`"), std::string::npos)
      << stopped->reason;
}

}  // namespace
}  // namespace troupe::serving
