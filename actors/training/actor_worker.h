// Actor workers (docs/jobs.md, "Actor workers"): training workers that are actors in the node
// agents' processes instead of processes. A job spec names a registered worker type
// (`entry: actor: NAME`); the job supervisor spawns one worker actor per rank on the placement's
// nodes (Runtime::SpawnOn of kActorWorkerActorType with an ActorWorkerStart) and supervises them
// as it does process workers. Each worker runs its type's WorkerMain on a thread of its own with
// a WorkerContext: rank, world size, communicator, the slice's capped allocator and a checkpoint
// handle. Modelled on torch.distributed's per-rank process group and Ray Train's worker group.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_addr.hpp>

#include "actors/gpu_allocator.h"
#include "actors/training/messages.h"
#include "actors/training/shard_transfer.h"
#include "collectives/abort_signal.h"
#include "collectives/communicator.h"
#include "common/status.h"
#include "runtime/bulk.h"
#include "runtime/runtime.h"

namespace troupe::training {

/// The runtime actor type (Runtime::RegisterActorType) that every worker type is spawned as; the
/// worker type itself is ActorWorkerStart::type.
inline constexpr const char* kActorWorkerActorType = "troupe.training.actor_worker";

/// A rank's checkpoints in the layout process workers use (docs/checkpoints.md), so the job's
/// committer commits them unchanged: Save writes `<staging>/step-<S>/rank-<r>/<path>` and then
/// the marker `<staging>/step-<S>/rank-<r>.done`; the resume side reads `<resume>/rank-<r>/`.
/// On a node whose checkpoint directories are not the committing node's (SendShardsTo), Save
/// sends the shard into that node's staging directory over the bulk path instead (WriteShard,
/// actors/training/shard_transfer.h): the same files and marker land there, in the same order;
/// and Read fetches the committed files from that node over the bulk path (ShardReader) instead
/// of opening them by their path, which that node's disks need not have.
/// Thread-compatible (one worker thread uses it).
class CheckpointHandle {
 public:
  /// Per-file timeout of a shard sent to the committing node: a 1.75 GiB file (the bulk path's
  /// sizing, runtime/bulk.h BulkLimits) at 100 MB/s, a slow disk's write rate, takes 18 s; this
  /// leaves room for its fdatasync behind other ranks' writes.
  static constexpr std::chrono::milliseconds kShardSendTimeout{120000};

  /// `staging_dir`: the attempt's ($TROUPE_CHECKPOINT_DIR); `resume_dir` empty: nothing to resume.
  CheckpointHandle(std::string staging_dir, uint32_t rank, std::string resume_dir, uint64_t resume_step);

  /// From now on Save sends each shard of attempt `attempt` of `job` to `store_node` (the node
  /// that commits, ActorWorkerStart::checkpoint_node) through `endpoint`, whose node must serve
  /// them (ServeCheckpointShards); `timeout` per file. `endpoint` must outlive the handle. Save
  /// then returns WriteShard's errors (Unavailable: the store node was lost; DeadlineExceeded;
  /// Cancelled: the endpoint closed). With a `reader` (attached to `endpoint`), Read fetches the
  /// files of the checkpoint it resumes from from `store_node` too (ShardReader::Read, `timeout`
  /// per file); without one it reads resume_dir as a local path.
  void SendShardsTo(std::shared_ptr<runtime::BulkEndpoint> endpoint, runtime::NodeId store_node, std::string job,
                    uint64_t attempt, std::chrono::milliseconds timeout = kShardSendTimeout,
                    std::shared_ptr<ShardReader> reader = nullptr);
  /// Whether Save sends shards (SendShardsTo) rather than writing them here.
  bool sends_shards() const { return endpoint_ != nullptr; }

  /// Writes this rank's shard of `step`: each (relative '/'-separated path, bytes) as a regular
  /// file, fsynced, then the done marker. InvalidArgument for an empty, absolute or ".." path;
  /// Internal (or ResourceExhausted when the disk is full) naming the file and errno's text.
  /// Never touches a step after its marker: a second Save of the same step is AlreadyExists.
  /// `files` is taken by value: when the shard is sent, the transfers own it until the transport
  /// has released its last chunk (a chunk may still be read after a timeout ended its transfer).
  Status Save(uint64_t step, std::map<std::string, std::string> files);
  /// The step of the newest committed checkpoint the supervisor resumes this attempt from
  /// (NewestIntact, checkpoint_committer.h); nullopt when the job starts fresh.
  std::optional<uint64_t> resume_step() const;
  /// A file of this rank's shard of that checkpoint. FailedPrecondition when there is none to
  /// resume from; InvalidArgument for an empty, absolute or ".." path; NotFound (the path) when
  /// the file is missing. Fetched from the committing node (SendShardsTo with a reader), it is
  /// checked against the committed manifest's size and SHA-256: Internal with "data loss" naming
  /// the file when the bytes differ; Unavailable, DeadlineExceeded or Cancelled when the transfer
  /// does not complete (ShardReader::Read).
  StatusOr<std::string> Read(const std::string& path) const;

  const std::string& staging_dir() const { return staging_dir_; }

 private:
  std::string staging_dir_;
  uint32_t rank_;
  std::string resume_dir_;
  uint64_t resume_step_;
  // Set by SendShardsTo.
  std::shared_ptr<runtime::BulkEndpoint> endpoint_;
  runtime::NodeId store_node_ = 0;
  std::string job_;
  uint64_t attempt_ = 0;
  std::chrono::milliseconds timeout_{kShardSendTimeout};
  std::set<uint64_t> sent_steps_;  // steps whose marker was sent
  std::shared_ptr<ShardReader> reader_;  // set by SendShardsTo: Read fetches from store_node_
};

/// What one worker gets. Made by the worker actor (or a test); the WorkerMain runs on its own
/// thread and may call everything here from it.
class WorkerContext {
 public:
  /// `communicator` may be null only when `start.world_size` is 1; `allocator` null for a worker
  /// without a GPU slice.
  WorkerContext(ActorWorkerStart start, std::unique_ptr<collectives::Communicator> communicator,
                std::unique_ptr<actors::GpuMemoryDevice> device);
  ~WorkerContext();

  const std::string& job() const { return start_.job; }
  /// The attempt (worker-group start, from 1) this worker belongs to.
  uint64_t attempt() const { return start_.attempt; }
  uint32_t rank() const { return start_.rank; }
  uint32_t world_size() const { return start_.world_size; }
  /// The group's communicator; null when world_size() is 1.
  collectives::Communicator* communicator() { return communicator_.get(); }
  /// The slice's capped allocator (ResourceExhausted beyond the slice's memory, naming it);
  /// FailedPrecondition for a worker without a GPU slice (resources.slices: 0).
  StatusOr<actors::CappedAllocator*> allocator();
  CheckpointHandle& checkpoints() { return checkpoints_; }
  /// entry.env of the job spec: the worker type's configuration.
  const std::map<std::string, std::string>& config() const { return config_; }
  /// config()[name] as an unsigned number, `fallback` when unset. InvalidArgument naming the
  /// variable when it is not a decimal number.
  StatusOr<uint64_t> ConfigNumber(const std::string& name, uint64_t fallback) const;

  /// Whether the supervisor asked this worker to stop: a WorkerMain checks it between steps and
  /// returns Cancelled.
  bool stopping() const { return stopping_.load(); }
  /// Asks the worker to stop and aborts its communicator (a collective in flight fails at once
  /// with Unavailable). Any thread.
  void Stop(const std::string& reason);
  /// The WorkerMain completed training step `step`. The first call of the attempt runs the
  /// reporter set by OnFirstStep (the worker actor tells its supervisor, whose recovery timeline
  /// ends there: actors/training/recovery.h); later calls cost one atomic exchange.
  void StepDone(uint64_t step);
  /// Set before the WorkerMain runs; called once, from the first StepDone's thread.
  void OnFirstStep(std::function<void(uint64_t step)> report) { on_first_step_ = std::move(report); }

  /// Opens this rank's log at `path` (created with its directories, appended to), the file
  /// `troupe job logs` reads through the node agent as it reads a process worker's output:
  /// `<node data_dir>/jobs/<job>/attempt-<a>/rank-<r>.log` (WorkerLauncher::LogPath). Internal
  /// naming the path and errno's text when it cannot be opened.
  Status OpenLog(const std::string& path);
  /// Appends `line` and a newline to the log, flushed at once (a reader sees whole lines). Any
  /// thread; nothing happens without an open log (a context made by a test) or after a failed
  /// write.
  void Log(const std::string& line);

 private:
  ActorWorkerStart start_;
  std::map<std::string, std::string> config_;
  std::unique_ptr<collectives::Communicator> communicator_;
  std::unique_ptr<actors::GpuMemoryDevice> device_;
  std::unique_ptr<actors::CappedAllocator> allocator_;
  CheckpointHandle checkpoints_;
  std::atomic<bool> stopping_{false};
  std::function<void(uint64_t)> on_first_step_;
  std::atomic<bool> stepped_{false};
  std::mutex log_mu_;
  std::FILE* log_ = nullptr;  // guarded by log_mu_
};

/// A worker type's body: trains to the end and returns OK (the worker "exits 0"), or the error
/// that ends the worker (a user failure, as a process worker's non-zero exit). An exception is
/// caught and counts the same. Runs on a thread of its own; blocking calls are fine there.
using WorkerMain = std::function<Status(WorkerContext&)>;

/// Makes a rank's communicator from its start: rank, world size, the attempt's rendezvous store
/// actor (`start.rendezvous`, collectives/rendezvous.h), its slice and the job's entry.backend
/// (actors/training/worker_communicators.h chooses). Blocks until the group is formed or fails,
/// or until `abort` is raised (never null): the worker's stop (StopActorWorker) or its PeerWatch,
/// which watches the other ranks from the moment the supervisor sends them (ActorWorkerPeers),
/// formation included. Then it returns the abort's reason (Unavailable naming the lost rank, or
/// the stop's) as soon as the backend can: at once for Gloo's connects (GlooOptions::abort).
using CommunicatorFactory = std::function<StatusOr<std::unique_ptr<collectives::Communicator>>(
    runtime::Runtime& runtime, const ActorWorkerStart& start, std::shared_ptr<collectives::AbortSignal> abort)>;

/// Gloo (collectives/gloo_communicator.h) over the attempt's rendezvous store
/// (collectives/rendezvous.h), bound to the host of `runtime`'s address; an empty function where
/// troupe is built without Gloo. Errors: FailedPrecondition without a store; Create()'s.
CommunicatorFactory GlooCommunicatorFactory();

/// Opens the memory of a worker's GPU (gpu_index; simulated slices included).
using GpuDeviceOpener =
    std::function<StatusOr<std::unique_ptr<actors::GpuMemoryDevice>>(uint32_t gpu_index, bool simulated)>;

/// The worker types a node can spawn, by name ([a-z0-9][a-z0-9-]*, as entry.actor).
/// Thread-safe.
class WorkerTypeRegistry {
 public:
  /// AlreadyExists for a name registered before; InvalidArgument for a name entry.actor cannot give.
  Status Register(const std::string& name, WorkerMain main);
  /// NotFound naming the type and the registered ones.
  StatusOr<WorkerMain> Find(const std::string& name) const;
  std::vector<std::string> Names() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, WorkerMain> types_;
};

/// The registry of every troupe binary: the built-in types (example_trainer.h's "example-linear").
WorkerTypeRegistry& BuiltinWorkerTypes();

/// The actor workers of one node, as its agent reports them when it joins a head (List), hands
/// them to a restarted head's supervisor (Adopt) and stops them (Stop): the actor workers'
/// counterpart of WorkerLauncher (docs/jobs.md, "When the head restarts"). Each worker reports
/// (its progress, its first step, its exit) to the supervisor recorded here, so an Adopt switches
/// them at once; the exits of each job's newest attempt are kept, as WorkerLauncher keeps its
/// processes', for a supervisor that adopts the attempt later. The node agent owns it; the worker
/// actors (RegisterActorWorkers) add themselves. Thread-safe.
class ActorWorkerTable {
 public:
  ActorWorkerTable() = default;
  ActorWorkerTable(const ActorWorkerTable&) = delete;
  ActorWorkerTable& operator=(const ActorWorkerTable&) = delete;

  /// The workers running here (RunningWorker::worker set) and the exits of each job's newest
  /// attempt whose worker has ended (neither pid nor worker), as a node reports them at a join.
  /// A worker that trained to the end and waits for its group's stop is running.
  std::vector<RunningWorker> List() const;
  /// From now on the job's workers of `attempt` here report to `supervisor` and watch it (an
  /// orphan stops waiting for a new supervisor). Returns those still training (with their actor)
  /// and the exits of that attempt recorded before (whoever was told of them; an exit recorded
  /// after this call goes to `supervisor`).
  WorkersAdopted Adopt(const std::string& job, uint64_t attempt, const runtime::ActorRef& supervisor);
  /// Sends StopActorWorker to the job's workers of attempts up to `up_to_attempt` and forgets
  /// their exits (StopWorkers, as WorkerLauncher::Stop). Returns how many were running.
  uint32_t Stop(const std::string& job, uint64_t up_to_attempt);
  /// The node joined a head: every worker waiting for a new supervisor waits its full bound again
  /// from now (ActorWorkerDeps::adopt_timeout), so that the new head's supervisor can adopt it.
  void HeadJoined();
  /// Ends every worker actor (the node shuts down).
  void StopAll();

  // The worker actor's side (actor_worker.cc).
  /// Rank `start.rank` of `start.attempt` runs as `worker` and reports to `start.supervisor`;
  /// the exits kept of the job's older attempts are forgotten.
  void Add(const ActorWorkerStart& start, caf::actor worker, runtime::ActorRef ref, std::string log_path);
  /// Whom that worker reports to now (empty when it is not here).
  runtime::ActorRef Supervisor(const ActorWorkerStart& start) const;
  /// Records the worker's exit; returns the supervisor to report it to.
  runtime::ActorRef Exited(const ActorWorkerStart& start, const WorkerExited& exit);
  /// The worker actor `worker` has ended: forgotten, unless its exit is kept for an adopter (it
  /// exited, was not Stop()ped, and no newer attempt of its job is here: only the newest
  /// attempt's exits are kept). The end of another actor than the one added for the rank (an
  /// earlier Add of the same rank) changes nothing.
  void Ended(const ActorWorkerStart& start, const caf::actor_addr& worker);

 private:
  struct Entry {
    caf::actor actor;  // empty once ended
    runtime::ActorRef ref;
    runtime::ActorRef supervisor;
    std::string log_path;
    std::optional<WorkerExited> exit;
    bool stopped = false;  // Stop()ped: its exit is not kept
  };
  using Key = std::tuple<std::string, uint64_t, uint32_t>;  // job, attempt, rank
  mutable std::mutex mu_;
  std::map<Key, Entry> workers_;
};

/// The bound of ActorWorkerDeps::failed_rank_hold. A rank that fails on its own reports its
/// WorkerExited before its communicator closes and holds the communicator open until the
/// supervisor stops the group, so that no peer sees the closed connections, fails with
/// Unavailable and reports an infrastructure fault before the supervisor counted the user failure
/// (the first report decides the failure's kind). The supervisor stops every rank as soon as it
/// hears the failure, so the hold ends in one message round trip; the bound is for a supervisor
/// that cannot be reached: a second, far above a round trip and short beside a restart.
inline constexpr std::chrono::milliseconds kFailedRankHold{1000};

/// How a node makes its workers' parts.
struct ActorWorkerDeps {
  const WorkerTypeRegistry* types = nullptr;
  /// Empty: jobs of more than one worker fail at their start with FailedPrecondition (no
  /// collectives backend in this build).
  CommunicatorFactory communicators;
  /// Empty: CudaDevice::Open for real GPUs; simulated slices get host memory (malloc) capped
  /// the same way.
  GpuDeviceOpener devices;
  /// Set on a node whose checkpoint directories are not the committing node's (node config
  /// `checkpoints: send`, docs/checkpoints.md): its workers send their shards through it to
  /// ActorWorkerStart::checkpoint_node when that is another node, and read the checkpoint they
  /// resume from from there (RegisterActorWorkers attaches a ShardReader to it). Null: they write
  /// checkpoint_dir and read resume_dir themselves (a shared or the same file system).
  std::shared_ptr<runtime::BulkEndpoint> shard_bulk;
  /// Where a rank's log goes (job, attempt, rank -> path; the node's WorkerLauncher::LogPath, so
  /// `troupe job logs` finds it). Empty: workers keep no log.
  std::function<std::string(const std::string& job, uint64_t attempt, uint32_t rank)> log_path;
  /// The node's table of its actor workers (the agent's; null: RegisterActorWorkers makes one that
  /// nobody reports).
  std::shared_ptr<ActorWorkerTable> table;
  /// How long a worker whose supervisor cannot be reached (Unavailable: the head was lost, kill -9
  /// included) keeps training and waits for a restarted head's supervisor to adopt it
  /// (ActorWorkerTable::Adopt), counted from the loss and again from each join of its node to a
  /// head (ActorWorkerTable::HeadJoined); then it stops (a worker that trained to the end exits).
  /// A supervisor that ended (the job stopped, finished or failed) stops it at once, and so does
  /// any loss with 0. The node agent sets the bound the restarted head's supervisor waits for the
  /// workers: twice the failure timeout plus a second (docs/jobs.md, "When the head restarts").
  std::chrono::milliseconds adopt_timeout{0};
  /// How long a rank that failed on its own (an error other than Unavailable, DeadlineExceeded or
  /// Cancelled, which are the loss of its group) keeps its communicator open after it reported
  /// the failure, waiting for its supervisor's StopActorWorker (kFailedRankHold).
  std::chrono::milliseconds failed_rank_hold = kFailedRankHold;
};

/// Registers kActorWorkerActorType with `runtime` (every node agent does, so SpawnOn works on
/// every node). The spawned actor runs the worker on a thread, reports its end to the supervisor
/// as a WorkerExited (exit_code 0, or 1 with the error), then exits; a StopActorWorker stops it.
/// A rank that fails on its own reports before its communicator closes, then holds it open until
/// a StopActorWorker comes or deps.failed_rank_hold passes (kFailedRankHold).
/// It watches its supervisor: when that is lost it waits for an adopter (deps.adopt_timeout).
/// `runtime` must outlive the actors.
Status RegisterActorWorkers(runtime::Runtime& runtime, ActorWorkerDeps deps);

/// Runs `main` with `context`, turning an exception into Internal ("threw <what>").
Status RunWorkerMain(const WorkerMain& main, WorkerContext& context);

}  // namespace troupe::training
