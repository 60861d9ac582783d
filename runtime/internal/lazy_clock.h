// LazyClock: CAF's actor clock (request timeouts, receive timeouts, delayed messages) without a
// thread wake-up per request.
#pragma once

#include <caf/actor_system.hpp>
#include <caf/detail/simple_actor_clock.hpp>
#include <caf/detail/thread_safe_actor_clock.hpp>
#include <caf/policy/work_sharing.hpp>
#include <caf/scheduler/coordinator.hpp>

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace troupe::runtime::internal {

/// CAF 0.17's own clock wakes its thread for every timer an actor sets or cancels, and every
/// request sets one and its reply cancels it: two futex wake-ups and two context switches per
/// request, which on a 2-core machine cost more than the request itself. This clock queues
/// timer changes and wakes its thread only when a change moves the next due time earlier, or
/// once `kBatch` changes have queued up. Its thread applies queued changes in order before it
/// fires anything, so a cancelled timer never fires late or twice.
///
/// It derives from CAF's thread_safe_actor_clock only because CAF's coordinator declares
/// clock() with that return type; none of the base class's state or thread is used (the
/// base's dispatch loop, started by the coordinator, idles until the coordinator stops it).
///
/// Lifecycle: constructed -> Start() (its thread runs) -> Stop() (drops what is still
/// scheduled, joins). Every public member is thread-safe.
class LazyClock final : public caf::detail::thread_safe_actor_clock {
 public:
  /// Changes that may queue before the thread is woken to apply them.
  static constexpr size_t kBatch = 1024;

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
  void Apply(Change& change);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Change> queue_;             // guarded by mu_
  time_point wake_at_ = time_point::max();  // guarded by mu_: when the sleeping thread wakes
  time_point queued_due_ = time_point::max();  // guarded by mu_: the earliest due time in queue_
  bool sleeping_ = false;                 // guarded by mu_
  bool stopped_ = false;                  // guarded by mu_
  uint64_t wakeups_ = 0;                  // guarded by mu_
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
