// `troupe check`: the cluster file's every error at once, before anything starts.
#include "cli/check_command.h"

#include <iostream>
#include <sstream>

#include "cluster/config.h"
#include "common/json.h"

namespace troupe::cli {

namespace {

constexpr const char* kCheckUsage = "usage: troupe check -c FILE [--json]\n";

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

int RunCheck(const std::vector<std::string>& argv) {
  std::string path;
  bool json = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "-c" || a == "--config") {
      if (i + 1 >= argv.size()) {
        std::cerr << "troupe check: " << a << " needs a value\n" << kCheckUsage;
        return 2;
      }
      path = argv[++i];
    } else if (a == "--json") {
      json = true;
    } else {
      std::cerr << "troupe check: unknown option '" << a << "'\n" << kCheckUsage;
      return 2;
    }
  }
  if (path.empty()) {
    std::cerr << "troupe check: -c FILE is required\n" << kCheckUsage;
    return 2;
  }
  cluster::ClusterConfig config;
  const std::vector<cluster::ConfigError> errors = cluster::ValidateClusterConfig(path, &config);
  if (json) {
    std::cout << "{\"file\": " << JsonQuote(path) << ", \"valid\": " << (errors.empty() ? "true" : "false")
              << ", \"errors\": [";
    for (size_t i = 0; i < errors.size(); ++i) {
      const auto& e = errors[i];
      std::cout << (i ? ", " : "") << "{\"line\": " << e.line << ", \"column\": " << e.column
                << ", \"field\": " << JsonQuote(e.field) << ", \"message\": " << JsonQuote(e.message) << "}";
    }
    std::cout << "]}\n";
  } else if (errors.empty()) {
    std::cout << Summary(config) << "\n";
  } else {
    for (const auto& e : errors) std::cout << e.ToString() << "\n";
    std::cout << path << ": " << errors.size() << (errors.size() == 1 ? " error" : " errors") << "\n";
  }
  return errors.empty() ? 0 : 2;
}

}  // namespace troupe::cli
