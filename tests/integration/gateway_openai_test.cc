// The official OpenAI Node client (npm `openai`, tests/node, installed by scripts/bootstrap.sh)
// against the gateway of a real local cluster: a completion, a streamed chat completion, the
// models list, an invalid key (401) and a limit hit (429 with Retry-After, honoured by the
// client's retry). Label e2e: it runs once, in the release pass.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
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
using Json = nlohmann::json;

TEST(GatewayOpenAiClient, TheOfficialNodeClientCompletesStreamsListsAndIsRefusedAndLimited) {
  (void)InitLogging("warn");
  const std::string script = TROUPE_SOURCE_DIR "/tests/node/openai_client.mjs";
  ASSERT_TRUE(std::ifstream(TROUPE_SOURCE_DIR "/tests/node/node_modules/openai/package.json").good())
      << "the npm package openai is not installed in tests/node: scripts/bootstrap.sh test installs it "
         "(npm ci in tests/node)";
  auto cluster = LocalCluster::Start("troupe-openai", "oa", TwoNodeClusterYaml("oa") + "gateway:\n");
  ASSERT_NE(cluster, nullptr);
  auto* client = cluster->client.get();
  auto spec = serving::ParseDeploymentSpec(
      "name: echo\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 500, first_token_latency: 2ms}}\n"
      "replicas: {min: 1, max: 1, initial: 1}\n",
      "spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(client->Deploy(*spec, 10s).ok());
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  bool ready = false;
  while (!ready && std::chrono::steady_clock::now() < deadline) {
    auto shown = client->DeploymentCommand("show", "echo", "", 5s);
    ready = shown.ok() && Json::parse(*shown)["status"]["replicas_by_state"].value("ready", 0) == 1;
  }
  ASSERT_TRUE(ready) << "no ready replica within 30 s";
  ASSERT_TRUE(client->ApiCommand("tenant.create", "default", "{}", 5s).ok());
  auto key = client->ApiCommand("key.create", "", R"({"tenant": "default"})", 5s);
  auto limited =
      client->ApiCommand("key.create", "", R"({"tenant": "default", "limits": {"requests_per_minute": 30}})", 5s);
  ASSERT_TRUE(key.ok() && limited.ok());
  std::string url;
  std::getline(std::ifstream(cluster->dir + "/head/gateway.url"), url);
  ASSERT_FALSE(url.empty());

  SpawnOptions options;
  options.merge_stderr = true;
  auto node = ChildProcess::Spawn({"node", script, url, Json::parse(*key)["key"], Json::parse(*limited)["key"], "echo"},
                                  options);
  ASSERT_TRUE(node.ok()) << node.status() << " (is Node.js installed? scripts/bootstrap.sh installs nodejs)";
  std::string output;
  for (;;) {
    auto line = (*node)->ReadLine(60s);
    if (!line.ok()) break;
    output += *line + "\n";
  }
  auto status = (*node)->Wait(60s);
  ASSERT_TRUE(status.ok()) << status.status() << "\n" << output;
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "the OpenAI client's checks failed:\n" << output;
  std::printf("%s", output.c_str());
}

}  // namespace
}  // namespace troupe
