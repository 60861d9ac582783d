// ClusterConfig: a troupe cluster described in YAML (configs/local.yaml), parsed strictly: an
// unknown key, a wrong type or a missing token is refused with file, line, field and what was
// expected, before anything starts.
#pragma once

#include <chrono>
#include <map>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace troupe::cluster {

/// One GPU declared in the config. Simulated GPUs exist only for scheduling and are reported
/// as simulated everywhere they appear.
struct GpuSpec {
  uint64_t memory_bytes = 0;
  std::string name;  ///< e.g. "sim-0"
};

struct NodeSpec {
  std::string name;
  std::string listen_address = "127.0.0.1:0";  ///< host:port of the node's transport
  uint32_t cpus = 1;
  uint64_t memory_bytes = 0;
  /// "auto": discover through NVML at run time; "none"; or "simulated" with `simulated_gpus`.
  std::string gpu_mode = "none";
  std::vector<GpuSpec> simulated_gpus;
  uint64_t slice_memory_bytes = 0;  ///< slice granularity; 0 = whole GPUs
  std::string data_dir;
  uint16_t metrics_port = 0;  ///< 0 = any free port
  std::string log_level;      ///< empty = the cluster's
};

struct HeadSpec {
  std::string address = "127.0.0.1";
  uint16_t port = 7400;
  uint16_t metrics_port = 0;
  std::string data_dir;
};

struct ClusterConfig {
  std::string source;  ///< the file it came from ("<string>" when parsed from text)
  std::string name;
  std::string token;   ///< inline, or read from token_file
  std::string log_level = "info";
  std::chrono::milliseconds heartbeat_interval{100};
  std::chrono::milliseconds failure_timeout{1000};
  HeadSpec head;
  std::vector<NodeSpec> nodes;
  /// scheduler.quotas: GPU memory each tenant's leases may ask for in total (no entry: no cap).
  std::map<std::string, uint64_t> quotas;
  /// scheduler.backfill_limit: how long a request may wait for capacity while later requests of
  /// its priority are placed ahead of it; after that they wait behind it (0: never overtaken).
  std::chrono::milliseconds backfill_limit{60000};

  /// The node called `name`, or nullptr.
  const NodeSpec* FindNode(const std::string& name) const;
};

/// Reads and validates a cluster file. Relative token_file and data_dir paths are taken
/// relative to the file's directory.
StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);
/// The same from YAML text (`source` names it in errors).
StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source,
                                           const std::string& base_dir = ".");

/// Checks, before anything starts, that every fixed port this machine would listen on is free:
/// the head's port and metrics port and, with `include_nodes`, each node's listen and metrics
/// port. FailedPrecondition naming the field and address if one is taken.
Status CheckPortsFree(const ClusterConfig& config, bool include_nodes);

/// "8GiB", "512MiB", "1.5GB", "4096" (bytes) -> bytes.
StatusOr<uint64_t> ParseSize(const std::string& text);
/// "100ms", "1s", "2m", "1500us" -> milliseconds (at least 1 ms for a non-zero value).
StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text);

}  // namespace troupe::cluster
