// JobSpec parsing (docs/jobs.md, "The job spec").
#include "actors/training/job_spec.h"
#include "actors/training/standby.h"

#include <yaml-cpp/yaml.h>

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
      DnsLabel(name, "name", &spec->name);
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
    DnsLabel(root["output_model"], "output_model", &spec->output_model);
  }

 private:
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
      Error(root, "entry", "missing (the command every worker runs, or the actor worker type: actor: NAME)");
      return;
    }
    if (!CheckKeys(entry, "entry", {"command", "actor", "env", "working_dir", "preload", "backend"})) return;
    if (Given(entry["actor"])) {
      ActorEntry(entry, e);
      return;
    }
    if (Given(entry["backend"])) {
      Error(entry["backend"], "entry.backend",
            "only with entry.actor (a process worker's script picks its own collectives backend)");
    }
    WorkingDir(entry["working_dir"], "entry.working_dir", base_dir_, &e->working_dir);
    const YAML::Node command = entry["command"];
    if (!Given(command)) {
      Error(entry, "entry.command",
            "missing (the program and its arguments, such as [python3, train.py], or actor: NAME for actor workers)");
    } else {
      Command(command, "entry.command", e->working_dir, &e->command);
    }
    Environment(entry["env"], "entry.env", &e->env);
    if (Given(entry["preload"]) && StringList(entry["preload"], "entry.preload", &e->preload)) {
      for (const auto& module : e->preload) {
        if (!IsPythonModuleName(module)) {
          Error(entry["preload"], "entry.preload", "'" + module + "' is not a Python module name (such as torch or torch.distributed)");
        }
      }
      if (!e->preload.empty() && !e->command.empty()) {
        auto python = ParsePythonCommand(e->command);
        if (!python.ok()) Error(entry["preload"], "entry.preload", python.status().message());
      }
    }
  }

  // entry.actor: the workers are actors of a registered type; a process's fields do not apply.
  void ActorEntry(const YAML::Node& entry, EntryPoint* e) {
    if (DnsLabel(entry["actor"], "entry.actor", &e->actor) && e->actor.empty()) {
      Error(entry["actor"], "entry.actor", "must name an actor worker type (such as example-linear)");
    }
    for (const char* field : {"command", "working_dir", "preload"}) {
      if (Given(entry[field])) {
        Error(entry[field], std::string("entry.") + field,
              "not allowed with entry.actor (an actor worker runs in its node's troupe process, not as a "
              "program); give either command or actor");
      }
    }
    Environment(entry["env"], "entry.env", &e->env);
    OneOf(entry["backend"], "entry.backend", {"auto", "gloo", "nccl"}, &e->backend);
  }

  void Checkpoints(const YAML::Node& node, CheckpointPolicy* c) {
    if (!CheckKeys(node, "checkpoints", {"keep", "dir"})) return;
    Positive(node["keep"], "checkpoints.keep", &c->keep, kMaxCheckpointsKept);
    if (String(node["dir"], "checkpoints.dir", &c->dir) && !c->dir.empty()) {
      c->dir = runtime::AbsolutePath(base_dir_, c->dir);
    }
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

}  // namespace

std::vector<runtime::ConfigError> ValidateJobSpecText(const std::string& yaml, const std::string& source,
                                                      const std::string& base_dir, JobSpec* spec) {
  JobSpecReader reader(source, runtime::AbsoluteDir(base_dir));
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
