// DeploymentSpec parsing, its rules and its JSON (docs/serving.md, "The deployment spec").
#include "actors/serving/deployment_spec.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <utility>

namespace troupe::serving {

namespace {

using std::chrono::milliseconds;

// Bounds beyond the header's (docs/serving.md lists them all): a typo is refused at deploy
// rather than left to misbehave later. Resources as a training job's workers.
constexpr uint64_t kMaxSizeBytes = uint64_t{1} << 50;  // 1 PiB, as in the cluster file
constexpr uint32_t kMaxReplicaSlices = 1024;
constexpr uint32_t kMaxReplicaCpus = 1 << 16;
constexpr uint32_t kMaxWeight = 10000;
constexpr uint32_t kMaxOngoingRequests = 100000;
constexpr uint32_t kMaxQueuedRequests = 1000000;
constexpr uint32_t kMaxFailureThreshold = 100;
constexpr uint32_t kMaxTestTokens = 1000000;
constexpr double kMaxRate = 1e6;  // requests, tokens or a scale rate per second or per step
constexpr milliseconds kHour{60 * 60 * 1000};
constexpr milliseconds kMaxReadyTimeout{2 * 60 * 60 * 1000};
// Knative's bounds on its panic threshold (110% to 1000%).
constexpr double kMinPanicThreshold = 1.1;
constexpr double kMaxPanicThreshold = 10.0;
constexpr milliseconds kMinTick{10};
constexpr milliseconds kMinStableWindow{1000};

bool Given(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

std::string Num(double value) { return fmt::format("{}", value); }

// Where one version's fields are named: versions[<name>] when its name is a valid one used once,
// else versions[<index>].
std::string VersionPrefix(const DeploymentSpec& spec, size_t i) {
  const std::string& name = spec.versions[i].name;
  const bool unique = std::count_if(spec.versions.begin(), spec.versions.end(),
                                    [&](const VersionSpec& v) { return v.name == name; }) == 1;
  return "versions[" + (runtime::IsDnsLabel(name) && unique ? name : std::to_string(i)) + "]";
}

using Report = std::function<void(const std::string& field, const std::string& message)>;

// The rules of a deployment spec that hold whichever way it was made (YAML, code, JSON); each
// problem goes to `report` as (field, what was expected).
class Rules {
 public:
  explicit Rules(Report report) : report_(std::move(report)) {}

  void Check(const DeploymentSpec& spec) {
    if (spec.name.empty()) {
      report_("name", "missing (the deployment's name, unique in the cluster)");
    } else {
      Name("name", spec.name);
    }
    if (spec.tenant.empty()) report_("tenant", "must not be empty");
    Versions(spec);
    Replicas(spec.autoscaling);
    Autoscaling(spec.autoscaling);
    if (AtMost("max_ongoing_requests", spec.max_ongoing_requests, kMaxOngoingRequests, 1) &&
        spec.max_ongoing_requests < spec.autoscaling.target_ongoing_requests) {
      report_("max_ongoing_requests",
              "must be at least autoscaling.target_ongoing_requests (" + Num(spec.autoscaling.target_ongoing_requests) +
                  "): a replica could never carry its target load");
    }
    AtMost("max_queued_requests", spec.max_queued_requests, kMaxQueuedRequests, 0);
    if (spec.max_queued_requests == 0 && spec.autoscaling.min_replicas == 0) {
      report_("max_queued_requests",
              "must be at least 1 with replicas.min 0: requests wait in the router's queue while the first replica "
              "starts");
    }
    Duration("request_timeout", spec.request_timeout, kHour, milliseconds(1));
    const HealthCheckConfig& h = spec.health_check;
    Duration("health_check.interval", h.interval, kHour, milliseconds(1));
    if (Duration("health_check.timeout", h.timeout, kHour, milliseconds(1)) && h.timeout > h.interval) {
      report_("health_check.timeout", "must not be longer than health_check.interval (" +
                                          runtime::FormatDuration(h.interval) + "): checks would overlap");
    }
    AtMost("health_check.failure_threshold", h.failure_threshold, kMaxFailureThreshold, 1);
    Duration("drain_timeout", spec.drain_timeout, kHour, milliseconds(0));
    const bool surge_ok = Rollout("rollout.max_surge", spec.rollout.max_surge);
    if (Rollout("rollout.max_unavailable", spec.rollout.max_unavailable) && surge_ok &&
        spec.rollout.max_surge.value == 0 && spec.rollout.max_unavailable.value == 0) {
      report_("rollout.max_unavailable",
              "max_surge and max_unavailable must not both be 0: an update could neither add nor remove a replica");
    }
  }

 private:
  void Name(const std::string& field, const std::string& name) {
    if (!runtime::IsDnsLabel(name)) {
      report_(field, "'" + name +
                         "' is not a valid name: lower-case letters, digits and '-', at most 63, starting and ending "
                         "with a letter or digit");
    }
  }

  // In [min, max]; the message says which bound.
  bool AtMost(const std::string& field, uint64_t value, uint64_t max, uint64_t min) {
    if (value < min) {
      report_(field, "must be at least " + std::to_string(min));
      return false;
    }
    if (value > max) {
      report_(field, "must be at most " + std::to_string(max) + ", got " + std::to_string(value));
      return false;
    }
    return true;
  }

  bool Size(const std::string& field, uint64_t bytes) {
    if (bytes <= kMaxSizeBytes) return true;
    report_(field, "must be at most " + runtime::FormatBytes(kMaxSizeBytes) + ", got " + runtime::FormatBytes(bytes));
    return false;
  }

  bool Duration(const std::string& field, milliseconds value, milliseconds max, milliseconds min) {
    if (value < min) {
      report_(field, min.count() == 0 ? "must not be negative" : "must be at least " + runtime::FormatDuration(min));
      return false;
    }
    if (value > max) {
      report_(field, "must be at most " + runtime::FormatDuration(max) + ", got " + runtime::FormatDuration(value));
      return false;
    }
    return true;
  }

  // In [min, max], or above min when `open` (the message says which).
  bool Number(const std::string& field, double value, double min, double max, bool open = false) {
    if (!(open ? value > min : value >= min) || !(value <= max)) {
      report_(field, std::string("must be ") + (open ? "above " : "at least ") + Num(min) + " and at most " + Num(max) +
                         ", got " + Num(value));
      return false;
    }
    return true;
  }

  void Versions(const DeploymentSpec& spec) {
    if (spec.versions.empty()) {
      report_("versions", "missing (at least one version: its name, backend and resources)");
      return;
    }
    if (spec.versions.size() > kMaxDeploymentVersions) {
      report_("versions", "at most " + std::to_string(kMaxDeploymentVersions) + " versions, got " +
                              std::to_string(spec.versions.size()));
    }
    std::set<std::string> names;
    uint64_t weights = 0;
    for (size_t i = 0; i < spec.versions.size(); ++i) {
      const VersionSpec& v = spec.versions[i];
      const std::string p = VersionPrefix(spec, i);
      if (v.name.empty()) {
        report_(p + ".name", "missing (the version's name, such as v1)");
      } else if (!names.insert(v.name).second) {
        report_(p + ".name", "'" + v.name + "' is used by two versions");
      } else {
        Name(p + ".name", v.name);
      }
      Version(p, v);
      weights += v.weight;
    }
    if (weights == 0) report_("versions", "every weight is 0: give at least one version a weight above 0");
  }

  void Version(const std::string& p, const VersionSpec& v) {
    if (!v.model_name.empty()) {
      Name(p + ".model", v.model_name);
      if (v.model_version == 0) report_(p + ".model", "the version must be at least 1 (troupe model list)");
      if (!v.model_path.empty()) report_(p + ".path", "give model or path, not both");
    }
    if (v.backend == BackendKind::kTest) {
      const TestBackend& t = v.test;
      const std::string b = p + ".backend.test.";
      Number(b + "tokens_per_second", t.tokens_per_second, 0, kMaxRate);
      Duration(b + "first_token_latency", t.first_token_latency, kHour, milliseconds(0));
      AtMost(b + "max_tokens", t.max_tokens, kMaxTestTokens, 1);
      Duration(b + "startup_delay", t.startup_delay, kHour, milliseconds(0));
    } else {
      const ProcessBackend& proc = v.process;
      const std::string b = p + ".backend.process.";
      if (proc.command.empty()) {
        report_(b + "command", "missing (the server and its arguments, such as [vllm, serve, MODEL])");
      } else if (proc.command.front().empty()) {
        report_(b + "command", "the program (the first item) is empty");
      }
      for (const auto& [name, value] : proc.env) {
        if (!runtime::IsEnvName(name)) report_(b + "env." + name, "not a variable name");
      }
      if (!runtime::IsEnvName(proc.port_env)) {
        report_(b + "port_env", "'" + proc.port_env + "' is not a variable name (letters, digits and '_')");
      }
      if (proc.health_path.empty() || proc.health_path.front() != '/') {
        report_(b + "health_path", "must be an HTTP path starting with '/', got '" + proc.health_path + "'");
      }
      Duration(b + "ready_timeout", proc.ready_timeout, kMaxReadyTimeout, milliseconds(1));
    }
    const ReplicaResources& r = v.resources;
    const std::string res = p + ".resources.";
    AtMost(res + "slices", r.slices, kMaxReplicaSlices, 0);
    if (Size(res + "slice_memory", r.slice_memory_bytes) && r.slices > 1 && r.slice_memory_bytes == 0) {
      report_(res + "slice_memory",
              "required when slices is above 1 (the scheduler places slices x slice_memory on one GPU)");
    }
    AtMost(res + "compute_percent", r.compute_percent, 100, 0);
    AtMost(res + "cpus", r.cpus, kMaxReplicaCpus, 1);
    Size(res + "memory", r.host_memory_bytes);
    AtMost(p + ".weight", v.weight, kMaxWeight, 0);
  }

  void Replicas(const AutoscalingConfig& a) {
    const bool max_ok = AtMost("replicas.max", a.max_replicas, kMaxDeploymentReplicas, 1);
    if (!max_ok) return;
    if (a.min_replicas > a.max_replicas) {
      report_("replicas.min", "must not be above replicas.max (" + std::to_string(a.max_replicas) + "), got " +
                                  std::to_string(a.min_replicas));
      return;
    }
    if (a.initial_replicas < a.min_replicas || a.initial_replicas > a.max_replicas) {
      report_("replicas.initial", "must be between replicas.min and replicas.max (" + std::to_string(a.min_replicas) +
                                      ".." + std::to_string(a.max_replicas) + "), got " +
                                      std::to_string(a.initial_replicas));
    }
  }

  void Autoscaling(const AutoscalingConfig& a) {
    Number("autoscaling.target_ongoing_requests", a.target_ongoing_requests, 0, kMaxRate, true);
    Number("autoscaling.target_requests_per_second", a.target_requests_per_second, 0, kMaxRate);
    const bool stable_ok = Duration("autoscaling.stable_window", a.stable_window, kHour, kMinStableWindow);
    if (Duration("autoscaling.panic_window", a.panic_window, kHour, milliseconds(1)) && stable_ok &&
        a.panic_window > a.stable_window) {
      report_("autoscaling.panic_window",
              "must not be longer than autoscaling.stable_window (" + runtime::FormatDuration(a.stable_window) + ")");
    }
    if (Duration("autoscaling.tick", a.tick, std::chrono::minutes(1), kMinTick) && a.tick > a.panic_window) {
      report_("autoscaling.tick", "must not be longer than autoscaling.panic_window (" +
                                      runtime::FormatDuration(a.panic_window) + "): a panic would go unseen");
    }
    Number("autoscaling.panic_threshold", a.panic_threshold, kMinPanicThreshold, kMaxPanicThreshold);
    Number("autoscaling.max_scale_up_rate", a.max_scale_up_rate, 1, kMaxRate, true);
    Number("autoscaling.max_scale_down_rate", a.max_scale_down_rate, 1, kMaxRate, true);
    Duration("autoscaling.scale_down_delay", a.scale_down_delay, kHour, milliseconds(0));
    Duration("autoscaling.scale_to_zero_grace", a.scale_to_zero_grace, kHour, milliseconds(0));
  }

  bool Rollout(const std::string& field, const CountOrPercent& value) {
    if (value.percent && value.value > 100) {
      report_(field, "must be at most 100%, got " + value.ToString());
      return false;
    }
    return value.percent || AtMost(field, value.value, kMaxDeploymentReplicas, 0);
  }

  Report report_;
};

// Reads a deployment spec's YAML tree into a DeploymentSpec: the shape and types of every field
// (every problem recorded, reading goes on), then the Rules, each problem placed at the line of
// the field it names (or of the nearest section given).
class DeploymentSpecReader : public runtime::YamlReader {
 public:
  DeploymentSpecReader(std::string source, std::string base_dir)
      : YamlReader(std::move(source)), base_dir_(std::move(base_dir)) {}

  void Parse(const YAML::Node& root, DeploymentSpec* spec) {
    root_ = root;
    if (!Given(root)) {
      Error(root, "(file)", "is empty");
      return;
    }
    if (!CheckKeys(root, "", {"name", "tenant", "versions", "replicas", "autoscaling", "routing",
                              "max_ongoing_requests", "max_queued_requests", "request_timeout", "health_check",
                              "drain_timeout", "rollout"})) {
      return;
    }
    Field(root, "name", "name", [&](auto& n, auto& f) { return String(n, f, &spec->name); });
    Field(root, "tenant", "tenant", [&](auto& n, auto& f) { return String(n, f, &spec->tenant); });
    Versions(At(root, "versions", "versions"), spec);
    ReplicaCounts(root, &spec->autoscaling);
    if (const YAML::Node a = Section(root, "autoscaling", "autoscaling", kAutoscalingKeys); Given(a)) {
      Autoscaling(a, &spec->autoscaling);
    }
    Field(root, "routing", "routing", [&](auto& n, auto& f) {
      std::string name;
      if (!String(n, f, &name) || name.empty()) return true;
      auto policy = ParseRoutingPolicy(name);
      if (!policy.ok()) {
        Error(n, f, policy.status().message());
        return false;
      }
      spec->routing = *policy;
      return true;
    });
    U32(root, "max_ongoing_requests", "max_ongoing_requests", &spec->max_ongoing_requests);
    U32(root, "max_queued_requests", "max_queued_requests", &spec->max_queued_requests);
    Time(root, "request_timeout", "request_timeout", &spec->request_timeout);
    if (const YAML::Node h = Section(root, "health_check", "health_check",
                                     {"interval", "timeout", "failure_threshold", "probe_request_path"});
        Given(h)) {
      HealthCheckConfig* c = &spec->health_check;
      Time(h, "interval", "health_check.interval", &c->interval);
      Time(h, "timeout", "health_check.timeout", &c->timeout);
      U32(h, "failure_threshold", "health_check.failure_threshold", &c->failure_threshold);
      Field(h, "probe_request_path", "health_check.probe_request_path",
           [&](auto& n, auto& f) { return Bool(n, f, &c->probe_request_path); });
    }
    Time(root, "drain_timeout", "drain_timeout", &spec->drain_timeout);
    if (const YAML::Node r = Section(root, "rollout", "rollout", {"max_surge", "max_unavailable"}); Given(r)) {
      Field(r, "max_surge", "rollout.max_surge",
            [&](auto& n, auto& f) { return Amount(n, f, &spec->rollout.max_surge); });
      Field(r, "max_unavailable", "rollout.max_unavailable",
           [&](auto& n, auto& f) { return Amount(n, f, &spec->rollout.max_unavailable); });
    }
    Rules([&](const std::string& field, const std::string& message) { Place(field, message); }).Check(*spec);
  }

 private:
  inline static const std::set<std::string> kAutoscalingKeys = {
      "target_ongoing_requests", "target_requests_per_second", "stable_window", "panic_window",
      "panic_threshold",         "tick",                       "max_scale_up_rate", "max_scale_down_rate",
      "scale_down_delay",        "scale_to_zero_grace"};

  // `map[key]`, remembered as the node of `field` for the Rules' errors.
  YAML::Node At(const YAML::Node& map, const char* key, const std::string& field) {
    YAML::Node node = map[key];
    if (node.IsDefined()) nodes_[field] = node;
    return node;
  }

  // Reads `map[key]` with `read(node, field)`; a field that could not be read is not judged
  // again by the Rules (its default would be).
  template <class ReadFn>
  bool Field(const YAML::Node& map, const char* key, const std::string& field, ReadFn read) {
    const YAML::Node node = At(map, key, field);
    const bool ok = read(node, field);
    if (!ok) failed_.insert(field);
    return ok;
  }

  void U32(const YAML::Node& map, const char* key, const std::string& field, uint32_t* out) {
    Field(map, key, field,
         [&](auto& n, auto& f) { return Integer(n, f, out, std::numeric_limits<uint32_t>::max()); });
  }
  void Bytes(const YAML::Node& map, const char* key, const std::string& field, uint64_t* out) {
    Field(map, key, field, [&](auto& n, auto& f) { return Size(n, f, std::numeric_limits<uint64_t>::max(), out); });
  }
  void Time(const YAML::Node& map, const char* key, const std::string& field, milliseconds* out) {
    // ParseDuration's own bound (a year) is far above every field's; the Rules hold the real one.
    Field(map, key, field, [&](auto& n, auto& f) { return Duration(n, f, milliseconds::max(), out); });
  }
  void Real(const YAML::Node& map, const char* key, const std::string& field, double* out) {
    Field(map, key, field,
         [&](auto& n, auto& f) { return Number(n, f, 0, std::numeric_limits<double>::max(), out); });
  }

  // `map[key]` when it is a mapping of the `allowed` keys; a null node (absent, or failed).
  YAML::Node Section(const YAML::Node& map, const char* key, const std::string& field,
                     const std::set<std::string>& allowed) {
    const YAML::Node node = At(map, key, field);
    if (!Given(node)) return YAML::Node(YAML::NodeType::Null);
    if (!CheckKeys(node, field, allowed)) {
      failed_.insert(field);
      return YAML::Node(YAML::NodeType::Null);
    }
    return node;
  }

  void Versions(const YAML::Node& list, DeploymentSpec* spec) {
    if (!Given(list)) return;  // the Rules say it is missing
    if (!list.IsSequence()) {
      Error(list, "versions", "expected a list of versions, such as [{name: v1, backend: {test: {}}}]");
      failed_.insert("versions");
      return;
    }
    spec->versions.resize(list.size());
    // Names first: they name the versions' fields (VersionPrefix).
    std::vector<YAML::Node> names;  // copied, not assigned: a YAML::Node assigned an absent key throws
    for (size_t i = 0; i < list.size(); ++i) {
      names.push_back(list[i].IsMap() ? list[i]["name"] : YAML::Node());
      const std::string field = "versions[" + std::to_string(i) + "].name";
      if (!String(names[i], field, &spec->versions[i].name)) failed_.insert(field);
    }
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string p = VersionPrefix(*spec, i);
      nodes_[p] = list[i];
      if (names[i].IsDefined()) nodes_[p + ".name"] = names[i];
      if (failed_.count("versions[" + std::to_string(i) + "].name") != 0) failed_.insert(p + ".name");
      Version(list[i], p, &spec->versions[i]);
    }
  }

  void Version(const YAML::Node& node, const std::string& p, VersionSpec* v) {
    if (!CheckKeys(node, p, {"name", "model", "path", "backend", "resources", "weight"})) {
      failed_.insert(p);
      return;
    }
    Field(node, "model", p + ".model", [&](auto& n, auto& f) { return Model(n, f, v); });
    Field(node, "path", p + ".path", [&](auto& n, auto& f) {
      if (!String(n, f, &v->model_path)) return false;
      if (!v->model_path.empty()) v->model_path = runtime::AbsolutePath(base_dir_, v->model_path);
      return true;
    });
    Backend(node, p, v);
    if (const YAML::Node r = Section(node, "resources", p + ".resources",
                                     {"slices", "slice_memory", "compute_percent", "cpus", "memory"});
        Given(r)) {
      const std::string f = p + ".resources.";
      U32(r, "slices", f + "slices", &v->resources.slices);
      Bytes(r, "slice_memory", f + "slice_memory", &v->resources.slice_memory_bytes);
      U32(r, "compute_percent", f + "compute_percent", &v->resources.compute_percent);
      U32(r, "cpus", f + "cpus", &v->resources.cpus);
      Bytes(r, "memory", f + "memory", &v->resources.host_memory_bytes);
    }
    U32(node, "weight", p + ".weight", &v->weight);
  }

  // "NAME:VERSION" from the model repository.
  bool Model(const YAML::Node& node, const std::string& field, VersionSpec* v) {
    std::string text;
    if (!String(node, field, &text) || text.empty()) return true;
    const size_t colon = text.rfind(':');
    const std::string number = colon == std::string::npos ? "" : text.substr(colon + 1);
    const bool digits = !number.empty() && number.size() <= 19 &&
                        std::all_of(number.begin(), number.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (!digits) {
      Error(node, field,
            "expected NAME:VERSION of the model repository, such as tiny-gpt:3 (troupe model list), got '" + text +
                "'");
      return false;
    }
    v->model_name = text.substr(0, colon);
    v->model_version = std::stoull(number);
    return true;
  }

  // backend: {test: {...}} or {process: {...}}: exactly one.
  void Backend(const YAML::Node& version, const std::string& p, VersionSpec* v) {
    const std::string field = p + ".backend";
    const YAML::Node node = At(version, "backend", field);
    if (!Given(node)) {
      Error(version, field, "missing (test: {...} for the in-process test model, or process: {command: [...]})");
      failed_.insert(field);
      return;
    }
    if (!CheckKeys(node, field, {"process", "test"})) {
      failed_.insert(field);
      return;
    }
    const bool test = node["test"].IsDefined();
    const bool process = node["process"].IsDefined();
    if (test == process) {
      Error(node, field, test ? "give one of test and process, not both" : "give one of test and process");
      failed_.insert(field);
      return;
    }
    v->backend = test ? BackendKind::kTest : BackendKind::kProcess;
    if (test) {
      const YAML::Node t = Section(node, "test", field + ".test",
                                   {"tokens_per_second", "first_token_latency", "max_tokens", "startup_delay",
                                    "fail_every", "crash_after", "stall_after"});
      if (!Given(t)) return;
      const std::string f = field + ".test.";
      Real(t, "tokens_per_second", f + "tokens_per_second", &v->test.tokens_per_second);
      Time(t, "first_token_latency", f + "first_token_latency", &v->test.first_token_latency);
      U32(t, "max_tokens", f + "max_tokens", &v->test.max_tokens);
      Time(t, "startup_delay", f + "startup_delay", &v->test.startup_delay);
      U32(t, "fail_every", f + "fail_every", &v->test.fail_every);
      U32(t, "crash_after", f + "crash_after", &v->test.crash_after);
      U32(t, "stall_after", f + "stall_after", &v->test.stall_after);
      return;
    }
    const YAML::Node proc = Section(node, "process", field + ".process",
                                    {"command", "env", "working_dir", "port_env", "health_path", "ready_timeout"});
    if (!Given(proc)) return;  // an empty process: the Rules say the command is missing
    const std::string f = field + ".process.";
    ProcessBackend* b = &v->process;
    Field(proc, "working_dir", f + "working_dir",
         [&](auto& n, auto& fld) { return WorkingDir(n, fld, base_dir_, &b->working_dir); });
    Field(proc, "command", f + "command", [&](auto& n, auto& fld) {
      return !Given(n) || Command(n, fld, b->working_dir, &b->command);
    });
    Field(proc, "env", f + "env", [&](auto& n, auto& fld) { return Environment(n, fld, &b->env); });
    Field(proc, "port_env", f + "port_env", [&](auto& n, auto& fld) { return String(n, fld, &b->port_env); });
    Field(proc, "health_path", f + "health_path", [&](auto& n, auto& fld) { return String(n, fld, &b->health_path); });
    Time(proc, "ready_timeout", f + "ready_timeout", &b->ready_timeout);
  }

  // replicas: {min, max, initial}. max defaults to min (at least 1: no autoscaling unless max is
  // given), initial to min but at least 1 (Knative's initial-scale 1: a new deployment shows it
  // can serve before it scales to zero), never above max.
  void ReplicaCounts(const YAML::Node& root, AutoscalingConfig* a) {
    const YAML::Node r = Section(root, "replicas", "replicas", {"min", "max", "initial"});
    if (!Given(r)) return;
    U32(r, "min", "replicas.min", &a->min_replicas);
    a->max_replicas = std::max<uint32_t>(a->min_replicas, 1);
    U32(r, "max", "replicas.max", &a->max_replicas);
    a->initial_replicas = std::min(std::max<uint32_t>(a->min_replicas, 1), a->max_replicas);
    U32(r, "initial", "replicas.initial", &a->initial_replicas);
  }

  void Autoscaling(const YAML::Node& node, AutoscalingConfig* a) {
    const std::string f = "autoscaling.";
    Real(node, "target_ongoing_requests", f + "target_ongoing_requests", &a->target_ongoing_requests);
    Real(node, "target_requests_per_second", f + "target_requests_per_second", &a->target_requests_per_second);
    Time(node, "stable_window", f + "stable_window", &a->stable_window);
    Time(node, "panic_window", f + "panic_window", &a->panic_window);
    Real(node, "panic_threshold", f + "panic_threshold", &a->panic_threshold);
    Time(node, "tick", f + "tick", &a->tick);
    Real(node, "max_scale_up_rate", f + "max_scale_up_rate", &a->max_scale_up_rate);
    Real(node, "max_scale_down_rate", f + "max_scale_down_rate", &a->max_scale_down_rate);
    Time(node, "scale_down_delay", f + "scale_down_delay", &a->scale_down_delay);
    Time(node, "scale_to_zero_grace", f + "scale_to_zero_grace", &a->scale_to_zero_grace);
  }

  // A count ("2") or a percentage ("25%").
  bool Amount(const YAML::Node& node, const std::string& field, CountOrPercent* out) {
    if (!Given(node)) return true;
    const std::string text = node.IsScalar() ? node.Scalar() : "";
    const bool percent = !text.empty() && text.back() == '%';
    const std::string number = percent ? text.substr(0, text.size() - 1) : text;
    const bool digits = !number.empty() && number.size() <= 9 &&
                        std::all_of(number.begin(), number.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (!digits) {
      Error(node, field, "expected a number of replicas or a percentage, such as 1 or 25%" +
                             (node.IsScalar() ? ", got '" + text + "'" : std::string()));
      return false;
    }
    *out = CountOrPercent{static_cast<uint32_t>(std::stoul(number)), percent};
    return true;
  }

  // A Rules error at `field`'s node, or its nearest enclosing one that was given; none when the
  // field (or a section around it) could not be read: that was reported already.
  void Place(const std::string& field, const std::string& message) {
    for (std::string f = field;;) {
      if (failed_.count(f) != 0) return;
      const size_t cut = f.find_last_of(".[");
      if (cut == std::string::npos) break;
      f.resize(cut);
    }
    for (std::string f = field;;) {
      if (auto it = nodes_.find(f); it != nodes_.end()) return Error(it->second, field, message);
      const size_t cut = f.find_last_of(".[");
      if (cut == std::string::npos) return Error(root_, field, message);
      f.resize(cut);
    }
  }

  std::string base_dir_;
  YAML::Node root_;
  std::map<std::string, YAML::Node> nodes_;
  std::set<std::string> failed_;
};

// ---- JSON: one list of each struct's keys (the *Fields templates), walked by a writer or a
// reader. ----

using nlohmann::json;

// Writes each field it is shown into `out`: durations as text, rollout amounts as 2 or "25%".
struct JsonWriter {
  json& out;
  template <class T>
  void operator()(const char* key, const T& value) {
    out[key] = value;
  }
  void operator()(const char* key, const milliseconds& d) { out[key] = runtime::FormatDuration(d); }
  void operator()(const char* key, const RoutingPolicyKind& kind) { out[key] = RoutingPolicyName(kind); }
  void operator()(const char* key, const CountOrPercent& a) {
    out[key] = a.percent ? json(a.ToString()) : json(a.value);
  }
  template <class Fields>
  void Section(const char* key, Fields fields) {
    JsonWriter section{out[key]};
    fields(section);
  }
};

// Reads each field it is shown from `in`, when `in` has it (else the field keeps its default).
// Throws on a value of the wrong type (nlohmann) or syntax (std::invalid_argument).
struct JsonReader {
  const json& in;
  template <class T>
  void operator()(const char* key, T& value) {
    if (in.contains(key)) value = in.at(key).get<T>();
  }
  void operator()(const char* key, milliseconds& d) {
    if (!in.contains(key)) return;
    auto parsed = runtime::ParseDuration(in.at(key).get<std::string>());
    if (!parsed.ok()) throw std::invalid_argument(std::string(key) + ": " + parsed.status().message());
    d = *parsed;
  }
  void operator()(const char* key, RoutingPolicyKind& kind) {
    if (!in.contains(key)) return;
    auto parsed = ParseRoutingPolicy(in.at(key).get<std::string>());
    if (!parsed.ok()) throw std::invalid_argument(std::string(key) + ": " + parsed.status().message());
    kind = *parsed;
  }
  void operator()(const char* key, CountOrPercent& a) {
    if (!in.contains(key)) return;
    const json& value = in.at(key);
    if (value.is_number_unsigned()) {
      a = CountOrPercent{value.get<uint32_t>(), false};
      return;
    }
    const std::string text = value.get<std::string>();
    if (text.empty() || text.back() != '%') throw std::invalid_argument(std::string(key) + ": expected N or \"N%\"");
    a = CountOrPercent{static_cast<uint32_t>(std::stoul(text.substr(0, text.size() - 1))), true};
  }
  template <class Fields>
  void Section(const char* key, Fields fields) {
    if (!in.contains(key)) return;
    JsonReader section{in.at(key)};
    fields(section);
  }
};

// `S` is the struct, const for the writer; `V` a JsonWriter or JsonReader.
template <class S, class V>
void TestFields(S& t, V& v) {
  v("tokens_per_second", t.tokens_per_second);
  v("first_token_latency", t.first_token_latency);
  v("max_tokens", t.max_tokens);
  v("startup_delay", t.startup_delay);
  v("fail_every", t.fail_every);
  v("crash_after", t.crash_after);
  v("stall_after", t.stall_after);
}

template <class S, class V>
void ProcessFields(S& p, V& v) {
  v("command", p.command);
  v("env", p.env);
  v("working_dir", p.working_dir);
  v("port_env", p.port_env);
  v("health_path", p.health_path);
  v("ready_timeout", p.ready_timeout);
}

// The model ("NAME:VERSION") and the backend's name and section are not plain fields: VersionJson
// and VersionFrom handle them.
template <class S, class V>
void VersionFields(S& ver, V& v) {
  v("name", ver.name);
  v("path", ver.model_path);
  v("weight", ver.weight);
  v.Section("resources", [&](auto& r) {
    r("slices", ver.resources.slices);
    r("slice_memory_bytes", ver.resources.slice_memory_bytes);
    r("compute_percent", ver.resources.compute_percent);
    r("cpus", ver.resources.cpus);
    r("memory_bytes", ver.resources.host_memory_bytes);
  });
}

// Every field but the versions.
template <class S, class V>
void SpecFields(S& spec, V& v) {
  auto& a = spec.autoscaling;
  v("name", spec.name);
  v("tenant", spec.tenant);
  v.Section("replicas", [&](auto& r) {
    r("min", a.min_replicas);
    r("max", a.max_replicas);
    r("initial", a.initial_replicas);
  });
  v.Section("autoscaling", [&](auto& s) {
    s("target_ongoing_requests", a.target_ongoing_requests);
    s("target_requests_per_second", a.target_requests_per_second);
    s("stable_window", a.stable_window);
    s("panic_window", a.panic_window);
    s("panic_threshold", a.panic_threshold);
    s("tick", a.tick);
    s("max_scale_up_rate", a.max_scale_up_rate);
    s("max_scale_down_rate", a.max_scale_down_rate);
    s("scale_down_delay", a.scale_down_delay);
    s("scale_to_zero_grace", a.scale_to_zero_grace);
  });
  v("routing", spec.routing);
  v("max_ongoing_requests", spec.max_ongoing_requests);
  v("max_queued_requests", spec.max_queued_requests);
  v("request_timeout", spec.request_timeout);
  v.Section("health_check", [&](auto& h) {
    h("interval", spec.health_check.interval);
    h("timeout", spec.health_check.timeout);
    h("failure_threshold", spec.health_check.failure_threshold);
    h("probe_request_path", spec.health_check.probe_request_path);
  });
  v("drain_timeout", spec.drain_timeout);
  v.Section("rollout", [&](auto& r) {
    r("max_surge", spec.rollout.max_surge);
    r("max_unavailable", spec.rollout.max_unavailable);
  });
}

json VersionJson(const VersionSpec& ver) {
  json out = json::object();
  JsonWriter writer{out};
  VersionFields(ver, writer);
  if (!ver.model_name.empty()) out["model"] = ver.model_name + ":" + std::to_string(ver.model_version);
  out["backend"] = BackendKindName(ver.backend);
  // Only the backend in use: the other's defaults would be noise in `troupe serve show --json`.
  if (ver.backend == BackendKind::kTest) {
    writer.Section("test", [&](auto& t) { TestFields(ver.test, t); });
  } else {
    writer.Section("process", [&](auto& p) { ProcessFields(ver.process, p); });
  }
  return out;
}

VersionSpec VersionFrom(const json& in) {
  VersionSpec ver;
  JsonReader reader{in};
  VersionFields(ver, reader);
  if (in.contains("model")) {
    const std::string model = in.at("model").get<std::string>();
    const size_t colon = model.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("model: expected NAME:VERSION, got '" + model + "'");
    ver.model_name = model.substr(0, colon);
    ver.model_version = std::stoull(model.substr(colon + 1));
  }
  std::string backend = BackendKindName(ver.backend);
  reader("backend", backend);
  if (backend != "test" && backend != "process") throw std::invalid_argument("backend: '" + backend + "'");
  ver.backend = backend == "test" ? BackendKind::kTest : BackendKind::kProcess;
  reader.Section("test", [&](auto& t) { TestFields(ver.test, t); });
  reader.Section("process", [&](auto& p) { ProcessFields(ver.process, p); });
  return ver;
}

}  // namespace

const char* BackendKindName(BackendKind kind) { return kind == BackendKind::kTest ? "test" : "process"; }

uint32_t CountOrPercent::Resolve(uint32_t replicas, bool round_up) const {
  if (!percent) return value;
  const uint64_t scaled = uint64_t{replicas} * value;
  return static_cast<uint32_t>(round_up ? (scaled + 99) / 100 : scaled / 100);
}

std::string CountOrPercent::ToString() const { return std::to_string(value) + (percent ? "%" : ""); }

RolloutStep ResolveRollout(const RolloutConfig& rollout, uint32_t desired) {
  RolloutStep step{rollout.max_surge.Resolve(desired, true), rollout.max_unavailable.Resolve(desired, false)};
  if (step.surge == 0 && step.unavailable == 0) step.unavailable = 1;
  return step;
}

std::vector<runtime::ConfigError> ValidateDeploymentSpecText(const std::string& yaml, const std::string& source,
                                                             const std::string& base_dir, DeploymentSpec* spec) {
  DeploymentSpecReader reader(source, runtime::AbsoluteDir(base_dir));
  DeploymentSpec parsed;
  std::vector<runtime::ConfigError> errors =
      reader.Read(yaml, [&](const YAML::Node& root) { reader.Parse(root, &parsed); });
  if (spec != nullptr && errors.empty()) *spec = std::move(parsed);
  return errors;
}

std::vector<runtime::ConfigError> ValidateDeploymentSpecFile(const std::string& path, DeploymentSpec* spec) {
  auto text = runtime::ReadTextFile(path, kMaxDeploymentSpecFileBytes, "deployment spec");
  if (!text.ok()) return {runtime::ConfigError{path, 0, 0, "(file)", text.status().message()}};
  return ValidateDeploymentSpecText(*text, path, runtime::BaseDir(path), spec);
}

StatusOr<DeploymentSpec> LoadDeploymentSpec(const std::string& path) {
  DeploymentSpec spec;
  RETURN_IF_ERROR(runtime::ErrorsToStatus(ValidateDeploymentSpecFile(path, &spec)));
  return spec;
}

StatusOr<DeploymentSpec> ParseDeploymentSpec(const std::string& text, const std::string& source_name) {
  DeploymentSpec spec;
  RETURN_IF_ERROR(runtime::ErrorsToStatus(ValidateDeploymentSpecText(text, source_name, ".", &spec)));
  return spec;
}

Status ValidateDeploymentSpec(const DeploymentSpec& spec) {
  std::string problems;
  Rules([&](const std::string& field, const std::string& message) {
    problems += (problems.empty() ? "" : "\n") + field + ": " + message;
  }).Check(spec);
  if (problems.empty()) return OkStatus();
  return InvalidArgumentError("deployment spec " + (spec.name.empty() ? std::string("(unnamed)") : spec.name) +
                              ":\n" + problems);
}

std::string DeploymentSpecToJson(const DeploymentSpec& spec) {
  json out = json::object();
  JsonWriter writer{out};
  SpecFields(spec, writer);
  out["versions"] = json::array();
  for (const auto& v : spec.versions) out["versions"].push_back(VersionJson(v));
  return out.dump();
}

StatusOr<DeploymentSpec> DeploymentSpecFromJson(const std::string& text) {
  DeploymentSpec spec;
  try {
    const json in = json::parse(text);
    JsonReader reader{in};
    SpecFields(spec, reader);
    if (in.contains("versions")) {
      for (const auto& v : in.at("versions")) spec.versions.push_back(VersionFrom(v));
    }
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("not a deployment spec: ") + e.what());
  }
  RETURN_IF_ERROR(ValidateDeploymentSpec(spec));
  return spec;
}

}  // namespace troupe::serving
