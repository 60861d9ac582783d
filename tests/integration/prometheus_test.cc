// Debian's real Prometheus scrapes a real local cluster (head, two nodes, the API gateway) through
// the head's file-SD list, and every panel query of every shipped Grafana dashboard returns data.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "tests/support/http_client.h"
#include "tests/support/http_get.h"
#include "tests/support/troupe_processes.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr const char* kPrometheus = "/usr/bin/prometheus";

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Every panel target's query of every shipped dashboard, as Grafana sends it (JSON unescaped).
std::vector<std::string> DashboardQueries() {
  std::vector<std::string> out;
  for (const auto& entry : std::filesystem::directory_iterator(TROUPE_SOURCE_DIR "/configs/grafana/dashboards")) {
    std::ifstream in(entry.path());
    auto dashboard = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(dashboard.is_discarded()) << entry.path() << " is not JSON";
    if (dashboard.is_discarded()) continue;
    for (const auto& panel : dashboard.value("panels", nlohmann::json::array())) {
      for (const auto& target : panel.value("targets", nlohmann::json::array())) {
        if (target.contains("expr")) out.push_back(target["expr"].get<std::string>());
      }
    }
  }
  return out;
}

TEST(Prometheus, EveryDashboardQueryReturnsDataFromARealCluster) {
  if (access(kPrometheus, X_OK) != 0) {
    GTEST_SKIP() << kPrometheus << " is not installed. It runs where Debian's prometheus package is: in CI and "
                    "after `bash scripts/bootstrap.sh test`, which install it (or `apt-get install prometheus`)";
  }
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-prom-XXXXXX").string();
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  const std::string dir = templ;
  const std::string config = dir + "/cluster.yaml";
  std::ofstream(config) << "cluster:\n  name: prom\n  token: prometheus-test-token\n  log_level: warn\n"
                           "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                           "nodes:\n  - name: a\n    gpus:\n      simulated:\n        - memory: 16GiB\n"
                           "    slice_memory: 4GiB\n  - name: b\n"
                           "gateway:\n  listen: 127.0.0.1:0\n";
  auto up = testing::StartUntilReady({TROUPE_BIN, "up", "-c", config}, "cluster prom up");
  ASSERT_TRUE(up) << "the cluster did not come up";
  // A deployment with an autoscaler, and requests through its router: the serving dashboard's
  // series exist.
  std::ofstream(dir + "/chat.yaml") << "name: chat\nversions:\n  - name: v1\n    backend: {test: {}}\n"
                                       "replicas: {min: 1, max: 2}\n";
  auto deploy = ChildProcess::Spawn({TROUPE_BIN, "serve", "deploy", "-c", config, dir + "/chat.yaml", "--wait"});
  ASSERT_TRUE(deploy.ok()) << deploy.status();
  auto deployed = (*deploy)->Wait(60s);
  ASSERT_TRUE(deployed.ok() && WIFEXITED(*deployed) && WEXITSTATUS(*deployed) == 0) << "troupe serve deploy failed";
  for (int i = 0; i < 3; ++i) {
    auto request = ChildProcess::Spawn({TROUPE_BIN, "serve", "request", "-c", config, "chat", "--path", "/v1/completions", "--body",
                                        R"({"prompt": "hello", "max_tokens": 2})"});
    ASSERT_TRUE(request.ok()) << request.status();
    auto answered = (*request)->Wait(30s);
    ASSERT_TRUE(answered.ok() && WIFEXITED(*answered) && WEXITSTATUS(*answered) == 0) << "troupe serve request failed";
  }
  // Requests through the gateway with a key of 3 requests a minute: whole, streamed and
  // completions answered, then a 429 at the key level and a 401 for a made-up key: the gateway
  // dashboard's series (troupe_gateway_* on the gateway, troupe_api_* on the head) exist.
  auto cli = [&](std::vector<std::string> args) -> std::string {
    args.insert(args.begin(), TROUPE_BIN);
    args.insert(args.end(), {"-c", config});
    auto child = ChildProcess::Spawn(args);
    if (!child.ok()) return "";
    auto line = (*child)->ReadLine(30s);
    auto exited = (*child)->Wait(30s);
    EXPECT_TRUE(exited.ok() && WIFEXITED(*exited) && WEXITSTATUS(*exited) == 0) << args[1] << " failed";
    return line.ok() ? *line : "";
  };
  (void)cli({"tenant", "create", "default"});
  const auto made = nlohmann::json::parse(cli({"key", "create", "--tenant", "default", "--rpm", "3", "--json"}), nullptr,
                                          /*allow_exceptions=*/false);
  ASSERT_TRUE(made.is_object() && made.contains("key")) << made.dump();
  const std::string bearer = "Bearer " + made["key"].get<std::string>();
  std::string url;
  std::getline(std::ifstream(dir + "/head/gateway.url"), url);
  const int gateway = std::atoi(url.substr(url.rfind(':') + 1).c_str());
  auto post = [&](const std::string& path, const std::string& auth, const std::string& body) {
    return testing::HttpCall(gateway, "POST", path, {{"authorization", auth}, {"content-type", "application/json"}}, body)
        .status;
  };
  const std::string chat = R"({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2)";
  EXPECT_EQ(post("/v1/chat/completions", bearer, chat + "}"), 200);
  EXPECT_EQ(post("/v1/chat/completions", bearer, chat + R"(, "stream": true})"), 200);
  EXPECT_EQ(post("/v1/completions", bearer, R"({"model": "chat", "prompt": "hello", "max_tokens": 2})"), 200);
  EXPECT_EQ(post("/v1/chat/completions", bearer, chat + "}"), 429);
  EXPECT_EQ(post("/v1/chat/completions", "Bearer not-a-key", chat + "}"), 401);

  int port = FreePort();
  std::ofstream(dir + "/prometheus.yml") << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                                            "scrape_configs:\n  - job_name: troupe\n    file_sd_configs:\n"
                                            "      - files: ['" << dir << "/head/prometheus-targets.json']\n"
                                            "        refresh_interval: 1s\n";
  auto prometheus = ChildProcess::Spawn({kPrometheus, "--config.file=" + dir + "/prometheus.yml",
                                         "--storage.tsdb.path=" + dir + "/tsdb",
                                         "--web.listen-address=127.0.0.1:" + std::to_string(port), "--log.level=error"});
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();

  // All four processes (head, a, b, the gateway) scraped and up: the gateway through the head's list.
  auto deadline = Clock::now() + 90s;
  std::string up_result;
  while (Clock::now() < deadline) {
    up_result = testing::HttpGet(port, "/api/v1/query?query=" + UrlEncode("sum(up{job=\"troupe\"})"));
    if (up_result.find("\"4\"]") != std::string::npos) break;
  }
  ASSERT_NE(up_result.find("\"4\"]"), std::string::npos) << "Prometheus does not see 4 healthy targets: " << up_result;

  auto queries = DashboardQueries();
  ASSERT_GE(queries.size(), 10u) << "no dashboard queries found";
  for (const auto& q : queries) {
    std::string result;
    while (Clock::now() < deadline + 30s) {
      result = testing::HttpGet(port, "/api/v1/query?query=" + UrlEncode(q));
      if (result.find("\"status\":\"success\"") != std::string::npos && result.find("\"result\":[]") == std::string::npos) {
        break;
      }
    }
    EXPECT_EQ(result.find("\"result\":[]"), std::string::npos) << "no data for panel query: " << q << "\n" << result;
    EXPECT_NE(result.find("\"status\":\"success\""), std::string::npos) << q << "\n" << result;
  }
  (*prometheus)->Signal(SIGTERM);
  (void)(*prometheus)->Wait(30s);
  up->Signal(SIGTERM);
  (void)up->Wait(30s);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace troupe
