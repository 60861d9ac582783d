// Actor workers without an actor system: the checkpoint handle's layout, the worker context
// (configuration, capped allocator), the type registry, and the example trainer over an in-test
// communicator: bit-identical weights for 1 and 4 ranks, and after an exception and a resume.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "actors/training/actor_worker.h"
#include "actors/training/example_trainer.h"

namespace troupe::training {
namespace {

namespace fs = std::filesystem;

// The ranks of one in-process group meeting in shared memory: AllReduce (int64 sum) only, which
// is all the example trainer uses. Abort fails the waiting and every later op at once, as
// PeerWatch makes a real communicator do.
struct LocalGroup {
  explicit LocalGroup(int n) : world(n) {}
  std::mutex mu;
  std::condition_variable cv;
  const int world;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<int64_t> sum;     // of the op being gathered
  std::vector<int64_t> result;  // of the op completed last
  Status failure;
};

class LocalCommunicator : public collectives::Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_->world; }
  std::string_view backend() const override { return "local-test"; }
  collectives::Work AllReduce(void* data, size_t count, collectives::DataType type, collectives::ReduceOp op,
                              std::chrono::milliseconds) override {
    if (type != collectives::DataType::kInt64 || op != collectives::ReduceOp::kSum) {
      return collectives::Work::Done(InternalError("the test group only sums int64"));
    }
    auto* v = static_cast<int64_t*>(data);
    LocalGroup& g = *group_;
    std::unique_lock<std::mutex> lock(g.mu);
    if (!g.failure.ok()) return collectives::Work::Done(g.failure);
    if (g.arrived == 0) g.sum.assign(count, 0);
    for (size_t i = 0; i < count; ++i) g.sum[i] += v[i];
    const uint64_t generation = g.generation;
    if (++g.arrived == g.world) {
      g.result = g.sum;
      g.arrived = 0;
      ++g.generation;
      g.cv.notify_all();
    } else {
      g.cv.wait(lock, [&] { return g.generation != generation || !g.failure.ok(); });
      if (g.generation == generation) return collectives::Work::Done(g.failure);
    }
    // `result` changes only when the next op completes, which needs every rank, so after each
    // has copied this one out.
    std::copy(g.result.begin(), g.result.end(), v);
    return collectives::Work::Done(OkStatus());
  }
  collectives::Work Broadcast(void*, size_t, collectives::DataType, int, std::chrono::milliseconds) override {
    return collectives::Work::Done(InternalError("not in the test group"));
  }
  collectives::Work AllGather(const void*, void*, size_t, collectives::DataType, std::chrono::milliseconds) override {
    return collectives::Work::Done(InternalError("not in the test group"));
  }
  collectives::Work ReduceScatter(const void*, void*, size_t, collectives::DataType, collectives::ReduceOp,
                                  std::chrono::milliseconds) override {
    return collectives::Work::Done(InternalError("not in the test group"));
  }
  collectives::Work Barrier(std::chrono::milliseconds) override {
    return collectives::Work::Done(InternalError("not in the test group"));
  }
  void Abort(const Status& reason) override {
    std::lock_guard<std::mutex> lock(group_->mu);
    if (group_->failure.ok()) group_->failure = reason;
    group_->cv.notify_all();
  }
  Status health() const override {
    std::lock_guard<std::mutex> lock(group_->mu);
    return group_->failure;
  }

 private:
  std::shared_ptr<LocalGroup> group_;
  int rank_;
};

// Memory from the heap, for the capped allocator.
class HeapDevice : public actors::GpuMemoryDevice {
 public:
  StatusOr<void*> Allocate(uint64_t bytes) override { return ::operator new(bytes); }
  void Free(void* ptr) override { ::operator delete(ptr); }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

class ActorWorkerTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string templ = testing::TempDir() + "actor_worker_test.XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    root_ = templ;
  }
  void TearDown() override { fs::remove_all(root_); }

  ActorWorkerStart Start(uint64_t attempt, uint32_t rank, uint32_t world, std::vector<std::string> env,
                         const std::string& resume_dir = "", uint64_t resume_step = 0) {
    ActorWorkerStart s;
    s.job = "linear";
    s.type = kExampleLinearType;
    s.attempt = attempt;
    s.rank = rank;
    s.world_size = world;
    s.env = std::move(env);
    s.checkpoint_dir = root_ + "/attempt-" + std::to_string(attempt);
    s.resume_dir = resume_dir;
    s.resume_step = resume_step;
    return s;
  }

  // Runs `world` ranks of the example trainer on threads; a rank that fails aborts the group
  // (as the runtime's monitors would). The ranks' results.
  std::vector<Status> RunGroup(uint64_t attempt, uint32_t world, const std::vector<std::string>& env,
                               const std::string& resume_dir = "", uint64_t resume_step = 0) {
    auto group = std::make_shared<LocalGroup>(static_cast<int>(world));
    std::vector<std::unique_ptr<WorkerContext>> contexts;
    for (uint32_t r = 0; r < world; ++r) {
      std::unique_ptr<collectives::Communicator> comm;
      if (world > 1) comm = std::make_unique<LocalCommunicator>(group, static_cast<int>(r));
      contexts.push_back(std::make_unique<WorkerContext>(Start(attempt, r, world, env, resume_dir, resume_step),
                                                         std::move(comm), nullptr));
    }
    std::vector<Status> results(world);
    std::vector<std::thread> threads;
    for (uint32_t r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        results[r] = RunWorkerMain(ExampleLinearMain, *contexts[r]);
        if (!results[r].ok()) {
          for (auto& c : contexts) c->Stop("rank " + std::to_string(r) + " failed: " + results[r].ToString());
        }
      });
    }
    for (auto& t : threads) t.join();
    return results;
  }

  std::string Weights(uint64_t attempt, uint64_t step, uint32_t rank) {
    return ReadFile(root_ + "/attempt-" + std::to_string(attempt) + "/step-" + std::to_string(step) + "/rank-" +
                    std::to_string(rank) + "/weights.bin");
  }

  std::string root_;
};

const std::vector<std::string> kEnv = {"STEPS=40", "CHECKPOINT_EVERY=10", "BATCH=64", "DIM=8", "SEED=7"};

TEST_F(ActorWorkerTest, FourRanksEndWithTheSameWeightsToTheBitAsOne) {
  for (const Status& s : RunGroup(1, 1, kEnv)) ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string one = Weights(1, 40, 0);
  ASSERT_EQ(one.size(), 9 * sizeof(double));
  // The model learned something: the weights are not all zero any more.
  EXPECT_NE(one, std::string(one.size(), '\0'));
  fs::remove_all(root_ + "/attempt-1");
  for (const Status& s : RunGroup(1, 4, kEnv)) ASSERT_TRUE(s.ok()) << s.ToString();
  for (uint32_t r = 0; r < 4; ++r) {
    EXPECT_EQ(Weights(1, 40, r), one) << "rank " << r;
    for (uint64_t step : {10, 20, 30, 40}) {
      EXPECT_TRUE(fs::exists(root_ + "/attempt-1/step-" + std::to_string(step) + "/rank-" + std::to_string(r) + ".done"))
          << "step " << step << " rank " << r;
    }
  }
}

TEST_F(ActorWorkerTest, AnExceptionInOneRankThenAResumeFromTheLastCheckpointEndsWithTheSameWeights) {
  for (const Status& s : RunGroup(1, 4, kEnv)) ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string reference = Weights(1, 40, 0);
  fs::remove_all(root_ + "/attempt-1");

  std::vector<std::string> failing = kEnv;
  failing.insert(failing.end(), {"THROW_AT_STEP=25", "THROW_RANK=2", "THROW_ATTEMPT=1"});
  std::vector<Status> first = RunGroup(1, 4, failing);
  EXPECT_EQ(first[2].code(), StatusCode::kInternal) << first[2].ToString();
  EXPECT_NE(first[2].message().find("rank 2 threw: injected failure at step 25"), std::string::npos)
      << first[2].ToString();
  for (uint32_t r : {0u, 1u, 3u}) {
    // The others' pending allreduce failed at once with the abort's Unavailable (or, between two
    // steps, they saw the stop: Cancelled), never a timeout.
    EXPECT_TRUE(first[r].code() == StatusCode::kUnavailable || first[r].code() == StatusCode::kCancelled)
        << "rank " << r << ": " << first[r].ToString();
  }
  EXPECT_FALSE(fs::exists(root_ + "/attempt-1/step-30"));
  // Attempt 2 resumes from step 20 (the staging step has the committed layout: step-S/rank-r/).
  std::vector<Status> second = RunGroup(2, 4, failing, root_ + "/attempt-1/step-20", 20);
  for (const Status& s : second) ASSERT_TRUE(s.ok()) << s.ToString();
  for (uint32_t r = 0; r < 4; ++r) EXPECT_EQ(Weights(2, 40, r), reference) << "rank " << r;
  EXPECT_FALSE(fs::exists(root_ + "/attempt-2/step-20")) << "a resumed attempt starts after the checkpoint";
}

TEST_F(ActorWorkerTest, TheCheckpointHandleWritesTheProcessWorkersLayoutAndNeverTouchesAMarkedStep) {
  CheckpointHandle handle(root_ + "/attempt-3", 1, "", 0);
  EXPECT_FALSE(handle.resume_step());
  ASSERT_TRUE(handle.Save(5, {{"model/w.bin", "abc"}, {"meta", "x"}}).ok());
  EXPECT_EQ(ReadFile(root_ + "/attempt-3/step-5/rank-1/model/w.bin"), "abc");
  EXPECT_TRUE(fs::exists(root_ + "/attempt-3/step-5/rank-1.done"));
  EXPECT_EQ(handle.Save(5, {{"meta", "y"}}).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFile(root_ + "/attempt-3/step-5/rank-1/meta"), "x");
  EXPECT_EQ(handle.Save(6, {{"../escape", "y"}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(handle.Save(6, {{"/abs", "y"}}).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(root_ + "/attempt-3/step-6/rank-1.done"));
  EXPECT_EQ(handle.Read("meta").status().code(), StatusCode::kFailedPrecondition);

  CheckpointHandle resumed(root_ + "/attempt-4", 1, root_ + "/attempt-3/step-5", 5);
  ASSERT_EQ(resumed.resume_step(), std::optional<uint64_t>(5));
  auto read = resumed.Read("model/w.bin");
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, "abc");
  EXPECT_EQ(resumed.Read("missing").status().code(), StatusCode::kNotFound);
}

TEST_F(ActorWorkerTest, TheSlicesAllocatorRefusesWhatIsBeyondTheSliceNamingIt) {
  ActorWorkerStart start = Start(1, 0, 1, {});
  start.gpu_index = 0;
  start.gpu_id = "GPU-sim-0";
  start.memory_bytes = 1 << 20;
  WorkerContext context(start, nullptr, std::make_unique<HeapDevice>());
  auto allocator = context.allocator();
  ASSERT_TRUE(allocator.ok()) << allocator.status().ToString();
  auto small = (*allocator)->Allocate(512 << 10);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  auto big = (*allocator)->Allocate(1 << 20);
  ASSERT_EQ(big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(big.status().message().find("GPU-sim-0"), std::string::npos) << big.status().ToString();
  ASSERT_TRUE((*allocator)->Free(*small).ok());

  WorkerContext cpu_only(Start(1, 0, 1, {}), nullptr, nullptr);
  EXPECT_EQ(cpu_only.allocator().status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(ActorWorkerTest, TheConfigurationIsReadFromTheEnvAndBadNumbersAreNamed) {
  WorkerContext context(Start(1, 0, 1, {"STEPS=12", "BATCH=many"}), nullptr, nullptr);
  EXPECT_EQ(context.config().at("STEPS"), "12");
  EXPECT_EQ(*context.ConfigNumber("STEPS", 3), 12u);
  EXPECT_EQ(*context.ConfigNumber("UNSET", 3), 3u);
  auto bad = ReadExampleLinearConfig(context);
  ASSERT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("entry.env.BATCH"), std::string::npos) << bad.status().ToString();
}

TEST_F(ActorWorkerTest, TheRegistryKnowsTheBuiltinTrainerAndNamesTheKnownTypesForAnUnknownOne) {
  EXPECT_TRUE(BuiltinWorkerTypes().Find(kExampleLinearType).ok());
  auto missing = BuiltinWorkerTypes().Find("no-such-trainer");
  ASSERT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("known: example-linear"), std::string::npos)
      << missing.status().ToString();
  WorkerTypeRegistry registry;
  EXPECT_EQ(registry.Register("Bad_Name", ExampleLinearMain).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(registry.Register("mine", ExampleLinearMain).ok());
  EXPECT_EQ(registry.Register("mine", ExampleLinearMain).code(), StatusCode::kAlreadyExists);
}

TEST_F(ActorWorkerTest, AStoppedWorkerEndsCancelledBeforeItsNextStep) {
  WorkerContext context(Start(1, 0, 1, {"STEPS=1000000"}), nullptr, nullptr);
  context.Stop("test");
  Status result = RunWorkerMain(ExampleLinearMain, context);
  EXPECT_EQ(result.code(), StatusCode::kCancelled) << result.ToString();
}

TEST_F(ActorWorkerTest, TheWorkersLogHasItsCheckpointsAndANewAttemptAppendsWhereTroupeJobLogsReadsIt) {
  const std::string log = root_ + "/jobs/linear/attempt-1/rank-0.log";  // directories made by OpenLog
  {
    WorkerContext context(Start(1, 0, 1, {"STEPS=20", "CHECKPOINT_EVERY=10", "BATCH=8", "DIM=4"}), nullptr, nullptr);
    ASSERT_TRUE(context.OpenLog(log).ok());
    ASSERT_TRUE(RunWorkerMain(ExampleLinearMain, context).ok());
  }
  {
    WorkerContext context(Start(1, 0, 1, {}), nullptr, nullptr);
    ASSERT_TRUE(context.OpenLog(log).ok());
    context.Log("a second line");
  }
  EXPECT_EQ(ReadFile(log),
            "example-linear: step 10 of 20: checkpoint saved\n"
            "example-linear: step 20 of 20: checkpoint saved\n"
            "a second line\n");
  // No log opened: Log does nothing; a directory that cannot be made is named.
  WorkerContext quiet(Start(1, 0, 1, {}), nullptr, nullptr);
  quiet.Log("nowhere");
  Status bad = quiet.OpenLog(log + "/under-a-file.log");
  EXPECT_EQ(bad.code(), StatusCode::kInternal);
  EXPECT_NE(bad.message().find(log + "/under-a-file.log"), std::string::npos) << bad.ToString();
}

}  // namespace
}  // namespace troupe::training
