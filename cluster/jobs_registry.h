// JobsRegistry: the training jobs the head knows (their specs, states and events, in the LMDB
// tables `jobs` and `job_events`), one job supervisor actor per job that runs, and the jobs'
// checkpoint records (storage/checkpoint_store.h).
#pragma once

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <map>
#include <memory>
#include <string>

#include "actors/training/job_supervisor.h"
#include "actors/training/messages.h"
#include "actors/training/shard_transfer.h"
#include "cluster/config.h"
#include "cluster/head_store.h"
#include "cluster/lease_registry.h"
#include "cluster/membership.h"
#include "cluster/model_registry.h"
#include "storage/checkpoint_store.h"

namespace troupe::cluster {

/// Supervisor -> controller (local messages; JobHost as messages): a placement for an attempt,
/// a lease to end, a status to store.
struct JobPlacementRequest {
  training::JobSpec spec;
  uint64_t attempt = 0;
  caf::actor supervisor;
};
struct JobLeaseRelease {
  uint64_t lease_id = 0;
};
struct JobStatusUpdate {
  training::JobStatus status;
  training::JobEvent event;
  caf::actor_addr supervisor;  ///< who sends it
};

/// The jobs of the cluster (docs/jobs.md). Owned by the head's controller actor and used only on
/// its mailbox, like the other registries; the supervisors reach it through messages to the
/// controller (JobPlacementRequest, JobLeaseRelease, JobStatusUpdate).
///
/// Durability: a job is acknowledged (submit's reply) only once its record is stored; a status
/// change is stored before the next one is handled. A job's events are kept (the newest
/// kMaxEventsPerJob) until the job is deleted.
class JobsRegistry {
 public:
  static constexpr size_t kMaxEventsPerJob = 1000;

  /// `models` (not owned): where a job with an output model registers its final checkpoint.
  JobsRegistry(const ClusterConfig& config, HeadStore* store, LeaseRegistry* leases, const NodeDirectory* nodes,
               ModelRegistry* models, runtime::Runtime* runtime, const Clock* clock);
  ~JobsRegistry();

  /// Opens the tables and loads the jobs an earlier head stored. Call once the controller runs
  /// (`controller` receives the supervisors' messages): a job that was not final gets a supervisor
  /// again, which starts it again from its newest committed checkpoint (counted as an
  /// infrastructure fault: "the head restarted").
  Status Recover(const caf::actor& controller);

  /// A client's JobCommand: submit, list, show, events, stop, resume, resubmit, delete, and
  /// models (the model repository; `name`: one model or all). The reply's JSON
  /// (docs/jobs.md), or an error: InvalidArgument (bad spec or op), AlreadyExists (a job of that
  /// name), NotFound (no such job), FailedPrecondition (an operation the job's state does not
  /// allow), ResourceExhausted (the job can never fit the cluster or its tenant's quota).
  StatusOr<std::string> Command(const training::JobCommand& command);

  /// Asks the lease registry; the answer goes to the supervisor. Returns the refusal if the
  /// request was refused at once (it can never fit, or is malformed).
  Status Place(const JobPlacementRequest& request);
  void Release(uint64_t lease_id);
  void Record(const JobStatusUpdate& update);
  /// A node's agent joined (again) reporting the training workers it runs (and recent exits):
  /// those of a live job's current attempt go to its supervisor (WorkersFound: after a head
  /// restart it takes them back); those of unknown or finished jobs, and of older attempts, are
  /// stopped there.
  void NodeJoined(const std::string& node, const runtime::ActorRef& agent,
                  const std::vector<training::RunningWorker>& workers) const;
  /// The supervisor `who` ended; its job (if any) is not running any more.
  void SupervisorGone(const caf::actor_addr& who);
  /// Where shards sent by nodes without shared storage land (ServeCheckpointShards): the root of
  /// each job that has had a supervisor since this head started. Any thread.
  training::CheckpointRootOf ShardRoots() const { return training::CheckpointRoots::Of(shard_roots_); }

 private:
  struct Job;
  class Host;
  StatusOr<std::string> Submit(const std::string& body);
  StatusOr<std::string> Delete(const std::string& name);
  // Resume (from the newest committed checkpoint) or resubmit (`from_scratch`) a finished job.
  StatusOr<std::string> StartAgain(const std::string& name, bool from_scratch);
  // The job `name` if it is finished (with `stopped_or_failed`: stopped or failed); NotFound or
  // FailedPrecondition saying what to do otherwise.
  StatusOr<Job*> FinishedJob(const std::string& name, bool stopped_or_failed);
  // A pending job's reason from the scheduler's queue: what it waits for and its place.
  training::JobStatus WithQueueState(const Job& job) const;
  // A job that just succeeded with an output model: its newest checkpoint becomes the model's
  // next version (an event says which, or why not).
  void RegisterOutputModel(Job& job);
  // Spawns the job's supervisor; with `first` it asks for the first placement itself and fails
  // (stopping the supervisor) if the cluster can never hold the job.
  // With `take_back`, the supervisor takes the running workers of an earlier head back.
  Status StartSupervisor(Job& job, bool first, bool take_back = false);
  Status Store(const Job& job);
  Status StoreEvent(const std::string& name, const training::JobEvent& event);
  std::string CheckpointRoot(const training::JobSpec& spec) const;
  LeaseRequest LeaseRequestOf(const training::JobSpec& spec, uint64_t attempt, const caf::actor& supervisor) const;

  const ClusterConfig config_;
  HeadStore* store_;
  LeaseRegistry* leases_;
  const NodeDirectory* nodes_;
  ModelRegistry* models_;
  runtime::Runtime* runtime_;
  const Clock* clock_;
  std::unique_ptr<Host> host_;
  std::unique_ptr<storage::CheckpointStore> checkpoints_;
  std::shared_ptr<training::CheckpointRoots> shard_roots_ = std::make_shared<training::CheckpointRoots>();
  storage::TableId jobs_table_;
  storage::TableId events_table_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;
};

}  // namespace troupe::cluster

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JobPlacementRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JobLeaseRelease)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::JobStatusUpdate)
