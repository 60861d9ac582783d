// LazyClock: CAF's timers (request timeouts, receive timeouts, delayed messages) still fire on
// time, cancelled ones never fire, and answered requests do not wake the clock's thread each.
#include "runtime/internal/lazy_clock.h"

#include <caf/all.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <thread>

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;
using runtime::internal::LazyClock;
using Steady = std::chrono::steady_clock;

struct System {
  System() {
    config.set("scheduler.policy", caf::atom("sharing"));
    config.set("scheduler.max-threads", 2);
    runtime::internal::InstallLazyClock(config);
    system = std::make_unique<caf::actor_system>(config);
  }
  LazyClock& clock() { return static_cast<LazyClock&>(system->clock()); }

  caf::actor_system_config config;
  std::unique_ptr<caf::actor_system> system;
};

// The timers and delayed messages in the clock's table once its thread has applied every change
// queued so far, less the delayed message that made it do so: a 1 ms delayed message is counted
// just before it is delivered, after all the changes queued ahead of it.
size_t TimersAfterFlush(System& s) {
  std::promise<void> fired;
  auto marker = s.system->spawn([&](caf::event_based_actor* self) -> caf::behavior {
    return {[&, self](caf::ok_atom) {
      fired.set_value();
      self->quit();
    }};
  });
  s.clock().schedule_message(s.clock().now() + 1ms, caf::actor_cast<caf::strong_actor_ptr>(marker),
                             caf::make_mailbox_element(nullptr, caf::make_message_id(), {}, caf::ok_atom::value));
  if (fired.get_future().wait_for(5s) != std::future_status::ready) return SIZE_MAX;
  return s.clock().scheduled() - 1;
}

// An actor that takes requests and never answers them.
caf::behavior Silent(caf::event_based_actor* self) {
  return {[self](int) { return self->make_response_promise<int>(); }};
}

TEST(LazyClock, IsTheClockOfTheActorSystem) {
  System s;
  EXPECT_NE(dynamic_cast<LazyClock*>(&s.system->clock()), nullptr);
}

TEST(LazyClock, AnEarlierTimeoutFiresOnTimeBehindALaterOne) {
  System s;
  auto silent = s.system->spawn(Silent);
  std::promise<std::chrono::milliseconds> late_fired;
  std::promise<caf::error> early;
  auto start = Steady::now();
  s.system->spawn([&](caf::event_based_actor* self) {
    // The clock's thread goes to sleep until the first timeout (an hour away); the second,
    // set after it and due first, must wake it.
    self->request(silent, std::chrono::seconds(3600), 1).then([](int) {}, [](caf::error&) {});
    self->request(silent, 50ms, 2).then([](int) {}, [&, self](caf::error& e) {
      late_fired.set_value(std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now() - start));
      early.set_value(e);
      self->quit();
    });
  });
  auto fired = late_fired.get_future();
  ASSERT_EQ(fired.wait_for(5s), std::future_status::ready) << "the 50 ms request timeout did not fire within 5 s";
  const auto after = fired.get();
  EXPECT_GE(after, 50ms);
  EXPECT_LT(after, 2s) << "the 50 ms timeout fired late (slack for a loaded machine)";
  EXPECT_EQ(early.get_future().get(), caf::sec::request_timeout);
  caf::anon_send_exit(silent, caf::exit_reason::user_shutdown);
}

TEST(LazyClock, AnsweredRequestsNeitherTimeOutNorWakeTheClockForEach) {
  System s;
  auto echo = s.system->spawn([]() -> caf::behavior { return {[](int v) { return v; }}; });
  constexpr int kRequests = 20000;
  std::promise<int> done;
  auto wakeups_before = s.clock().wakeups();
  s.system->spawn([&, echo](caf::event_based_actor* self) {
    auto answered = std::make_shared<int>(0);
    auto failed = std::make_shared<int>(0);
    for (int i = 0; i < kRequests; ++i) {
      self->request(echo, 30s, i).then(
          [=, &done](int) {
            if (++*answered + *failed == kRequests) done.set_value(*failed);
          },
          [=, &done](caf::error&) {
            if (*answered + ++*failed == kRequests) done.set_value(*failed);
          });
    }
  });
  auto result = done.get_future();
  ASSERT_EQ(result.wait_for(30s), std::future_status::ready) << "20,000 requests to a local echo did not finish";
  EXPECT_EQ(result.get(), 0) << "answered requests timed out";
  // Every request sets a timer and its reply cancels it: 40,000 changes. CAF's own clock wakes
  // its thread for each; this one for the first timer and once per kBatch changes.
  EXPECT_LE(s.clock().wakeups() - wakeups_before, 2 * kRequests / LazyClock::kBatch + 4);
  caf::anon_send_exit(echo, caf::exit_reason::user_shutdown);
}

TEST(LazyClock, ARequestTimerCancelledRightAfterItWasSetLeavesNothingForTheClocksThread) {
  // One request at a time, each answered before the next: the cancellation finds its timer
  // as the newest queued change and both are gone before the clock's thread sees them.
  System s;
  auto requester = s.system->spawn([]() -> caf::behavior { return {[](int) {}}; });
  auto* self = caf::actor_cast<caf::abstract_actor*>(requester);
  constexpr uint64_t kRequests = 20000;
  // A timer due before all of the test's keeps the clock's thread asleep through the loop (a
  // timer due earlier than the one it sleeps for would wake it, and it could take a timer off
  // the queue before its cancellation comes).
  s.clock().set_request_timeout(s.clock().now() + 20s, self, caf::make_message_id(kRequests + 1).response_id());
  ASSERT_EQ(TimersAfterFlush(s), 1u);
  auto applied_before = s.clock().applied();
  auto cancelled_before = s.clock().cancelled_at_push();
  for (uint64_t i = 1; i <= kRequests; ++i) {
    auto id = caf::make_message_id(i).response_id();
    s.clock().set_request_timeout(s.clock().now() + 30s, self, id);
    s.clock().cancel_request_timeout(self, id);
  }
  EXPECT_EQ(s.clock().cancelled_at_push() - cancelled_before, kRequests);
  EXPECT_EQ(TimersAfterFlush(s), 1u) << "a cancelled request timer reached the timer table";
  EXPECT_LE(s.clock().applied() - applied_before, 2u) << "only the flush's own delayed message should apply";
  caf::anon_send_exit(requester, caf::exit_reason::user_shutdown);
}

TEST(LazyClock, ARequestTimerCancelledInItsBatchNeverReachesTheTimerTable) {
  // CAF 0.17 never cancels a request's timer itself; troupe's bridge cancels it when the reply
  // arrives. A timer and its cancellation queued in the same batch cancel out there.
  System s;
  auto requester = s.system->spawn([]() -> caf::behavior { return {[](int) {}}; });
  auto* self = caf::actor_cast<caf::abstract_actor*>(requester);
  constexpr uint64_t kRequests = 20000;
  auto applied_before = s.clock().applied();
  // kInFlight requests in flight: each cancellation comes after more timers than it looks
  // through, so the batch has to cancel them out.
  constexpr uint64_t kInFlight = 2 * LazyClock::kCancelLookback;
  for (uint64_t i = 1; i <= kRequests + kInFlight; ++i) {
    if (i <= kRequests) {
      s.clock().set_request_timeout(s.clock().now() + 30s, self, caf::make_message_id(i).response_id());
    }
    if (i > kInFlight) s.clock().cancel_request_timeout(self, caf::make_message_id(i - kInFlight).response_id());
  }
  EXPECT_EQ(s.clock().cancelled_at_push(), 0u) << "the test no longer reaches the batch's cancel-out";
  // Changes apply in order before anything fires: once a message delayed after them arrives,
  // all of them have been applied.
  ASSERT_EQ(TimersAfterFlush(s), 0u) << "a cancelled request timer reached the timer table";
  // 40,000 changes in batches of kBatch (or fewer, when the thread wakes for a due time): the
  // pairs split are those in flight where a batch ends, at most kInFlight each time.
  EXPECT_LE(s.clock().applied() - applied_before, 2 * kInFlight * (2 * kRequests / LazyClock::kBatch + 8))
      << "timers and their cancellations reached the table instead of cancelling out";
  caf::anon_send_exit(requester, caf::exit_reason::user_shutdown);
}

TEST(LazyClock, DelayedMessagesAndReceiveTimeoutsFireAndCancelledTimeoutsDoNot) {
  System s;
  std::promise<std::chrono::milliseconds> delayed;
  std::promise<std::chrono::milliseconds> idle;
  std::atomic<int> idle_timeouts{0};
  auto start = Steady::now();
  auto since_start = [start] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now() - start);
  };
  auto receiver = s.system->spawn([&](caf::event_based_actor*) -> caf::behavior {
    return {[&](caf::ok_atom) { delayed.set_value(since_start()); }};
  });
  s.system->spawn([&](caf::event_based_actor* self) {
    self->delayed_send(receiver, 40ms, caf::ok_atom::value);
    // A receive timeout that is set and then replaced before it is due must not fire.
    self->become([](int) {}, caf::after(20ms) >> [&] { ++idle_timeouts; });
    self->become([](int) {}, caf::after(60ms) >> [&, self] {
      if (++idle_timeouts == 1) idle.set_value(since_start());
      self->quit();
    });
  });
  auto d = delayed.get_future();
  ASSERT_EQ(d.wait_for(5s), std::future_status::ready) << "a 40 ms delayed message did not arrive within 5 s";
  const auto delayed_after = d.get();
  EXPECT_GE(delayed_after, 40ms);
  EXPECT_LT(delayed_after, 2s);
  auto i = idle.get_future();
  ASSERT_EQ(i.wait_for(5s), std::future_status::ready) << "a 60 ms receive timeout did not fire within 5 s";
  const auto idle_after = i.get();
  EXPECT_GE(idle_after, 60ms);
  EXPECT_LT(idle_after, 2s);
  EXPECT_EQ(idle_timeouts.load(), 1) << "the replaced 20 ms receive timeout fired";
  caf::anon_send_exit(receiver, caf::exit_reason::user_shutdown);
}

TEST(LazyClock, ActorsDestroyedWithoutExitingCancelTheirTimersSafely) {
  // An actor whose last handle is dropped is destroyed without ever exiting, and cancels its
  // timers from its destructor: the clock must not take a reference to it then (that would
  // bring it back to life and destroy it twice).
  System s;
  std::atomic<int> destroyed{0};
  for (int i = 0; i < 1000; ++i) {
    auto actor = s.system->spawn([&](caf::event_based_actor* self) -> caf::behavior {
      self->attach_functor([&] { ++destroyed; });
      return {[](int) {}};
    });
    caf::anon_send(actor, i);
  }  // each handle dropped here
  auto deadline = Steady::now() + 10s;
  while (destroyed.load() < 1000 && Steady::now() < deadline) std::this_thread::yield();
  EXPECT_EQ(destroyed.load(), 1000) << "not every dropped actor was destroyed within 10 s";
}

TEST(LazyClock, StopsWithTimersStillScheduledAndReleasesTheirActors) {
  caf::weak_actor_ptr watched;
  {
    System s;
    auto target = s.system->spawn([](caf::event_based_actor*) -> caf::behavior { return {[](caf::ok_atom) {}}; });
    watched = caf::actor_cast<caf::weak_actor_ptr>(target);
    s.system->spawn([target](caf::event_based_actor* self) {
      self->delayed_send(target, std::chrono::seconds(3600), caf::ok_atom::value);
    });
    caf::anon_send_exit(target, caf::exit_reason::user_shutdown);
  }  // the system (and its clock) shut down with the delayed message still scheduled
  EXPECT_EQ(watched.lock(), nullptr) << "a scheduled message kept its receiver alive past the clock's stop";
}

}  // namespace
}  // namespace troupe::testing
