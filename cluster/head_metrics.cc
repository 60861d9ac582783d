// The head's cluster metrics.
#include "cluster/head_metrics.h"

#include <utility>
#include <vector>

#include "cluster/config.h"
#include "cluster/membership.h"

namespace troupe::cluster {

runtime::MetricsSource ClusterMetrics(std::shared_ptr<ClusterView> view, SilenceOf silence,
                                      std::chrono::milliseconds failure_timeout, std::string cluster_name) {
  return [view = std::move(view), silence = std::move(silence), failure_timeout,
          cluster_name = std::move(cluster_name)](std::vector<prometheus::MetricFamily>& out) {
    std::map<std::string, NodeRecord> nodes;
    LeaseCounts leases;
    {
      std::lock_guard<std::mutex> lock(view->mu);
      nodes = view->nodes;
      leases = view->leases;
    }
    std::map<std::string, int> by_state = {{"alive", 0}, {"suspect", 0}, {"dead", 0}, {"unknown", 0}};
    auto age = runtime::GaugeFamily("troupe_cluster_node_heartbeat_age_seconds",
                                    "Time since the head last heard from the node");
    double gpus_real = 0, gpus_sim = 0, gpu_memory = 0, slices = 0;
    for (const auto& [name, record] : nodes) {
      auto quiet = silence(record.node_id);
      std::string state = StateNow(record, quiet, failure_timeout);
      ++by_state[state];
      if (quiet) {
        runtime::AddSample(age, std::chrono::duration<double>(*quiet).count(), {{"cluster", cluster_name}, {"node", name}});
      }
      if (state == "dead") continue;
      for (const auto& gpu : record.gpus) {
        (gpu.simulated ? gpus_sim : gpus_real) += 1;
        gpu_memory += gpu.memory_bytes;
        slices += SliceCount(gpu.memory_bytes, record.slice_memory_bytes);
      }
    }
    auto states = runtime::GaugeFamily("troupe_cluster_nodes", "Nodes by membership state");
    for (const auto& [state, n] : by_state) runtime::AddSample(states, n, {{"cluster", cluster_name}, {"state", state}});
    out.push_back(std::move(states));
    out.push_back(std::move(age));
    auto gpus = runtime::GaugeFamily("troupe_cluster_gpus", "GPUs of live nodes (simulated ones labelled)");
    runtime::AddSample(gpus, gpus_real, {{"cluster", cluster_name}, {"simulated", "false"}});
    runtime::AddSample(gpus, gpus_sim, {{"cluster", cluster_name}, {"simulated", "true"}});
    out.push_back(std::move(gpus));
    auto memory = runtime::GaugeFamily("troupe_cluster_gpu_memory_bytes", "GPU memory of live nodes");
    runtime::AddSample(memory, gpu_memory, {{"cluster", cluster_name}});
    out.push_back(std::move(memory));
    auto slice_total = runtime::GaugeFamily("troupe_cluster_slices_total", "GPU slices of live nodes");
    runtime::AddSample(slice_total, slices, {{"cluster", cluster_name}});
    out.push_back(std::move(slice_total));
    auto slices_leased = runtime::GaugeFamily("troupe_cluster_slices_leased", "GPU slices leased now");
    runtime::AddSample(slices_leased, static_cast<double>(leases.slices_leased), {{"cluster", cluster_name}});
    out.push_back(std::move(slices_leased));
    auto lease_states = runtime::GaugeFamily("troupe_cluster_leases", "Slice leases by state");
    runtime::AddSample(lease_states, static_cast<double>(leases.granted), {{"cluster", cluster_name}, {"state", "granted"}});
    runtime::AddSample(lease_states, static_cast<double>(leases.pending), {{"cluster", cluster_name}, {"state", "pending"}});
    out.push_back(std::move(lease_states));
  };
}

}  // namespace troupe::cluster
