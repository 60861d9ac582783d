// Resolution of UCX settings from config, environment and troupe defaults.
#include "transport/ucx_options.h"

#include <sstream>

namespace troupe::transport {
namespace {

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string JoinComma(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ',';
    out += item;
  }
  return out;
}

}  // namespace

bool IsTransportLevelUcxSetting(const std::string& name) {
  for (const char* prefix : {"POSIX_", "SYSV_", "XPMEM_", "CMA_", "KNEM_", "TCP_", "SELF_", "RC_", "UD_",
                             "DC_", "IB_", "MM_", "SM_", "CUDA_", "ROCM_", "GDR_"}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

std::string EnsureTcpAllowed(const std::string& tls) {
  if (tls.empty()) return tls;
  if (tls.front() == '^') {
    std::vector<std::string> kept;
    for (const auto& t : SplitComma(tls.substr(1))) {
      if (t != "tcp") kept.push_back(t);
    }
    if (kept.empty()) return "all";
    return "^" + JoinComma(kept);
  }
  auto items = SplitComma(tls);
  for (const auto& t : items) {
    if (t == "tcp" || t == "all") return tls;
  }
  items.push_back("tcp");
  return JoinComma(items);
}

std::chrono::microseconds ResolveBusyPoll(std::chrono::microseconds configured, unsigned hardware_threads) {
  using std::chrono::microseconds;
  if (configured != kBusyPollAuto) return configured < microseconds(0) ? microseconds(0) : configured;
  return hardware_threads >= kBusyPollMinCores ? microseconds(200) : microseconds(0);
}

StatusOr<std::vector<UcxSetting>> ResolveUcxSettings(
    const UcxTransportConfig& config,
    const std::function<const char*(const char*)>& getenv_fn) {
  std::vector<UcxSetting> out;
  auto from_env = [&](const char* name) -> const char* { return getenv_fn(name); };
  // A troupe default for UCX_<name>, unless the environment sets that variable.
  auto default_unless_env = [&](const std::string& name, std::string value, std::string why) {
    if (from_env(("UCX_" + name).c_str()) == nullptr) out.push_back({name, std::move(value), std::move(why)});
  };

  // UCX_TLS: listener connections need a network transport, so tcp is always allowed.
  std::string tls = config.ucx_tls;
  std::string source = "config";
  if (tls.empty() && from_env("UCX_TLS") != nullptr) {
    tls = from_env("UCX_TLS");
    source = "environment";
  }
  if (!tls.empty()) {
    std::string fixed = EnsureTcpAllowed(tls);
    out.push_back({"TLS", fixed,
                   fixed == tls ? "from " + source
                                : "from " + source + " '" + tls + "', with tcp allowed for listener connections"});
  }

  if (!config.rndv_thresh.empty()) {
    out.push_back({"RNDV_THRESH", config.rndv_thresh, "from config"});
  } else if (from_env("UCX_RNDV_THRESH") == nullptr) {
    out.push_back({"RNDV_THRESH", kDefaultRndvThresh, "troupe default"});
  }

  default_unless_env("KEEPALIVE_INTERVAL", std::to_string(config.keepalive_interval.count()) + "ms",
                     "a killed same-host peer is seen within about this long");

  if (config.shm_error_handling) {
    for (const char* name : {"POSIX_ERROR_HANDLING", "SYSV_ERROR_HANDLING"}) {
      default_unless_env(name, "y", "keeps shared memory with peer error handling");
    }
  }

  // The 104-byte frame envelope and a small payload fit UCX's short-message path on shared
  // memory (copied straight into the peer's FIFO) only with FIFO elements above UCX's default
  // of 128 bytes; otherwise each small frame takes the slower buffered-copy path.
  for (const char* name : {"POSIX_FIFO_ELEM_SIZE", "SYSV_FIFO_ELEM_SIZE"}) {
    default_unless_env(name, kDefaultShmFifoElemSize, "small frames take the short-message path on shared memory");
  }

  for (const auto& [raw_name, value] : config.ucx_options) {
    std::string name = raw_name;
    if (name.rfind("UCX_", 0) == 0) name = name.substr(4);
    if (name.empty()) return InvalidArgumentError("ucx option with an empty name");
    bool replaced = false;
    for (auto& s : out) {
      if (s.name == name) {
        s.value = name == "TLS" ? EnsureTcpAllowed(value) : value;
        s.why = "from config ucx options";
        replaced = true;
      }
    }
    if (!replaced) {
      out.push_back({name, name == "TLS" ? EnsureTcpAllowed(value) : value, "from config ucx options"});
    }
  }
  for (auto& s : out) s.via_environment = IsTransportLevelUcxSetting(s.name);
  // The transport-level settings troupe exports go unused when UCX_TLS leaves out shared
  // memory, and UCX then warns about them on stdout, where `--json` output goes.
  bool exported = false;
  for (const auto& s : out) exported = exported || (s.via_environment && s.why != "from config ucx options");
  if (exported && from_env("UCX_WARN_UNUSED_ENV_VARS") == nullptr) {
    bool set = false;
    for (const auto& s : out) set = set || s.name == "WARN_UNUSED_ENV_VARS";
    if (!set) out.push_back({"WARN_UNUSED_ENV_VARS", "n", "troupe's own exported settings may be unused", false});
  }
  return out;
}

}  // namespace troupe::transport
