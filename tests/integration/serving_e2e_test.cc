// End to end (label e2e): examples/serving/server.py (PyTorch, the training example's character
// model with fresh seeded weights) as the process backend of a deployment on a real local
// cluster (`troupe up`, two CPU nodes): started by a node agent, answering through the router,
// gone after the delete (docs/serving.md, "The process backend on the cluster"). Skipped, with
// the reason, where /usr/bin/python3 cannot import torch.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "actors/serving/deployment_spec.h"
#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr const char* kPython = "/usr/bin/python3";

bool PythonImportsTorch() {
  auto child = ChildProcess::Spawn({kPython, "-c", "import torch"}, {}, /*merge_stderr=*/true);
  if (!child.ok()) return false;
  while ((*child)->ReadLine(120s).ok()) {
  }
  auto code = (*child)->Wait(120s);
  return code.ok() && WIFEXITED(*code) && WEXITSTATUS(*code) == 0;
}

TEST(ServingE2E, TheExampleServerRunsAsAProcessBackendOnTheCluster) {
  if (!PythonImportsTorch()) {
    GTEST_SKIP() << kPython << " cannot import torch, so this end-to-end test is skipped (it runs in the release "
                 << "pass of `scripts/bootstrap.sh test`, which installs Debian's python3-torch)";
  }
  (void)InitLogging("warn");
  auto cluster = LocalCluster::Start("troupe-serving-e2e", "servinge2e", TwoNodeClusterYaml("servinge2e"));
  ASSERT_NE(cluster, nullptr);
  cluster::Client* client = cluster->client.get();
  auto spec = serving::ParseDeploymentSpec(
      std::string("name: chars\nversions:\n  - name: v1\n    backend:\n      process:\n        command: [") + kPython +
          ", " + TROUPE_SOURCE_DIR + "/examples/serving/server.py, --seed, '7']\n        ready_timeout: 120s\n"
          "replicas: {min: 1, max: 1, initial: 1}\n",
      "test spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(client->Deploy(*spec, 10s).ok());
  auto events = [&] {
    auto body = client->DeploymentCommand("events", "chars", "", 5s);
    return body.ok() ? *body : body.status().ToString();
  };
  Json st;
  const auto deadline = Clock::now() + 150s;  // torch imports slowly on a loaded machine
  while (Clock::now() < deadline) {
    auto body = client->DeploymentCommand("show", "chars", "", 5s);
    if (body.ok()) st = Json::parse(*body).at("status");
    if (st.value("state", "") == "running" && st.value("replicas_by_state", Json::object()).value("ready", 0) == 1) {
      break;
    }
  }
  ASSERT_EQ(st.value("state", ""), "running") << st.dump() << "\n" << events();
  auto completion = client->Infer("chars", "/v1/completions", R"({"prompt": "To be", "max_tokens": 5})", 60s);
  ASSERT_TRUE(completion.ok()) << completion.status();
  EXPECT_EQ(completion->completion_tokens, 5u) << completion->body;
  EXPECT_NE(completion->body.find("text_completion"), std::string::npos) << completion->body;
  auto chat = client->Infer("chars", "/v1/chat/completions",
                            R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})", 60s);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_NE(chat->body.find("chat.completion"), std::string::npos) << chat->body;
  EXPECT_TRUE(client->DeploymentCommand("delete", "chars", "", 5s).ok());
}

}  // namespace
}  // namespace troupe
