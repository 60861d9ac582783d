// WorkerLauncher: the process workers of training jobs on one node, as the node agent runs them.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "actors/training/messages.h"
#include "common/child_process.h"
#include "common/free_port.h"
#include "common/status.h"

namespace troupe::training {

/// Starts, watches and stops the worker processes of jobs on this node (docs/jobs.md, "Workers").
///
/// Each worker is a child process leading a process group of its own; a keeper process kills that
/// group with SIGKILL when the worker is stopped, when it exits (so DataLoader children and other
/// leftovers go with it), and when this process ends however it ends, kill -9 included
/// (SpawnOptions::group_dies_with_parent).
///
/// Its stdout and stderr (merged) go, line by line, to `<log_root>/<job>/attempt-<A>/rank-<R>.log`,
/// rotated at kMaxLogFileBytes with kLogFilesKept older files (`.1`, `.2`), so a chatty worker
/// cannot fill the disk.
///
/// A worker makes progress when it writes a line or touches $TROUPE_PROGRESS_FILE. It is hung
/// when it has made none for its watchdog, or has been stopped (SIGSTOP, state T) for
/// kStoppedGrace: it is then killed and reported with `hung` set. One thread per worker watches
/// it, polling every kPollInterval.
///
/// Standby workers (StartWorker::preload, docs/jobs.md "Standby workers"): once a worker of such
/// a job has made its first progress (or kStandbyDelay passed), the launcher starts a standby
/// interpreter for the job, unless the job already has one per worker here: the same
/// interpreter in its own process group, with the worker's environment, that imports the
/// modules and waits. The next worker of the job started here (a restarted attempt, any rank)
/// runs in a ready one (ActivationLine) instead of a new process; while it is still importing,
/// or if it died (logged with what it printed), the worker starts cold: Start() never waits. Standbys go with Stop(..., final), StopAll() and this
/// process.
class WorkerLauncher {
 public:
  static constexpr uint64_t kMaxLogFileBytes = 16 << 20;
  static constexpr int kLogFilesKept = 2;
  static constexpr std::chrono::milliseconds kPollInterval{50};
  /// How long a worker may stay stopped before it counts as hung: long enough for a debugger's
  /// brief stop, far shorter than any watchdog.
  static constexpr std::chrono::milliseconds kStoppedGrace{1000};
  /// How long after its start a quiet worker waits for its standby: the standby's import then
  /// competes less with the worker's own start.
  static constexpr std::chrono::milliseconds kStandbyDelay{2000};
  /// Written to a worker's log when a standby for its job is ready on its node, and as the first
  /// line of a worker that runs in a standby.
  static constexpr const char* kStandbyReadyLogLine =
      "[troupe] a standby interpreter for the job's next attempt is ready on this node (entry.preload imported)";
  static constexpr const char* kStartedInStandbyLogLine =
      "[troupe] started in a standby interpreter (entry.preload imported before)";

  /// `on_exit` runs on the worker's watcher thread once per worker that ended by itself or was
  /// found hung (not for workers stopped through Stop()).
  /// `max_log_bytes`: where a worker's log file is rotated (tests make it small).
  WorkerLauncher(std::string log_root, std::function<void(const StartWorker&, const WorkerExited&)> on_exit,
                 uint64_t max_log_bytes = kMaxLogFileBytes);
  /// Kills every worker's group and waits for the watcher threads.
  ~WorkerLauncher();
  /// The same, now: every worker is killed and gone when it returns (not reported).
  void StopAll();
  WorkerLauncher(const WorkerLauncher&) = delete;
  WorkerLauncher& operator=(const WorkerLauncher&) = delete;

  /// Starts `request`'s worker with `request.env` plus `slice_env` (the slice's CUDA_VISIBLE_DEVICES
  /// and limits), TROUPE_PROGRESS_FILE and, with pick_master_port, MASTER_PORT (a port free on this
  /// host now). AlreadyExists if that job's attempt already runs that rank; Unavailable if the
  /// program cannot be executed (with the reason); Internal if the log directory cannot be made.
  StatusOr<WorkerStarted> Start(const StartWorker& request, const std::vector<std::string>& slice_env);
  /// Kills (SIGKILL, whole process group) the job's workers of attempts up to `up_to_attempt`
  /// and waits until they are gone; with `final` (the job runs no more) its standbys too.
  /// Returns how many workers there were.
  uint32_t Stop(const std::string& job, uint64_t up_to_attempt, bool final = false);
  /// The job's standby interpreters here that have imported their modules (a standby that died
  /// since may count until a Start() finds it dead).
  size_t ready_standbys(const std::string& job);
  /// The workers running now, and those of each job's newest attempt that exited since (pid 0),
  /// as a node reports them when it joins a head.
  std::vector<RunningWorker> List() const;
  /// From now on the job's workers of `attempt` report their exits to `supervisor` (after a head
  /// restart, its new supervisor takes them back). Returns those running and the exits of that
  /// attempt seen so far (whoever was told of them).
  WorkersAdopted Adopt(const std::string& job, uint64_t attempt, const runtime::ActorRef& supervisor);
  /// Up to `max_bytes` of a worker's current log file from `offset`. NotFound if there is no log.
  StatusOr<WorkerLogChunk> ReadLog(const ReadWorkerLog& request) const;
  /// The log file of a worker.
  std::string LogPath(const std::string& job, uint64_t attempt, uint32_t rank) const;
  /// How many workers run now.
  size_t running() const;

 private:
  struct Worker;
  struct Standby;
  using Key = std::tuple<std::string, uint64_t, uint32_t>;
  void Watch(std::shared_ptr<Worker> worker);
  // Starts a standby for `worker`'s job if it has fewer than one per running worker here.
  void AddStandby(const std::shared_ptr<Worker>& worker);
  // A live standby of `request`'s job for its command (taken out of standbys_), or null.
  std::unique_ptr<ChildProcess> TakeStandby(const StartWorker& request);
  // True if a standby for `request`'s job and command is ready here.
  bool HasReadyStandby(const StartWorker& request);
  // Reaps standbys found dead (outside mu_) and logs what they printed; empties `dead`.
  static void ReapStandbys(const std::string& job, std::vector<std::unique_ptr<Standby>>& dead);

  const std::string log_root_;
  const std::function<void(const StartWorker&, const WorkerExited&)> on_exit_;
  const uint64_t max_log_bytes_;
  mutable std::mutex mu_;
  std::map<Key, std::shared_ptr<Worker>> workers_;
  // The exits of each job's newest attempt (job -> attempt, exits), for Adopt() and List().
  std::map<std::string, std::pair<uint64_t, std::vector<WorkerExited>>> exits_;
  // Standby interpreters by job.
  std::map<std::string, std::vector<std::unique_ptr<Standby>>> standbys_;
  // Threads reaping the standbys of jobs that ended (joined by the next Stop() that kills
  // standbys, and by StopAll()).
  std::vector<std::thread> reapers_;
};

}  // namespace troupe::training
