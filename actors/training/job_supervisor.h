// The job supervisor: one actor per training job, on the head. It gang-schedules the job's
// workers, starts them on their nodes, supervises them one_for_all and restarts the whole group
// from the newest committed checkpoint after any failure, within the job's restart policy.
#pragma once

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "actors/training/job_spec.h"
#include "actors/training/job_status.h"
#include "actors/training/messages.h"
#include "common/clock.h"
#include "runtime/actor_ref.h"
#include "runtime/runtime.h"
#include "storage/checkpoint_store.h"

namespace troupe::training {

/// Where one worker of a placement runs: its node, that node's agent (which starts processes)
/// and the part of a GPU it may use (gpu_index kNoGpu: none).
struct WorkerPlace {
  std::string node;
  std::string host;  ///< the node's address without the port (MASTER_ADDR when it holds rank 0)
  runtime::ActorRef agent;
  uint32_t gpu_index = kNoGpu;
  std::string gpu_id;
  uint64_t memory_bytes = 0;
  uint32_t compute_percent = 0;
  bool simulated = false;
};

/// A gang lease for all of a job's workers (rank r runs at workers[r]).
struct Placement {
  uint64_t lease_id = 0;
  std::vector<WorkerPlace> workers;
};

/// The head's answer to JobHost::RequestPlacement, sent to the supervisor.
struct PlacementAnswer {
  uint64_t attempt = 0;
  Status status;  ///< OK with `placement`, or why the job cannot be placed
  Placement placement;
};

/// Head -> supervisor, after a head restart: a node that joined runs (or ran) workers of the
/// job (RunningWorker, pid 0 for those that exited). A supervisor taking its job back adopts them.
struct WorkersFound {
  std::string node;
  runtime::ActorRef agent;
  std::vector<RunningWorker> workers;
};

/// Head -> supervisor: stop the job (its workers are killed, its lease released), then exit.
struct StopJob {
  std::string reason;
};

/// What a job supervisor needs of the head; the jobs registry implements it. Called on the
/// supervisor's thread: implementations post messages, never block.
class JobHost {
 public:
  virtual ~JobHost() = default;
  /// Asks the scheduler for a gang lease of `spec.workers` workers owned by `supervisor` (so it
  /// ends when the supervisor does). The answer comes as a PlacementAnswer for `attempt`;
  /// while capacity is short the request waits, and the job's status says why (Update()).
  virtual void RequestPlacement(const JobSpec& spec, uint64_t attempt, const caf::actor& supervisor) = 0;
  /// Ends a lease the supervisor no longer uses.
  virtual void ReleasePlacement(uint64_t lease_id) = 0;
  /// The job's new status, and the event that made it (empty message: no event), from
  /// `supervisor`. Stored in the head's LMDB in order. A supervisor that is no longer the job's (a
  /// stopped job's, whose last commit ended after the job was resumed) adds only its event.
  virtual void Update(const caf::actor& supervisor, const JobStatus& status, const JobEvent& event) = 0;
};

/// How the supervisor is set up (JobSupervisor's argument).
struct JobSupervisorInit {
  JobSpec spec;
  JobStatus status;  ///< as stored (a new job: pending, attempt 0)
  std::string checkpoint_root;  ///< `<checkpoints dir>/<job>`
  JobHost* host = nullptr;
  storage::CheckpointStore* checkpoints = nullptr;
  runtime::Runtime* runtime = nullptr;
  const Clock* clock = nullptr;
  /// How often complete checkpoint steps are looked for and committed.
  std::chrono::milliseconds commit_interval{200};
  /// The job was running when an earlier head stopped: take its workers of `status.attempt` back
  /// as their nodes report them (WorkersFound), within `take_back_timeout`; if some never come
  /// back, the group restarts from the newest committed checkpoint (an infrastructure fault).
  bool take_back = false;
  std::chrono::milliseconds take_back_timeout{5000};
  /// The head already asked for this attempt's placement (the first, at submit): the supervisor
  /// waits for its answer instead of asking.
  bool placement_requested = false;
  /// How long a StartWorker or StopWorkers may take before the node counts as failed.
  std::chrono::milliseconds node_timeout{10000};
  /// Actor workers (spec.entry.actor): spawns the rendezvous store of one attempt's group in
  /// this process (collectives/rendezvous.h's SpawnRendezvousStore); its ref goes to every
  /// worker, and it is ended with the attempt. Empty: the workers get no store (one worker, or a
  /// communicator factory that needs none).
  std::function<caf::actor(caf::actor_system&)> spawn_rendezvous;
};

/// Supervisor-internal: the answer of one rank's Runtime::SpawnOn (made off the supervisor's
/// mailbox, since SpawnOn blocks). Local only.
struct ActorWorkerSpawned {
  uint64_t attempt = 0;
  uint32_t rank = 0;
  Status status;  ///< OK with `worker`, or why the node did not spawn it
  runtime::ActorRef worker;
};

/// Spawns the supervisor (detached). Its checkpoint file I/O (commits, retention, finding the
/// checkpoint to resume from) runs in a committer actor of its own (checkpoint_committer.h), so a
/// stop, a worker's exit or a lost node never waits behind a commit; it stays after the job
/// finished until a commit in flight has answered, to record what it committed.
caf::actor SpawnJobSupervisor(caf::actor_system& system, JobSupervisorInit init);

/// The environment of rank `rank` of a placement: the torchrun contract (RANK, LOCAL_RANK,
/// WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_RANK, ROLE_WORLD_SIZE, MASTER_ADDR,
/// TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_RUN_ID; MASTER_PORT is set by rank 0's node) and
/// troupe's (TROUPE_JOB, TROUPE_ATTEMPT, TROUPE_CHECKPOINT_DIR, and TROUPE_RESUME_DIR and
/// TROUPE_RESUME_STEP when `resume` is set), after the spec's own variables. Local ranks count
/// the workers on the same node in rank order; group ranks number the nodes by their first rank.
std::vector<std::string> WorkerEnvironment(const JobSpec& spec, const Placement& placement, uint32_t rank,
                                           uint64_t attempt, const std::string& checkpoint_dir,
                                           const std::optional<storage::CheckpointRecord>& resume);

}  // namespace troupe::training

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::PlacementAnswer)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::ActorWorkerSpawned)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::StopJob)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::WorkersFound)
