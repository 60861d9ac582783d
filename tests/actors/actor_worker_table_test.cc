// ActorWorkerTable's bookkeeping (actors/training/actor_worker.h): which exits it keeps for an
// adopter and which it forgets, whom each worker reports to, and what it tells the worker actors.
// The workers are stand-in actors in a one-node Runtime that log what the table sends them; the
// test plays the worker actor's side (Add, Exited, Ended) by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <caf/all.hpp>

#include "actors/training/actor_worker.h"
#include "actors/training/messages.h"
#include "runtime/runtime.h"
#include "tests/support/local_runtime.h"

namespace troupe::training {
namespace {

using namespace std::chrono_literals;

constexpr std::chrono::seconds kWait{30};  // bound of every wait for a stand-in's message

// What the table sends a worker actor (actor_worker.cc), as the stand-in logs it.
const std::string kAdopted = caf::to_string(caf::atom("aw_adopt"));    // Adopt: watch the new supervisor
const std::string kHeadJoined = caf::to_string(caf::atom("aw_rejoin")); // HeadJoined: wait the full bound again
constexpr const char* kStopped = "StopActorWorker";                       // Stop
constexpr const char* kEnded = "ended";                                   // StopAll (the actor's exit)
const std::string kMarker = caf::to_string(caf::atom("marker"));        // the test's own, sent last

// What one stand-in worker actor received, in order.
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> got;

  void Add(std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    got.push_back(std::move(what));
    cv.notify_all();
  }
  bool WaitFor(const std::string& what) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, kWait, [&] { return std::find(got.begin(), got.end(), what) != got.end(); });
  }
  // What it received so far; forgets it.
  std::vector<std::string> Take() {
    std::lock_guard<std::mutex> lock(mu);
    return std::exchange(got, {});
  }
};

// A stand-in worker actor of one rank and what it received.
struct Worker {
  ActorWorkerStart start;
  caf::actor actor;
  runtime::ActorRef ref;
  std::shared_ptr<Inbox> inbox;
};

// (job, attempt, rank, runs) of each entry of a List, in the table's order.
using Listed = std::tuple<std::string, uint64_t, uint32_t, bool>;

class ActorWorkerTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rt_ = ::troupe::testing::StartLocalRuntime("actor-worker-table", [](runtime::CodecRegistry&) { return OkStatus(); });
    ASSERT_TRUE(rt_);
    supervisor_ = Idle();
    adopter_ = Idle();
  }
  void TearDown() override {
    for (const caf::actor& actor : spawned_) caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
    rt_->Stop();
    EXPECT_TRUE(rt_->AwaitActors(std::chrono::milliseconds(kWait))) << "an actor still runs";
  }

  // An actor that only stands for a supervisor (the table compares and hands out its ref).
  runtime::ActorRef Idle() {
    caf::actor actor = rt_->system().spawn([](caf::event_based_actor*) -> caf::behavior {
      return {[](caf::atom_value) {}};
    });
    spawned_.push_back(actor);
    return rt_->Ref(actor);
  }

  // A stand-in for rank `rank` of `attempt` of `job`, added to the table as the worker actor
  // adds itself, reporting to supervisor_.
  Worker Add(const std::string& job, uint64_t attempt, uint32_t rank) {
    Worker w;
    w.start.job = job;
    w.start.attempt = attempt;
    w.start.rank = rank;
    w.start.world_size = 4;
    w.start.supervisor = supervisor_;
    w.inbox = std::make_shared<Inbox>();
    w.actor = rt_->system().spawn([inbox = w.inbox](caf::event_based_actor* self) -> caf::behavior {
      self->attach_functor([inbox](const caf::error&) { inbox->Add(kEnded); });
      return {
          [inbox](caf::atom_value what) { inbox->Add(caf::to_string(what)); },
          [inbox](const StopActorWorker&) { inbox->Add(kStopped); },
      };
    });
    spawned_.push_back(w.actor);
    w.ref = rt_->Ref(w.actor);
    table_.Add(w.start, w.actor, w.ref, "/logs/" + job + "/attempt-" + std::to_string(attempt) + "/rank-" +
                                            std::to_string(rank) + ".log");
    return w;
  }

  static WorkerExited Exit(const Worker& w, int32_t code, const std::string& reason) {
    return WorkerExited{w.start.job, w.start.attempt, w.start.rank, code, 0, false, reason};
  }
  // The worker reports its end (ReportExit) and returns whom it reported to.
  runtime::ActorRef Exited(const Worker& w, int32_t code = 0, const std::string& reason = "trained to the end") {
    return table_.Exited(w.start, Exit(w, code, reason));
  }
  // The worker actor ended (its exit, if any, was recorded before).
  void Ended(const Worker& w) { table_.Ended(w.start, w.actor.address()); }

  // Everything the table sent `w` so far: it handles a message the test sends after them last.
  std::vector<std::string> Received(const Worker& w) {
    caf::anon_send(w.actor, caf::atom("marker"));
    EXPECT_TRUE(w.inbox->WaitFor(kMarker)) << "the stand-in never took the marker";
    std::vector<std::string> got = w.inbox->Take();
    got.erase(std::remove(got.begin(), got.end(), kMarker), got.end());
    return got;
  }

  std::vector<Listed> List() const {
    std::vector<Listed> out;
    for (const RunningWorker& w : table_.List()) out.emplace_back(w.job, w.attempt, w.rank, Runs(w));
    return out;
  }

  std::unique_ptr<runtime::Runtime> rt_;
  std::vector<caf::actor> spawned_;
  runtime::ActorRef supervisor_;  // the one each Add names
  runtime::ActorRef adopter_;     // a restarted head's supervisor
  ActorWorkerTable table_;
};

TEST_F(ActorWorkerTableTest, AnExitIsKeptForAnAdopterAfterTheWorkerActorEnded) {
  const Worker w = Add("train", 1, 0);
  EXPECT_EQ(List(), (std::vector<Listed>{{"train", 1, 0, true}}));
  EXPECT_EQ(Exited(w, 1, "loss is NaN"), supervisor_) << "reported to the supervisor that started it";
  Ended(w);
  // The node reports it at a join as an exit (neither pid nor actor), with its log.
  const std::vector<RunningWorker> listed = table_.List();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_FALSE(Runs(listed[0]));
  EXPECT_EQ(listed[0].log_path, "/logs/train/attempt-1/rank-0.log");
  const WorkersAdopted adopted = table_.Adopt("train", 1, adopter_);
  EXPECT_TRUE(adopted.running.empty());
  ASSERT_EQ(adopted.exited.size(), 1u);
  EXPECT_EQ(adopted.exited[0].exit_code, 1);
  EXPECT_EQ(adopted.exited[0].reason, "loss is NaN");
  // Still kept: a later head's supervisor may adopt the attempt again.
  EXPECT_EQ(table_.Adopt("train", 1, adopter_).exited.size(), 1u);
}

TEST_F(ActorWorkerTableTest, EndedForgetsAWorkerWithoutAnExitAndIgnoresAnotherActor) {
  const Worker w = Add("train", 1, 0);
  const Worker other = Add("train", 1, 1);
  // The end of an actor that is not the one recorded for the rank changes nothing.
  table_.Ended(w.start, other.actor.address());
  EXPECT_EQ(List(), (std::vector<Listed>{{"train", 1, 0, true}, {"train", 1, 1, true}}));
  Ended(w);  // ended without an exit (StopAll): nothing to keep
  EXPECT_EQ(List(), (std::vector<Listed>{{"train", 1, 1, true}}));
  EXPECT_FALSE(table_.Supervisor(w.start).valid());
  EXPECT_EQ(table_.Supervisor(other.start), supervisor_);
}

TEST_F(ActorWorkerTableTest, AnExitOfAWorkerNotHereGoesToTheSupervisorOfItsStart) {
  Worker w;
  w.start.job = "train";
  w.start.attempt = 1;
  w.start.supervisor = adopter_;
  EXPECT_EQ(Exited(w), adopter_);
  EXPECT_TRUE(List().empty()) << "nothing recorded for a worker the table does not hold";
}

TEST_F(ActorWorkerTableTest, AddForgetsTheKeptExitsOfTheJobsOlderAttemptsOnly) {
  const Worker exited = Add("train", 1, 0);
  Exited(exited);
  Ended(exited);
  const Worker still_running = Add("train", 1, 1);  // not ended yet: not forgotten
  const Worker other_job = Add("eval", 1, 0);
  Exited(other_job);
  Ended(other_job);
  Add("train", 2, 0);
  EXPECT_EQ(List(), (std::vector<Listed>{{"eval", 1, 0, false}, {"train", 1, 1, true}, {"train", 2, 0, true}}));
  const WorkersAdopted adopted = table_.Adopt("train", 1, adopter_);
  EXPECT_TRUE(adopted.exited.empty());
  ASSERT_EQ(adopted.running.size(), 1u);
  EXPECT_EQ(adopted.running[0].rank, 1u);
  EXPECT_EQ(table_.Adopt("eval", 1, adopter_).exited.size(), 1u) << "another job's exit is kept";
}

// An older attempt's rank that ends after the job's newer attempt was added here (it held its
// communicator, or its stop was late): its exit is an older attempt's and is not kept either.
TEST_F(ActorWorkerTableTest, AnOlderAttemptsExitRecordedAfterANewerAttemptCameIsNotKept) {
  const Worker old_rank = Add("train", 1, 0);
  const Worker newest = Add("train", 2, 0);
  Add("train", 2, 1);
  Exited(old_rank, 1, "its group was lost");
  Ended(old_rank);
  EXPECT_EQ(List(), (std::vector<Listed>{{"train", 2, 0, true}, {"train", 2, 1, true}}));
  EXPECT_TRUE(table_.Adopt("train", 1, adopter_).exited.empty());
  // The newest attempt's exit is kept, whatever other ranks of it are here.
  Exited(newest, 1, "bad batch");
  Ended(newest);
  EXPECT_EQ(List(), (std::vector<Listed>{{"train", 2, 0, false}, {"train", 2, 1, true}}));
}

TEST_F(ActorWorkerTableTest, StopStopsTheAttemptsUpToItAndForgetsTheirExits) {
  const Worker a1 = Add("train", 1, 0);
  const Worker a2_running = Add("train", 2, 0);
  const Worker a2_exited = Add("train", 2, 1);  // exited; its actor holds its communicator
  Exited(a2_exited, 1, "bad batch");
  const Worker a2_ended = Add("train", 2, 2);  // exited and ended: only its exit is here
  Exited(a2_ended);
  Ended(a2_ended);
  const Worker a3 = Add("train", 3, 0);
  const Worker other_job = Add("eval", 1, 0);
  EXPECT_EQ(table_.Stop("train", 2), 2u) << "attempt 1 rank 0 and attempt 2 rank 0 were running";
  EXPECT_EQ(Received(a1), (std::vector<std::string>{kStopped}));
  EXPECT_EQ(Received(a2_running), (std::vector<std::string>{kStopped}));
  EXPECT_EQ(Received(a2_exited), (std::vector<std::string>{kStopped}));
  EXPECT_TRUE(Received(a3).empty());
  EXPECT_TRUE(Received(other_job).empty());
  EXPECT_EQ(List(), (std::vector<Listed>{{"eval", 1, 0, true}, {"train", 3, 0, true}}));
  // A stopped attempt is nobody's to adopt, and its exits are not kept.
  WorkersAdopted adopted = table_.Adopt("train", 2, adopter_);
  EXPECT_TRUE(adopted.running.empty());
  EXPECT_TRUE(adopted.exited.empty());
  EXPECT_TRUE(Received(a2_running).empty()) << "a stopped worker is not switched to the adopter";
  EXPECT_EQ(Exited(a2_running, 1, "stopped"), supervisor_);
  Ended(a2_running);
  Ended(a2_exited);
  Ended(a1);
  EXPECT_EQ(List(), (std::vector<Listed>{{"eval", 1, 0, true}, {"train", 3, 0, true}}));
  adopted = table_.Adopt("train", 2, adopter_);
  EXPECT_TRUE(adopted.exited.empty());
}

TEST_F(ActorWorkerTableTest, AdoptSwitchesTheAttemptsWorkersAndReturnsTheTrainingOnesAndEarlierExits) {
  const Worker training = Add("train", 1, 0);
  const Worker holding = Add("train", 1, 1);  // exited, its actor still up (waits for its group's stop)
  Exited(holding, 1, "bad batch");
  const Worker ended = Add("train", 1, 2);
  Exited(ended, 0, "trained to the end");
  Ended(ended);
  const Worker other_job = Add("eval", 1, 0);  // (a newer attempt of the job would forget rank 2's exit)
  // A worker that trained to the end and waits for its group's stop is still running at a join.
  EXPECT_EQ(List(), (std::vector<Listed>{
                        {"eval", 1, 0, true}, {"train", 1, 0, true}, {"train", 1, 1, true}, {"train", 1, 2, false}}));

  const WorkersAdopted adopted = table_.Adopt("train", 1, adopter_);
  ASSERT_EQ(adopted.running.size(), 1u);
  EXPECT_EQ(adopted.running[0].rank, 0u);
  EXPECT_EQ(adopted.running[0].worker, training.ref);
  EXPECT_EQ(adopted.running[0].log_path, "/logs/train/attempt-1/rank-0.log");
  std::vector<uint32_t> exited_ranks;
  for (const WorkerExited& e : adopted.exited) exited_ranks.push_back(e.rank);
  EXPECT_EQ(exited_ranks, (std::vector<uint32_t>{1, 2})) << "the exits recorded before, whoever heard them";
  // The live ones now watch the adopter; the other job keeps its supervisor.
  EXPECT_EQ(Received(training), (std::vector<std::string>{kAdopted}));
  EXPECT_EQ(Received(holding), (std::vector<std::string>{kAdopted}));
  EXPECT_TRUE(Received(other_job).empty());
  EXPECT_EQ(table_.Supervisor(training.start), adopter_);
  EXPECT_EQ(table_.Supervisor(other_job.start), supervisor_);

  // An exit recorded after the Adopt goes to the adopter, and is kept for the next one.
  EXPECT_EQ(Exited(training, 0, "trained to the end"), adopter_);
  EXPECT_EQ(Exited(other_job), supervisor_);
  const runtime::ActorRef next = Idle();
  EXPECT_EQ(table_.Adopt("train", 1, next).exited.size(), 3u);
  EXPECT_EQ(table_.Supervisor(training.start), next);
}

TEST_F(ActorWorkerTableTest, HeadJoinedTellsEveryLiveWorkerAndStopAllEndsThem) {
  const Worker one = Add("train", 1, 0);
  const Worker two = Add("eval", 3, 1);
  const Worker gone = Add("train", 1, 1);
  Exited(gone);
  Ended(gone);
  table_.HeadJoined();
  EXPECT_EQ(Received(one), (std::vector<std::string>{kHeadJoined}));
  EXPECT_EQ(Received(two), (std::vector<std::string>{kHeadJoined}));
  table_.StopAll();
  EXPECT_TRUE(one.inbox->WaitFor(kEnded)) << "StopAll left a worker actor running";
  EXPECT_TRUE(two.inbox->WaitFor(kEnded)) << "StopAll left a worker actor running";
  EXPECT_TRUE(Received(gone).empty()) << "an ended worker's actor was told (its stand-in is still up)";
}

}  // namespace
}  // namespace troupe::training
