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
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>

namespace troupe::cluster {

namespace {

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t u = 0;
  while (u + 1 < sizeof kUnits / sizeof kUnits[0] && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return std::to_string(bytes) + kUnits[u];
}

std::string FormatDuration(std::chrono::milliseconds d) {
  const int64_t ms = d.count();
  if (ms % 3600000 == 0 && ms > 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0 && ms > 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0 && ms > 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// A plain decimal number at the start of `text`: digits with at most one '.', at least one
// digit ("4096", "1.5", ".5", "2."). No sign, exponent, hex, inf or nan. `*used` is how many
// characters it took; nullopt if there is no such number or it is out of double's range.
std::optional<double> ParseDecimal(const std::string& text, size_t* used) {
  size_t i = 0;
  size_t digits = 0;
  size_t dots = 0;
  for (; i < text.size(); ++i) {
    const char ch = text[i];
    if (ch >= '0' && ch <= '9') {
      ++digits;
    } else if (ch == '.') {
      if (++dots > 1) break;
    } else {
      break;
    }
  }
  *used = i;
  if (digits == 0) return std::nullopt;
  // The prefix holds only digits and one '.', so strtod reads exactly it (the C locale's
  // decimal point; troupe never calls setlocale).
  const std::string number = text.substr(0, i);
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || errno == ERANGE || !std::isfinite(value)) return std::nullopt;
  return value;
}

// Reads the cluster file's YAML tree; records every problem and keeps going where it can (a
// subtree of the wrong shape is skipped). Errors carry "file:line:column: field: what".
class Parser {
 public:
  Parser(std::string source, std::string base_dir) : source_(std::move(source)), base_dir_(std::move(base_dir)) {}

  std::vector<ConfigError>& errors() { return errors_; }
  /// Every error found, listed or not.
  size_t count() const { return count_; }

  void Error(const YAML::Node& node, const std::string& field, const std::string& what) {
    ConfigError e;
    e.file = source_;
    if (node.IsDefined() && node.Mark().line >= 0) {
      e.line = node.Mark().line + 1;
      e.column = node.Mark().column + 1;
    }
    e.field = field;
    e.message = what;
    // A file of a megabyte can hold a hundred thousand errors; the first ones say enough.
    if (++count_ <= kMaxConfigErrors) errors_.push_back(std::move(e));
  }

  // False (and an error) when `map` is not a mapping: the caller skips it. Unknown, duplicate
  // and non-scalar keys are errors but the known keys are still read. `allowed` null: any key.
  bool CheckKeys(const YAML::Node& map, const std::string& field, const std::set<std::string>* allowed) {
    if (!map.IsMap()) {
      Error(map, field.empty() ? "(file)" : field, "expected a mapping of keys");
      return false;
    }
    std::map<std::string, int> lines;
    for (const auto& kv : map) {
      if (!kv.first.IsScalar()) {
        Error(kv.first, field.empty() ? "(key)" : field, "expected a plain key, not a list or mapping");
        continue;
      }
      const std::string key = kv.first.Scalar();
      const std::string name = field.empty() ? key : field + "." + key;
      const int line = kv.first.Mark().line + 1;
      if (auto [it, fresh] = lines.emplace(key, line); !fresh) {
        Error(kv.first, name,
              "given twice, on line " + std::to_string(it->second) + " and line " + std::to_string(line) +
                  " (remove one)");
        continue;
      }
      if (allowed != nullptr && allowed->count(key) == 0) {
        std::string list;
        for (const auto& a : *allowed) list += (list.empty() ? "" : ", ") + a;
        Error(kv.first, name, "unknown key (expected one of: " + list + ")");
      }
    }
    return true;
  }

  bool CheckKeys(const YAML::Node& map, const std::string& field, const std::set<std::string>& allowed) {
    return CheckKeys(map, field, &allowed);
  }

  bool String(const YAML::Node& node, const std::string& field, std::string* out) {
    if (!node.IsDefined() || node.IsNull()) return true;
    if (!node.IsScalar()) {
      Error(node, field, "expected a string");
      return false;
    }
    *out = node.Scalar();
    return true;
  }

  template <class Int>
  bool Integer(const YAML::Node& node, const std::string& field, Int* out, uint64_t max) {
    if (!node.IsDefined() || node.IsNull()) return true;
    if (!node.IsScalar()) {
      Error(node, field, "expected a whole number");
      return false;
    }
    const std::string& s = node.Scalar();
    bool digits = !s.empty() && s.size() <= 20;
    for (char ch : s) digits = digits && ch >= '0' && ch <= '9';
    if (!digits) {
      Error(node, field, "expected a whole number, got '" + s + "'");
      return false;
    }
    // At most 20 digits: compare as text first so that the conversion cannot wrap.
    const std::string kMax64 = "18446744073709551615";
    if (s.size() == 20 && s > kMax64) {
      Error(node, field, "must be at most " + std::to_string(max) + ", got " + s);
      return false;
    }
    const uint64_t value = std::strtoull(s.c_str(), nullptr, 10);
    if (value > max) {
      Error(node, field, "must be at most " + std::to_string(max) + ", got " + s);
      return false;
    }
    *out = static_cast<Int>(value);
    return true;
  }

  bool Size(const YAML::Node& node, const std::string& field, uint64_t* out) {
    if (!node.IsDefined() || node.IsNull()) return true;
    if (!node.IsScalar()) {
      Error(node, field, "expected a size such as 8GiB");
      return false;
    }
    auto size = ParseSize(node.Scalar());
    if (!size.ok()) {
      Error(node, field, size.status().message());
      return false;
    }
    if (*size > kMaxConfigBytes) {
      Error(node, field, "must be at most " + FormatBytes(kMaxConfigBytes) + ", got '" + node.Scalar() + "'");
      return false;
    }
    *out = *size;
    return true;
  }

  bool Duration(const YAML::Node& node, const std::string& field, std::chrono::milliseconds max,
                std::chrono::milliseconds* out) {
    if (!node.IsDefined() || node.IsNull()) return true;
    if (!node.IsScalar()) {
      Error(node, field, "expected a duration such as 100ms or 1s");
      return false;
    }
    auto d = ParseDuration(node.Scalar());
    if (!d.ok()) {
      Error(node, field, d.status().message());
      return false;
    }
    if (*d > max) {
      Error(node, field, "must be at most " + FormatDuration(max) + ", got '" + node.Scalar() + "'");
      return false;
    }
    *out = *d;
    return true;
  }

  void LogLevel(const YAML::Node& node, const std::string& field, std::string* out) {
    std::string level;
    if (!String(node, field, &level) || level.empty()) return;
    static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error", "off"};
    if (kLevels.count(level) == 0) {
      Error(node, field, "expected one of trace, debug, info, warn, error, off; got '" + level + "'");
      return;
    }
    *out = level;
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
      if (Size(entry.second, "scheduler.quotas." + tenant, &bytes)) c->quotas[tenant] = bytes;
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
      const size_t before = count_;
      ReadTokenFile(cluster["token_file"], token_file, &c->token);
      if (count_ == before && c->token.size() < 8) {
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
                          "log_level"})) {
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
    Size(n["memory"], f + ".memory", &spec.memory_bytes);
    const bool gpus_ok = Gpus(n["gpus"], f + ".gpus", &spec);
    if (Size(n["slice_memory"], f + ".slice_memory", &spec.slice_memory_bytes) && gpus_ok) {
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
      if (!Size(list[i]["memory"], f + ".memory", &gpu.memory_bytes)) {
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
    c.source = source_;
    if (!root.IsDefined() || root.IsNull()) {
      Error(root, "(file)", "is empty");
      return c;
    }
    if (!CheckKeys(root, "", {"cluster", "head", "nodes", "scheduler"})) return c;
    if (const YAML::Node sched = root["scheduler"]; sched.IsDefined() && !sched.IsNull()) Scheduler(sched, &c);
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
  std::string source_;
  std::string base_dir_;
  std::vector<ConfigError> errors_;
  size_t count_ = 0;
};

ConfigError YamlError(const std::string& source, const YAML::Exception& e, const std::string& what) {
  ConfigError error;
  error.file = source;
  if (e.mark.line >= 0) {
    error.line = e.mark.line + 1;
    error.column = e.mark.column + 1;
  }
  error.field = "(yaml)";
  error.message = what + e.msg;
  return error;
}

StatusOr<ClusterConfig> ToStatusOr(const std::vector<ConfigError>& errors, ClusterConfig config) {
  if (errors.empty()) return config;
  std::string message;
  for (const auto& e : errors) message += (message.empty() ? "" : "\n") + e.ToString();
  return InvalidArgumentError(message);
}

// The file's text, at most kMaxConfigFileBytes of it.
StatusOr<std::string> ReadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError("cannot read cluster config " + path + " (does it exist?)");
  std::string text(kMaxConfigFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return InvalidArgumentError("cannot read cluster config " + path);
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfigFileBytes) {
    return InvalidArgumentError("cluster config " + path + " is longer than " + FormatBytes(kMaxConfigFileBytes));
  }
  return text;
}

std::string BaseDir(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

std::string ConfigError::ToString() const {
  std::string where = file;
  if (line > 0) where += ":" + std::to_string(line) + ":" + std::to_string(column);
  return where + ": " + field + ": " + message;
}

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

StatusOr<uint64_t> ParseSize(const std::string& text) {
  size_t i = 0;
  const std::optional<double> number = ParseDecimal(text, &i);
  if (!number) return InvalidArgumentError("expected a size such as 8GiB, got '" + text + "'");
  std::string unit = text.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},       {"B", 1},       {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0},      {"KB", 1e3},      {"MB", 1e6},       {"GB", 1e9},
      {"TB", 1e12},  {"K", 1024.0},  {"M", 1048576.0}, {"G", 1073741824.0}};
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) {
      // Compared before converting: 2^64 and above would wrap.
      const double bytes = std::round(*number * factor);
      if (!(bytes < 18446744073709551616.0)) return InvalidArgumentError("size '" + text + "' is too large");
      return static_cast<uint64_t>(bytes);
    }
  }
  return InvalidArgumentError("unknown size unit '" + unit + "' in '" + text + "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB)");
}

StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  size_t i = 0;
  const std::optional<double> number = ParseDecimal(text, &i);
  if (!number) return InvalidArgumentError("expected a duration such as 100ms or 1s, got '" + text + "'");
  const std::string unit = text.substr(i);
  double ms = 0;
  if (unit == "us") ms = *number / 1000;
  else if (unit == "ms") ms = *number;
  else if (unit == "s") ms = *number * 1000;
  else if (unit == "m") ms = *number * 60000;
  else if (unit == "h") ms = *number * 3600000;
  else return InvalidArgumentError("unknown duration unit '" + unit + "' in '" + text + "' (use us, ms, s, m, h)");
  constexpr double kYearMs = 365.0 * 24 * 3600 * 1000;
  if (!(ms <= kYearMs)) return InvalidArgumentError("duration '" + text + "' is too long (at most a year)");
  if (*number > 0 && ms < 1) ms = 1;
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
}

std::vector<ConfigError> ValidateClusterConfigText(const std::string& yaml, const std::string& source,
                                                   const std::string& base_dir, ClusterConfig* config) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return {YamlError(source, e, "not valid YAML: ")};
  }
  Parser parser(source, base_dir);
  try {
    ClusterConfig parsed = parser.Parse(root);
    if (config != nullptr && parser.errors().empty()) *config = std::move(parsed);
  } catch (const YAML::Exception& e) {
    parser.errors().push_back(YamlError(source, e, ""));
  }
  if (parser.count() > kMaxConfigErrors) {
    parser.errors().push_back(ConfigError{source, 0, 0, "(file)",
                                          std::to_string(parser.count() - kMaxConfigErrors) +
                                              " more errors not listed (the first " +
                                              std::to_string(kMaxConfigErrors) + " are)"});
  }
  return std::move(parser.errors());
}

std::vector<ConfigError> ValidateClusterConfig(const std::string& path, ClusterConfig* config) {
  auto text = ReadConfigFile(path);
  if (!text.ok()) return {ConfigError{path, 0, 0, "(file)", text.status().message()}};
  return ValidateClusterConfigText(*text, path, BaseDir(path), config);
}

StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml, const std::string& source,
                                           const std::string& base_dir) {
  ClusterConfig config;
  auto errors = ValidateClusterConfigText(yaml, source, base_dir, &config);
  return ToStatusOr(errors, std::move(config));
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
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseClusterConfig(text, path, BaseDir(path));
}

}  // namespace troupe::cluster
