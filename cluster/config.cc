// ClusterConfig parsing.
#include "cluster/config.h"

#include <yaml-cpp/yaml.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <set>

namespace troupe::cluster {

using runtime::FormatBytes;

namespace {

// Reads the cluster file's YAML tree; records every problem and keeps going where it can (a
// subtree of the wrong shape is skipped). Errors carry "file:line:column: field: what".
class ClusterReader : public runtime::YamlReader {
 public:
  ClusterReader(std::string source, std::string base_dir)
      : YamlReader(std::move(source)), base_dir_(std::move(base_dir)) {}

  void LogLevel(const YAML::Node& node, const std::string& field, std::string* out) {
    // An empty level is no level: a node's then is the cluster's.
    if (node.IsDefined() && node.IsScalar() && node.Scalar().empty()) return;
    OneOf(node, field, {"trace", "debug", "info", "warn", "error", "off"}, out);
  }

  std::string Resolve(const std::string& path) const {
    if (path.empty() || path[0] == '/') return path;
    return base_dir_ + "/" + path;
  }

  // The first line of the token file, a regular file read with a size limit.
  void ReadTokenFile(const YAML::Node& node, const std::string& token_file, std::string* token) {
    const std::string path = Resolve(token_file);
    // Only a regular file: a FIFO, a terminal or /dev/stdin could block the loader for ever, and a
    // device such as /dev/zero never ends.
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      Error(node, "cluster.token_file", path + " is not a regular file (write the token into a file)");
      return;
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      Error(node, "cluster.token_file", "cannot read " + path);
      return;
    }
    std::string bytes(kMaxTokenFileBytes + 1, '\0');
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (in.bad()) {
      Error(node, "cluster.token_file", "cannot read " + path);
      return;
    }
    bytes.resize(static_cast<size_t>(in.gcount()));
    if (bytes.size() > kMaxTokenFileBytes) {
      Error(node, "cluster.token_file",
            path + " is longer than " + std::to_string(kMaxTokenFileBytes) +
                " bytes (a token file holds the token on one line)");
      return;
    }
    *token = bytes.substr(0, bytes.find('\n'));
    if (!token->empty() && token->back() == '\r') token->pop_back();
    if (token->empty()) Error(node, "cluster.token_file", path + " is empty");
  }

  void Scheduler(const YAML::Node& sched, ClusterConfig* c) {
    if (!CheckKeys(sched, "scheduler", {"quotas", "backfill_limit"})) return;
    Duration(sched["backfill_limit"], "scheduler.backfill_limit", kMaxBackfillLimit, &c->backfill_limit);
    const YAML::Node quotas = sched["quotas"];
    if (!quotas.IsDefined() || quotas.IsNull()) return;
    if (!quotas.IsMap()) {
      Error(quotas, "scheduler.quotas", "expected a map of tenant: SIZE (GPU memory)");
      return;
    }
    CheckKeys(quotas, "scheduler.quotas", nullptr);
    for (const auto& entry : quotas) {
      if (!entry.first.IsScalar()) continue;  // reported by CheckKeys
      const std::string tenant = entry.first.Scalar();
      if (c->quotas.count(tenant) != 0) continue;  // a duplicate, reported by CheckKeys
      uint64_t bytes = 0;
      if (Size(entry.second, "scheduler.quotas." + tenant, kMaxConfigBytes, &bytes)) c->quotas[tenant] = bytes;
    }
  }

  void Gateway(const YAML::Node& gw, ClusterConfig* c) {
    GatewaySpec& g = c->gateway;
    g.enabled = true;
    if (gw.IsNull()) return;  // `gateway:` alone: every default
    if (!CheckKeys(gw, "gateway",
                   {"listen", "max_body", "max_header", "read_timeout", "idle_timeout", "request_timeout",
                    "prompt_bytes_per_token", "limits", "usage_flush_interval", "audit_retention",
                    "head_retry_budget"})) {
      return;
    }
    if (String(gw["listen"], "gateway.listen", &g.listen)) {
      const auto colon = g.listen.rfind(':');
      if (colon == std::string::npos || colon == 0) {
        Error(gw["listen"], "gateway.listen", "expected host:port, e.g. 127.0.0.1:8000 (port 0: any free port)");
      } else {
        uint64_t port = 0;
        const std::string digits = g.listen.substr(colon + 1);
        bool ok = !digits.empty() && digits.size() <= 5;
        for (char ch : digits) ok = ok && ch >= '0' && ch <= '9';
        if (ok) port = std::stoull(digits);
        if (!ok || port > 65535) Error(gw["listen"], "gateway.listen", "port must be a number from 0 to 65535");
      }
    }
    if (Size(gw["max_body"], "gateway.max_body", kMaxGatewayBodyBytes, &g.max_body_bytes) && g.max_body_bytes == 0) {
      Error(gw["max_body"], "gateway.max_body", "must be positive");
    }
    if (Size(gw["max_header"], "gateway.max_header", kMaxGatewayHeaderBytes, &g.max_header_bytes) &&
        g.max_header_bytes < 1024) {
      Error(gw["max_header"], "gateway.max_header", "must be at least 1KiB");
    }
    const std::pair<const char*, std::chrono::milliseconds*> timeouts[] = {
        {"read_timeout", &g.read_timeout},
        {"idle_timeout", &g.idle_timeout},
        {"request_timeout", &g.request_timeout},
        {"usage_flush_interval", &g.usage_flush_interval}};
    for (const auto& [key, out] : timeouts) {
      const std::string field = std::string("gateway.") + key;
      if (Duration(gw[key], field, kMaxGatewayTimeout, out) && out->count() == 0) {
        Error(gw[key], field, "must be positive");
      }
    }
    Duration(gw["audit_retention"], "gateway.audit_retention", kMaxAuditRetention, &g.audit_retention);
    Duration(gw["head_retry_budget"], "gateway.head_retry_budget", kMaxGatewayTimeout, &g.head_retry_budget);
    if (Integer(gw["prompt_bytes_per_token"], "gateway.prompt_bytes_per_token", &g.prompt_bytes_per_token, 64) &&
        g.prompt_bytes_per_token == 0) {
      Error(gw["prompt_bytes_per_token"], "gateway.prompt_bytes_per_token", "must be from 1 to 64");
    }
    const YAML::Node limits = gw["limits"];
    if (limits.IsDefined() && !limits.IsNull() &&
        CheckKeys(limits, "gateway.limits", {"requests_per_minute", "tokens_per_minute", "max_concurrent"})) {
      constexpr uint64_t kMaxRate = uint64_t{1} << 40;
      Integer(limits["requests_per_minute"], "gateway.limits.requests_per_minute", &g.requests_per_minute, kMaxRate);
      Integer(limits["tokens_per_minute"], "gateway.limits.tokens_per_minute", &g.tokens_per_minute, kMaxRate);
      Integer(limits["max_concurrent"], "gateway.limits.max_concurrent", &g.max_concurrent, 1u << 30);
    }
  }

  void Cluster(const YAML::Node& root, ClusterConfig* c) {
    const YAML::Node cluster = root["cluster"];
    if (!cluster.IsDefined()) {
      Error(root, "cluster", "missing (the cluster's name and token)");
      return;
    }
    if (!CheckKeys(cluster, "cluster",
                   {"name", "token", "token_file", "log_level", "heartbeat_interval", "failure_timeout"})) {
      return;
    }
    if (String(cluster["name"], "cluster.name", &c->name) && c->name.empty()) {
      Error(cluster, "cluster.name", "missing");
    }
    std::string token_file;
    const bool token_ok = String(cluster["token"], "cluster.token", &c->token);
    const bool file_ok = String(cluster["token_file"], "cluster.token_file", &token_file);
    if (!c->token.empty() && !token_file.empty()) {
      Error(cluster["token_file"], "cluster.token_file", "give token or token_file, not both");
    } else if (!token_file.empty()) {
      const size_t before = count();
      ReadTokenFile(cluster["token_file"], token_file, &c->token);
      if (count() == before && c->token.size() < 8) {
        Error(cluster["token_file"], "cluster.token_file", "the token is too short (at least 8 characters)");
      }
    } else if (token_ok && file_ok && c->token.empty()) {
      Error(cluster, "cluster.token", "missing: nodes join with the cluster token (set token or token_file)");
    } else if (token_ok && c->token.size() < 8) {
      Error(cluster["token"], "cluster.token", "too short (at least 8 characters)");
    }
    LogLevel(cluster["log_level"], "cluster.log_level", &c->log_level);
    bool heartbeat_ok = Duration(cluster["heartbeat_interval"], "cluster.heartbeat_interval", kMaxHeartbeatInterval,
                                 &c->heartbeat_interval);
    const bool timeout_ok =
        Duration(cluster["failure_timeout"], "cluster.failure_timeout", kMaxFailureTimeout, &c->failure_timeout);
    if (heartbeat_ok && c->heartbeat_interval.count() == 0) {
      Error(cluster["heartbeat_interval"], "cluster.heartbeat_interval", "must be positive");
      heartbeat_ok = false;
    }
    if (heartbeat_ok && timeout_ok && c->failure_timeout <= c->heartbeat_interval) {
      Error(cluster["failure_timeout"].IsDefined() ? cluster["failure_timeout"] : cluster, "cluster.failure_timeout",
            "must be longer than heartbeat_interval");
    }
  }

  void Head(const YAML::Node& head, ClusterConfig* c) {
    if (!CheckKeys(head, "head", {"address", "port", "metrics_port", "data_dir"})) return;
    String(head["address"], "head.address", &c->head.address);
    Integer(head["port"], "head.port", &c->head.port, 65535);
    Integer(head["metrics_port"], "head.metrics_port", &c->head.metrics_port, 65535);
    String(head["data_dir"], "head.data_dir", &c->head.data_dir);
    c->head.data_dir = Resolve(c->head.data_dir);
  }

  void Node(const YAML::Node& n, size_t i, std::set<std::string>* names, ClusterConfig* c) {
    std::string f = "nodes[" + std::to_string(i) + "]";
    if (!CheckKeys(n, f, {"name", "listen", "cpus", "memory", "gpus", "slice_memory", "data_dir", "metrics_port",
                          "log_level", "checkpoints"})) {
      return;
    }
    NodeSpec spec;
    if (String(n["name"], f + ".name", &spec.name)) {
      if (spec.name.empty()) {
        Error(n, f + ".name", "missing");
      } else if (!names->insert(spec.name).second) {
        Error(n["name"], f + ".name", "'" + spec.name + "' is used twice");
      } else {
        f = "nodes[" + spec.name + "]";
      }
    }
    if (String(n["listen"], f + ".listen", &spec.listen_address) &&
        spec.listen_address.find(':') == std::string::npos) {
      Error(n["listen"], f + ".listen", "expected host:port, got '" + spec.listen_address + "'");
    }
    if (Integer(n["cpus"], f + ".cpus", &spec.cpus, 1u << 16) && spec.cpus == 0) {
      Error(n["cpus"], f + ".cpus", "must be at least 1");
    }
    Size(n["memory"], f + ".memory", kMaxConfigBytes, &spec.memory_bytes);
    const bool gpus_ok = Gpus(n["gpus"], f + ".gpus", &spec);
    if (Size(n["slice_memory"], f + ".slice_memory", kMaxConfigBytes, &spec.slice_memory_bytes) && gpus_ok) {
      for (const auto& gpu : spec.simulated_gpus) {
        if (spec.slice_memory_bytes > gpu.memory_bytes) {
          Error(n["slice_memory"], f + ".slice_memory", "is larger than GPU " + gpu.name + "'s memory");
          break;
        }
        if (Status s = CheckSliceCount(gpu.name, gpu.memory_bytes, spec.slice_memory_bytes); !s.ok()) {
          Error(n["slice_memory"], f + ".slice_memory", s.message());
          break;
        }
      }
    }
    String(n["data_dir"], f + ".data_dir", &spec.data_dir);
    spec.data_dir = Resolve(spec.data_dir);
    Integer(n["metrics_port"], f + ".metrics_port", &spec.metrics_port, 65535);
    LogLevel(n["log_level"], f + ".log_level", &spec.log_level);
    OneOf(n["checkpoints"], f + ".checkpoints", {"shared", "send"}, &spec.checkpoints);
    c->nodes.push_back(std::move(spec));
  }

  // False when a GPU could not be read (the slice checks then have nothing to check against).
  bool Gpus(const YAML::Node& node, const std::string& field, NodeSpec* spec) {
    if (!node.IsDefined() || node.IsNull()) return true;
    if (node.IsScalar()) {
      if (node.Scalar() == "auto" || node.Scalar() == "none") {
        spec->gpu_mode = node.Scalar();
        return true;
      }
      Error(node, field, "expected auto, none, or {simulated: [...]}, got '" + node.Scalar() + "'");
      return false;
    }
    if (!CheckKeys(node, field, {"simulated"})) return false;
    const YAML::Node list = node["simulated"];
    if (!list.IsSequence() || list.size() == 0) {
      Error(list.IsDefined() ? list : node, field + ".simulated", "expected a non-empty list of {memory: SIZE}");
      return false;
    }
    spec->gpu_mode = "simulated";
    bool ok = true;
    for (size_t i = 0; i < list.size(); ++i) {
      std::string f = field + ".simulated[" + std::to_string(i) + "]";
      if (!CheckKeys(list[i], f, {"memory"})) {
        ok = false;
        continue;
      }
      GpuSpec gpu;
      gpu.name = "sim-" + std::to_string(i);
      if (!Size(list[i]["memory"], f + ".memory", kMaxConfigBytes, &gpu.memory_bytes)) {
        ok = false;
        continue;
      }
      if (gpu.memory_bytes == 0) {
        Error(list[i], f + ".memory", "missing or zero");
        ok = false;
        continue;
      }
      spec->simulated_gpus.push_back(gpu);
    }
    return ok;
  }

  ClusterConfig Parse(const YAML::Node& root) {
    ClusterConfig c;
    c.source = source();
    if (!root.IsDefined() || root.IsNull()) {
      Error(root, "(file)", "is empty");
      return c;
    }
    if (!CheckKeys(root, "", {"cluster", "head", "nodes", "scheduler", "gateway"})) return c;
    if (const YAML::Node sched = root["scheduler"]; sched.IsDefined() && !sched.IsNull()) Scheduler(sched, &c);
    if (const YAML::Node gw = root["gateway"]; gw.IsDefined()) Gateway(gw, &c);
    Cluster(root, &c);
    if (const YAML::Node head = root["head"]; head.IsDefined()) Head(head, &c);
    const YAML::Node nodes = root["nodes"];
    if (nodes.IsDefined() && !nodes.IsNull()) {
      if (!nodes.IsSequence()) {
        Error(nodes, "nodes", "expected a list of nodes");
      } else {
        std::set<std::string> names;
        for (size_t i = 0; i < nodes.size(); ++i) Node(nodes[i], i, &names, &c);
      }
    }
    return c;
  }

 private:
  std::string base_dir_;
};


}  // namespace

const NodeSpec* ClusterConfig::FindNode(const std::string& node_name) const {
  for (const auto& n : nodes) {
    if (n.name == node_name) return &n;
  }
  return nullptr;
}

uint64_t SliceSize(uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes) {
  return slice_memory_bytes > 0 && slice_memory_bytes <= gpu_memory_bytes ? slice_memory_bytes : gpu_memory_bytes;
}

namespace {
// The slices a GPU would make, before the cap.
uint64_t UncappedSliceCount(uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes) {
  const uint64_t size = SliceSize(gpu_memory_bytes, slice_memory_bytes);
  return size == 0 ? 0 : gpu_memory_bytes / size;
}
}  // namespace

uint32_t SliceCount(uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes) {
  const uint64_t count = UncappedSliceCount(gpu_memory_bytes, slice_memory_bytes);
  return count <= kMaxSlicesPerGpu ? static_cast<uint32_t>(count) : 0;
}

Status CheckSliceCount(const std::string& gpu_name, uint64_t gpu_memory_bytes, uint64_t slice_memory_bytes) {
  const uint64_t count = UncappedSliceCount(gpu_memory_bytes, slice_memory_bytes);
  if (count <= kMaxSlicesPerGpu) return OkStatus();
  // The smallest slice that keeps within the cap, rounded up to whole MiB.
  const uint64_t least = (gpu_memory_bytes + kMaxSlicesPerGpu - 1) / kMaxSlicesPerGpu;
  const uint64_t least_mib = (least + (1ull << 20) - 1) >> 20 << 20;
  const uint64_t example = std::max<uint64_t>(least_mib, std::min<uint64_t>(1ull << 30, gpu_memory_bytes));
  return InvalidArgumentError("would make " + std::to_string(count) + " slices of GPU " + gpu_name + " (" +
                              FormatBytes(gpu_memory_bytes) + "); at most " + std::to_string(kMaxSlicesPerGpu) +
                              ": use slice_memory of at least " + FormatBytes(least_mib) + ", e.g. " +
                              FormatBytes(example));
}

std::vector<ConfigError> ValidateClusterConfigText(const std::string& yaml, const std::string& source,
                                                   const std::string& base_dir, ClusterConfig* config) {
  ClusterReader reader(source, base_dir);
  ClusterConfig parsed;
  std::vector<ConfigError> errors = reader.Read(yaml, [&](const YAML::Node& root) { parsed = reader.Parse(root); });
  if (config != nullptr && errors.empty()) *config = std::move(parsed);
  return errors;
}

std::vector<ConfigError> ValidateClusterConfig(const std::string& path, ClusterConfig* config) {
  auto text = runtime::ReadTextFile(path, kMaxConfigFileBytes, "cluster config");
  if (!text.ok()) return {ConfigError{path, 0, 0, "(file)", text.status().message()}};
  return ValidateClusterConfigText(*text, path, runtime::BaseDir(path), config);
}

StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source,
                                           const std::string& base_dir) {
  ClusterConfig config;
  RETURN_IF_ERROR(runtime::ErrorsToStatus(ValidateClusterConfigText(yaml, source, base_dir, &config)));
  return config;
}

namespace {

// True if host:port can be bound now (TCP). Hosts that are not numeric IPv4 are not checked.
bool PortFree(const std::string& host, uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) return true;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return true;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok || errno != EADDRINUSE;
}

}  // namespace

Status CheckPortsFree(const ClusterConfig& config, bool include_nodes) {
  auto check = [&](const std::string& field, const std::string& host, uint16_t port) -> Status {
    if (port == 0 || PortFree(host, port)) return OkStatus();
    return FailedPreconditionError(config.source + ": " + field + ": " + host + ":" + std::to_string(port) +
                                   " is already in use (another cluster running? `troupe down -c " + config.source +
                                   "`, or choose another port)");
  };
  RETURN_IF_ERROR(check("head.port", config.head.address, config.head.port));
  RETURN_IF_ERROR(check("head.metrics_port", config.head.address, config.head.metrics_port));
  if (!include_nodes) return OkStatus();
  if (config.gateway.enabled) {
    auto colon = config.gateway.listen.rfind(':');
    std::string host = config.gateway.listen.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    const auto port = static_cast<uint16_t>(std::atoi(config.gateway.listen.substr(colon + 1).c_str()));
    RETURN_IF_ERROR(check("gateway.listen", host, port));
  }
  for (const auto& n : config.nodes) {
    auto colon = n.listen_address.rfind(':');
    std::string host = n.listen_address.substr(0, colon);
    uint16_t port = static_cast<uint16_t>(std::atoi(n.listen_address.substr(colon + 1).c_str()));
    RETURN_IF_ERROR(check("nodes[" + n.name + "].listen", host, port));
    RETURN_IF_ERROR(check("nodes[" + n.name + "].metrics_port", host, n.metrics_port));
  }
  return OkStatus();
}

StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, runtime::ReadTextFile(path, kMaxConfigFileBytes, "cluster config"));
  return ParseClusterConfig(text, path, runtime::BaseDir(path));
}

}  // namespace troupe::cluster
