// JobSpec parsing (docs/jobs.md, "The job spec").
#include "actors/training/job_spec.h"

#include <yaml-cpp/yaml.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

namespace troupe::training {

namespace {

// Bounds beyond the header's (docs/jobs.md lists them all): a typo is refused at submit rather
// than left to misbehave later.
constexpr uint64_t kMaxJobSizeBytes = uint64_t{1} << 50;  // any size: 1 PiB, as in the cluster file
constexpr uint32_t kMaxWorkerSlices = 1024;
constexpr uint32_t kMaxWorkerCpus = 1 << 16;
constexpr uint32_t kMaxCheckpointsKept = 1000;
constexpr uint32_t kMaxRestartFailures = 10000;
constexpr std::chrono::milliseconds kMaxRestartBackoff{60 * 60 * 1000};     // 1 h
constexpr std::chrono::milliseconds kMaxStepWatchdog{24 * 60 * 60 * 1000};  // 24 h

bool Given(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

bool IsLowerAlnum(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'); }

// A DNS label (RFC 1123, as Kubernetes names objects): [a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?
bool IsDnsLabel(const std::string& s) {
  if (s.empty() || s.size() > 63 || !IsLowerAlnum(s.front()) || !IsLowerAlnum(s.back())) return false;
  for (char ch : s) {
    if (!IsLowerAlnum(ch) && ch != '-') return false;
  }
  return true;
}

// An environment variable's name: [A-Za-z_][A-Za-z0-9_]*
bool IsEnvName(const std::string& s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  for (char ch : s) {
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) return false;
  }
  return true;
}

// `path` made absolute against the directory `base` (itself absolute), without "." and "..".
std::string AbsolutePath(const std::string& base, const std::string& path) {
  std::string s = (std::filesystem::path(base) / path).lexically_normal().string();
  if (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

// Reads a job spec's YAML tree into a JobSpec; every problem is recorded and reading goes on.
class JobSpecReader : public runtime::YamlReader {
 public:
  JobSpecReader(std::string source, std::string base_dir)
      : YamlReader(std::move(source)), base_dir_(std::move(base_dir)) {}

  void Parse(const YAML::Node& root, JobSpec* spec) {
    if (!Given(root)) {
      Error(root, "(file)", "is empty");
      return;
    }
    if (!CheckKeys(root, "", {"name", "tenant", "priority", "tags", "workers", "resources", "placement", "entry",
                              "checkpoints", "restart", "step_watchdog", "output_model"})) {
      return;
    }
    if (const YAML::Node name = root["name"]; !Given(name) || (name.IsScalar() && name.Scalar().empty())) {
      Error(Given(name) ? name : root, "name", "missing (the job's name, unique in the cluster)");
    } else {
      Name(name, "name", &spec->name);
    }
    if (String(root["tenant"], "tenant", &spec->tenant) && spec->tenant.empty()) {
      Error(root["tenant"], "tenant", "must not be empty");
    }
    OneOf(root["priority"], "priority", {"urgent", "normal"}, &spec->priority);
    StringList(root["tags"], "tags", &spec->tags);
    if (Integer(root["workers"], "workers", &spec->workers, kMaxJobWorkers) && spec->workers == 0) {
      Error(root["workers"], "workers", "must be at least 1");
    }
    if (Given(root["resources"])) Resources(root["resources"], &spec->resources);
    OneOf(root["placement"], "placement", {"pack", "spread"}, &spec->placement);
    Entry(root, &spec->entry);
    if (Given(root["checkpoints"])) Checkpoints(root["checkpoints"], &spec->checkpoints);
    if (Given(root["restart"])) Restart(root["restart"], &spec->restart);
    Duration(root["step_watchdog"], "step_watchdog", kMaxStepWatchdog, &spec->step_watchdog);
    Name(root["output_model"], "output_model", &spec->output_model);
  }

 private:
  // An optional DNS label (`name` says it is required itself).
  void Name(const YAML::Node& node, const std::string& field, std::string* out) {
    std::string name;
    if (!String(node, field, &name) || name.empty()) return;
    if (!IsDnsLabel(name)) {
      Error(node, field,
            "'" + name + "' is not a valid name: lower-case letters, digits and '-', at most 63, starting and "
            "ending with a letter or digit");
      return;
    }
    *out = name;
  }

  // At least 1 when given.
  void Positive(const YAML::Node& node, const std::string& field, uint32_t* out, uint64_t max) {
    if (Integer(node, field, out, max) && *out == 0) Error(node, field, "must be at least 1");
  }

  void Resources(const YAML::Node& res, WorkerResources* r) {
    if (!CheckKeys(res, "resources", {"slices", "slice_memory", "compute_percent", "cpus", "memory"})) return;
    Integer(res["slices"], "resources.slices", &r->slices, kMaxWorkerSlices);
    Size(res["slice_memory"], "resources.slice_memory", kMaxJobSizeBytes, &r->slice_memory_bytes);
    Integer(res["compute_percent"], "resources.compute_percent", &r->compute_percent, 100);
    Positive(res["cpus"], "resources.cpus", &r->cpus, kMaxWorkerCpus);
    Size(res["memory"], "resources.memory", kMaxJobSizeBytes, &r->host_memory_bytes);
  }

  void Entry(const YAML::Node& root, EntryPoint* e) {
    const YAML::Node entry = root["entry"];
    if (!Given(entry)) {
      Error(root, "entry", "missing (the command every worker runs)");
      return;
    }
    if (!CheckKeys(entry, "entry", {"command", "env", "working_dir"})) return;
    std::string dir;
    e->working_dir = base_dir_;
    if (String(entry["working_dir"], "entry.working_dir", &dir) && !dir.empty()) {
      e->working_dir = AbsolutePath(base_dir_, dir);
      struct stat st {};
      if (stat(e->working_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        Error(entry["working_dir"], "entry.working_dir", "no such directory: " + e->working_dir);
      }
    }
    const YAML::Node command = entry["command"];
    if (!Given(command)) {
      Error(entry, "entry.command", "missing (the program and its arguments, such as [python3, train.py])");
    } else if (StringList(command, "entry.command", &e->command)) {
      if (e->command.empty()) {
        Error(command, "entry.command", "must not be empty (the program and its arguments)");
      } else {
        Program(command[0], e->command[0], e->working_dir);
      }
    }
    if (Given(entry["env"])) Env(entry["env"], &e->env);
  }

  // argv[0] must be there to run: a path (relative to the working directory) to an executable
  // file, or a name found in PATH, as execvp looks it up.
  void Program(const YAML::Node& node, const std::string& program, const std::string& working_dir) {
    if (program.empty()) {
      Error(node, "entry.command", "the program (the first item) is empty");
      return;
    }
    if (program.find('/') != std::string::npos) {
      const std::string path = AbsolutePath(working_dir, program);
      struct stat st {};
      if (stat(path.c_str(), &st) != 0) {
        Error(node, "entry.command", "no such file: " + path);
      } else if (!IsExecutableFile(path)) {
        Error(node, "entry.command", path + " is not executable" + (S_ISDIR(st.st_mode) ? " (a directory)" : ""));
      }
      return;
    }
    const char* env_path = std::getenv("PATH");
    const std::string search = env_path != nullptr ? env_path : "";
    for (size_t start = 0; start <= search.size();) {
      size_t end = search.find(':', start);
      if (end == std::string::npos) end = search.size();
      // An empty entry is the current directory, as for execvp.
      const std::string dir = search.substr(start, end - start);
      if (IsExecutableFile(AbsolutePath(working_dir, dir.empty() ? "." : dir) + "/" + program)) return;
      start = end + 1;
    }
    Error(node, "entry.command",
          "'" + program + "' not found in PATH (" + (search.empty() ? "unset" : search) + "); give its path");
  }

  void Env(const YAML::Node& env, std::map<std::string, std::string>* out) {
    if (!CheckKeys(env, "entry.env", nullptr)) return;
    std::set<std::string> seen;
    for (const auto& kv : env) {
      if (!kv.first.IsScalar()) continue;  // reported by CheckKeys
      const std::string name = kv.first.Scalar();
      const std::string field = "entry.env." + name;
      if (!seen.insert(name).second) continue;  // a duplicate, reported by CheckKeys
      if (!IsEnvName(name)) {
        Error(kv.first, field, "not a variable name (letters, digits and '_', not starting with a digit)");
        continue;
      }
      std::string value;
      if (!String(kv.second, field, &value)) continue;
      if (Expand(kv.second, field, &value)) (*out)[name] = value;
    }
  }

  // `${VAR}` in `*text` -> VAR's value in this process's environment; `$${` -> a literal `${`.
  // False (every unset variable named) when one cannot be expanded.
  bool Expand(const YAML::Node& node, const std::string& field, std::string* text) {
    const std::string& in = *text;
    std::string out;
    bool ok = true;
    for (size_t i = 0; i < in.size();) {
      if (in.compare(i, 3, "$${") == 0) {
        out += "${";
        i += 3;
        continue;
      }
      if (in.compare(i, 2, "${") != 0) {
        out += in[i++];
        continue;
      }
      const size_t close = in.find('}', i + 2);
      if (close == std::string::npos) {
        Error(node, field, "unterminated ${ in '" + in + "' (write $${ for a literal ${)");
        return false;
      }
      const std::string name = in.substr(i + 2, close - i - 2);
      const char* value = IsEnvName(name) ? std::getenv(name.c_str()) : nullptr;
      if (!IsEnvName(name)) {
        Error(node, field, "'${" + name + "}' does not name a variable (write $${ for a literal ${)");
        ok = false;
      } else if (value == nullptr) {
        Error(node, field,
              "environment variable " + name + " is not set (set it, or write $${" + name + "} for a literal ${" +
                  name + "})");
        ok = false;
      } else {
        out += value;
      }
      i = close + 1;
    }
    *text = std::move(out);
    return ok;
  }

  void Checkpoints(const YAML::Node& node, CheckpointPolicy* c) {
    if (!CheckKeys(node, "checkpoints", {"keep", "dir"})) return;
    Positive(node["keep"], "checkpoints.keep", &c->keep, kMaxCheckpointsKept);
    if (String(node["dir"], "checkpoints.dir", &c->dir) && !c->dir.empty()) c->dir = AbsolutePath(base_dir_, c->dir);
  }

  void Restart(const YAML::Node& node, RestartPolicy* r) {
    if (!CheckKeys(node, "restart", {"max_user_failures", "max_infra_failures", "backoff", "max_backoff"})) return;
    Integer(node["max_user_failures"], "restart.max_user_failures", &r->max_user_failures, kMaxRestartFailures);
    Integer(node["max_infra_failures"], "restart.max_infra_failures", &r->max_infra_failures, kMaxRestartFailures);
    const bool initial_ok = Duration(node["backoff"], "restart.backoff", kMaxRestartBackoff, &r->backoff_initial);
    const bool max_ok = Duration(node["max_backoff"], "restart.max_backoff", kMaxRestartBackoff, &r->backoff_max);
    if (initial_ok && max_ok && r->backoff_initial > r->backoff_max) {
      Error(Given(node["backoff"]) ? node["backoff"] : node, "restart.backoff", "must not be longer than max_backoff");
    }
  }

  std::string base_dir_;
};

// `dir` made absolute against the current directory ("" is the root: BaseDir("/spec.yaml")).
std::string AbsoluteDir(const std::string& dir) {
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  return AbsolutePath(ec ? "/" : cwd.string(), dir.empty() ? "/" : dir);
}

}  // namespace

std::vector<runtime::ConfigError> ValidateJobSpecText(const std::string& yaml, const std::string& source,
                                                      const std::string& base_dir, JobSpec* spec) {
  JobSpecReader reader(source, AbsoluteDir(base_dir));
  JobSpec parsed;
  std::vector<runtime::ConfigError> errors =
      reader.Read(yaml, [&](const YAML::Node& root) { reader.Parse(root, &parsed); });
  if (spec != nullptr && errors.empty()) *spec = std::move(parsed);
  return errors;
}

std::vector<runtime::ConfigError> ValidateJobSpec(const std::string& path, JobSpec* spec) {
  auto text = runtime::ReadTextFile(path, kMaxJobSpecFileBytes, "job spec");
  if (!text.ok()) return {runtime::ConfigError{path, 0, 0, "(file)", text.status().message()}};
  return ValidateJobSpecText(*text, path, runtime::BaseDir(path), spec);
}

StatusOr<JobSpec> LoadJobSpec(const std::string& path) {
  JobSpec spec;
  RETURN_IF_ERROR(runtime::ErrorsToStatus(ValidateJobSpec(path, &spec)));
  return spec;
}

}  // namespace troupe::training
