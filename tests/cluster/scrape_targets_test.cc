// ScrapeTargetsWriter: the Prometheus file_sd list and what happens when it cannot be written.
#include "cluster/scrape_targets.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "tests/cluster/head_test_support.h"

namespace troupe::cluster {
namespace {

std::map<std::string, NodeRecord> Nodes() {
  std::map<std::string, NodeRecord> nodes;
  auto add = [&](const std::string& name, const std::string& state, const std::string& metrics) {
    NodeRecord r;
    r.name = name;
    r.state = state;
    r.metrics_address = metrics;
    nodes[name] = r;
  };
  add("a", "alive", "127.0.0.1:9101");
  add("b", "dead", "127.0.0.1:9102");
  add("c", "unknown", "127.0.0.1:9103");
  add("d", "alive", "");
  return nodes;
}

TEST(ScrapeTargets, ListTheHeadAndEveryNodeNotDeadWithAMetricsEndpoint) {
  EXPECT_EQ(ScrapeTargetsJson("prod", "127.0.0.1:9100", Nodes()),
            R"([
  {
    "targets": [
      "127.0.0.1:9100"
    ],
    "labels": {
      "cluster": "prod",
      "role": "head",
      "node": "head"
    }
  },
  {
    "targets": [
      "127.0.0.1:9101"
    ],
    "labels": {
      "cluster": "prod",
      "role": "node",
      "node": "a"
    }
  },
  {
    "targets": [
      "127.0.0.1:9103"
    ],
    "labels": {
      "cluster": "prod",
      "role": "node",
      "node": "c"
    }
  }
]
)");
}

TEST(ScrapeTargets, ListEveryGatewayAfterTheNodesWithRoleGateway) {
  const auto list = nlohmann::json::parse(ScrapeTargetsJson(
      "prod", "127.0.0.1:9100", Nodes(), {{"client-7-1", "127.0.0.1:8080"}, {"client-8-2", "gw.example:8081"}, {"no-address", ""}}));
  ASSERT_EQ(list.size(), 5u) << list.dump(2);  // head, nodes a and c, two gateways (one without an address is not listed)
  EXPECT_EQ(list[0]["labels"]["role"], "head");
  EXPECT_EQ(list[2]["labels"]["node"], "c");
  EXPECT_EQ(list[3], nlohmann::json::parse(R"({"targets": ["127.0.0.1:8080"],
                                               "labels": {"cluster": "prod", "role": "gateway", "node": "client-7-1"}})"));
  EXPECT_EQ(list[4], nlohmann::json::parse(R"({"targets": ["gw.example:8081"],
                                               "labels": {"cluster": "prod", "role": "gateway", "node": "client-8-2"}})"));
}

TEST(ScrapeTargets, AGatewayIsWrittenOnceAddedAndLeavesTheFileWhenRemoved) {
  testing::TempDir temp;
  const std::string path = temp.path() + "/prometheus-targets.json";
  ScrapeTargetsWriter writer(path, "prod", "127.0.0.1:9100", nullptr);
  auto read = [&] {
    std::ifstream in(path);
    return std::string{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  };
  writer.AddGateway("gw1", "127.0.0.1:8080");
  writer.AddGateway("gw1", "127.0.0.1:8081");  // registered again (a new port): one entry, the latest
  writer.Write(Nodes());
  EXPECT_EQ(read(), ScrapeTargetsJson("prod", "127.0.0.1:9100", Nodes(), {{"gw1", "127.0.0.1:8081"}}));
  EXPECT_TRUE(writer.RemoveGateway("gw1"));
  EXPECT_FALSE(writer.RemoveGateway("gw1")) << "removed already";
  writer.Write(Nodes());
  EXPECT_EQ(read(), ScrapeTargetsJson("prod", "127.0.0.1:9100", Nodes()));
  EXPECT_EQ(read().find("gateway"), std::string::npos) << read();
}

TEST(ScrapeTargets, AFailedWriteIsRetriedOnceScheduledAndSucceedsWhenItCan) {
  testing::TempDir temp;
  const std::string dir = temp.path() + "/later";  // does not exist yet: writes fail
  int scheduled = 0;
  ScrapeTargetsWriter writer(dir + "/prometheus-targets.json", "prod", "127.0.0.1:9100", [&] { ++scheduled; });
  writer.Write(Nodes());
  EXPECT_TRUE(writer.failing());
  writer.Write(Nodes());
  EXPECT_EQ(scheduled, 1) << "one retry at a time";
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(writer.RetryDue());
  writer.Write(Nodes());
  EXPECT_FALSE(writer.failing());
  std::ifstream in(dir + "/prometheus-targets.json");
  const std::string written{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  EXPECT_EQ(written, ScrapeTargetsJson("prod", "127.0.0.1:9100", Nodes()));
  EXPECT_FALSE(writer.RetryDue());
  EXPECT_EQ(scheduled, 1);
}

}  // namespace
}  // namespace troupe::cluster
