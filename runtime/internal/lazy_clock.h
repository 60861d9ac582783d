// LazyClock: CAF's actor clock (request timeouts, receive timeouts, delayed messages) without a
// thread wake-up per request.
#pragma once

#include <caf/actor_system.hpp>
#include <caf/detail/simple_actor_clock.hpp>
#include <caf/detail/thread_safe_actor_clock.hpp>
#include <caf/policy/work_sharing.hpp>
#include <caf/scheduler/coordinator.hpp>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

namespace troupe::runtime::internal {

/// CAF 0.17's own clock wakes its thread for every timer an actor sets or cancels, and every
/// request sets one: a futex wake-up and a context switch per request, which on a 2-core
/// machine cost more than the request itself. CAF never cancels a request's timer when the
/// reply comes (the timer fires later and its timeout is dropped; only an actor's exit clears
/// its timers), so the table would also hold every request of the last timeout period; troupe's
/// bridge cancels the timer of each remote request it answers.
///
/// This clock queues timer changes and wakes its thread only when a change moves the next due
/// time earlier, or once `kBatch` changes have queued up. Its thread applies queued changes in
/// order before it fires anything, so a cancelled timer never fires late or twice; a request
/// timer cancelled within its own batch never reaches the table at all, and one cancelled while
/// it is still among the newest queued changes is removed there at once.
///
/// It derives from CAF's thread_safe_actor_clock only because CAF's coordinator declares
/// clock() with that return type; none of the base class's state or thread is used (the
/// base's dispatch loop, started by the coordinator, idles until the coordinator stops it).
///
/// Lifecycle: constructed -> Start() (its thread runs) -> Stop() (drops what is still
/// scheduled, joins). Every public member is thread-safe.
class LazyClock final : public caf::detail::thread_safe_actor_clock {
 public:
  /// Changes that may queue before the thread is woken to apply them. A request's timer and the
  /// cancellation its reply brings usually meet in one batch and cancel out without touching
  /// the timer table (see Run), so the batch is large enough to hold both for a few thousand
  /// requests in flight.
  static constexpr size_t kBatch = 4096;
  /// How many of the newest queued changes a request cancellation looks through for its timer.
  static constexpr size_t kCancelLookback = 8;

  LazyClock() = default;
  ~LazyClock() override;

  void Start();
  void Stop();

  void set_ordinary_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type, uint64_t id) override;
  void set_multi_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type, uint64_t id) override;
  void set_request_timeout(time_point t, caf::abstract_actor* self, caf::message_id id) override;
  void cancel_ordinary_timeout(caf::abstract_actor* self, caf::atom_value type) override;
  void cancel_request_timeout(caf::abstract_actor* self, caf::message_id id) override;
  void cancel_timeouts(caf::abstract_actor* self) override;
  void schedule_message(time_point t, caf::strong_actor_ptr receiver, caf::mailbox_element_ptr content) override;
  void schedule_message(time_point t, caf::group target, caf::strong_actor_ptr sender,
                        caf::message content) override;
  void cancel_all() override;

  /// Times the thread was woken by a change (not by a due timer); for tests.
  uint64_t wakeups() const;
  /// Changes that reached the timer table: those not cancelled out within their batch; for tests.
  uint64_t applied() const;
  /// Request timers that their cancellation found still queued and removed; for tests.
  uint64_t cancelled_at_push() const { return cancelled_at_push_.load(std::memory_order_relaxed); }
  /// Timers and delayed messages in the table once the thread last applied queued changes,
  /// counted before it fired what was due (so what a fired timer causes happens after the
  /// count it is in); for tests.
  size_t scheduled() const;

 private:
  /// One queued call, replayed on the clock's thread against `timers_`.
  struct Change {
    enum Kind {
      kOrdinary,
      kMulti,
      kRequest,
      kCancelOrdinary,
      kCancelRequest,
      kCancelAll,
      kCancelEverything,
      kMessage,
      kGroupMessage,
      kNone,  // cancelled out within its batch
    };
    explicit Change(Kind k) : kind(k) {}
    Kind kind;
    time_point t{};
    caf::strong_actor_ptr actor;  // the timer's actor, or the message's receiver or sender
    // Cancellations name the actor by id only: actors cancel their timers while being destroyed,
    // when taking a strong reference would bring them back to life (and destroy them twice).
    caf::actor_id aid = 0;
    caf::atom_value type{};
    uint64_t id = 0;
    caf::message_id mid;
    caf::mailbox_element_ptr content;
    caf::group group;
    caf::message message;
  };

  /// Queues `change`; `due` is when it would fire (max() for cancellations).
  void Push(Change change, time_point due);
  void SetTimeout(Change::Kind kind, time_point t, caf::abstract_actor* self, caf::atom_value type, uint64_t id);
  void Run();
  /// Turns each request timer that `batch` also cancels, and that cancellation, into kNone:
  /// the timer could not fire in between (a batch is applied whole before anything fires), so
  /// neither needs to reach the table. Either order counts: CAF sets a request's timer just
  /// after sending the request, so a fast reply's cancellation (from the bridge) can come
  /// first; for that reason a timer set in the batch after its cancellation is dropped too.
  /// Request ids are never reused by an actor, so no later timer can match by accident.
  void CancelOut(std::vector<Change>& batch);
  void Apply(Change& change);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Change> queue_;             // guarded by mu_
  time_point wake_at_ = time_point::max();  // guarded by mu_: when the sleeping thread wakes
  time_point queued_due_ = time_point::max();  // guarded by mu_: the earliest due time in queue_
  bool sleeping_ = false;                 // guarded by mu_
  bool stopped_ = false;                  // guarded by mu_
  uint64_t wakeups_ = 0;                  // guarded by mu_
  std::atomic<uint64_t> applied_{0};
  std::atomic<uint64_t> cancelled_at_push_{0};
  using RequestKey = std::pair<caf::actor_id, uint64_t>;  // (actor, request message id)
  struct RequestKeyHash {
    size_t operator()(const RequestKey& k) const {
      return std::hash<uint64_t>()(k.first * 0x9E3779B97F4A7C15ULL ^ k.second);
    }
  };
  /// Request cancellations of the last batch that met no timer in it; clock thread only.
  std::unordered_set<RequestKey, RequestKeyHash> orphan_cancels_;
  std::atomic<size_t> scheduled_{0};
  std::thread thread_;
  /// CAF's single-threaded timer table, with its cancellations by actor id made reachable.
  struct Timers : caf::detail::simple_actor_clock {
    using simple_actor_clock::handle;
  };
  /// The timers themselves; touched only by the clock's thread (and by Stop once it has joined).
  Timers timers_;
};

/// CAF's work-sharing coordinator with a LazyClock. Loaded through
/// actor_system_config::module_factories (see InstallLazyClock).
class LazyClockCoordinator final : public caf::scheduler::coordinator<caf::policy::work_sharing> {
 public:
  explicit LazyClockCoordinator(caf::actor_system& system) : coordinator(system) {}

  caf::detail::thread_safe_actor_clock& clock() noexcept override { return lazy_clock_; }

 protected:
  void start() override;
  void stop() override;

 private:
  LazyClock lazy_clock_;
};

/// Makes the actor system built from `config` use LazyClockCoordinator as its scheduler
/// (work sharing; scheduler.max-threads still applies).
void InstallLazyClock(caf::actor_system_config& config);

}  // namespace troupe::runtime::internal
