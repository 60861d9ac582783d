// Actor workers (docs/jobs.md, "Actor workers") as jobs on a real local cluster (`troupe up`, two
// CPU nodes): the built-in example-linear trainer spawned in a node agent's process by the job
// supervisor (Runtime::SpawnOn), through an exception in the worker and kill -9 of its node; the
// job resumes from its newest committed checkpoint and ends with the weights of an uninterrupted
// run, to the bit (computed here by the same trainer in this process).
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "actors/training/actor_worker.h"
#include "actors/training/example_trainer.h"
#include "cluster/client.h"
#include "common/logging.h"
#include "tests/support/job_polling.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

class ActorWorkerJobs : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    cluster_ = LocalCluster::Start("troupe-actor-jobs", "actorjobs", TwoNodeClusterYaml("actorjobs"));
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
  }

  // A job of one example-linear actor worker; `extra` adds to its configuration.
  training::JobSpec Linear(const std::string& name, std::map<std::string, std::string> extra = {}) {
    training::JobSpec spec;
    spec.name = name;
    spec.workers = 1;
    spec.resources.cpus = 1;
    spec.entry.actor = training::kExampleLinearType;
    spec.entry.env = {{"STEPS", "40"}, {"CHECKPOINT_EVERY", "10"}, {"SEED", "11"}};
    for (auto& [k, v] : extra) spec.entry.env[k] = v;
    spec.restart.backoff_initial = 100ms;
    spec.restart.backoff_max = 500ms;
    return spec;
  }

  // The weights an uninterrupted run of `spec` ends with, trained here in this process.
  std::string Reference(const training::JobSpec& spec) {
    const std::string dir = cluster_->dir + "/reference";
    training::ActorWorkerStart start;
    start.job = spec.name;
    start.type = spec.entry.actor;
    start.attempt = 1;
    start.world_size = 1;
    for (const auto& [k, v] : spec.entry.env) {
      if (k.rfind("THROW_", 0) != 0) start.env.push_back(k + "=" + v);
    }
    start.checkpoint_dir = dir;
    training::WorkerContext context(start, nullptr, nullptr);
    const Status done = training::RunWorkerMain(training::ExampleLinearMain, context);
    EXPECT_TRUE(done.ok()) << done;
    return ReadFile(dir + "/step-" + spec.entry.env.at("STEPS") + "/rank-0/weights.bin");
  }

  std::string Committed(const std::string& job, int step) {
    return ReadFile(cluster_->dir + "/head/checkpoints/" + job + "/step-" + std::to_string(step) + "/rank-0/weights.bin");
  }

  // Waits (60 s at most) for the job to end and expects it succeeded; its events.
  std::string ExpectSucceeds(const std::string& name, training::JobStatus* last) {
    EXPECT_TRUE(AwaitJob(*client_, name, 60s, [](const auto& s) { return training::IsFinal(s.state); }, last))
        << last->state << ": " << last->reason;
    const std::string events = JobEvents(*client_, name);
    EXPECT_EQ(last->state, training::kJobSucceeded) << last->reason << "\n" << events;
    return events;
  }

  std::unique_ptr<LocalCluster> cluster_;
  cluster::Client* client_ = nullptr;
};

TEST_F(ActorWorkerJobs, AnActorWorkerTrainsToItsEndAndItsCommittedWeightsAreTheReferences) {
  const training::JobSpec spec = Linear("linear-plain");
  const std::string reference = Reference(spec);
  ASSERT_EQ(reference.size(), 9 * sizeof(double));
  ASSERT_TRUE(client_->SubmitJob(spec, 10s).ok());
  training::JobStatus last;
  const std::string events = ExpectSucceeds(spec.name, &last);
  EXPECT_EQ(last.attempt, 1u) << events;
  EXPECT_EQ(last.checkpoint_step, 40) << events;
  EXPECT_EQ(Committed(spec.name, 40), reference);
}

TEST_F(ActorWorkerJobs, AnExceptionInTheWorkerRestartsItFromTheLastCheckpointAndEndsWithTheSameWeights) {
  const training::JobSpec spec = Linear("linear-throw", {{"THROW_AT_STEP", "25"}, {"THROW_ATTEMPT", "1"}});
  const std::string reference = Reference(spec);
  ASSERT_TRUE(client_->SubmitJob(spec, 10s).ok());
  training::JobStatus last;
  const std::string events = ExpectSucceeds(spec.name, &last);
  EXPECT_EQ(last.attempt, 2u) << events;
  EXPECT_EQ(last.user_failures, 1u) << events;
  EXPECT_NE(events.find("threw: injected failure at step 25"), std::string::npos) << events;
  EXPECT_NE(events.find("resuming from step 20"), std::string::npos) << events;
  EXPECT_EQ(Committed(spec.name, 40), reference) << events;
}

TEST_F(ActorWorkerJobs, AWorkersNodeKilledWithMinus9IsSeenByItsMonitorAndTheJobEndsWithTheSameWeights) {
  // 5 ms a step: 40 steps take 200 ms or more, time to kill its node mid-run.
  const training::JobSpec spec = Linear("linear-kill", {{"STEPS", "200"}, {"STEP_MS", "5"}});
  const std::string reference = Reference(spec);
  ASSERT_TRUE(client_->SubmitJob(spec, 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob(*client_, spec.name, 60s,
                       [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 20; }, &last))
      << last.state << ": " << last.reason << "\n" << JobEvents(*client_, spec.name);
  ASSERT_EQ(last.workers.size(), 1u);
  const std::string victim = "node " + last.workers[0].node;
  ASSERT_EQ(cluster_->pids.count(victim), 1u) << victim;
  ASSERT_EQ(kill(cluster_->pids[victim], SIGKILL), 0);
  const auto killed_at = Clock::now();
  ASSERT_TRUE(AwaitJob(*client_, spec.name, 30s, [](const auto& s) { return s.attempt >= 2; }, &last))
      << JobEvents(*client_, spec.name);
  const auto detected = Clock::now() - killed_at;
  const std::string events = ExpectSucceeds(spec.name, &last);
  EXPECT_EQ(last.infra_failures, 1u) << events;
  EXPECT_EQ(last.user_failures, 0u) << events;
  EXPECT_NE(events.find("resuming from step"), std::string::npos) << events;
  EXPECT_EQ(Committed(spec.name, 200), reference) << events;
  // The failure timeout is 1 s (TwoNodeClusterYaml); the restart follows at once.
  EXPECT_LT(detected, 5s);
  std::printf("kill -9 of node to the next attempt: %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(detected).count()));
}

}  // namespace
}  // namespace troupe
