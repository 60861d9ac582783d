// ClusterConfig parsing.
#include "cluster/config.h"

#include <yaml-cpp/yaml.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

namespace troupe::cluster {

namespace {

// Errors carry "file:line:column: field: what".
class Parser {
 public:
  Parser(std::string source, std::string base_dir) : source_(std::move(source)), base_dir_(std::move(base_dir)) {}

  Status Error(const YAML::Node& node, const std::string& field, const std::string& what) const {
    std::string where = source_;
    if (node.IsDefined() && node.Mark().line >= 0) {
      where += ":" + std::to_string(node.Mark().line + 1) + ":" + std::to_string(node.Mark().column + 1);
    }
    return InvalidArgumentError(where + ": " + field + ": " + what);
  }

  Status CheckKeys(const YAML::Node& map, const std::string& field, const std::set<std::string>& allowed) const {
    if (!map.IsMap()) return Error(map, field, "expected a mapping of keys");
    for (const auto& kv : map) {
      std::string key = kv.first.Scalar();
      if (allowed.count(key) == 0) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        return Error(kv.first, field.empty() ? key : field + "." + key, "unknown key (expected one of: " + list + ")");
      }
    }
    return OkStatus();
  }

  Status String(const YAML::Node& node, const std::string& field, std::string* out) const {
    if (!node.IsDefined() || node.IsNull()) return OkStatus();
    if (!node.IsScalar()) return Error(node, field, "expected a string");
    *out = node.Scalar();
    return OkStatus();
  }

  template <class Int>
  Status Integer(const YAML::Node& node, const std::string& field, Int* out, uint64_t max) const {
    if (!node.IsDefined() || node.IsNull()) return OkStatus();
    if (!node.IsScalar()) return Error(node, field, "expected a whole number");
    const std::string& s = node.Scalar();
    uint64_t value = 0;
    size_t used = 0;
    try {
      value = std::stoull(s, &used);
    } catch (...) {
      used = 0;
    }
    if (used != s.size() || s.empty() || s[0] == '-') return Error(node, field, "expected a whole number, got '" + s + "'");
    if (value > max) return Error(node, field, "must be at most " + std::to_string(max) + ", got " + s);
    *out = static_cast<Int>(value);
    return OkStatus();
  }

  Status Size(const YAML::Node& node, const std::string& field, uint64_t* out) const {
    if (!node.IsDefined() || node.IsNull()) return OkStatus();
    if (!node.IsScalar()) return Error(node, field, "expected a size such as 8GiB");
    auto size = ParseSize(node.Scalar());
    if (!size.ok()) return Error(node, field, size.status().message());
    *out = *size;
    return OkStatus();
  }

  Status Duration(const YAML::Node& node, const std::string& field, std::chrono::milliseconds* out) const {
    if (!node.IsDefined() || node.IsNull()) return OkStatus();
    if (!node.IsScalar()) return Error(node, field, "expected a duration such as 100ms or 1s");
    auto d = ParseDuration(node.Scalar());
    if (!d.ok()) return Error(node, field, d.status().message());
    *out = *d;
    return OkStatus();
  }

  Status LogLevel(const YAML::Node& node, const std::string& field, std::string* out) const {
    std::string level;
    RETURN_IF_ERROR(String(node, field, &level));
    if (level.empty()) return OkStatus();
    static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error", "off"};
    if (kLevels.count(level) == 0) {
      return Error(node, field, "expected one of trace, debug, info, warn, error, off; got '" + level + "'");
    }
    *out = level;
    return OkStatus();
  }

  std::string Resolve(const std::string& path) const {
    if (path.empty() || path[0] == '/') return path;
    return base_dir_ + "/" + path;
  }

  StatusOr<ClusterConfig> Parse(const YAML::Node& root) {
    ClusterConfig c;
    c.source = source_;
    if (!root.IsDefined() || root.IsNull()) return Error(root, "(file)", "is empty");
    RETURN_IF_ERROR(CheckKeys(root, "", {"cluster", "head", "nodes", "scheduler"}));
    if (const YAML::Node sched = root["scheduler"]; sched.IsDefined() && !sched.IsNull()) {
      RETURN_IF_ERROR(CheckKeys(sched, "scheduler", {"quotas", "backfill_limit"}));
      RETURN_IF_ERROR(Duration(sched["backfill_limit"], "scheduler.backfill_limit", &c.backfill_limit));
      const YAML::Node quotas = sched["quotas"];
      if (quotas.IsDefined() && !quotas.IsNull()) {
        if (!quotas.IsMap()) return Error(quotas, "scheduler.quotas", "expected a map of tenant: SIZE (GPU memory)");
        for (const auto& entry : quotas) {
          const std::string tenant = entry.first.as<std::string>();
          uint64_t bytes = 0;
          RETURN_IF_ERROR(Size(entry.second, "scheduler.quotas." + tenant, &bytes));
          c.quotas[tenant] = bytes;
        }
      }
    }

    const YAML::Node cluster = root["cluster"];
    if (!cluster.IsDefined()) return Error(root, "cluster", "missing (the cluster's name and token)");
    RETURN_IF_ERROR(CheckKeys(cluster, "cluster",
                              {"name", "token", "token_file", "log_level", "heartbeat_interval", "failure_timeout"}));
    RETURN_IF_ERROR(String(cluster["name"], "cluster.name", &c.name));
    if (c.name.empty()) return Error(cluster, "cluster.name", "missing");
    RETURN_IF_ERROR(String(cluster["token"], "cluster.token", &c.token));
    std::string token_file;
    RETURN_IF_ERROR(String(cluster["token_file"], "cluster.token_file", &token_file));
    if (!c.token.empty() && !token_file.empty()) {
      return Error(cluster["token_file"], "cluster.token_file", "give token or token_file, not both");
    }
    if (!token_file.empty()) {
      std::ifstream in(Resolve(token_file));
      if (!in) return Error(cluster["token_file"], "cluster.token_file", "cannot read " + Resolve(token_file));
      std::getline(in, c.token);
      if (c.token.empty()) return Error(cluster["token_file"], "cluster.token_file", Resolve(token_file) + " is empty");
    }
    if (c.token.empty()) {
      return Error(cluster, "cluster.token", "missing: nodes join with the cluster token (set token or token_file)");
    }
    if (c.token.size() < 8) return Error(cluster["token"], "cluster.token", "too short (at least 8 characters)");
    RETURN_IF_ERROR(LogLevel(cluster["log_level"], "cluster.log_level", &c.log_level));
    RETURN_IF_ERROR(Duration(cluster["heartbeat_interval"], "cluster.heartbeat_interval", &c.heartbeat_interval));
    RETURN_IF_ERROR(Duration(cluster["failure_timeout"], "cluster.failure_timeout", &c.failure_timeout));
    if (c.heartbeat_interval.count() == 0) {
      return Error(cluster["heartbeat_interval"], "cluster.heartbeat_interval", "must be positive");
    }
    if (c.failure_timeout <= c.heartbeat_interval) {
      return Error(cluster["failure_timeout"].IsDefined() ? cluster["failure_timeout"] : cluster,
                   "cluster.failure_timeout", "must be longer than heartbeat_interval");
    }

    const YAML::Node head = root["head"];
    if (head.IsDefined()) {
      RETURN_IF_ERROR(CheckKeys(head, "head", {"address", "port", "metrics_port", "data_dir"}));
      RETURN_IF_ERROR(String(head["address"], "head.address", &c.head.address));
      RETURN_IF_ERROR(Integer(head["port"], "head.port", &c.head.port, 65535));
      RETURN_IF_ERROR(Integer(head["metrics_port"], "head.metrics_port", &c.head.metrics_port, 65535));
      RETURN_IF_ERROR(String(head["data_dir"], "head.data_dir", &c.head.data_dir));
      c.head.data_dir = Resolve(c.head.data_dir);
    }

    const YAML::Node nodes = root["nodes"];
    if (nodes.IsDefined() && !nodes.IsNull()) {
      if (!nodes.IsSequence()) return Error(nodes, "nodes", "expected a list of nodes");
      std::set<std::string> names;
      for (size_t i = 0; i < nodes.size(); ++i) {
        const YAML::Node n = nodes[i];
        std::string f = "nodes[" + std::to_string(i) + "]";
        RETURN_IF_ERROR(CheckKeys(n, f, {"name", "listen", "cpus", "memory", "gpus", "slice_memory", "data_dir",
                                         "metrics_port", "log_level"}));
        NodeSpec spec;
        RETURN_IF_ERROR(String(n["name"], f + ".name", &spec.name));
        if (spec.name.empty()) return Error(n, f + ".name", "missing");
        if (!names.insert(spec.name).second) return Error(n["name"], f + ".name", "'" + spec.name + "' is used twice");
        f = "nodes[" + spec.name + "]";
        RETURN_IF_ERROR(String(n["listen"], f + ".listen", &spec.listen_address));
        if (spec.listen_address.find(':') == std::string::npos) {
          return Error(n["listen"], f + ".listen", "expected host:port, got '" + spec.listen_address + "'");
        }
        RETURN_IF_ERROR(Integer(n["cpus"], f + ".cpus", &spec.cpus, 1u << 16));
        if (spec.cpus == 0) return Error(n["cpus"], f + ".cpus", "must be at least 1");
        RETURN_IF_ERROR(Size(n["memory"], f + ".memory", &spec.memory_bytes));
        RETURN_IF_ERROR(Gpus(n["gpus"], f + ".gpus", &spec));
        RETURN_IF_ERROR(Size(n["slice_memory"], f + ".slice_memory", &spec.slice_memory_bytes));
        for (const auto& gpu : spec.simulated_gpus) {
          if (spec.slice_memory_bytes > gpu.memory_bytes) {
            return Error(n["slice_memory"], f + ".slice_memory", "is larger than GPU " + gpu.name + "'s memory");
          }
        }
        RETURN_IF_ERROR(String(n["data_dir"], f + ".data_dir", &spec.data_dir));
        spec.data_dir = Resolve(spec.data_dir);
        RETURN_IF_ERROR(Integer(n["metrics_port"], f + ".metrics_port", &spec.metrics_port, 65535));
        RETURN_IF_ERROR(LogLevel(n["log_level"], f + ".log_level", &spec.log_level));
        c.nodes.push_back(std::move(spec));
      }
    }
    return c;
  }

  Status Gpus(const YAML::Node& node, const std::string& field, NodeSpec* spec) const {
    if (!node.IsDefined() || node.IsNull()) return OkStatus();
    if (node.IsScalar()) {
      if (node.Scalar() == "auto" || node.Scalar() == "none") {
        spec->gpu_mode = node.Scalar();
        return OkStatus();
      }
      return Error(node, field, "expected auto, none, or {simulated: [...]}, got '" + node.Scalar() + "'");
    }
    RETURN_IF_ERROR(CheckKeys(node, field, {"simulated"}));
    const YAML::Node list = node["simulated"];
    if (!list.IsSequence() || list.size() == 0) {
      return Error(list.IsDefined() ? list : node, field + ".simulated", "expected a non-empty list of {memory: SIZE}");
    }
    spec->gpu_mode = "simulated";
    for (size_t i = 0; i < list.size(); ++i) {
      std::string f = field + ".simulated[" + std::to_string(i) + "]";
      RETURN_IF_ERROR(CheckKeys(list[i], f, {"memory"}));
      GpuSpec gpu;
      gpu.name = "sim-" + std::to_string(i);
      RETURN_IF_ERROR(Size(list[i]["memory"], f + ".memory", &gpu.memory_bytes));
      if (gpu.memory_bytes == 0) return Error(list[i], f + ".memory", "missing or zero");
      spec->simulated_gpus.push_back(gpu);
    }
    return OkStatus();
  }

 private:
  std::string source_;
  std::string base_dir_;
};

}  // namespace

const NodeSpec* ClusterConfig::FindNode(const std::string& node_name) const {
  for (const auto& n : nodes) {
    if (n.name == node_name) return &n;
  }
  return nullptr;
}

StatusOr<uint64_t> ParseSize(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return InvalidArgumentError("expected a size such as 8GiB, got '" + text + "'");
  double number = 0;
  try {
    number = std::stod(text.substr(0, i));
  } catch (...) {
    return InvalidArgumentError("expected a size such as 8GiB, got '" + text + "'");
  }
  std::string unit = text.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},       {"B", 1},       {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0},      {"KB", 1e3},      {"MB", 1e6},       {"GB", 1e9},
      {"TB", 1e12},  {"K", 1024.0},  {"M", 1048576.0}, {"G", 1073741824.0}};
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) {
      double bytes = number * factor;
      if (bytes >= 1.8e19) return InvalidArgumentError("size '" + text + "' is too large");
      return static_cast<uint64_t>(std::llround(bytes));
    }
  }
  return InvalidArgumentError("unknown size unit '" + unit + "' in '" + text + "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB)");
}

StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return InvalidArgumentError("expected a duration such as 100ms or 1s, got '" + text + "'");
  double number = std::stod(text.substr(0, i));
  std::string unit = text.substr(i);
  double ms = 0;
  if (unit == "us") ms = number / 1000;
  else if (unit == "ms") ms = number;
  else if (unit == "s") ms = number * 1000;
  else if (unit == "m") ms = number * 60000;
  else if (unit == "h") ms = number * 3600000;
  else return InvalidArgumentError("unknown duration unit '" + unit + "' in '" + text + "' (use us, ms, s, m, h)");
  if (number > 0 && ms < 1) ms = 1;
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
}

StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source,
                                           const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) + ":" +
                                std::to_string(e.mark.column + 1) + ": not valid YAML: " + e.msg);
  }
  try {
    Parser parser(source, base_dir);
    return parser.Parse(root);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
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
  std::ifstream in(path);
  if (!in) return InvalidArgumentError("cannot read cluster config " + path + " (does it exist?)");
  std::stringstream text;
  text << in.rdbuf();
  auto slash = path.find_last_of('/');
  return ParseClusterConfig(text.str(), path, slash == std::string::npos ? "." : path.substr(0, slash));
}

}  // namespace troupe::cluster
