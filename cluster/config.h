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
#include "runtime/yaml_reader.h"

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
  /// How this node's actor workers save checkpoint shards (docs/checkpoints.md, "Nodes without
  /// shared storage"): "shared" writes the head's checkpoint directories by their paths (same
  /// host, or a shared file system mounted at the same path); "send" sends each shard to the head
  /// over the bulk path (runtime/bulk.h), for a node that does not see them.
  std::string checkpoints = "shared";
};

struct HeadSpec {
  std::string address = "127.0.0.1";
  uint16_t port = 7400;
  uint16_t metrics_port = 0;
  std::string data_dir;
};

/// The cluster file's optional `gateway:` section: the OpenAI-compatible HTTP gateway
/// (docs/gateway.md). `troupe up` starts one gateway when the section is present; `troupe gateway
/// -c FILE` starts one more (several gateways of one cluster share its limits, which the head
/// holds).
struct GatewaySpec {
  bool enabled = false;  ///< the section is present
  /// host:port the HTTP server listens on (port 0: any free port, printed at start).
  std::string listen = "127.0.0.1:0";
  /// max_body: a larger request body gets 413 (OpenAI's own limit is larger; 1 MiB holds a
  /// 200k-token prompt of plain text only with a coarse tokenizer: raise it for long contexts).
  uint64_t max_body_bytes = uint64_t{1} << 20;
  /// max_header: a larger request head gets 431 (Envoy's default max_request_headers_kb is 60).
  uint64_t max_header_bytes = uint64_t{16} << 10;
  /// A request's head and body must arrive within read_timeout (slowloris): 408, then closed.
  std::chrono::milliseconds read_timeout{10000};
  /// A keep-alive connection with no request for idle_timeout is closed.
  std::chrono::milliseconds idle_timeout{60000};
  /// The deadline of a request at the router and replica (504 past it).
  std::chrono::milliseconds request_timeout{60000};
  /// head_retry_budget: how long a request whose call to the head failed because the head was
  /// lost (kill -9, connection gone) waits for it to come back and is sent again, in all (0:
  /// never retried; the request's deadline bounds it too). docs/gateway.md "A head restart".
  std::chrono::milliseconds head_retry_budget{30000};
  /// The prompt's token estimate for reservations: ceil(UTF-8 bytes / this). 1 is an upper bound
  /// for byte-level BPE tokenizers (every token is at least one byte), so no prompt is
  /// under-reserved; 4 is OpenAI's rule of thumb (about 4 characters a token), which admits
  /// more and settles the difference afterwards.
  uint32_t prompt_bytes_per_token = 1;
  /// gateway.limits: the cluster's global limits, summed over every gateway (0: unlimited).
  uint64_t requests_per_minute = 0;
  uint64_t tokens_per_minute = 0;
  uint32_t max_concurrent = 0;
  /// How often the head writes metered usage to its store: a crash loses at most this much.
  std::chrono::milliseconds usage_flush_interval{1000};
  /// Audit records older than this are pruned (the chain stays verifiable from its anchor);
  /// written in hours (4320h is the default 180 days).
  std::chrono::milliseconds audit_retention{std::chrono::hours(180 * 24)};
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
  GatewaySpec gateway;

  /// The node called `name`, or nullptr.
  const NodeSpec* FindNode(const std::string& name) const;
};

/// Bounds on what a cluster file may say (docs/config.md lists them). A value outside them is
/// refused at load rather than left to misbehave at run time (a heartbeat of hours makes every
/// node flap; a slice of a few bytes makes a node start millions of slice actors).
inline constexpr std::chrono::milliseconds kMaxHeartbeatInterval{60 * 1000};       ///< 1 min
inline constexpr std::chrono::milliseconds kMaxFailureTimeout{10 * 60 * 1000};     ///< 10 min
inline constexpr std::chrono::milliseconds kMaxBackfillLimit{24 * 60 * 60 * 1000};  ///< 24 h
/// gateway.max_body and max_header: 1 GiB and 1 MiB.
inline constexpr uint64_t kMaxGatewayBodyBytes = uint64_t{1} << 30;
inline constexpr uint64_t kMaxGatewayHeaderBytes = uint64_t{1} << 20;
/// gateway timeouts: 1 h; audit retention: 10 years.
inline constexpr std::chrono::milliseconds kMaxGatewayTimeout{60 * 60 * 1000};
inline constexpr std::chrono::milliseconds kMaxAuditRetention{std::chrono::hours(10 * 366 * 24)};
/// Any size in the file (node memory, GPU memory, slice_memory, quotas): 1 PiB.
inline constexpr uint64_t kMaxConfigBytes = uint64_t{1} << 50;
/// The most slices one GPU is cut into; the config (simulated GPUs) and the node agent (GPUs
/// found through NVML) both refuse a slice_memory that would make more.
inline constexpr uint32_t kMaxSlicesPerGpu = 1024;
/// The longest token_file accepted (a token file holds one line).
inline constexpr size_t kMaxTokenFileBytes = 4096;
/// The longest cluster file accepted.
inline constexpr size_t kMaxConfigFileBytes = 1 << 20;
// The strict YAML machinery is runtime's (runtime/yaml_reader.h), shared with the job spec; these
// keep its old names here.
using runtime::ConfigError;
using runtime::kMaxConfigErrors;
using runtime::ParseDuration;
using runtime::ParseSize;

/// Every problem in the cluster file at `path`, in file order of discovery; empty when it is
/// valid, and then `*config` (if given) holds it. Reads nothing else and contacts nothing:
/// `troupe check` is this.
std::vector<ConfigError> ValidateClusterConfig(const std::string& path, ClusterConfig* config = nullptr);
/// The same from YAML text.
std::vector<ConfigError> ValidateClusterConfigText(const std::string& yaml, const std::string& source,
                                                   const std::string& base_dir = ".",
                                                   ClusterConfig* config = nullptr);

/// The size of each slice of a GPU of `gpu_memory_bytes` cut by `slice_memory_bytes` (0, or
/// more than the GPU: the whole GPU is one slice).
uint64_t SliceSize(uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes);
/// How many slices of SliceSize() a GPU of `gpu_memory_bytes` is cut into: the one rule the node
/// agent (its slice actors), the head's scheduler and the head's metrics all follow. 0 for a GPU
/// without memory, and for one that would make more than kMaxSlicesPerGpu (CheckSliceCount says
/// why; such a GPU offers no slices).
uint32_t SliceCount(uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes);
/// OK, or InvalidArgument saying how many slices `slice_memory_bytes` would make of GPU
/// `gpu_name` and which slice_memory to write instead, when that is more than kMaxSlicesPerGpu.
Status CheckSliceCount(const std::string& gpu_name, uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes);

/// Reads and validates a cluster file. Relative token_file and data_dir paths are taken
/// relative to the file's directory. InvalidArgument lists every problem, one per line.
StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);
/// The same from YAML text (`source` names it in errors).
StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source,
                                           const std::string& base_dir = ".");

/// Checks, before anything starts, that every fixed port this machine would listen on is free:
/// the head's port and metrics port and, with `include_nodes`, the gateway's and each node's listen and metrics
/// port. FailedPrecondition naming the field and address if one is taken.
Status CheckPortsFree(const ClusterConfig& config, bool include_nodes);

}  // namespace troupe::cluster
