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
#include <map>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "actors/training/actor_worker.h"
#include "actors/training/example_trainer.h"
#include "cluster/client.h"
#include "common/logging.h"
#include "tests/support/file_wait.h"
#include "tests/support/job_polling.h"
#include "tests/support/local_cluster.h"
#include "tests/support/troupe_processes.h"

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
    // Two nodes of 4 CPUs: a job of 4 one-CPU workers spreads 2 to a node, and fits on one node
    // when the other is lost.
    std::string yaml = TwoNodeClusterYaml("actorjobs");
    for (size_t at = yaml.find("cpus: 2"); at != std::string::npos; at = yaml.find("cpus: 2", at)) yaml.replace(at, 7, "cpus: 4");
    // Node a without shared storage: its workers send their shards to the head (docs/checkpoints.md).
    if (node_a_sends_checkpoints_) yaml.replace(yaml.find("data_dir: node-a\n"), 17, "data_dir: node-a\n    checkpoints: send\n");
    cluster_ = LocalCluster::Start("troupe-actor-jobs", "actorjobs", yaml);
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
    dir_ = cluster_->dir;
  }

  // A job of `workers` example-linear actor workers (one CPU each: 2 per node); `extra` adds to
  // its configuration.
  training::JobSpec Linear(const std::string& name, std::map<std::string, std::string> extra = {},
                           uint32_t workers = 1) {
    training::JobSpec spec;
    spec.name = name;
    spec.workers = workers;
    spec.resources.cpus = 1;
    spec.placement = "spread";
    spec.entry.actor = training::kExampleLinearType;
    spec.entry.env = {{"STEPS", "40"}, {"CHECKPOINT_EVERY", "10"}, {"SEED", "11"}};
    for (auto& [k, v] : extra) spec.entry.env[k] = v;
    spec.restart.backoff_initial = 100ms;
    spec.restart.backoff_max = 500ms;
    return spec;
  }

  // The weights an uninterrupted run of `spec` ends with, trained here in this process.
  std::string Reference(const training::JobSpec& spec) {
    const std::string dir = dir_ + "/reference";
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

  std::string Committed(const std::string& job, int step, int rank = 0) {
    return ReadFile(dir_ + "/head/checkpoints/" + job + "/step-" + std::to_string(step) + "/rank-" +
                    std::to_string(rank) + "/weights.bin");
  }

  static int64_t UnixMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  // The time (Unix ms) of the job's first "attempt 1 failed" event: when the supervisor saw it.
  static int64_t FailureDetectedMs(const std::string& events) {
    for (const auto& e : nlohmann::json::parse(events)) {
      if (e.at("message").get<std::string>().rfind("attempt 1 failed", 0) == 0) return e.at("unix_ms").get<int64_t>();
    }
    return 0;
  }

  // Runs `spec` to its end, which must be success after `attempts` attempts, with every rank's
  // committed weights of the last step those of the one-rank reference, to the bit. A restarted
  // job resumes from step 20, or 10 when the retention removed attempt 1's staging directory
  // before its step 20 was committed (docs/jobs.md, "Actor workers"). Its events.
  std::string RunToTheReference(const training::JobSpec& spec, uint64_t attempts, training::JobStatus* last) {
    const std::string reference = Reference(spec);
    EXPECT_EQ(reference.size(), 9 * sizeof(double));
    EXPECT_TRUE(client_->SubmitJob(spec, 10s).ok());
    const std::string events = ExpectSucceeds(spec.name, last);
    EXPECT_EQ(last->attempt, attempts) << events;
    if (attempts > 1) {
      EXPECT_NE(events.find("resuming from step"), std::string::npos) << events;
    }
    const int steps = std::stoi(spec.entry.env.at("STEPS"));
    for (uint32_t r = 0; r < spec.workers; ++r) {
      EXPECT_EQ(Committed(spec.name, steps, static_cast<int>(r)), reference) << "rank " << r << "\n" << events;
    }
    return events;
  }

  // Kills (SIGKILL) or stops (SIGSTOP) the node of rank 0 of a running job of 4 workers (2 a
  // node; 5 ms a step, 200 steps) once it has committed step 20. The job must restart its group
  // from its newest committed checkpoint (an infrastructure fault: the node is lost through the
  // monitors, at most the 1 s failure timeout after the signal) and end with the one-rank
  // reference's weights on every rank. A stopped node is continued at the end. Its events.
  std::string FailNode(const std::string& name, int signal) {
    const std::string progress = dir_ + "/progress-" + name;
    std::filesystem::create_directories(progress);
    const training::JobSpec spec = Linear(name, {{"STEPS", "200"}, {"STEP_MS", "5"}, {"PROGRESS_DIR", progress}}, 4);
    const std::string reference = Reference(spec);
    EXPECT_TRUE(client_->SubmitJob(spec, 10s).ok());
    training::JobStatus last;
    EXPECT_TRUE(AwaitJob(*client_, name, 60s,
                         [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 20; },
                         &last))
        << last.state << ": " << last.reason << "\n" << JobEvents(*client_, name);
    if (last.workers.size() != 4) {
      ADD_FAILURE() << "workers: " << last.workers.size();
      return "";
    }
    const std::string victim = "node " + last.workers[0].node;
    const pid_t pid = cluster_->pids[victim];
    EXPECT_GT(pid, 0) << victim;
    const int64_t signalled_ms = UnixMs();
    EXPECT_EQ(kill(pid, signal), 0);
    const auto failed_at = Clock::now();
    EXPECT_TRUE(AwaitJob(*client_, name, 30s, [](const auto& s) { return s.attempt >= 2; }, &last))
        << JobEvents(*client_, name);
    const auto replaced = Clock::now() - failed_at;
    EXPECT_TRUE(AwaitJob(*client_, name, 30s, [](const auto& s) { return s.state == training::kJobRunning; }, &last))
        << JobEvents(*client_, name);
    const auto running = Clock::now() - failed_at;
    const std::string events = ExpectSucceeds(name, &last);
    if (signal == SIGSTOP) kill(pid, SIGCONT);
    // One fault counts once. A restart placed on a node whose agent the supervisor has seen lost
    // is refused and asked for again (recovery.h, LostNodes); one placed there before the loss was
    // seen (a survivor's Gloo error came first) fails when it is, and that failure of an attempt
    // that never trained is taken as the same fault ("seen again: not counted").
    EXPECT_EQ(last.infra_failures, 1u) << events;
    EXPECT_EQ(last.user_failures, 0u) << events;
    EXPECT_NE(events.find("resuming from step"), std::string::npos) << events;
    for (int r = 0; r < 4; ++r) EXPECT_EQ(Committed(name, 200, r), reference) << "rank " << r << "\n" << events;
    EXPECT_LT(replaced, 5s);
    // Recovery (bench/collectives' figure): the signal to the first step the next attempt
    // completed, and from the failure's detection (the supervisor's "attempt N failed" event).
    const std::string first = ReadFile(progress + "/first-step-attempt-" + std::to_string(last.attempt));
    const int64_t first_step_ms = first.empty() ? 0 : std::stoll(first);
    const int64_t detected_ms = FailureDetectedMs(events);
    EXPECT_GT(first_step_ms, 0) << "no first step of attempt " << last.attempt;
    std::printf("%s of %s: failure detected after %lld ms; next attempt placed after %lld ms, its 4 workers "
                "running after %lld ms, its first step completed after %lld ms (%lld ms after the detection)\n",
                signal == SIGKILL ? "kill -9" : "SIGSTOP", victim.c_str(),
                static_cast<long long>(detected_ms - signalled_ms),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(replaced).count()),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(running).count()),
                static_cast<long long>(first_step_ms - signalled_ms), static_cast<long long>(first_step_ms - detected_ms));
    PrintRecoveryBreakdown(events, last.attempt);
    return events;
  }

  // The supervisor's timelines (actors/training/recovery.h) of the fresh start (attempt 1, the
  // same run's baseline) and of attempt `attempt`'s recovery, side by side, from their events
  // ("started in 41.2 ms ...: placed +1.0, ..." and "recovered in ...").
  static void PrintRecoveryBreakdown(const std::string& events, uint64_t attempt) {
    std::string fresh;
    std::string recovered;
    for (const auto& e : nlohmann::json::parse(events)) {
      const std::string message = e.at("message").get<std::string>();
      const uint64_t a = e.at("attempt").get<uint64_t>();
      if (a == 1 && message.rfind("started in ", 0) == 0) fresh = message;
      if (a == attempt && message.rfind("recovered in ", 0) == 0) recovered = message;
    }
    EXPECT_FALSE(fresh.empty()) << "no timeline of attempt 1\n" << events;
    EXPECT_FALSE(recovered.empty()) << "no recovery timeline of attempt " << attempt << "\n" << events;
    // "NAME +MS" items after the colon, and the total after "in ".
    auto parse = [](const std::string& line) {
      std::map<std::string, std::string> out;
      if (line.empty()) return out;
      out["total"] = line.substr(line.find(" in ") + 4, line.find(" ms") - line.find(" in ") - 4);
      std::stringstream items(line.substr(line.find(':') + 1));
      std::string item;
      while (std::getline(items, item, ',')) {
        const size_t plus = item.rfind(" +");
        if (plus == std::string::npos) continue;
        std::string value = item.substr(plus + 2);
        if (const size_t space = value.find(' '); space != std::string::npos) value.resize(space);
        out[item.substr(1, plus - 1)] = value;
      }
      return out;
    };
    const auto f = parse(fresh);
    const auto r = parse(recovered);
    std::printf("%-12s %14s %14s\n", "phase (ms)", "fresh start", "recovery");
    for (const char* phase : {"decided", "placed", "resumed", "spawned", "formed", "first step", "total"}) {
      auto cell = [&](const std::map<std::string, std::string>& m) { return m.count(phase) ? m.at(phase) : "-"; };
      std::printf("%-12s %14s %14s\n", phase, cell(f).c_str(), cell(r).c_str());
    }
  }

  // 1000 steps of 10 ms, checkpointed every 50: a group that trains for 10 s at least, long past a
  // head's restart.
  inline static const std::map<std::string, std::string> kLongRun = {
      {"STEPS", "1000"}, {"STEP_MS", "10"}, {"CHECKPOINT_EVERY", "50"}};

  // Submits `spec` and waits (60 s at most) until it runs with step 50 committed. The weights of
  // its uninterrupted run (trained without the pause per step, which changes no weight).
  std::string SubmitAndAwaitStep50(const training::JobSpec& spec, training::JobStatus* last) {
    training::JobSpec unpaced = spec;
    unpaced.entry.env.erase("STEP_MS");
    const std::string reference = Reference(unpaced);
    EXPECT_TRUE(client_->SubmitJob(spec, 10s).ok());
    EXPECT_TRUE(AwaitJob(*client_, spec.name, 60s,
                         [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 50; },
                         last))
        << last->state << ": " << last->reason << "\n" << JobEvents(*client_, spec.name);
    return reference;
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
  std::string dir_;  // the cluster's directory (its file, data dirs, the test's own files)
  bool node_a_sends_checkpoints_ = false;
};

// Node a has `checkpoints: send` (no shared storage with the head); node b shares the head's.
class ActorWorkerJobsWithoutSharedStorage : public ActorWorkerJobs {
 protected:
  void SetUp() override {
    node_a_sends_checkpoints_ = true;
    ActorWorkerJobs::SetUp();
  }
};

// Node a has `checkpoints: send` and truly does not see the head's checkpoint directories: its
// agent runs in a mount namespace of its own where `<head data_dir>/checkpoints` is an empty
// tmpfs (`unshare -m`), as on a host without the head's disks. Head and nodes are started one by
// one (not `troupe up`) so that node a's alone can be started that way. Skips, with the reason,
// where a mount namespace cannot be made (not root, no CAP_SYS_ADMIN, no `unshare`).
class ActorWorkerJobsOnANodeThatCannotSeeTheCheckpoints : public ActorWorkerJobs {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    if (testing::RunToExit({"unshare", "-m", "--", "sh", "-c", "mount -t tmpfs troupe-probe /mnt"}) != 0) {
      skip_ = "cannot make a mount namespace here (needs root with CAP_SYS_ADMIN and util-linux's unshare): "
              "`unshare -m sh -c 'mount -t tmpfs ...'` failed. It runs where those exist: in CI, where .ci/run "
              "runs as root, or by hand with `sudo ctest -R ActorWorkerJobsOnANodeThatCannotSeeTheCheckpoints`";
      return;
    }
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-hidden-ckpt-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    std::string yaml = TwoNodeClusterYaml("hiddenckpt");
    for (size_t at = yaml.find("cpus: 2"); at != std::string::npos; at = yaml.find("cpus: 2", at)) yaml.replace(at, 7, "cpus: 4");
    yaml.replace(yaml.find("data_dir: node-a\n"), 17, "data_dir: node-a\n    checkpoints: send\n");
    const std::string config = dir_ + "/cluster.yaml";
    std::ofstream(config) << yaml;
    const std::string hidden = dir_ + "/head/checkpoints";
    std::filesystem::create_directories(hidden);
    head_ = testing::StartUntilReady({TROUPE_BIN, "head", "-c", config}, "READY ");
    ASSERT_TRUE(head_);
    node_b_ = testing::StartUntilReady({TROUPE_BIN, "node", "--name", "b", "-c", config}, "JOINED ");
    node_a_ = testing::StartUntilReady(
        {"unshare", "-m", "--", "sh", "-c",
         "mount -t tmpfs -o size=1m troupe-hidden \"$0\" && exec \"$1\" node --name a -c \"$2\"", hidden,
         TROUPE_BIN, config},
        "JOINED ");
    ASSERT_TRUE(node_a_ && node_b_);
    auto loaded = cluster::LoadClusterConfig(config);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto client = cluster::Client::Connect(*loaded, "", 5s);
    ASSERT_TRUE(client.ok()) << client.status();
    own_client_ = std::move(*client);
    client_ = own_client_.get();
  }

  void TearDown() override {
    own_client_.reset();
    for (auto* p : {&node_a_, &node_b_, &head_}) {
      if (*p) (*p)->Signal(SIGTERM);
    }
    for (auto* p : {&node_a_, &node_b_, &head_}) {
      if (*p) (void)(*p)->Wait(30s);
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string skip_;
  std::unique_ptr<ChildProcess> head_, node_a_, node_b_;
  std::unique_ptr<cluster::Client> own_client_;
};

TEST_F(ActorWorkerJobs, AnActorWorkerTrainsToItsEndAndItsCommittedWeightsAreTheReferences) {
  // A type this troupe does not have is refused at submit, naming the known ones.
  training::JobSpec unknown = Linear("linear-unknown");
  unknown.entry.actor = "no-such-trainer";
  auto refused = client_->SubmitJob(unknown, 10s);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("no actor worker type 'no-such-trainer'"), std::string::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find("known: example-linear"), std::string::npos) << refused.status();
  training::JobStatus last;
  const std::string events = RunToTheReference(Linear("linear-plain"), 1, &last);
  EXPECT_EQ(last.checkpoint_step, 40) << events;
}

TEST_F(ActorWorkerJobs, AnExceptionInTheWorkerRestartsItFromTheLastCheckpointAndEndsWithTheSameWeights) {
  training::JobStatus last;
  const std::string events =
      RunToTheReference(Linear("linear-throw", {{"THROW_AT_STEP", "25"}, {"THROW_ATTEMPT", "1"}}), 2, &last);
  EXPECT_EQ(last.user_failures, 1u) << events;
  EXPECT_NE(events.find("rank 0 threw: injected failure at step 25"), std::string::npos) << events;
  // The restarted worker's log, read as `troupe job logs` reads it (through its node agent). Its
  // backend: `auto` resolved by the supervisor for the whole group (no GPU slice: gloo).
  ASSERT_EQ(last.workers.size(), 1u) << events;
  auto log = client_->ReadWorkerLog(last.workers[0].node,
                                    training::ReadWorkerLog{"linear-throw", last.attempt, 0, 0, 64 * 1024}, 5s);
  ASSERT_TRUE(log.ok()) << log.status();
  for (const char* line : {"troupe: rank 0 of 1, attempt 2: actor worker 'example-linear' started (backend gloo), resuming from step ",
                           "example-linear: resumed at step ", "example-linear: step 40 of 40: checkpoint saved\n",
                           "troupe: rank 0 finished\n"}) {
    EXPECT_NE(log->data.find(line), std::string::npos) << line << " not in\n" << log->data;
  }
}

TEST_F(ActorWorkerJobs, ANodeOfFourWorkersKilledWithMinus9IsSeenByTheMonitorsAndTheJobEndsWithTheSameWeights) {
  FailNode("linear-kill", SIGKILL);
}

TEST_F(ActorWorkerJobs, ANodeOfFourWorkersStoppedWithSigstopIsLostAndTheJobEndsWithTheSameWeights) {
  FailNode("linear-stop", SIGSTOP);
}

// Four workers over the two nodes form their group through the attempt's rendezvous store on the
// head and average their gradients with Gloo's allreduce; the result is the one-rank reference's.
TEST_F(ActorWorkerJobs, FourWorkersOnTwoNodesAllreduceThroughGlooAndEndWithTheOneRankWeights) {
  training::JobStatus last;
  RunToTheReference(Linear("linear-four", {}, 4), 1, &last);
}

TEST_F(ActorWorkerJobs, AnExceptionInOneOfFourWorkersRestartsTheGroupAndItEndsWithTheSameWeights) {
  training::JobStatus last;
  const std::string events = RunToTheReference(
      Linear("linear-four-throw", {{"THROW_AT_STEP", "25"}, {"THROW_RANK", "2"}, {"THROW_ATTEMPT", "1"}}, 4), 2, &last);
  EXPECT_EQ(last.user_failures, 1u) << events;
  EXPECT_NE(events.find("rank 2 threw: injected failure at step 25"), std::string::npos) << events;
}

// The head killed with -9 while 4 workers (2 a node) train: they keep training (their Gloo mesh is
// formed; the attempt's rendezvous store went with the head), their nodes report them when they
// join the restarted head, and its supervisor takes them back (docs/jobs.md, "When the head
// restarts"): the same attempt goes on, no failure is counted, the steps they saved while the head
// was down are committed, and every rank ends with the one-rank reference's weights, to the bit.
TEST_F(ActorWorkerJobs, FourWorkersTrainThroughAHeadKilledWithMinus9AndTheRestartedHeadTakesThemBack) {
  training::JobStatus last;
  const training::JobSpec spec = Linear("linear-headkill", kLongRun, 4);
  const std::string reference = SubmitAndAwaitStep50(spec, &last);
  ASSERT_FALSE(HasFailure());
  const pid_t head = cluster_->pids["head"];
  ASSERT_GT(head, 0);
  const int64_t killed_ms = UnixMs();
  ASSERT_EQ(kill(head, SIGKILL), 0);
  // `troupe up` starts the head again; the nodes rejoin with their workers, which never stopped.
  const std::string events = ExpectSucceeds(spec.name, &last);
  for (const auto& e : nlohmann::json::parse(events)) {
    if (e.at("message").get<std::string>().rfind("took back ", 0) != 0) continue;
    std::printf("the restarted head took the 4 workers back %lld ms after the kill -9 of the head\n",
                static_cast<long long>(e.at("unix_ms").get<int64_t>() - killed_ms));
  }
  EXPECT_EQ(last.attempt, 1u) << "the group was restarted, not taken back\n" << events;
  EXPECT_EQ(last.infra_failures, 0u) << events;
  EXPECT_EQ(last.user_failures, 0u) << events;
  EXPECT_NE(events.find("took back 4 running workers of attempt 1 after the head restarted"), std::string::npos)
      << events;
  EXPECT_EQ(last.checkpoint_step, 1000) << "the steps after the head's restart were not committed\n" << events;
  for (int r = 0; r < 4; ++r) EXPECT_EQ(Committed(spec.name, 1000, r), reference) << "rank " << r << "\n" << events;
}

// The head stopped (SIGSTOP) past the bound its workers wait for a restarted head to take them
// back: lost after the 1 s failure timeout, each worker trains on for twice that plus a second,
// then stops rather than train on unsupervised, and says why in its log. Once the head continues,
// the job restarts its group from the newest committed checkpoint and ends with the reference's
// weights.
TEST_F(ActorWorkerJobs, WorkersThatNoHeadTakesBackWithinTheBoundStopAndSayWhy) {
  training::JobStatus last;
  const training::JobSpec spec = Linear("linear-headstop", kLongRun, 4);
  const std::string reference = SubmitAndAwaitStep50(spec, &last);
  ASSERT_FALSE(HasFailure());
  const pid_t head = cluster_->pids["head"];
  ASSERT_GT(head, 0);
  ASSERT_EQ(kill(head, SIGSTOP), 0);
  // Each rank's log of attempt 1, on whichever node it ran.
  std::vector<std::string> dirs;
  for (const char* node : {"node-a", "node-b"}) dirs.push_back(cluster_->dir + "/" + node + "/jobs/" + spec.name + "/attempt-1");
  auto log = [&](int rank) {
    std::string text;
    for (const auto& dir : dirs) text += ReadFile(dir + "/rank-" + std::to_string(rank) + ".log");
    return text;
  };
  // Every rank ended, and the first whose bound passed says why (the others may have failed
  // first, their group lost with it).
  const std::string said = "stops: its job supervisor was lost and no restarted head took it back within 3000 ms";
  auto stopped = [&] {
    bool one_said = false;
    for (int r = 0; r < 4; ++r) {
      const std::string text = log(r);
      if (text.find("troupe: rank " + std::to_string(r) + " failed: ") == std::string::npos) return false;
      one_said = one_said || text.find(said) != std::string::npos;
    }
    return one_said;
  };
  const auto took = testing::WaitForFileCondition(dirs, 30s, stopped, IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE);
  ASSERT_EQ(kill(head, SIGCONT), 0);
  EXPECT_GE(took.count(), 0) << "rank 0's log:\n" << log(0) << "\nrank 1's log:\n" << log(1);
  std::printf("the 4 workers of the stopped head stopped %lld ms after its SIGSTOP (failure timeout 1 s, bound 3 s)\n",
              static_cast<long long>(took.count()));
  // This process's client saw the head lost too: a new one follows the continued head.
  auto config = cluster::LoadClusterConfig(cluster_->config);
  ASSERT_TRUE(config.ok()) << config.status();
  auto client = cluster::Client::Connect(*config, "", 5s);
  ASSERT_TRUE(client.ok()) << client.status();
  client_ = client->get();
  const std::string events = ExpectSucceeds(spec.name, &last);
  EXPECT_GE(last.attempt, 2u) << events;
  for (int r = 0; r < 4; ++r) EXPECT_EQ(Committed(spec.name, 1000, r), reference) << "rank " << r << "\n" << events;
}

// Four workers spread over the two nodes: the two ranks on node a send every shard to the head
// over the bulk path (runtime/bulk.h), the two on node b write the shared directory; the head
// commits what it finds in staging, and every rank's committed weights are the reference's (the
// shared-root run's) to the byte, as is the committed manifest's list of files and sizes.
TEST_F(ActorWorkerJobsWithoutSharedStorage, ShardsSentFromANodeWithoutSharedStorageCommitByteIdenticalWeights) {
  training::JobStatus last;
  const training::JobSpec spec = Linear("linear-send", {}, 4);
  const std::string events = RunToTheReference(spec, 1, &last);
  EXPECT_EQ(last.checkpoint_step, 40) << events;
  std::set<std::string> nodes;
  for (const auto& w : last.workers) nodes.insert(w.node);
  EXPECT_EQ(nodes, (std::set<std::string>{"a", "b"})) << "the job must have ranks on both nodes\n" << events;
  // The last committed step holds each rank's shard and nothing else (the sink leaves no stray files).
  const auto manifest =
      nlohmann::json::parse(ReadFile(dir_ + "/head/checkpoints/linear-send/step-40/manifest.json"));
  ASSERT_EQ(manifest.at("ranks").size(), 4u) << manifest.dump();
  for (const auto& rank : manifest.at("ranks")) {
    ASSERT_EQ(rank.at("files").size(), 1u) << rank.dump();
    EXPECT_EQ(rank.at("files")[0].at("path"), "weights.bin") << rank.dump();
    EXPECT_EQ(rank.at("files")[0].at("size"), 9 * sizeof(double)) << rank.dump();
  }
}

// A group of four whose rank 2 throws at step 25 of attempt 1 restarts from the newest committed
// checkpoint (step 20, or 10; RunToTheReference). The two ranks on node a cannot open the
// committed files by their paths: they fetch them from the head over the bulk path
// (ShardReader, docs/checkpoints.md "Nodes without shared storage"), verified against the
// manifest, and every rank ends with the one-rank reference's weights, to the bit.
TEST_F(ActorWorkerJobsOnANodeThatCannotSeeTheCheckpoints, ItsWorkersResumeOverTheBulkPathWithBitIdenticalWeights) {
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  training::JobStatus last;
  const training::JobSpec spec =
      Linear("linear-hidden", {{"THROW_AT_STEP", "25"}, {"THROW_RANK", "2"}, {"THROW_ATTEMPT", "1"}}, 4);
  const std::string events = RunToTheReference(spec, 2, &last);
  EXPECT_EQ(last.user_failures, 1u) << events;
  EXPECT_EQ(last.checkpoint_step, 40) << events;
  // The restarted attempt's ranks on node a resumed (their logs, read through node a's agent).
  uint32_t resumed_on_a = 0;
  for (const auto& w : last.workers) {
    if (w.node != "a") continue;
    auto log = client_->ReadWorkerLog("a", training::ReadWorkerLog{spec.name, last.attempt, w.rank, 0, 64 * 1024}, 5s);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_NE(log->data.find("example-linear: resumed at step "), std::string::npos) << "rank " << w.rank << ":\n"
                                                                                     << log->data;
    ++resumed_on_a;
  }
  EXPECT_EQ(resumed_on_a, 2u) << "the restarted attempt must have two ranks on node a\n" << events;
  // Node a's own view (its mount namespace, through /proc/PID/root) has none of the committed files.
  const std::string manifest = dir_ + "/head/checkpoints/" + spec.name + "/step-40/manifest.json";
  EXPECT_TRUE(std::filesystem::exists(manifest)) << manifest;
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(node_a_->pid()) + "/root" + manifest))
      << "node a sees " << manifest;
}

}  // namespace
}  // namespace troupe
