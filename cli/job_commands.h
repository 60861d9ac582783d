// `troupe job ...`: training jobs (docs/jobs.md).
#pragma once

#include <string>

#include "cli/cluster_commands.h"

namespace troupe::cli {

/// `troupe job ACTION [TARGET]`'s flags.
struct JobOptions {
  ClusterOptions cluster;
  std::string action;  ///< submit, list, show, events, logs, stop, resume, resubmit, delete
  std::string target;  ///< the spec file (submit) or the job's name
  int worker = -1;     ///< logs --worker R (-1: every rank)
  bool follow = false; ///< logs -f
  bool wait = false;   ///< submit --wait: until the job is succeeded, failed or stopped
};

/// Runs `troupe job ACTION`; returns the exit status (submit --wait: 0 only if it succeeded).
int RunJob(JobOptions args);
/// Runs `troupe model list|show [NAME]` (the model repository, docs/jobs.md).
int RunModel(JobOptions args);

}  // namespace troupe::cli
