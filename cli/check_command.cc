// `troupe check`: the cluster file's every error at once, before anything starts.
#include "cli/check_command.h"

#include <iostream>
#include <sstream>

#include "cli/json_output.h"
#include "cluster/config.h"

namespace troupe::cli {

namespace {

std::string Summary(const cluster::ClusterConfig& config) {
  size_t gpus = 0;
  size_t slices = 0;
  size_t auto_nodes = 0;
  for (const auto& n : config.nodes) {
    if (n.gpu_mode == "auto") ++auto_nodes;
    for (const auto& g : n.simulated_gpus) {
      ++gpus;
      const uint64_t size = cluster::SliceSize(g.memory_bytes, n.slice_memory_bytes);
      slices += size == 0 ? 0 : g.memory_bytes / size;
    }
  }
  std::ostringstream out;
  out << config.source << ": valid: cluster '" << config.name << "', " << config.nodes.size()
      << (config.nodes.size() == 1 ? " node" : " nodes") << ", " << gpus << " simulated GPU" << (gpus == 1 ? "" : "s")
      << " in " << slices << " slice" << (slices == 1 ? "" : "s");
  if (auto_nodes > 0) out << ", " << auto_nodes << " node" << (auto_nodes == 1 ? "" : "s") << " with gpus: auto";
  out << ", head " << config.head.address << ":" << config.head.port;
  return out.str();
}

}  // namespace

int RunCheck(const CheckOptions& options) {
  const std::string& path = options.config_path;
  cluster::ClusterConfig config;
  const std::vector<cluster::ConfigError> errors = cluster::ValidateClusterConfig(path, &config);
  if (options.json) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& e : errors) {
      list.push_back({{"line", e.line}, {"column", e.column}, {"field", e.field}, {"message", e.message}});
    }
    std::cout << OneLineJson({{"file", path}, {"valid", errors.empty()}, {"errors", std::move(list)}}) << "\n";
  } else if (errors.empty()) {
    std::cout << Summary(config) << "\n";
  } else {
    for (const auto& e : errors) std::cout << e.ToString() << "\n";
    std::cout << path << ": " << errors.size() << (errors.size() == 1 ? " error" : " errors") << "\n";
  }
  return errors.empty() ? 0 : 2;
}

}  // namespace troupe::cli
