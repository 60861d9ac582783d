// An actor worker's failure of its own is counted as the user failure it is: the rank reports its
// WorkerExited before its communicator closes (once), and holds the communicator open until its
// supervisor stops it (or ActorWorkerDeps::failed_rank_hold passes), so that no peer sees the
// closed connections and reports an infrastructure fault first. A worker actor in a Runtime, a
// fake communicator and a test supervisor write what happens into one ordered log.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/training/actor_worker.h"
#include "actors/training/messages.h"
#include "runtime/runtime.h"
#include "tests/support/local_runtime.h"

namespace troupe::training {
namespace {

using namespace std::chrono_literals;

constexpr std::chrono::seconds kWait{30};  // bound of every wait for an event of the log

constexpr const char* kFormed = "communicator formed";
constexpr const char* kClosed = "communicator closed";
constexpr const char* kReported = "supervisor heard the exit";
constexpr const char* kEnded = "worker actor ended";

// What the worker's communicator, its supervisor and the worker actor's end did, in order.
struct EventLog {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> events;
  std::vector<WorkerExited> exits;  // as the supervisor heard them

  void Add(const std::string& event) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(event);
    cv.notify_all();
  }
  // Waits (at most kWait) until `event` is in the log; false if it never came.
  bool WaitFor(const std::string& event) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, kWait, [&] { return std::find(events.begin(), events.end(), event) != events.end(); });
  }
  std::vector<std::string> Events() {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
  std::vector<WorkerExited> Exits() {
    std::lock_guard<std::mutex> lock(mu);
    return exits;
  }
};

// A communicator that talks to nobody: it logs its close (its destruction, when Gloo's
// connections would close and the peers' collectives fail).
class FakeCommunicator : public collectives::Communicator {
 public:
  FakeCommunicator(std::shared_ptr<EventLog> log, int rank, int world) : log_(std::move(log)), rank_(rank), world_(world) {
    log_->Add(kFormed);
  }
  ~FakeCommunicator() override { log_->Add(kClosed); }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string_view backend() const override { return "fake"; }
  collectives::Work AllReduce(void*, size_t, collectives::DataType, collectives::ReduceOp,
                              std::chrono::milliseconds) override {
    return Refused();
  }
  collectives::Work Broadcast(void*, size_t, collectives::DataType, int, std::chrono::milliseconds) override {
    return Refused();
  }
  collectives::Work AllGather(const void*, void*, size_t, collectives::DataType, std::chrono::milliseconds) override {
    return Refused();
  }
  collectives::Work ReduceScatter(const void*, void*, size_t, collectives::DataType, collectives::ReduceOp,
                                  std::chrono::milliseconds) override {
    return Refused();
  }
  collectives::Work Barrier(std::chrono::milliseconds) override { return Refused(); }
  void Abort(const Status& reason) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (health_.ok()) health_ = reason;
  }
  Status health() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return health_;
  }

 private:
  static collectives::Work Refused() { return collectives::Work::Done(InternalError("the fake communicator talks to nobody")); }
  std::shared_ptr<EventLog> log_;
  const int rank_;
  const int world_;
  mutable std::mutex mu_;
  Status health_;
};

// Test -> supervisor: monitor this worker actor (its end goes into the log).
using watch_atom = caf::atom_constant<caf::atom("t_watch")>;
// Test -> supervisor: stop the worker, as GroupFailed's StopGroup does.
using stop_atom = caf::atom_constant<caf::atom("t_stop")>;

struct SupervisorState {
  std::shared_ptr<EventLog> log;
  caf::actor worker;
};

// The job supervisor's part here: hears WorkerExited and, when told, stops the worker.
caf::behavior FakeSupervisor(caf::stateful_actor<SupervisorState>* self, std::shared_ptr<EventLog> log) {
  self->state.log = std::move(log);
  self->set_default_handler(caf::drop);  // the worker's progress reports
  self->set_down_handler([self](caf::down_msg&) { self->state.log->Add(kEnded); });
  return {
      [self](WorkerExited& exit) {
        {
          std::lock_guard<std::mutex> lock(self->state.log->mu);
          self->state.log->exits.push_back(exit);
        }
        self->state.log->Add(kReported);
      },
      [self](watch_atom, caf::actor worker) {
        self->monitor(worker);
        self->state.worker = std::move(worker);
      },
      [self](stop_atom) { self->send(self->state.worker, StopActorWorker{"the group restarts"}); },
  };
}

// One rank of a group of two in a Runtime: the worker type's main is `main`; rank 1 is never
// spawned (the fake communicator does not talk).
class ActorWorkerReport : public ::testing::Test {
 protected:
  void SetUp() override {
    rt_ = testing::StartLocalRuntime("actor-worker-report", AddTrainingCodecs);
    ASSERT_NE(rt_, nullptr);
    supervisor_ = rt_->Spawn(FakeSupervisor, log_);
  }

  void TearDown() override {
    if (!rt_) return;
    caf::anon_send_exit(supervisor_.handle(), caf::exit_reason::user_shutdown);
    rt_->Stop();
    EXPECT_TRUE(rt_->AwaitActors(std::chrono::milliseconds(kWait))) << "an actor still runs";
  }

  // Registers the worker type "failing" (running `main`) and spawns rank 0 of 2; the test's
  // supervisor watches it.
  void SpawnRank(WorkerMain main, std::chrono::milliseconds failed_rank_hold) {
    ASSERT_TRUE(types_.Register("failing", std::move(main)).ok());
    ActorWorkerDeps deps;
    deps.types = &types_;
    deps.table = table_;
    deps.failed_rank_hold = failed_rank_hold;
    // Generic: whatever else the factory is handed (an abort signal) the fake does not need.
    deps.communicators = [log = log_](runtime::Runtime&, const ActorWorkerStart& start, auto&&...)
        -> StatusOr<std::unique_ptr<collectives::Communicator>> {
      return std::unique_ptr<collectives::Communicator>(
          std::make_unique<FakeCommunicator>(log, static_cast<int>(start.rank), static_cast<int>(start.world_size)));
    };
    ASSERT_TRUE(RegisterActorWorkers(*rt_, deps).ok());
    ActorWorkerStart start;
    start.job = "report";
    start.type = "failing";
    start.attempt = 1;
    start.rank = 0;
    start.world_size = 2;
    start.supervisor = supervisor_;
    auto worker = rt_->SpawnOn(rt_->node_id(), kActorWorkerActorType, start, std::chrono::milliseconds(kWait));
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *worker;
    caf::anon_send(supervisor_.handle(), watch_atom::value, worker_.handle());
    // The group's actors, as the supervisor sends them once every rank is spawned: the rank trains
    // once it has them. Rank 1 is stood in for by the supervisor (alive throughout).
    caf::anon_send(worker_.handle(), ActorWorkerPeers{1, {worker_, supervisor_}});
  }

  std::shared_ptr<EventLog> log_ = std::make_shared<EventLog>();
  std::shared_ptr<ActorWorkerTable> table_ = std::make_shared<ActorWorkerTable>();
  WorkerTypeRegistry types_;
  std::unique_ptr<runtime::Runtime> rt_;
  runtime::ActorRef supervisor_;
  runtime::ActorRef worker_;
};

TEST_F(ActorWorkerReport, AFailingRankReportsBeforeItsCommunicatorClosesAndClosesAtItsSupervisorsStop) {
  // No bound within the test: only the stop may close the communicator.
  SpawnRank([](WorkerContext&) -> Status { throw std::runtime_error("loss is NaN"); }, std::chrono::hours(1));
  ASSERT_TRUE(log_->WaitFor(kReported)) << "the supervisor never heard the failure";
  // The supervisor counts the failure while the peers' connections are still open.
  EXPECT_EQ(log_->Events(), (std::vector<std::string>{kFormed, kReported}));
  caf::anon_send(supervisor_.handle(), stop_atom::value);
  ASSERT_TRUE(log_->WaitFor(kEnded)) << "the stopped worker never ended";
  EXPECT_EQ(log_->Events(), (std::vector<std::string>{kFormed, kReported, kClosed, kEnded}));
  const std::vector<WorkerExited> exits = log_->Exits();
  ASSERT_EQ(exits.size(), 1u) << "reported once, from the rank's thread only";
  EXPECT_EQ(exits[0].exit_code, 1);
  EXPECT_FALSE(exits[0].infra) << "a user failure: " << exits[0].reason;
  EXPECT_NE(exits[0].reason.find("loss is NaN"), std::string::npos) << exits[0].reason;
}

TEST_F(ActorWorkerReport, AFailingRankWhoseSupervisorNeverStopsItClosesAfterTheHold) {
  SpawnRank([](WorkerContext&) -> Status { return InternalError("bad batch"); }, 1ms);
  ASSERT_TRUE(log_->WaitFor(kEnded)) << "the worker held its communicator past the bound";
  ASSERT_TRUE(log_->WaitFor(kReported)) << "the supervisor never heard the failure";
  // The report left before the close (the test above), but the supervisor's actor may take it
  // after a 1 ms hold has passed: only that both happened, and the close before the end.
  std::vector<std::string> events = log_->Events();
  ASSERT_EQ(events.size(), 4u) << ::testing::PrintToString(events);
  EXPECT_EQ(events.front(), kFormed);
  std::sort(events.begin() + 1, events.end() - 1);
  std::vector<std::string> middle{kReported, kClosed};
  std::sort(middle.begin(), middle.end());
  EXPECT_EQ(std::vector<std::string>(events.begin() + 1, events.end() - 1), middle);
  const std::vector<std::string> in_order = log_->Events();
  EXPECT_LT(std::find(in_order.begin(), in_order.end(), kClosed) - in_order.begin(),
            std::find(in_order.begin(), in_order.end(), kEnded) - in_order.begin());
  const std::vector<WorkerExited> exits = log_->Exits();
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_FALSE(exits[0].infra) << exits[0].reason;
}

TEST_F(ActorWorkerReport, ARankThatLostItsGroupClosesAtOnceAndReportsAnInfrastructureFault) {
  // Its peers' fault, not its own: nothing to hold the group for.
  SpawnRank([](WorkerContext&) -> Status { return UnavailableError("rank 1 was lost"); }, std::chrono::hours(1));
  ASSERT_TRUE(log_->WaitFor(kEnded)) << "the worker never ended";
  EXPECT_EQ(log_->Events(), (std::vector<std::string>{kFormed, kClosed, kReported, kEnded}));
  const std::vector<WorkerExited> exits = log_->Exits();
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_TRUE(exits[0].infra) << exits[0].reason;
}

}  // namespace
}  // namespace troupe::training
