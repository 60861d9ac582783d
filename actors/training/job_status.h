// JobStatus and JobEvent: what the head records of a training job as it runs, and their JSON
// (what `troupe job show --json` prints, and the form stored in the head's LMDB).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "actors/training/job_spec.h"
#include "common/status.h"

namespace troupe::training {

/// A job's states (docs/jobs.md, "Lifecycle"):
///
///     pending --(placed)--> starting --(every worker started)--> running --(every worker exited 0)--> succeeded
///        ^                     |                                   |
///        |                     \---------(a worker failed, its node was lost, it hung)---------> restarting
///        \------------------------------(backoff passed)--------------------------------------------/
///     restarting --(past the restart policy)--> failed;  any state --(stop)--> stopped
///
/// `resume` of a stopped or failed job makes it pending again (from its newest committed
/// checkpoint).
inline constexpr const char* kJobPending = "pending";
inline constexpr const char* kJobStarting = "starting";
inline constexpr const char* kJobRunning = "running";
inline constexpr const char* kJobRestarting = "restarting";
inline constexpr const char* kJobSucceeded = "succeeded";
inline constexpr const char* kJobFailed = "failed";
inline constexpr const char* kJobStopped = "stopped";
/// Succeeded, failed or stopped: nothing of the job runs.
bool IsFinal(const std::string& state);

struct WorkerStatus {
  uint32_t rank = 0;
  std::string node;
  int64_t pid = 0;
  std::string log_path;  ///< on its node (`troupe job logs` reads it through the node agent)
};

struct JobStatus {
  std::string name;
  std::string state = kJobPending;
  /// Why it is in its state: what it waits for (pending), the cause (restarting), what failed.
  std::string reason;
  /// The current or last attempt, from 1 (0: none started yet). TORCHELASTIC_RESTART_COUNT is
  /// attempt - 1.
  uint64_t attempt = 0;
  uint32_t user_failures = 0;
  uint32_t infra_failures = 0;
  /// The newest committed checkpoint's step (-1: none).
  int64_t checkpoint_step = -1;
  uint64_t lease_id = 0;
  std::vector<WorkerStatus> workers;
  int64_t submitted_unix_ms = 0;
  int64_t started_unix_ms = 0;   ///< the current attempt's start (0: none)
  int64_t finished_unix_ms = 0;  ///< when it became succeeded, failed or stopped (0: not yet)
  /// The model version its final checkpoint became ("name:version"), if it has an output model.
  std::string model_version;
};

/// One transition or notable thing in a job's life (`troupe job events`).
struct JobEvent {
  int64_t unix_ms = 0;
  std::string state;    ///< the job's state after it
  uint64_t attempt = 0;
  std::string message;  ///< what happened and why
};

std::string JobSpecToJson(const JobSpec& spec);
/// InvalidArgument naming the field for JSON that is not a job spec of this version.
StatusOr<JobSpec> JobSpecFromJson(const std::string& json);
std::string JobStatusToJson(const JobStatus& status);
StatusOr<JobStatus> JobStatusFromJson(const std::string& json);
std::string JobEventToJson(const JobEvent& event);
StatusOr<JobEvent> JobEventFromJson(const std::string& json);

}  // namespace troupe::training
