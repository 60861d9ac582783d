// JobStatus, JobEvent and JobSpec as JSON.
#include "actors/training/job_status.h"

#include <nlohmann/json.hpp>

namespace nlohmann {
template <>
struct adl_serializer<std::chrono::milliseconds> {
  static void to_json(json& j, const std::chrono::milliseconds& d) { j = d.count(); }
  static void from_json(const json& j, std::chrono::milliseconds& d) { d = std::chrono::milliseconds(j.get<int64_t>()); }
};
}  // namespace nlohmann

namespace troupe::training {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(WorkerResources, slices, slice_memory_bytes, compute_percent, cpus,
                                                host_memory_bytes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(EntryPoint, command, env, working_dir, preload, actor)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(CheckpointPolicy, keep, dir)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RestartPolicy, max_user_failures, max_infra_failures, backoff_initial,
                                                backoff_max)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(JobSpec, name, tenant, priority, tags, workers, resources, placement,
                                                entry, checkpoints, restart, step_watchdog, output_model)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(WorkerStatus, rank, node, pid, log_path)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(JobStatus, name, state, reason, attempt, user_failures, infra_failures,
                                                checkpoint_step, lease_id, workers, submitted_unix_ms, started_unix_ms,
                                                finished_unix_ms, model_version)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(JobEvent, unix_ms, state, attempt, message)

bool IsFinal(const std::string& state) {
  return state == kJobSucceeded || state == kJobFailed || state == kJobStopped;
}

namespace {

template <class T>
StatusOr<T> FromJson(const std::string& text, const char* what) {
  try {
    return nlohmann::json::parse(text).get<T>();
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("not a ") + what + ": " + e.what());
  }
}

}  // namespace

std::string JobSpecToJson(const JobSpec& spec) { return nlohmann::json(spec).dump(); }
StatusOr<JobSpec> JobSpecFromJson(const std::string& json) { return FromJson<JobSpec>(json, "job spec"); }
std::string JobStatusToJson(const JobStatus& status) { return nlohmann::json(status).dump(); }
StatusOr<JobStatus> JobStatusFromJson(const std::string& json) { return FromJson<JobStatus>(json, "job status"); }
std::string JobEventToJson(const JobEvent& event) { return nlohmann::json(event).dump(); }
StatusOr<JobEvent> JobEventFromJson(const std::string& json) { return FromJson<JobEvent>(json, "job event"); }

}  // namespace troupe::training
