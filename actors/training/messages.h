// The training protocol's C++ messages and their codecs (type ids 1200-1299, training.capnp).
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/actor_ref.h"
#include "actors/training/training.capnp.h"
#include "runtime/codec.h"

namespace troupe::training {

inline constexpr uint32_t kNoGpu = 0xFFFFFFFF;

/// Supervisor -> node agent: start worker `rank` of the job's `attempt` as a child process in a
/// process group of its own (docs/jobs.md: "Workers"). Reply: WorkerStarted, or an error
/// (Unavailable: the program cannot be executed, with the reason). The agent later sends the
/// supervisor a WorkerExited.
struct StartWorker {
  std::string job;
  uint64_t attempt = 0;
  uint32_t rank = 0;
  std::vector<std::string> argv;
  std::vector<std::string> env;  ///< NAME=value
  std::string working_dir;
  int64_t watchdog_ms = 0;
  runtime::ActorRef supervisor;
  uint64_t lease_id = 0;
  uint32_t gpu_index = kNoGpu;
  std::string gpu_id;
  uint64_t memory_bytes = 0;
  uint32_t compute_percent = 0;
  bool simulated = false;
  bool pick_master_port = false;
  /// entry.preload: Python modules a standby interpreter of this job imports ahead of time.
  std::vector<std::string> preload;
};
struct WorkerStarted {
  uint32_t rank = 0;
  int64_t pid = 0;
  uint32_t master_port = 0;
  std::string log_path;
  /// The worker runs in a standby interpreter that had imported entry.preload already.
  bool standby = false;
};
/// Kills the job's workers of every attempt up to `attempt`; with `final` (the job runs no more)
/// its standby interpreters too.
struct StopWorkers {
  std::string job;
  uint64_t attempt = 0;
  bool final = false;
};
struct WorkersStopped {
  uint32_t count = 0;
};
struct WorkerExited {
  std::string job;
  uint64_t attempt = 0;
  uint32_t rank = 0;
  int32_t exit_code = -1;
  int32_t signal = 0;
  bool hung = false;
  std::string reason;
  /// Not the job's fault (an actor worker whose group was lost: its collective failed with
  /// Unavailable); counted against max_infra_failures. Process workers: hung or signal say it.
  bool infra = false;
};
/// Client -> head: `op` on jobs with a JSON `body` (docs/jobs.md); the reply's body is JSON.
struct JobCommand {
  std::string op;
  std::string name;
  std::string body;
  /// Who asks, for the head's audit log ("cli@<client node name>"); empty from older senders
  /// (the head then names the sender's node, or "cluster-token"). Initialized here so that code
  /// written before it ({op, name, body}) builds without a missing-initializer warning.
  std::string caller = {};
};
struct JobCommandReply {
  std::string body;
};
struct ReadWorkerLog {
  std::string job;
  uint64_t attempt = 0;
  uint32_t rank = 0;
  uint64_t offset = 0;
  uint32_t max_bytes = 64 * 1024;
};
struct WorkerLogChunk {
  std::string data;
  uint64_t next_offset = 0;
  uint64_t size = 0;     ///< the file's size now
  bool running = false;  ///< the worker still runs (more may come)
};

/// A worker as its node reports it (in a join, and to an adopting supervisor): a process worker
/// with its pid, an actor worker (docs/jobs.md, "Actor workers") with its actor; an exited one
/// the node still remembers with neither.
struct RunningWorker {
  std::string job;
  uint64_t attempt = 0;
  uint32_t rank = 0;
  int64_t pid = 0;  ///< a process worker's; 0 for an actor worker and for an exited one
  std::string log_path;
  runtime::ActorRef worker;  ///< an actor worker's actor; empty for a process worker and an exited one
};
/// Whether `w` still runs on its node (a process or an actor), rather than being an exit the node
/// remembers.
inline bool Runs(const RunningWorker& w) { return w.pid != 0 || w.worker.valid(); }
/// Supervisor -> node agent, after a head restart: the job's workers of `attempt`, processes and
/// actors, report to `supervisor` from now on (an actor worker also watches it instead of its
/// lost supervisor). Reply: WorkersAdopted.
struct AdoptWorkers {
  std::string job;
  uint64_t attempt = 0;
  runtime::ActorRef supervisor;
};
struct WorkersAdopted {
  std::vector<RunningWorker> running;
  std::vector<WorkerExited> exited;  ///< exits of that attempt that no live supervisor was told of
};

/// Supervisor -> node (the arguments of Runtime::SpawnOn of kActorWorkerActorType): worker `rank`
/// of the job's `attempt` as an actor of worker type `type` (entry.actor; docs/jobs.md, "Actor
/// workers"). The worker reports its end to `supervisor` as a WorkerExited.
struct ActorWorkerStart {
  std::string job;
  std::string type;
  uint64_t attempt = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::vector<std::string> env;  ///< entry.env, NAME=value: the worker type's configuration
  std::string checkpoint_dir;    ///< the attempt's staging directory
  std::string resume_dir;        ///< the committed checkpoint to resume from; empty: fresh
  uint64_t resume_step = 0;
  runtime::ActorRef supervisor;
  runtime::ActorRef rendezvous;  ///< the attempt's rendezvous store; empty for one worker
  uint32_t gpu_index = kNoGpu;
  std::string gpu_id;
  uint64_t memory_bytes = 0;
  bool simulated = false;
  /// entry.backend: "auto" (or empty), "gloo" or "nccl" (actors/training/worker_communicators.h).
  std::string backend;
  /// The node that commits the job's checkpoints (the head's; 0: none given). A worker on a node
  /// whose checkpoint directories are not that node's (node config `checkpoints: send`,
  /// docs/checkpoints.md) sends its shards there over the bulk path instead of writing them to
  /// checkpoint_dir itself.
  uint64_t checkpoint_node = 0;
};
/// Supervisor -> worker actor: stop (its communicator is aborted, its loop ends, it exits).
struct StopActorWorker {
  std::string reason;
};

/// Supervisor -> every worker actor of an attempt, once all are spawned: the group's worker
/// actors by rank, which each watches (collectives/peer_watch.h) to abort its communicator at
/// the first one lost.
struct ActorWorkerPeers {
  uint64_t attempt = 0;
  std::vector<runtime::ActorRef> workers;
};

/// Worker actor -> its supervisor: the worker reached a point of its attempt's start, which the
/// supervisor's recovery timeline (actors/training/recovery.h) counts when it arrives.
struct ActorWorkerProgress {
  enum Point : uint8_t {
    kFormed = 1,     ///< its communicator is formed and its peers watched (or it has none): it trains
    kFirstStep = 2,  ///< it completed its first training step of the attempt (WorkerContext::StepDone)
  };
  uint64_t attempt = 0;
  uint32_t rank = 0;
  uint8_t point = kFormed;
};

/// The actor workers' wire types (1650-1679).
enum ActorWorkerTypeId : uint32_t {
  kActorWorkerStart = 1650, kStopActorWorker, kActorWorkerPeers,
  kActorWorkerProgress = 1660,
};

enum TrainingTypeId : uint32_t {
  kStartWorker = 1200, kWorkerStarted, kStopWorkers, kWorkersStopped, kWorkerExited, kJobCommand,
  kJobCommandReply, kReadWorkerLog, kWorkerLogChunk, kAdoptWorkers, kWorkersAdopted,
};

/// Registers the codecs of the training protocol, and of the rendezvous store its actor workers
/// form their groups through (collectives/rendezvous.h, 1600-1603).
Status AddTrainingCodecs(runtime::CodecRegistry& registry);

/// RunningWorker lists in other protocols' messages (the cluster's JoinRequest).
void FillRunningWorkers(const std::vector<RunningWorker>& in, capnp::List<wire::RunningWorker>::Builder out,
                        runtime::RefCodec& refs);
std::vector<RunningWorker> ReadRunningWorkers(capnp::List<wire::RunningWorker>::Reader in, runtime::RefCodec& refs);

}  // namespace troupe::training

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::ActorWorkerStart)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::StopActorWorker)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::ActorWorkerPeers)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::ActorWorkerProgress)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::StartWorker)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::WorkerStarted)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::StopWorkers)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::WorkersStopped)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::WorkerExited)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::JobCommand)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::JobCommandReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::ReadWorkerLog)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::WorkerLogChunk)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::AdoptWorkers)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::WorkersAdopted)
