// JobSpec: a training job as its owner describes it (YAML, docs/jobs.md), parsed strictly: every
// problem names the file, line, column, field and what was expected, and nothing starts.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/yaml_reader.h"

namespace troupe::training {

/// What one worker of the job needs (the head's scheduler places them all or none).
struct WorkerResources {
  /// GPU slices per worker (0: a CPU-only worker).
  uint32_t slices = 0;
  /// The least memory each slice must have, in bytes (0: any slice size).
  uint64_t slice_memory_bytes = 0;
  /// The least compute share of its GPU each slice must have, in percent (0: any).
  uint32_t compute_percent = 0;
  /// CPUs reserved for the worker on its node.
  uint32_t cpus = 1;
  /// Host memory reserved for the worker on its node, in bytes.
  uint64_t host_memory_bytes = 0;
};

/// The program every worker runs (a torchrun-style script, for instance), or the actor worker
/// type every worker is (docs/jobs.md, "Actor workers"): exactly one of `command` and `actor`.
struct EntryPoint {
  /// argv[0] and the rest; argv[0] is searched in PATH on the worker's node. Empty with `actor`.
  std::vector<std::string> command;
  /// A registered actor worker type (actors/training/actor_worker.h, e.g. "example-linear"):
  /// the workers are actors spawned in the node agents' processes (Runtime::SpawnOn), not
  /// processes. [a-z0-9][a-z0-9-]{0,62}. `env` is then the worker's configuration (each
  /// type documents what it reads); `working_dir` and `preload` are not allowed.
  std::string actor;
  /// With `actor`: the collectives backend of the workers' group, "auto" (NCCL when the workers
  /// have real GPU slices and troupe is built with NCCL, Gloo otherwise; torch.distributed's
  /// default), "gloo" or "nccl" (refused at the workers' start without a real GPU slice or NCCL).
  /// Not allowed with `command`. actors/training/worker_communicators.h.
  std::string backend = "auto";
  /// NAME -> value, with ${VAR} expanded at submit time from the submitter's environment
  /// (an unset VAR is an error naming it; `$${` is a literal `${`).
  std::map<std::string, std::string> env;
  /// The worker's working directory (empty: the spec file's directory).
  std::string working_dir;
  /// Python modules that standby worker processes import ahead of time (docs/jobs.md, "Standby
  /// workers"): with any, the command must be `python [-u] SCRIPT ...` or `python [-u] -m MODULE
  /// ...`, and each node keeps, per worker of the job it ran, an interpreter that has imported
  /// them and waits, so that a restarted attempt starts without paying the import (about 1.4 s
  /// for torch here). Empty: workers start cold, as torchrun starts them.
  std::vector<std::string> preload;
};

/// How many committed checkpoints are kept (retention runs after each commit).
struct CheckpointPolicy {
  uint32_t keep = 3;
  /// Where checkpoints are staged and committed: every node of the job must see the same
  /// files there (a shared file system for multi-host jobs, as Ray Train's storage_path).
  /// Empty: `<head.data_dir>/checkpoints`.
  std::string dir;
};

/// When a failed worker group is started again, and when the job gives up.
/// Two budgets, as Kubernetes' podFailurePolicy separates them: a worker that exits non-zero is
/// a user error; a lost node, a hung worker or a worker killed by a signal is an infrastructure
/// fault. Backoff between attempts: jittered exponential (common/backoff.h).
struct RestartPolicy {
  uint32_t max_user_failures = 3;
  uint32_t max_infra_failures = 10;
  std::chrono::milliseconds backoff_initial{1000};
  std::chrono::milliseconds backoff_max{30000};
};

/// A training job.
struct JobSpec {
  /// Unique in the cluster: [a-z0-9][a-z0-9-]{0,62} (a DNS label, as Kubernetes names jobs).
  std::string name;
  std::string tenant = "default";
  /// "urgent" or "normal" (urgent requests are placed before every waiting normal one).
  std::string priority = "normal";
  std::vector<std::string> tags;
  uint32_t workers = 1;
  WorkerResources resources;
  /// "pack" (fewest nodes) or "spread" (one worker per node where possible).
  std::string placement = "pack";
  EntryPoint entry;
  CheckpointPolicy checkpoints;
  RestartPolicy restart;
  /// A worker that writes nothing to stdout/stderr and does not touch $TROUPE_PROGRESS_FILE for
  /// this long, or is stopped (SIGSTOP), is hung and its group restarts. 0: no watchdog.
  std::chrono::milliseconds step_watchdog{5 * 60 * 1000};
  /// Empty, or the model whose next version the final committed checkpoint becomes.
  std::string output_model;
};

/// Bounds on a job spec (docs/jobs.md): beyond them the spec is refused at submit.
inline constexpr uint32_t kMaxJobWorkers = 4096;
inline constexpr size_t kMaxJobSpecFileBytes = 1 << 20;

/// Every problem in the job spec at `path` (empty when valid; `*spec` then holds it). `${VAR}`
/// in entry.env is expanded from this process's environment. Contacts nothing: whether the
/// cluster can hold it is the head's check at submit.
std::vector<runtime::ConfigError> ValidateJobSpec(const std::string& path, JobSpec* spec = nullptr);
/// The same from YAML text (`source` names it in errors; `base_dir` resolves a relative
/// working_dir and is the default one).
std::vector<runtime::ConfigError> ValidateJobSpecText(const std::string& yaml, const std::string& source,
                                                      const std::string& base_dir, JobSpec* spec = nullptr);
/// ValidateJobSpec as a Status: InvalidArgument listing every problem, one per line.
StatusOr<JobSpec> LoadJobSpec(const std::string& path);

}  // namespace troupe::training
