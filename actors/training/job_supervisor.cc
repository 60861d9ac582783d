// The job supervisor.
#include "actors/training/job_supervisor.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>
#include <set>

#include "actors/training/actor_worker.h"
#include "actors/training/checkpoint_committer.h"
#include "actors/training/messages.h"
#include "actors/training/recovery.h"
#include "common/backoff.h"
#include "runtime/error.h"

namespace troupe::training {

namespace {

using tick_atom = caf::atom_constant<caf::atom("job_tick")>;
using restart_atom = caf::atom_constant<caf::atom("job_rstrt")>;
using quit_atom = caf::atom_constant<caf::atom("job_quit")>;
using take_back_atom = caf::atom_constant<caf::atom("job_tkbk")>;
using replace_atom = caf::atom_constant<caf::atom("job_place")>;

// How long a node whose agent was seen lost is kept out of this job's placements at most: twice
// the head's default failure timeout (1 s), by which the head has declared it dead or it has
// rejoined (a stopped node continued keeps its agent).
constexpr std::chrono::milliseconds kLostNodeHold{2000};

struct SupervisorState {
  JobSupervisorInit init;
  JobStatus status;
  Placement placement;
  bool placed = false;
  // The attempt whose placement was asked for and not answered yet (0: none).
  uint64_t placing = 0;
  std::set<uint32_t> started;
  std::set<uint32_t> succeeded;
  uint32_t master_port = 0;
  std::optional<storage::CheckpointRecord> resume;
  std::unique_ptr<Backoff> backoff;
  bool ticking = false;
  // Taking the workers of an earlier head back (JobSupervisorInit::take_back): the ranks found
  // running, and the agents asked.
  // Placement requests refused in a row since the last placement (they are asked again).
  uint32_t placement_refusals = 0;
  // Failures since the group last made progress (a committed checkpoint): the backoff's count.
  uint32_t consecutive_failures = 0;
  bool taking_back = false;
  std::set<uint32_t> taken_back;
  std::set<uint64_t> adopting_agents;
  // The checkpoint file I/O runs there (checkpoint_committer.h), never on this mailbox.
  caf::actor committer;
  // A CommitSteps pass is in flight. One at a time, so no step is committed twice; the attempts
  // whose pass was asked for meanwhile go next, lowest first.
  bool committing = false;
  std::set<uint64_t> commit_next;
  // Every worker exited 0: the job succeeds once the steps they completed are committed.
  bool succeeding = false;
  // StopWorkers not answered yet; once finished, it waits for them for the node timeout at most.
  size_t stops_pending = 0;
  bool stop_timeout_passed = false;
  // Actor workers (spec.entry.actor) of the placed attempt, by rank (empty refs: not spawned
  // yet), and the attempt's rendezvous store.
  std::vector<runtime::ActorRef> actor_workers;
  runtime::ActorRef rendezvous;
  // Actor workers: the placed attempt's start, from the failure's detection (or, for a fresh
  // start, the placement's request) to every rank's first step (recovery.h); reported once.
  RecoveryTimeline recovery;
  bool recovery_reported = false;
  // Nodes whose agent this supervisor saw lost: a placement there is refused until the head has
  // caught up (recovery.h), and the placements refused in a row.
  LostNodes lost_nodes{kLostNodeHold};
  uint32_t lost_refusals = 0;
  // The last failure was an infrastructure fault, and a later one was taken as the same fault
  // (GroupFailed): at most once per counted fault.
  bool last_failure_infra = false;
  bool repeat_forgiven = false;
};

using Self = caf::stateful_actor<SupervisorState>;

const char* const kSupervisorName = "job supervisor";

// The wait before asking again for a placement refused for a lost node: 5 ms, doubling to 100 ms.
// The head has most often caught up by the first (its controller's mailbox had the node's down
// message before this supervisor's request).
std::chrono::milliseconds LostNodeRetryDelay(uint32_t refusals) {
  return std::chrono::milliseconds(std::min<uint32_t>(100, 5u << std::min<uint32_t>(refusals - 1, 5)));
}

bool ActorJob(const SupervisorState& st) { return !st.init.spec.entry.actor.empty(); }

void Update(Self* self, const std::string& message) {
  auto& st = self->state;
  JobEvent event{st.init.clock->UnixMs(), st.status.state, st.status.attempt, message};
  if (!message.empty()) spdlog::info("job '{}': {} ({})", st.status.name, message, st.status.state);
  st.init.host->Update(caf::actor_cast<caf::actor>(self), st.status, event);
}

std::string StagingDir(const SupervisorState& st) {
  return storage::CheckpointStore::StagingDir(st.init.checkpoint_root, st.status.attempt);
}

void PassDone(Self* self, const CommitPassDone& done);

// Asks the committer to commit every step that all ranks of `attempt` have marked done (and to
// apply the retention after each); the answer comes back as a CommitPassDone. One pass at a time:
// with `queue`, a pass asked for while one runs follows it (a failure or the end of the group must
// not miss a step completed meanwhile); without, it is skipped (the next tick asks again).
void CommitReady(Self* self, uint64_t attempt, bool queue) {
  auto& st = self->state;
  if (attempt == 0) return;
  if (st.committing) {
    if (queue) st.commit_next.insert(attempt);
    return;
  }
  st.committing = true;
  self->request(st.committer, caf::infinite, CommitSteps{attempt})
      .then([self](CommitPassDone& done) { PassDone(self, done); },
            [self, attempt](caf::error& error) {
              CommitPassDone failed;
              failed.attempt = attempt;
              failed.lookup = runtime::ToStatus(error);
              PassDone(self, failed);
            });
}

// A finished supervisor quits once every node has answered its StopWorkers (or the node timeout
// passed) and no commit is in flight or queued.
void MaybeQuit(Self* self) {
  auto& st = self->state;
  if (!IsFinal(st.status.state) || st.committing) return;
  if (st.stops_pending > 0 && !st.stop_timeout_passed) return;
  self->quit();
}

// Kills every worker of the current placement (all attempts up to the current one) and releases
// its lease once every node has answered (or timed out): its slices are not handed out while a
// worker of this job may still run on them.
// `confirm`: the group failed with an infrastructure fault; until each node's agent answers this
// stop (alive) or is seen lost, a restart is not placed there (LostNodes::Unconfirmed).
void StopGroup(Self* self, bool final = false, bool confirm = false) {
  auto& st = self->state;
  if (!st.placed) return;
  st.placed = false;
  std::map<uint64_t, std::pair<runtime::ActorRef, std::string>> agents;  // by wire id: one StopWorkers per node
  for (const auto& w : st.placement.workers) {
    if (w.agent.valid()) agents.emplace(w.agent.id(), std::make_pair(w.agent, w.node));
  }
  auto left = std::make_shared<size_t>(agents.size());
  const uint64_t lease = st.placement.lease_id;
  JobHost* host = st.init.host;
  st.stops_pending += agents.size();
  auto done = [self, left, lease, host] {
    --self->state.stops_pending;
    if (--*left == 0) host->ReleasePlacement(lease);
    MaybeQuit(self);
  };
  for (const auto& [id, place] : agents) {
    const auto& [agent, node] = place;
    if (confirm) st.lost_nodes.Unconfirmed(node, id, st.init.clock->Now());
    self->request(agent.handle(), st.init.node_timeout, StopWorkers{st.status.name, st.status.attempt, final})
        .then(
            [self, done, confirm, node = node, id = id](WorkersStopped&) {
              if (confirm) self->state.lost_nodes.Confirmed(node, id);
              done();
            },
            [self, done, confirm, node = node, id = id](caf::error& error) {
              if (confirm && runtime::ToStatus(error).code() == StatusCode::kUnavailable) {
                self->state.lost_nodes.Lost(node, id, self->state.init.clock->Now());
              }
              done();
            });
  }
  if (agents.empty()) host->ReleasePlacement(lease);
  for (const auto& worker : st.actor_workers) {
    if (worker.valid()) worker.Send(StopActorWorker{final ? "the job finished" : "the group restarts"});
  }
  st.actor_workers.clear();
  if (st.rendezvous.valid()) caf::anon_send_exit(st.rendezvous.handle(), caf::exit_reason::user_shutdown);
  st.rendezvous = {};
  st.started.clear();
  st.succeeded.clear();
}

void Finish(Self* self, const std::string& state, const std::string& reason) {
  auto& st = self->state;
  StopGroup(self, /*final=*/true);
  st.status.state = state;
  st.status.reason = reason;
  st.status.finished_unix_ms = st.init.clock->UnixMs();
  Update(self, state == kJobSucceeded ? "succeeded" : reason);
  // The StopWorkers requests above are answered to this actor; it stays until they are (the
  // node timeout at most), then exits. Its lease ends with it in any case.
  // A commit in flight is not waited for, but its answer is: what it committed is recorded (a
  // committed checkpoint is committed, stopped job or not), so the actor quits only after it
  // (MaybeQuit), and after the nodes' answers to StopWorkers (the node timeout at most).
  self->delayed_send(self, st.init.node_timeout, quit_atom::value);
  // Every message of the running behaviour is handled (and ignored) here: one left to the
  // default handler comes back as an error, which would end the actor at once (a tick did).
  self->become(
      [self](quit_atom) {
        self->state.stop_timeout_passed = true;
        MaybeQuit(self);
      },
      [self](PlacementAnswer& answer) {
        if (answer.status.ok()) self->state.init.host->ReleasePlacement(answer.placement.lease_id);
      },
      [](WorkersStopped&) {}, [](tick_atom) {}, [](restart_atom, uint64_t) {}, [](replace_atom) {},
      [](take_back_atom) {}, [](WorkerExited&) {}, [](WorkersFound&) {}, [](StopJob&) {}, [](ActorWorkerProgress&) {},
      [](ActorWorkerSpawned& spawned) {
        if (spawned.worker.valid()) spawned.worker.Send(StopActorWorker{"the job finished"});
      });
  MaybeQuit(self);
}

// The end of a commit pass, whenever it comes: after the attempt it was for failed, or after the
// job finished (the checkpoints it committed count all the same).
void PassDone(Self* self, const CommitPassDone& done) {
  auto& st = self->state;
  st.committing = false;
  const bool final = IsFinal(st.status.state);
  if (!done.lookup.ok()) {
    spdlog::warn("job '{}': cannot look for checkpoints: {}", st.status.name, done.lookup.ToString());
  }
  bool progress = false;
  for (const StepCommit& step : done.steps) {
    if (!step.status.ok()) {
      // Cancelled: the finished job is being deleted; its events go with it.
      if (final && step.status.code() == StatusCode::kCancelled) continue;
      Update(self, "checkpoint of step " + std::to_string(step.step) + " not committed: " + step.status.ToString());
      continue;
    }
    progress = true;
    st.status.checkpoint_step = std::max<int64_t>(st.status.checkpoint_step, static_cast<int64_t>(step.step));
    Update(self, "checkpoint committed: step " + std::to_string(step.step) + ", " + std::to_string(step.total_bytes) +
                     " bytes" + (final ? " (after the job was " + st.status.state + ")" : ""));
  }
  if (progress && !final) {
    // The backoff counts failures since the last progress. The attempt of this pass may have
    // failed since (counted before the pass ended): that one failure stays, and a restart waiting
    // out a longer backoff goes now, as it would have had the commit been quicker.
    const bool running_it = st.placed && done.attempt == st.status.attempt;
    st.consecutive_failures = running_it ? 0 : std::min<uint32_t>(st.consecutive_failures, 1);
    if (st.status.state == kJobRestarting) self->send(self, restart_atom::value, st.status.attempt);
  }
  if (!st.commit_next.empty()) {
    const uint64_t attempt = *st.commit_next.begin();
    st.commit_next.erase(st.commit_next.begin());
    CommitReady(self, attempt, /*queue=*/true);
  }
  if (st.committing) return;
  if (st.succeeding && !final) {
    Finish(self, kJobSucceeded, "every worker exited 0");
  } else {
    MaybeQuit(self);
  }
}

// Every worker exited 0: the job succeeds once what they saved last is committed (the final
// checkpoint is what an output model registers). Failures meanwhile change nothing.
void Succeed(Self* self) {
  auto& st = self->state;
  st.succeeding = true;
  CommitReady(self, st.status.attempt, /*queue=*/true);
}

void RequestPlacement(Self* self, const std::string& why) {
  auto& st = self->state;
  if (ActorJob(st)) {
    const auto now = st.init.clock->Now();
    if (st.recovery.after_failure() && !st.recovery.complete()) {
      st.recovery.Mark(RecoveryMark::kDecided, now);
    } else {
      st.recovery.Begin(RecoveryMark::kDecided, now, st.init.spec.workers);
    }
    st.recovery_reported = false;
  }
  st.placing = st.status.attempt + 1;
  st.status.state = kJobPending;
  st.status.reason = why;
  st.status.workers.clear();
  st.status.lease_id = 0;
  Update(self, why);
  st.init.host->RequestPlacement(st.init.spec, st.placing, caf::actor_cast<caf::actor>(self));
}

// One failure of the group: counted against the restart policy; the group is stopped and, within
// the policy, placed and started again after the backoff.
void GroupFailed(Self* self, const std::string& cause, bool infra) {
  auto& st = self->state;
  if (IsFinal(st.status.state) || st.status.state == kJobRestarting || st.succeeding) return;
  // A failure while the group was still recovering from the one before counts from that one's
  // detection: the group has not trained since.
  const bool recovering = ActorJob(st) && st.recovery.after_failure() && !st.recovery.complete();
  if (ActorJob(st) && !recovering) {
    st.recovery.Begin(RecoveryMark::kDetected, st.init.clock->Now(), st.init.spec.workers);
    st.recovery_reported = false;
  }
  // The same fault seen again: an infrastructure fault of a restarted attempt that has not
  // trained yet, right after an infrastructure fault. When a survivor's Gloo error (the killed
  // node's TCP reset) is the first sign of a node's loss, the restart can be placed on that node
  // before the runtime has seen it lost (LostNodes cannot refuse it), and fails when it is.
  // Counted once and restarted without backoff; once per counted fault, so a node that fails
  // every attempt still exhausts the policy.
  const bool same_fault = infra && recovering && st.last_failure_infra && !st.repeat_forgiven;
  st.repeat_forgiven = same_fault;
  st.last_failure_infra = infra;
  // A take-back that failed: the workers that came back are stopped and the lease taken back is
  // released with the group (StopGroup), as those of a placed attempt.
  if (st.taking_back) st.placed = true;
  st.taking_back = false;
  const RestartPolicy& policy = st.init.spec.restart;
  if (!same_fault) ++(infra ? st.status.infra_failures : st.status.user_failures);
  // A checkpoint completed just before the failure still counts: the restart's FindResume waits
  // for this pass in the committer's mailbox.
  if (st.placed) CommitReady(self, st.status.attempt, /*queue=*/true);
  if (st.status.user_failures > policy.max_user_failures) {
    Finish(self, kJobFailed,
           "restart policy exceeded: " + std::to_string(st.status.user_failures) + " worker failures (max_user_failures " +
               std::to_string(policy.max_user_failures) + "); last: " + cause);
    return;
  }
  if (st.status.infra_failures > policy.max_infra_failures) {
    Finish(self, kJobFailed,
           "restart policy exceeded: " + std::to_string(st.status.infra_failures) +
               " infrastructure faults (max_infra_failures " + std::to_string(policy.max_infra_failures) +
               "); last: " + cause);
    return;
  }
  StopGroup(self, /*final=*/false, /*confirm=*/infra && ActorJob(st));
  st.status.state = kJobRestarting;
  // The first restart after progress is immediate (a lost worker costs only its restart);
  // failures with no committed checkpoint in between back off, jittered and doubling.
  if (!same_fault) ++st.consecutive_failures;
  const auto delay = st.consecutive_failures <= 1 ? std::chrono::milliseconds(0)
                                                  : st.backoff->Delay(st.consecutive_failures - 1);
  st.status.reason = "attempt " + std::to_string(st.status.attempt) + " failed (" +
                     (same_fault ? "infrastructure, the fault before seen again: not counted"
                                 : infra ? "infrastructure" : "user") +
                     "): " + cause + "; restarting in " +
                     std::to_string(delay.count()) + " ms";
  Update(self, st.status.reason);
  self->delayed_send(self, delay, restart_atom::value, st.status.attempt);
}

void StartRank(Self* self, uint32_t rank);
void StartTicking(Self* self);

void AllStarted(Self* self) {
  auto& st = self->state;
  st.lost_nodes.Clear();  // the head has placed this attempt without them: it has caught up
  st.status.state = kJobRunning;
  st.status.reason.clear();
  Update(self, "running: " + std::to_string(st.init.spec.workers) + " workers started" +
                   (st.resume ? ", resumed from step " + std::to_string(st.resume->step) : ""));
}

void StartRank(Self* self, uint32_t rank) {
  auto& st = self->state;
  const WorkerPlace& place = st.placement.workers[rank];
  StartWorker msg;
  msg.job = st.status.name;
  msg.attempt = st.status.attempt;
  msg.rank = rank;
  msg.argv = st.init.spec.entry.command;
  msg.env = WorkerEnvironment(st.init.spec, st.placement, rank, st.status.attempt, StagingDir(st), st.resume);
  if (rank != 0) msg.env.push_back("MASTER_PORT=" + std::to_string(st.master_port));
  msg.working_dir = st.init.spec.entry.working_dir;
  msg.watchdog_ms = st.init.spec.step_watchdog.count();
  msg.supervisor = st.init.runtime->Ref(caf::actor_cast<caf::actor>(self));
  msg.lease_id = st.placement.lease_id;
  msg.gpu_index = place.gpu_index;
  msg.gpu_id = place.gpu_id;
  msg.memory_bytes = place.memory_bytes;
  msg.compute_percent = place.compute_percent;
  msg.simulated = place.simulated;
  msg.pick_master_port = rank == 0;
  msg.preload = st.init.spec.entry.preload;
  const uint64_t attempt = st.status.attempt;
  self->request(place.agent.handle(), st.init.node_timeout, std::move(msg))
      .then(
          [self, rank, attempt](WorkerStarted& started) {
            auto& st = self->state;
            if (attempt != st.status.attempt || !st.placed) return;
            st.started.insert(rank);
            st.status.workers.push_back(WorkerStatus{rank, st.placement.workers[rank].node, started.pid, started.log_path});
            if (rank == 0) {
              st.master_port = started.master_port;
              for (uint32_t r = 1; r < st.init.spec.workers; ++r) StartRank(self, r);
            }
            if (st.started.size() == st.init.spec.workers) AllStarted(self);
          },
          [self, rank, attempt](caf::error& error) {
            auto& st = self->state;
            if (attempt != st.status.attempt || !st.placed) return;
            Status why = runtime::ToStatus(error);
            // A program that cannot be executed is the job's fault; a node that does not answer is not.
            const bool infra = why.code() == StatusCode::kDeadlineExceeded ||
                               why.message().find("cannot start") == std::string::npos;
            GroupFailed(self, "rank " + std::to_string(rank) + " on node '" + st.placement.workers[rank].node +
                                  "' did not start: " + why.ToString(),
                        infra);
          });
}

void Resumed(Self* self, ResumePoint& point, const std::string& nodes);

// Actor workers (docs/jobs.md, "Actor workers"): every rank is spawned at once on its node
// through Runtime::SpawnOn, each on a detached helper (SpawnOn blocks up to the node timeout),
// whose answer comes back as an ActorWorkerSpawned.
void StartActorWorkers(Self* self) {
  auto& st = self->state;
  const uint32_t n = st.init.spec.workers;
  st.actor_workers.assign(n, runtime::ActorRef{});
  if (n > 1 && st.init.spawn_rendezvous) st.rendezvous = st.init.runtime->Ref(st.init.spawn_rendezvous(self->system()));
  std::vector<std::string> env;
  for (const auto& [name, value] : st.init.spec.entry.env) env.push_back(name + "=" + value);
  // One backend for the whole group: `auto` resolves to NCCL on a node only where the worker has
  // a real GPU slice (worker_communicators.h), so a group placed partly on CPUs or simulated
  // slices would split between NCCL and Gloo and wait out its rendezvous; it gets Gloo here.
  std::string backend = st.init.spec.entry.backend;
  if (backend.empty() || backend == "auto") {
    for (const auto& place : st.placement.workers) {
      if (place.gpu_index == kNoGpu || place.simulated) backend = "gloo";
    }
  }
  const caf::actor me = caf::actor_cast<caf::actor>(self);
  runtime::Runtime* rt = st.init.runtime;
  const auto timeout = st.init.node_timeout;
  for (uint32_t rank = 0; rank < n; ++rank) {
    const WorkerPlace& place = st.placement.workers[rank];
    ActorWorkerStart start;
    start.job = st.status.name;
    start.type = st.init.spec.entry.actor;
    start.attempt = st.status.attempt;
    start.rank = rank;
    start.world_size = n;
    start.env = env;
    start.checkpoint_dir = StagingDir(st);
    start.checkpoint_node = rt->node_id();  // the committer runs here: shards that are sent come here
    if (st.resume) {
      start.resume_dir = st.resume->dir;
      start.resume_step = st.resume->step;
    }
    start.supervisor = rt->Ref(me);
    start.rendezvous = st.rendezvous;
    start.gpu_index = place.gpu_index;
    start.gpu_id = place.gpu_id;
    start.memory_bytes = place.memory_bytes;
    start.simulated = place.simulated;
    start.backend = backend;
    const runtime::NodeId node = place.agent.node();
    self->system().spawn<caf::detached>([rt, node, start, timeout, me](caf::event_based_actor* helper) {
      auto worker = rt->SpawnOn(node, kActorWorkerActorType, start, timeout);
      ActorWorkerSpawned answer;
      answer.attempt = start.attempt;
      answer.rank = start.rank;
      if (worker.ok()) {
        answer.worker = *worker;
      } else {
        answer.status = worker.status();
      }
      caf::anon_send(me, std::move(answer));
      helper->quit();
    });
  }
}

void ActorWorkerUp(Self* self, ActorWorkerSpawned& spawned) {
  auto& st = self->state;
  if (spawned.attempt != st.status.attempt || !st.placed || spawned.rank >= st.actor_workers.size()) {
    // An attempt that failed or stopped meanwhile: its late worker goes.
    if (spawned.worker.valid()) spawned.worker.Send(StopActorWorker{"its attempt ended before it started"});
    return;
  }
  const std::string& node = st.placement.workers[spawned.rank].node;
  if (!spawned.status.ok()) {
    // A node that cannot be reached is not the job's fault; a type it does not know is.
    const StatusCode code = spawned.status.code();
    const bool infra = code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded;
    GroupFailed(self, "actor worker rank " + std::to_string(spawned.rank) + " on node '" + node +
                          "' did not start: " + spawned.status.ToString(), infra);
    return;
  }
  st.actor_workers[spawned.rank] = spawned.worker;
  st.recovery.MarkRank(RecoveryMark::kSpawned, spawned.rank, st.init.clock->Now());
  self->monitor(spawned.worker.handle());
  st.started.insert(spawned.rank);
  st.status.workers.push_back(WorkerStatus{spawned.rank, node, 0, ""});
  if (st.started.size() < st.init.spec.workers) return;
  // Each worker watches the others (collectives/peer_watch.h): a lost one aborts its
  // communicator from the worker's own monitors, not after this supervisor's stop.
  if (st.actor_workers.size() > 1) {
    for (const auto& w : st.actor_workers) w.Send(ActorWorkerPeers{st.status.attempt, st.actor_workers});
  }
  AllStarted(self);
}

// A worker actor of the placed attempt is gone. One that reported its end (WorkerExited, sent
// before it exits) was handled then; one that did not died with its node or an escaped error.
bool ActorWorkerDown(Self* self, const caf::down_msg& down) {
  auto& st = self->state;
  for (uint32_t rank = 0; rank < st.actor_workers.size(); ++rank) {
    const runtime::ActorRef& w = st.actor_workers[rank];
    if (!w.valid() || w.handle().address() != down.source) continue;
    st.actor_workers[rank] = runtime::ActorRef{};
    if (st.succeeded.count(rank) != 0 || !down.reason) return true;
    const Status why = runtime::ToStatus(down.reason);
    const bool infra = why.code() == StatusCode::kUnavailable || why.code() == StatusCode::kDeadlineExceeded ||
                       why.code() == StatusCode::kCancelled;
    GroupFailed(self, "actor worker rank " + std::to_string(rank) + " on node '" + st.placement.workers[rank].node +
                          "' is gone: " + why.ToString(), infra);
    return true;
  }
  return false;
}

// A rank of the placed attempt reached a point of its start (ActorWorkerProgress). Once every rank
// has completed a step, the attempt's timeline is one event.
void Progressed(Self* self, const ActorWorkerProgress& progress) {
  auto& st = self->state;
  if (progress.attempt != st.status.attempt || !st.placed || st.recovery_reported) return;
  const RecoveryMark mark =
      progress.point == ActorWorkerProgress::kFirstStep ? RecoveryMark::kFirstStep : RecoveryMark::kFormed;
  st.recovery.MarkRank(mark, progress.rank, st.init.clock->Now());
  if (!st.recovery.complete()) return;
  st.recovery_reported = true;
  Update(self, st.recovery.Summary());
}

void Placed(Self* self, PlacementAnswer& answer) {
  auto& st = self->state;
  if (answer.attempt != st.placing) {
    if (answer.status.ok()) st.init.host->ReleasePlacement(answer.placement.lease_id);
    return;
  }
  st.placing = 0;
  if (!answer.status.ok()) {
    // At submit the head refuses a job the cluster can never hold. Later the cluster may be
    // short of nodes for a while (a restarted head before they rejoin, nodes lost): the job
    // waits and asks again, as a Kubernetes pod stays Pending, rather than fail.
    if (answer.status.code() != StatusCode::kResourceExhausted) {
      Finish(self, kJobFailed, "cannot be placed: " + answer.status.ToString());
      return;
    }
    const auto delay = st.backoff->Delay(++st.placement_refusals);
    st.status.reason = "cannot be placed now (" + answer.status.message() + "); asking again in " +
                       std::to_string(delay.count()) + " ms";
    Update(self, st.status.reason);
    self->delayed_send(self, delay, replace_atom::value);
    return;
  }
  st.placement_refusals = 0;
  std::vector<std::pair<std::string, uint64_t>> places;
  for (const auto& w : answer.placement.workers) places.emplace_back(w.node, w.agent.id());
  if (auto lost = st.lost_nodes.Refuses(places, st.init.clock->Now())) {
    // Placed on a node whose loss the head has not processed yet: that attempt would fail at
    // once and count the one fault twice. Asked for again once the head has caught up.
    st.init.host->ReleasePlacement(answer.placement.lease_id);
    const auto delay = LostNodeRetryDelay(++st.lost_refusals);
    st.status.reason = "placement on node '" + *lost + "' refused: " +
                       (st.lost_nodes.SeenLost(*lost)
                            ? "its agent was lost and the head has not declared it dead yet"
                            : "its agent has not answered since the group's infrastructure fault") +
                       "; asking again in " + std::to_string(delay.count()) + " ms";
    Update(self, st.status.reason);
    self->delayed_send(self, delay, replace_atom::value);
    return;
  }
  st.lost_refusals = 0;
  st.recovery.Mark(RecoveryMark::kPlaced, st.init.clock->Now());
  st.placement = std::move(answer.placement);
  st.placed = true;
  st.status.attempt = answer.attempt;
  st.status.lease_id = st.placement.lease_id;
  st.status.state = kJobStarting;
  st.status.started_unix_ms = st.init.clock->UnixMs();
  st.resume.reset();
  std::error_code ec;
  std::filesystem::create_directories(StagingDir(st), ec);
  std::string nodes;
  std::set<std::string> seen;
  for (const auto& w : st.placement.workers) {
    if (seen.insert(w.node).second) {
      nodes += (nodes.empty() ? "" : ", ") + w.node;
      self->monitor(w.agent.handle());
    }
  }
  // The committer reads the newest checkpoints (every byte) after any pass asked for before.
  const uint64_t attempt = st.status.attempt;
  self->request(st.committer, caf::infinite, FindResume{attempt})
      .then([self, nodes](ResumePoint& point) { Resumed(self, point, nodes); },
            [self, attempt](caf::error& error) {
              auto& st = self->state;
              if (attempt != st.status.attempt || !st.placed) return;
              GroupFailed(self, "cannot find the checkpoint to resume from: " + runtime::ToStatus(error).ToString(),
                          true);
            });
  StartTicking(self);
}

// The checkpoint the placed attempt resumes from is known: rank 0 starts (then the others).
void Resumed(Self* self, ResumePoint& point, const std::string& nodes) {
  auto& st = self->state;
  if (point.attempt != st.status.attempt || !st.placed) return;  // the attempt failed or stopped meanwhile
  st.recovery.Mark(RecoveryMark::kResumed, st.init.clock->Now());
  for (const auto& f : point.fallbacks) Update(self, "checkpoint skipped: " + f);
  if (point.status.ok() && point.record) {
    st.resume = std::move(point.record);
    st.status.checkpoint_step = std::max<int64_t>(st.status.checkpoint_step, static_cast<int64_t>(st.resume->step));
  }
  if (!point.status.ok()) Update(self, "cannot read the checkpoints: " + point.status.ToString());
  Update(self, "attempt " + std::to_string(st.status.attempt) + " placed on " + nodes + " (lease " +
                   std::to_string(st.placement.lease_id) + ")" +
                   (st.resume ? "; resuming from step " + std::to_string(st.resume->step) : "; starting fresh"));
  if (!st.init.spec.entry.actor.empty()) {
    StartActorWorkers(self);
  } else {
    StartRank(self, 0);
  }
}

void WorkerEnded(Self* self, const WorkerExited& exit) {
  auto& st = self->state;
  st.taken_back.erase(exit.rank);
  if (exit.exit_code == 0 && exit.signal == 0 && !exit.hung) {
    st.succeeded.insert(exit.rank);
    if (st.taking_back || st.succeeded.size() < st.init.spec.workers) return;
    Succeed(self);
    return;
  }
  const std::string node = exit.rank < st.placement.workers.size() ? st.placement.workers[exit.rank].node : "?";
  GroupFailed(self, "rank " + std::to_string(exit.rank) + " on node '" + node + "' " + exit.reason,
              exit.hung || exit.signal != 0 || exit.infra);
}

void StartTicking(Self* self) {
  auto& st = self->state;
  if (st.ticking) return;
  st.ticking = true;
  self->delayed_send(self, st.init.commit_interval, tick_atom::value);
}


// An actor worker that its node handed back (WorkersAdopted): it reports to this supervisor now,
// which watches it as one it spawned. Its group is formed and its peers watched: the attempt's
// rendezvous store, gone with the earlier head, is not needed again.
void AdoptActorWorker(Self* self, const RunningWorker& w) {
  auto& st = self->state;
  if (st.actor_workers.size() != st.init.spec.workers) st.actor_workers.assign(st.init.spec.workers, runtime::ActorRef{});
  st.actor_workers[w.rank] = w.worker;
  self->monitor(w.worker.handle());
  st.started.insert(w.rank);
}

// Every rank of the attempt is accounted for: running again under this supervisor, or ended.
void MaybeTakenBack(Self* self) {
  auto& st = self->state;
  if (!st.taking_back) return;
  if (st.taken_back.size() + st.succeeded.size() < st.init.spec.workers) return;
  st.taking_back = false;
  st.placed = true;
  // Actor workers: the attempt trained before; no start of it is timed (recovery.h).
  st.recovery_reported = true;
  st.status.state = kJobRunning;
  st.status.reason.clear();
  Update(self, "took back " + std::to_string(st.taken_back.size()) + " running workers of attempt " +
                   std::to_string(st.status.attempt) + " after the head restarted");
  StartTicking(self);
  if (st.succeeded.size() == st.init.spec.workers) Succeed(self);
}

void Found(Self* self, WorkersFound& found) {
  auto& st = self->state;
  if (!found.agent.valid()) return;
  if (!st.taking_back) {
    // Not taking back: what runs there of this job and is not the group placed now is left over
    // (an attempt this supervisor gave up on); it goes.
    uint64_t stale = 0;
    for (const auto& w : found.workers) {
      if (Runs(w) && !(st.placed && w.attempt == st.status.attempt)) stale = std::max(stale, w.attempt);
    }
    if (stale > 0) found.agent.Send(StopWorkers{st.status.name, stale});
    return;
  }
  if (st.adopting_agents.count(found.agent.id()) != 0) return;
  bool ours = false;
  for (const auto& w : found.workers) ours = ours || w.attempt == st.status.attempt;
  if (!ours) return;
  st.adopting_agents.insert(found.agent.id());
  const std::string node = found.node;
  const runtime::ActorRef agent = found.agent;
  self->monitor(agent.handle());
  AdoptWorkers adopt{st.status.name, st.status.attempt, st.init.runtime->Ref(caf::actor_cast<caf::actor>(self))};
  self->request(agent.handle(), st.init.node_timeout, std::move(adopt))
      .then(
          [self, node, agent](WorkersAdopted& adopted) {
            auto& st = self->state;
            if (!st.taking_back) return;
            for (const auto& w : adopted.running) {
              if (w.rank >= st.placement.workers.size()) continue;
              st.placement.workers[w.rank].node = node;
              st.placement.workers[w.rank].agent = agent;
              st.taken_back.insert(w.rank);
              if (w.worker.valid()) AdoptActorWorker(self, w);
            }
            for (const auto& e : adopted.exited) {
              if (e.rank >= st.placement.workers.size()) continue;
              st.placement.workers[e.rank].node = node;
              st.placement.workers[e.rank].agent = agent;
              WorkerEnded(self, e);
              if (!st.taking_back) return;  // a failure: the group restarts
            }
            MaybeTakenBack(self);
          },
          [self, node](caf::error& error) {
            if (!self->state.taking_back) return;
            GroupFailed(self, "node '" + node + "' did not hand back its workers: " + runtime::ToStatus(error).ToString(),
                        true);
          });
}

caf::behavior Supervisor(Self* self, JobSupervisorInit init) {
  auto& st = self->state;
  st.status = init.status;
  st.init = std::move(init);
  st.backoff = std::make_unique<Backoff>(
      BackoffPolicy{st.init.spec.restart.backoff_initial, 2.0, st.init.spec.restart.backoff_max, 0.2});
  st.committer = SpawnCheckpointCommitter(
      self->system(), CheckpointCommitterInit{st.status.name, st.init.checkpoint_root, st.init.spec.workers,
                                              st.init.spec.checkpoints.keep, st.init.checkpoints,
                                              caf::actor_cast<caf::actor>(self)});
  self->set_default_handler(caf::drop);  // e.g. the head's LeaseEnded: a lost node comes as a down message
  self->set_down_handler([self](caf::down_msg& down) {
    auto& st = self->state;
    for (const auto& w : st.placement.workers) {
      if (w.agent.valid() && w.agent.handle().address() == down.source) {
        st.lost_nodes.Lost(w.node, w.agent.id(), st.init.clock->Now());
      }
    }
    if (!st.placed || IsFinal(st.status.state)) return;
    if (ActorWorkerDown(self, down)) return;
    for (const auto& w : st.placement.workers) {
      if (w.agent.handle().address() == down.source) {
        GroupFailed(self, "node '" + w.node + "' was lost: " + runtime::ToStatus(down.reason).ToString(), true);
        return;
      }
    }
  });
  if (st.init.take_back) {
    st.taking_back = true;
    st.placement.lease_id = st.status.lease_id;
    st.placement.workers.assign(st.init.spec.workers, WorkerPlace{});
    st.status.reason = "taking back " + std::to_string(st.init.spec.workers) + " workers of attempt " +
                       std::to_string(st.status.attempt) + " after the head restarted";
    Update(self, st.status.reason);
    self->delayed_send(self, st.init.take_back_timeout, take_back_atom::value);
  } else if (st.init.placement_requested) {
    st.placing = st.status.attempt + 1;
    if (ActorJob(st)) st.recovery.Begin(RecoveryMark::kDecided, st.init.clock->Now(), st.init.spec.workers);
  } else {
    RequestPlacement(self, "waiting for " + std::to_string(st.init.spec.workers) + " workers' resources");
  }
  return {
      [self](PlacementAnswer& answer) { Placed(self, answer); },
      [self](WorkerExited& exit) {
        auto& st = self->state;
        if (exit.attempt != st.status.attempt || (!st.placed && !st.taking_back)) return;
        WorkerEnded(self, exit);
        MaybeTakenBack(self);
      },
      [self](WorkersFound& found) { Found(self, found); },
      [self](ActorWorkerSpawned& spawned) { ActorWorkerUp(self, spawned); },
      [self](ActorWorkerProgress& progress) { Progressed(self, progress); },
      [self](take_back_atom) {
        auto& st = self->state;
        if (!st.taking_back) return;
        GroupFailed(self,
                    "only " + std::to_string(st.taken_back.size() + st.succeeded.size()) + " of " +
                        std::to_string(st.init.spec.workers) + " workers came back within " +
                        std::to_string(st.init.take_back_timeout.count()) + " ms of the head's restart",
                    true);
      },
      [self](tick_atom) {
        auto& st = self->state;
        if (st.placed && !st.succeeding && (st.status.state == kJobRunning || st.status.state == kJobStarting)) {
          CommitReady(self, st.status.attempt, /*queue=*/false);
        }
        self->delayed_send(self, st.init.commit_interval, tick_atom::value);
      },
      [self](restart_atom, uint64_t attempt) {
        auto& st = self->state;
        if (st.status.state != kJobRestarting || attempt != st.status.attempt) return;
        RequestPlacement(self, "restarting: waiting for " + std::to_string(st.init.spec.workers) +
                                   " workers' resources");
      },
      [self](replace_atom) {
        auto& st = self->state;
        if (st.status.state != kJobPending || st.placing != 0 || st.placed) return;
        st.placing = st.status.attempt + 1;
        st.init.host->RequestPlacement(st.init.spec, st.placing, caf::actor_cast<caf::actor>(self));
      },
      [self](StopJob& stop) { Finish(self, kJobStopped, stop.reason.empty() ? "stopped" : stop.reason); },
      [](WorkersStopped&) {},
  };
}

}  // namespace

caf::actor SpawnJobSupervisor(caf::actor_system& system, JobSupervisorInit init) {
  return system.spawn<caf::detached>(Supervisor, std::move(init));
}

std::vector<std::string> WorkerEnvironment(const JobSpec& spec, const Placement& placement, uint32_t rank,
                                           uint64_t attempt, const std::string& checkpoint_dir,
                                           const std::optional<storage::CheckpointRecord>& resume) {
  std::vector<std::string> env;
  for (const auto& [name, value] : spec.entry.env) env.push_back(name + "=" + value);
  const std::string& node = placement.workers[rank].node;
  uint32_t local_rank = 0;
  uint32_t local_world = 0;
  std::vector<std::string> groups;  // nodes in order of their first rank
  for (uint32_t r = 0; r < placement.workers.size(); ++r) {
    const std::string& n = placement.workers[r].node;
    if (std::find(groups.begin(), groups.end(), n) == groups.end()) groups.push_back(n);
    if (n != node) continue;
    if (r < rank) ++local_rank;
    ++local_world;
  }
  const auto group_rank = std::find(groups.begin(), groups.end(), node) - groups.begin();
  const std::string world = std::to_string(placement.workers.size());
  env.push_back("RANK=" + std::to_string(rank));
  env.push_back("LOCAL_RANK=" + std::to_string(local_rank));
  env.push_back("WORLD_SIZE=" + world);
  env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(local_world));
  env.push_back("GROUP_RANK=" + std::to_string(group_rank));
  env.push_back("ROLE_RANK=" + std::to_string(rank));
  env.push_back("ROLE_WORLD_SIZE=" + world);
  env.push_back("MASTER_ADDR=" + placement.workers[0].host);
  env.push_back("TORCHELASTIC_RESTART_COUNT=" + std::to_string(attempt > 0 ? attempt - 1 : 0));
  env.push_back("TORCHELASTIC_RUN_ID=" + spec.name);
  env.push_back("TROUPE_JOB=" + spec.name);
  env.push_back("TROUPE_ATTEMPT=" + std::to_string(attempt));
  env.push_back("TROUPE_CHECKPOINT_DIR=" + checkpoint_dir);
  if (resume) {
    env.push_back("TROUPE_RESUME_DIR=" + resume->dir);
    env.push_back("TROUPE_RESUME_STEP=" + std::to_string(resume->step));
  }
  return env;
}

}  // namespace troupe::training
