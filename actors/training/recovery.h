// An actor-worker group's recovery, broken down (issue 22: recovery under 100 ms after the
// failure is detected): the timeline of one attempt's start, and the rule that keeps a restart off
// a node whose loss is still being processed.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"

namespace troupe::training {

/// The marks of one attempt's start, in the order they happen. An attempt started after a failure
/// begins at kDetected; a fresh one (the first attempt: the same-run baseline of a recovery) at
/// kDecided.
enum class RecoveryMark : uint8_t {
  kDetected,  ///< the supervisor saw the failure (a worker's report, a monitor's down message)
  kDecided,   ///< the restart's placement was asked for (the restart policy's delay waited out)
  kPlaced,    ///< the head's placement answer was taken
  kResumed,   ///< the committer found the checkpoint to resume from (CheckpointCommitter FindResume)
  kSpawned,   ///< the last rank's Runtime::SpawnOn answered
  kFormed,    ///< the last rank reported its communicator formed and its peers watched
  kFirstStep, ///< the last rank reported its first completed training step
};
inline constexpr size_t kRecoveryMarks = 7;

/// The name of a mark as events and tables show it ("detected", "first step").
const char* RecoveryMarkName(RecoveryMark mark);

/// The timeline of one attempt's start, on the supervisor's steady clock (its own receipt times:
/// a worker's report counts when it arrives, so no two hosts' clocks are compared). Per-rank marks
/// (kSpawned, kFormed, kFirstStep) count once every rank of the world has reported. Not
/// thread-safe: the supervisor's mailbox owns it.
class RecoveryTimeline {
 public:
  using TimePoint = Clock::TimePoint;

  /// Starts the timeline of an attempt of `world_size` ranks at `start` (kDetected after a failure,
  /// kDecided for a fresh start); every earlier mark is forgotten.
  void Begin(RecoveryMark start, TimePoint at, uint32_t world_size);
  /// Sets a group-wide mark (the first time only). Ignored before Begin.
  void Mark(RecoveryMark mark, TimePoint at);
  /// Rank `rank` reached a per-rank mark; the mark is set when the last rank reaches it. A rank
  /// counted before, or out of the world, changes nothing.
  void MarkRank(RecoveryMark mark, uint32_t rank, TimePoint at);

  bool begun() const { return begun_; }
  /// Whether the timeline began after a failure (kDetected) rather than at a fresh start.
  bool after_failure() const { return begun_ && first_ == RecoveryMark::kDetected; }
  /// When `mark` was set; nullopt while it is not.
  std::optional<TimePoint> At(RecoveryMark mark) const;
  /// Every mark set from the start up to kFirstStep (the group trains again).
  bool complete() const { return At(RecoveryMark::kFirstStep).has_value(); }

  /// The phases between consecutive set marks, from the start: (the later mark's name, its
  /// duration), in mark order. A mark not set is skipped (the next phase spans it).
  std::vector<std::pair<std::string, Clock::Duration>> Phases() const;
  /// From the start to kFirstStep; nullopt until complete().
  std::optional<Clock::Duration> Total() const;
  /// One line for the job's events: "recovered in 43.1 ms after the failure was detected:
  /// decided +0.2, placed +1.4, resumed +0.9, spawned +6.0, formed +21.3, first step +13.3 (ms)"
  /// ("started in ... ms after the placement was asked for" for a fresh start).
  std::string Summary() const;

 private:
  bool begun_ = false;
  RecoveryMark first_ = RecoveryMark::kDecided;
  uint32_t world_size_ = 0;
  std::array<std::optional<TimePoint>, kRecoveryMarks> at_{};
  std::array<std::vector<bool>, kRecoveryMarks> ranks_{};
};

/// The nodes a job supervisor saw lost (its monitor of the node's agent, or of an actor worker
/// there, said the node is unreachable), until the head has caught up. The supervisor's monitors
/// and the head's membership see a lost node through the same runtime, but in different mailboxes:
/// a restart asked for at once can be placed on the node before the head has declared it dead, and
/// that attempt fails at once, counting one fault twice. A placement that puts a worker on such a
/// node under the agent seen lost is refused and asked for again; a node whose agent is a new one
/// (the node rejoined as a new process) is not refused, nor any after `hold` has passed since the
/// loss (the same agent rejoined: a stopped node continued; the head's failure timeout, 1 s by
/// default, bounds how long it takes to be declared dead).
///
/// A node can also be held before any loss is seen: after an infrastructure fault of an actor
/// group, the first sign of a killed node is often a survivor's collective error (the killed
/// ranks' TCP reset), which reaches the supervisor before the runtime has seen the node lost
/// (kill -9 of a node: the restart was placed on the killed node in about 3 runs of 5, and that
/// attempt failed). So every node of the failed group is unconfirmed until its agent answers the
/// group's stop (Confirmed: alive, over the same transport the loss would be seen on) or is seen
/// lost (Lost), at most `hold` from the fault; a placement there meanwhile is refused as for a
/// lost node. A live node answers within a round trip, so the hold costs a live node next to
/// nothing. Not thread-safe.
class LostNodes {
 public:
  explicit LostNodes(Clock::Duration hold) : hold_(hold) {}

  /// The node's agent `agent_id` (ActorRef::id) was seen lost at `at`.
  void Lost(const std::string& node, uint64_t agent_id, Clock::TimePoint at);
  /// The node's agent `agent_id` was asked at `at` (the stop of a group that failed with an
  /// infrastructure fault) and has not answered yet.
  void Unconfirmed(const std::string& node, uint64_t agent_id, Clock::TimePoint at);
  /// That agent answered: it is alive. A loss seen of it stays (it was seen after the answer).
  void Confirmed(const std::string& node, uint64_t agent_id);
  /// Whether `node`'s refusal (Refuses) is for a loss seen, rather than an answer awaited.
  bool SeenLost(const std::string& node) const { return lost_.count(node) != 0; }
  /// The first node of `places` (node name, agent id: a placement's workers in rank order) that is
  /// still lost or unconfirmed at `now`; nullopt when the placement may be used.
  std::optional<std::string> Refuses(const std::vector<std::pair<std::string, uint64_t>>& places,
                                     Clock::TimePoint now) const;
  /// The group runs again (the head has placed it elsewhere since): forget every node.
  void Clear() {
    lost_.clear();
    unconfirmed_.clear();
  }
  bool empty() const { return lost_.empty() && unconfirmed_.empty(); }

 private:
  struct Loss {
    uint64_t agent_id = 0;
    Clock::TimePoint at;
  };
  Clock::Duration hold_;
  std::map<std::string, Loss> lost_;
  std::map<std::string, Loss> unconfirmed_;  // asked at `at`, not answered
};

}  // namespace troupe::training
