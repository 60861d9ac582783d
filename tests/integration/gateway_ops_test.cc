// The gateway as operators see it, on a real local cluster (`troupe up` with a `gateway:`
// section, and standalone `troupe gateway` processes): every running gateway is in the head's
// Prometheus file-SD list (<head data_dir>/prometheus-targets.json) with role "gateway", its
// listed address serves troupe_gateway_* metrics, and it leaves the list when it stops (SIGTERM)
// or dies (kill -9), and a gateway is listed again by a head that restarted (docs/metrics.md,
// "Gateways").
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/file_wait.h"
#include "tests/support/gateway_calls.h"
#include "tests/support/http_get.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

using testing::PortOf;
using testing::WaitForFileCondition;
using testing::StartGateway;

// The gateways of the targets file at `path`: their "host:port" targets (empty if unreadable).
std::vector<std::string> GatewayTargets(const std::string& path) {
  std::ifstream in(path);
  const Json list = Json::parse(in, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> out;
  if (!list.is_array()) return out;
  for (const auto& group : list) {
    if (group.value("labels", Json::object()).value("role", "") != "gateway") continue;
    for (const auto& target : group.value("targets", Json::array())) out.push_back(target.get<std::string>());
  }
  return out;
}

bool Listed(const std::string& path, int port) {
  for (const auto& t : GatewayTargets(path)) {
    if (PortOf(t) == port) return true;
  }
  return false;
}

// A cluster of `troupe up` with a head, two nodes and a gateway; the gateway's port via `*port`
// once the head lists it (nullptr, with a failure recorded, otherwise).
std::unique_ptr<LocalCluster> StartWithGatewayListed(const std::string& name, int* port) {
  auto cluster = LocalCluster::Start("troupe-gwops", name, TwoNodeClusterYaml(name) + "gateway:\n  listen: 127.0.0.1:0\n");
  if (cluster == nullptr) return nullptr;
  const std::string head_dir = cluster->dir + "/head";
  std::string url;
  std::getline(std::ifstream(head_dir + "/gateway.url"), url);
  if (url.empty()) {
    ADD_FAILURE() << "troupe up's gateway wrote no " << head_dir << "/gateway.url";
    return nullptr;
  }
  *port = PortOf(url);
  const std::string targets = head_dir + "/prometheus-targets.json";
  if (WaitForFileCondition(head_dir, 30s, [&] { return Listed(targets, *port); }).count() < 0) {
    ADD_FAILURE() << "troupe up's gateway (port " << *port << ") is not in " << targets;
    return nullptr;
  }
  return cluster;
}

TEST(GatewayOps, EveryGatewayIsInTheHeadsScrapeTargetsWhileItRunsAndLeavesWhenItStopsOrDies) {
  (void)InitLogging("warn");
  int up_port = 0;
  auto cluster = StartWithGatewayListed("gwops", &up_port);
  ASSERT_NE(cluster, nullptr);
  const std::string head_dir = cluster->dir + "/head";
  const std::string targets = head_dir + "/prometheus-targets.json";

  // troupe up's gateway is listed, and what is listed serves the gateway's metrics.
  const std::string metrics = testing::HttpGet(up_port, "/metrics");
  EXPECT_NE(metrics.find("troupe_gateway_requests_in_flight"), std::string::npos) << metrics;

  // A standalone gateway: listed while it runs, gone after SIGTERM.
  int port = 0;
  auto stopped = StartGateway(cluster->config, &port);
  ASSERT_NE(stopped, nullptr);
  ASSERT_GE(WaitForFileCondition(head_dir, 30s, [&] { return Listed(targets, port); }).count(), 0)
      << "troupe gateway (port " << port << ") is not in " << targets;
  EXPECT_EQ(GatewayTargets(targets).size(), 2u);
  stopped->Signal(SIGTERM);
  auto exited = stopped->Wait(30s);
  ASSERT_TRUE(exited.ok()) << exited.status();
  const auto left_after_stop = WaitForFileCondition(head_dir, 10s, [&] { return !Listed(targets, port); });
  EXPECT_GE(left_after_stop.count(), 0) << "a stopped gateway (port " << port << ") is still in " << targets;

  // Another one, killed with -9: gone once the head's runtime loses its process (heartbeat
  // timeout 1 s in this cluster).
  auto killed = StartGateway(cluster->config, &port);
  ASSERT_NE(killed, nullptr);
  ASSERT_GE(WaitForFileCondition(head_dir, 30s, [&] { return Listed(targets, port); }).count(), 0)
      << "troupe gateway (port " << port << ") is not in " << targets;
  killed->Signal(SIGKILL);
  (void)killed->Wait(10s);
  const auto left_after_kill = WaitForFileCondition(head_dir, 15s, [&] { return !Listed(targets, port); });
  EXPECT_GE(left_after_kill.count(), 0) << "a gateway killed with -9 (port " << port << ") is still in " << targets;
  std::printf("a stopped gateway left the targets in %lld ms after it exited, a killed one in %lld ms\n",
              static_cast<long long>(left_after_stop.count()), static_cast<long long>(left_after_kill.count()));

  // troupe up's gateway stayed throughout.
  EXPECT_EQ(GatewayTargets(targets), std::vector<std::string>{"127.0.0.1:" + std::to_string(up_port)});
}

// The head keeps no record of gateways (they are listed while their actor lives): a gateway
// registers again with a head that restarted.
TEST(GatewayOps, AGatewayIsListedAgainByAHeadThatRestarted) {
  (void)InitLogging("warn");
  int port = 0;
  auto cluster = StartWithGatewayListed("gwops2", &port);
  ASSERT_NE(cluster, nullptr);
  const std::string head_dir = cluster->dir + "/head";
  const std::string targets = head_dir + "/prometheus-targets.json";
  auto address = [&] {
    std::string a;
    std::getline(std::ifstream(head_dir + "/head.address"), a);
    return a;
  };
  const std::string before = address();
  ASSERT_FALSE(before.empty());
  ASSERT_EQ(kill(cluster->pids.at("head"), SIGKILL), 0);
  // troupe up starts the head again (port 0: a new address); it writes head.address once its
  // controller has written a fresh targets list, which lists no gateway until one registers.
  ASSERT_GE(WaitForFileCondition(head_dir, 60s, [&] { const std::string a = address(); return !a.empty() && a != before; })
                .count(),
            0)
      << "the head was not started again";
  const auto listed_again = WaitForFileCondition(head_dir, 30s, [&] { return Listed(targets, port); });
  EXPECT_GE(listed_again.count(), 0) << "the gateway (port " << port << ") is not in the restarted head's " << targets;
  std::printf("listed by the restarted head %lld ms after it was up\n", static_cast<long long>(listed_again.count()));
}

}  // namespace
}  // namespace troupe
