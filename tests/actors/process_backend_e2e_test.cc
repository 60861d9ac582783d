// End to end (label e2e): examples/serving/server.py, serving a checkpoint that
// examples/training/train.py writes, behind a replica with the process backend: a completion with
// its usage (tokens are characters), and a chat stream of whole events ending with [DONE].
// Skipped, with the reason, where /usr/bin/python3 cannot import torch.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <filesystem>

#include "actors/serving/test_model.h"
#include "common/child_process.h"
#include "tests/actors/process_replica_harness.h"

namespace troupe::serving {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr auto kLimit = 120s;  // torch imports slowly on a loaded machine
const char* const kPython = "/usr/bin/python3";

// Runs argv to its end; its output, or why it failed.
StatusOr<std::string> RunToEnd(const std::vector<std::string>& argv) {
  ASSIGN_OR_RETURN(auto child, ChildProcess::Spawn(argv, {}, /*merge_stderr=*/true));
  std::string output;
  while (true) {
    auto line = child->ReadLine(kLimit);
    if (!line.ok()) break;
    output += *line + "\n";
  }
  ASSIGN_OR_RETURN(int code, child->Wait(kLimit));
  if (!WIFEXITED(code) || WEXITSTATUS(code) != 0) return InternalError(argv[1] + " failed:\n" + output);
  return output;
}

TEST(ProcessBackendE2E, ServesATrainedCheckpointOfTheTrainingExample) {
  if (!RunToEnd({kPython, "-c", "import torch"}).ok()) {
    GTEST_SKIP() << kPython << " cannot import torch, so this end-to-end test is skipped (it runs in the release "
                 << "pass of `scripts/bootstrap.sh test`, which installs Debian's python3-torch)";
  }
  const fs::path dir = fs::temp_directory_path() / ("troupe-serving-e2e-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string source = TROUPE_SOURCE_DIR;
  auto trained = RunToEnd({kPython, source + "/examples/training/train.py", "--steps", "10", "--checkpoint-every", "10",
                      "--print-every", "10", "--checkpoint-file", (dir / "ckpt.pt").string()});
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();

  harness::ProcessReplicaHarness replica(kLimit);
  ProcessBackendConfig config;
  config.command = {kPython, source + "/examples/serving/server.py", "--checkpoint", (dir / "ckpt.pt").string()};
  config.health_poll_interval = 50ms;
  config.ready_timeout = kLimit;
  config.log_path = (dir / "server.log").string();
  replica.Spawn(config);
  ASSERT_TRUE(replica.AwaitState(ReplicaState::kReady)) << "server.py never became ready; its log: "
                                                        << config.log_path;

  auto r = replica.Call(replica.Request(1, kCompletionPath, R"({"prompt":"This License","max_tokens":24})", false));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->http_status, 200u) << r->body;
  EXPECT_EQ(r->prompt_tokens, 12u);
  EXPECT_EQ(r->completion_tokens, 24u);
  const Json body = Json::parse(r->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"].get<std::string>().size(), 24u);

  auto s = replica.Call(replica.Request(
      2, kChatPath,
      R"({"messages":[{"role":"user","content":"GNU"}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}})",
      true));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->completion_tokens, 8u);
  EXPECT_EQ(s->prompt_tokens, 3u);
  std::string all;
  size_t chunks = 0;
  ASSERT_TRUE(replica.mail()->Await(kLimit, [&] {
    all = replica.mail()->Joined(2, &chunks);
    return all.size() >= 14 && all.compare(all.size() - 14, 14, "data: [DONE]\n\n") == 0;
  })) << all;
  size_t content_events = 0;
  for (size_t at = all.find("\"content\""); at != std::string::npos; at = all.find("\"content\"", at + 1)) {
    ++content_events;
  }
  EXPECT_EQ(content_events, 8u) << all;
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace troupe::serving
