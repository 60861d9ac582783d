// OpQueue and Work: the order, timeout and failure rules every Communicator shares.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "collectives/communicator.h"

namespace troupe::collectives {
namespace {

using std::chrono::milliseconds;

// A latch an op blocks on until the test (or the queue's on_abort) opens it.
class Gate {
 public:
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

TEST(Work, CompletesOnceAndRunsCallbacksRegisteredBeforeAndAfter) {
  Work work = Work::Pending();
  std::vector<Status> seen;
  work.OnComplete([&](const Status& s) { seen.push_back(s); });
  EXPECT_FALSE(work.done());
  EXPECT_FALSE(work.WaitFor(milliseconds(0)).has_value());
  EXPECT_TRUE(work.Complete(UnavailableError("rank 2 lost")));
  EXPECT_FALSE(work.Complete(OkStatus()));
  work.OnComplete([&](const Status& s) { seen.push_back(s); });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].code(), StatusCode::kUnavailable);
  EXPECT_EQ(seen[1].code(), StatusCode::kUnavailable);
  EXPECT_EQ(work.Wait().code(), StatusCode::kUnavailable);
}

TEST(OpQueue, RunsOpsInSubmissionOrder) {
  OpQueue queue([](const Status&) {});
  std::vector<int> order;
  std::vector<Work> works;
  for (int i = 0; i < 20; ++i) {
    works.push_back(queue.Submit([&order, i] { order.push_back(i); return OkStatus(); }, milliseconds(10000), "op"));
  }
  for (auto& work : works) EXPECT_TRUE(work.Wait().ok());
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[i], i);
  EXPECT_TRUE(queue.health().ok());
}

TEST(OpQueue, AFailedOpFailsEveryQueuedAndLaterOpWithItsStatus) {
  std::atomic<int> aborts{0};
  OpQueue queue([&](const Status&) { ++aborts; });
  Gate gate;
  Work first = queue.Submit([&] { gate.Pass(); return UnavailableError("connection reset by rank 1"); },
                            milliseconds(10000), "allreduce");
  std::atomic<bool> ran{false};
  Work second = queue.Submit([&] { ran = true; return OkStatus(); }, milliseconds(10000), "broadcast");
  gate.Open();
  Status status = first.Wait();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("allreduce: connection reset by rank 1"), std::string::npos) << status;
  EXPECT_EQ(second.Wait().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(ran);
  EXPECT_EQ(queue.Submit([] { return OkStatus(); }, milliseconds(10000), "barrier").Wait().code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(aborts.load(), 1);
}

TEST(OpQueue, AbortFailsTheOpInFlightAtOnceAndCallsOnAbortOnce) {
  Gate gate;
  std::vector<Status> reasons;
  OpQueue queue([&](const Status& reason) {
    reasons.push_back(reason);
    gate.Open();  // as ncclCommAbort makes the blocked library call return
  });
  Work blocked = queue.Submit([&] { gate.Pass(); return InternalError("library call returned after abort"); },
                              milliseconds(600000), "allreduce");
  Work queued = queue.Submit([] { return OkStatus(); }, milliseconds(600000), "barrier");
  queue.Abort(UnavailableError("rank 3 (node b) lost"));
  queue.Abort(UnavailableError("second reason"));
  EXPECT_EQ(blocked.Wait(), UnavailableError("rank 3 (node b) lost"));
  EXPECT_EQ(queued.Wait(), UnavailableError("rank 3 (node b) lost"));
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(queue.health(), UnavailableError("rank 3 (node b) lost"));
}

// The caller frees its buffers once the Work completes, so the Work of the op in flight must not
// complete while the library call may still write them: a TSan run caught Gloo's allreduce
// writing a gradient buffer freed after an abort had completed its Work early.
TEST(OpQueue, AnAbortCompletesTheOpInFlightOnlyOnceItsCallHasReturned) {
  Gate gate;
  Gate started;
  std::atomic<bool> returned{false};
  OpQueue queue([&](const Status&) {});  // a library call that on_abort does not end at once
  Work blocked = queue.Submit(
      [&] {
        started.Open();
        gate.Pass();
        returned = true;
        return OkStatus();
      },
      milliseconds(600000), "allreduce");
  Work queued = queue.Submit([] { return OkStatus(); }, milliseconds(600000), "barrier");
  started.Pass();
  queue.Abort(UnavailableError("rank 3 (node b) lost"));
  EXPECT_EQ(queued.Wait(), UnavailableError("rank 3 (node b) lost"));  // queued: at once
  EXPECT_FALSE(blocked.WaitFor(milliseconds(100)).has_value()) << "completed while its call still ran";
  gate.Open();
  EXPECT_EQ(blocked.Wait(), UnavailableError("rank 3 (node b) lost"));  // OK from the call: still failed
  EXPECT_TRUE(returned.load());
}

TEST(OpQueue, AnOpPastItsTimeoutFailsWithDeadlineExceededAndAbortsTheQueue) {
  Gate gate;
  OpQueue queue([&](const Status&) { gate.Open(); });
  Work slow = queue.Submit([&] { gate.Pass(); return OkStatus(); }, milliseconds(20), "allgather");
  Status status = slow.Wait();
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(status.message().find("allgather"), std::string::npos) << status;
  EXPECT_EQ(queue.Submit([] { return OkStatus(); }, milliseconds(1000), "barrier").Wait().code(),
            StatusCode::kDeadlineExceeded);
}

TEST(OpQueue, TheTimeoutCountsFromWhenTheOpStarts) {
  Gate gate;
  OpQueue queue([&](const Status&) { gate.Open(); });
  Work first = queue.Submit([&] { gate.Pass(); return OkStatus(); }, milliseconds(600000), "first");
  // Queued behind `first` for longer than its own timeout: it must not expire while queued.
  Work second = queue.Submit([] { return OkStatus(); }, milliseconds(50), "second");
  EXPECT_FALSE(second.WaitFor(milliseconds(150)).has_value());
  gate.Open();
  EXPECT_TRUE(first.Wait().ok());
  EXPECT_TRUE(second.Wait().ok());
}

TEST(OpQueue, DestroyingAQueueCancelsWhatIsQueued) {
  Gate gate;
  Work queued = Work::Pending();
  {
    OpQueue queue([&](const Status&) { gate.Open(); });
    queue.Submit([&] { gate.Pass(); return OkStatus(); }, milliseconds(600000), "first");
    queued = queue.Submit([] { return OkStatus(); }, milliseconds(600000), "second");
  }
  EXPECT_EQ(queued.Wait().code(), StatusCode::kCancelled);
}

// The waiter runs the op (communicator.h, OpQueue): ops waited for one at a time run on the
// waiting thread, except when the queue's thread claims one first (it is woken at Submit, so the
// split is up to the scheduler; of 200 ops the waiter runs some).
TEST(OpQueue, WaitRunsTheOpAtTheHeadOfAnIdleQueueOnTheWaitingThread) {
  OpQueue queue([](const Status&) {});
  const auto me = std::this_thread::get_id();
  int here = 0;
  for (int i = 0; i < 200; ++i) {
    std::thread::id ran_on;
    ASSERT_TRUE(queue.Submit([&] { ran_on = std::this_thread::get_id(); return OkStatus(); }, milliseconds(10000), "op")
                    .Wait()
                    .ok());
    if (ran_on == me) ++here;
  }
  EXPECT_GT(here, 0);
}

// Waiters on several threads and the queue's thread never run two ops at once, and every op runs
// once, in submission order per thread.
TEST(OpQueue, OpsRunOneAtATimeWhoeverRunsThem) {
  OpQueue queue([](const Status&) {});
  std::atomic<int> running{0};
  std::atomic<int> overlaps{0};
  std::atomic<int> ran{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        Work work = queue.Submit([&] {
          if (running.fetch_add(1) != 0) ++overlaps;
          ++ran;
          running.fetch_sub(1);
          return OkStatus();
        }, milliseconds(10000), "op");
        EXPECT_TRUE(work.Wait().ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(ran.load(), 400);
}

// The same rule raced: the failed op runs on the waiting thread or on the queue's thread (woken
// at Submit), and neither may start the op behind it before the queue is broken (200 queues).
TEST(OpQueue, NoOpRunsAfterAFailedOneWhoeverRunsThem) {
  for (int i = 0; i < 200; ++i) {
    OpQueue queue([](const Status&) {});
    std::atomic<bool> ran{false};
    Work first = queue.Submit([] { return UnavailableError("rank 1 lost"); }, milliseconds(10000), "first");
    Work second = queue.Submit([&] { ran = true; return OkStatus(); }, milliseconds(10000), "second");
    EXPECT_EQ(first.Wait().code(), StatusCode::kUnavailable);
    EXPECT_EQ(second.Wait().code(), StatusCode::kUnavailable);
    ASSERT_FALSE(ran) << "queue " << i << ": the op behind a failed one ran";
  }
}

// A waiter blocked in the op it runs is released by Abort through on_abort, as the queue's thread
// is, and its Wait returns the reason.
TEST(OpQueue, AbortReleasesAWaiterBlockedInTheOpItRuns) {
  Gate gate;
  Gate started;
  OpQueue queue([&](const Status&) { gate.Open(); });
  Work blocked = queue.Submit([&] { started.Open(); gate.Pass(); return InternalError("library call returned after abort"); },
                              milliseconds(600000), "allreduce");
  Status waited;
  std::thread waiter([&] { waited = blocked.Wait(); });
  started.Pass();
  queue.Abort(UnavailableError("rank 1 lost"));
  waiter.join();
  EXPECT_EQ(waited, UnavailableError("rank 1 lost"));
  EXPECT_EQ(queue.Submit([] { return OkStatus(); }, milliseconds(1000), "barrier").Wait(), UnavailableError("rank 1 lost"));
}

TEST(CheckBuffer, RefusesNullAndOverflowingBuffersButAcceptsEmptyOnes) {
  EXPECT_TRUE(CheckBuffer(nullptr, 0, DataType::kFloat32, "send").ok());
  EXPECT_EQ(CheckBuffer(nullptr, 4, DataType::kFloat32, "send").code(), StatusCode::kInvalidArgument);
  int x = 0;
  EXPECT_EQ(CheckBuffer(&x, SIZE_MAX / 2, DataType::kInt64, "recv").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SizeOf(DataType::kBFloat16), 2u);
  EXPECT_EQ(DataTypeName(DataType::kFloat64), "float64");
  EXPECT_EQ(ReduceOpName(ReduceOp::kMax), "max");
}

}  // namespace
}  // namespace troupe::collectives
