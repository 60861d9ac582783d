// The head's cluster metrics computed from a ClusterView: no actor system, no processes.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "cluster/head_metrics.h"
#include "tests/support/metric_sample.h"

namespace troupe::cluster {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kGiB = uint64_t{1} << 30;

double Sample(const std::vector<prometheus::MetricFamily>& out, const std::string& family,
              const std::map<std::string, std::string>& labels) {
  return ::troupe::testing::MetricSample(out, family, labels);
}

NodeRecord Node(const std::string& name, uint64_t id, const std::string& state, std::vector<GpuInfo> gpus,
                uint64_t slice_memory) {
  NodeRecord r;
  r.name = name;
  r.node_id = id;
  r.state = state;
  r.gpus = std::move(gpus);
  r.slice_memory_bytes = slice_memory;
  return r;
}

TEST(HeadMetrics, NodesByStateAndTheGpusAndSlicesOfLiveNodesOnly) {
  auto view = std::make_shared<ClusterView>();
  // a: heard from 1 s ago, alive; b: silent for 3 s of a 4 s failure timeout, so suspect (still
  // live); c: dead, its GPUs not counted; d: a whole-GPU node (slice_memory 0) counts 1 slice.
  view->nodes["a"] = Node("a", 1, "alive", {{"sim-0", 16 * kGiB, true, "", 0}, {"H200", 140 * kGiB, false, "GPU-1", 1}},
                          4 * kGiB);
  view->nodes["b"] = Node("b", 2, "alive", {{"sim-0", 8 * kGiB, true, "", 0}}, 4 * kGiB);
  view->nodes["c"] = Node("c", 3, "dead", {{"sim-0", 80 * kGiB, true, "", 0}}, 4 * kGiB);
  view->nodes["d"] = Node("d", 4, "alive", {{"H200", 140 * kGiB, false, "GPU-2", 0}}, 0);
  view->leases = LeaseCounts{5, 2, 1};
  std::map<transport::NodeId, Clock::Duration> silence = {{1, 1s}, {2, 3s}, {4, 0s}};
  auto source = ClusterMetrics(
      view,
      [&](transport::NodeId n) -> std::optional<Clock::Duration> {
        auto it = silence.find(n);
        if (it == silence.end()) return std::nullopt;
        return it->second;
      },
      4000ms, "t");
  std::vector<prometheus::MetricFamily> out;
  source(out);

  EXPECT_EQ(Sample(out, "troupe_cluster_nodes", {{"state", "alive"}}), 2);
  EXPECT_EQ(Sample(out, "troupe_cluster_nodes", {{"state", "suspect"}}), 1);
  EXPECT_EQ(Sample(out, "troupe_cluster_nodes", {{"state", "dead"}}), 1);
  EXPECT_EQ(Sample(out, "troupe_cluster_nodes", {{"state", "unknown"}}), 0);
  EXPECT_EQ(Sample(out, "troupe_cluster_node_heartbeat_age_seconds", {{"node", "b"}}), 3);
  EXPECT_EQ(Sample(out, "troupe_cluster_node_heartbeat_age_seconds", {{"node", "c"}}), -1)
      << "a node without a connection has no heartbeat age";
  EXPECT_EQ(Sample(out, "troupe_cluster_gpus", {{"simulated", "true"}}), 2);
  EXPECT_EQ(Sample(out, "troupe_cluster_gpus", {{"simulated", "false"}}), 2);
  EXPECT_EQ(Sample(out, "troupe_cluster_gpu_memory_bytes", {{"cluster", "t"}}), double((16 + 140 + 8 + 140) * kGiB));
  // a: 4 + 35 slices, b: 2, d: 1 whole GPU; c is dead.
  EXPECT_EQ(Sample(out, "troupe_cluster_slices_total", {{"cluster", "t"}}), 42);
  EXPECT_EQ(Sample(out, "troupe_cluster_slices_leased", {{"cluster", "t"}}), 5);
  EXPECT_EQ(Sample(out, "troupe_cluster_leases", {{"state", "granted"}}), 2);
  EXPECT_EQ(Sample(out, "troupe_cluster_leases", {{"state", "pending"}}), 1);
}

}  // namespace
}  // namespace troupe::cluster
