// Training jobs on a real local cluster (`troupe up`, two CPU nodes): real worker processes that
// follow troupe's checkpoint protocol (a small shell trainer), killed with -9 and stopped with
// SIGSTOP; the job resumes from its newest committed checkpoint and ends with the result of an
// uninterrupted run. The PyTorch example runs in tests/integration/jobs_torch_test.cc.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The trainer: step s adds s*(RANK+1) to its sum; every 2 steps it saves the sum by the protocol
// (files, then the rank's marker); on resume it loads the sum of the committed step. Its final sum
// is 1+2+...+N times (RANK+1) whatever failures it went through, if and only if it resumed from
// a committed checkpoint of its own rank and lost or repeated no step. It paces itself with a
// short sleep per step (STEP_SLEEP) so that a test can hit it mid-run, and while $OUT_DIR/pause
// exists it waits after its step (writing the step to $OUT_DIR/paused-RANK), still printing.
constexpr const char* kTrainer = R"(#!/bin/sh
set -e
total=$1
step=${TROUPE_RESUME_STEP:-0}
sum=0
if [ -n "$TROUPE_RESUME_DIR" ]; then read sum < "$TROUPE_RESUME_DIR/rank-$RANK/sum"; echo "resumed from step $step"; fi
while [ "$step" -lt "$total" ]; do
  step=$((step + 1))
  sum=$((sum + step * (RANK + 1)))
  echo "rank $RANK step $step sum $sum"
  if [ $((step % 2)) -eq 0 ]; then
    d="$TROUPE_CHECKPOINT_DIR/step-$step"
    mkdir -p "$d/rank-$RANK"
    echo "$sum" > "$d/rank-$RANK/sum"
    : > "$d/rank-$RANK.done"
  fi
  sleep "${STEP_SLEEP:-0}"
  while [ -f "$OUT_DIR/pause" ]; do echo "$step" > "$OUT_DIR/paused-$RANK"; echo paused; sleep 0.05; done
  rm -f "$OUT_DIR/paused-$RANK"
done
echo "$sum" > "$OUT_DIR/final-$RANK"
)";

int64_t Expected(int steps, int rank) { return int64_t{steps} * (steps + 1) / 2 * (rank + 1); }

class Jobs : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    cluster_ = LocalCluster::Start("troupe-jobs", "jobs",
                                   "cluster:\n  name: jobs\n  token: jobs-test-token\n  log_level: warn\n"
                                   "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
                                   "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                                   "nodes:\n"
                                   "  - name: a\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-a\n"
                                   "  - name: b\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-b\n");
    ASSERT_NE(cluster_, nullptr);
    dir_ = cluster_->dir;
    config_ = cluster_->config;
    client_ = cluster_->client.get();
    std::ofstream(dir_ + "/trainer.sh") << kTrainer;
    std::filesystem::create_directories(dir_ + "/out");
  }

  // A job of `workers` CPU workers, one per node, running the trainer for `steps` steps.
  training::JobSpec Trainer(const std::string& name, int workers, int steps, const std::string& step_sleep) {
    training::JobSpec spec;
    spec.name = name;
    spec.workers = workers;
    spec.resources.cpus = 1;
    spec.placement = "spread";
    spec.entry.command = {"sh", dir_ + "/trainer.sh", std::to_string(steps)};
    spec.entry.env = {{"OUT_DIR", dir_ + "/out"}, {"STEP_SLEEP", step_sleep}};
    spec.entry.working_dir = dir_;
    spec.restart.backoff_initial = 100ms;
    spec.restart.backoff_max = 500ms;
    spec.step_watchdog = 30s;
    return spec;
  }

  StatusOr<training::JobStatus> Show(const std::string& name) {
    ASSIGN_OR_RETURN(std::string body, client_->JobCommand("show", name, "", 5s));
    return training::JobStatusFromJson(nlohmann::json::parse(body).at("status").dump());
  }

  // Polls the job until `done` holds (true) or `timeout` passes (false); `last` gets the status.
  bool AwaitJob(const std::string& name, std::chrono::milliseconds timeout,
                const std::function<bool(const training::JobStatus&)>& done, training::JobStatus* last) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto st = Show(name);
      if (st.ok()) {
        *last = *st;
        if (done(*st)) return true;
      }
    }
    return false;
  }

  std::string Events(const std::string& name) {
    auto body = client_->JobCommand("events", name, "", 5s);
    return body.ok() ? *body : body.status().ToString();
  }

  int64_t Final(int rank) {
    std::ifstream in(dir_ + "/out/final-" + std::to_string(rank));
    int64_t v = -1;
    in >> v;
    return v;
  }

  static bool Gone(int64_t pid) { return kill(static_cast<pid_t>(pid), 0) != 0; }

  std::unique_ptr<LocalCluster> cluster_;
  std::string dir_, config_;
  cluster::Client* client_ = nullptr;
};

TEST_F(Jobs, AJobOfTwoWorkersRunsToItsEndAndCommitsItsCheckpoints) {
  auto st = client_->SubmitJob(Trainer("plain", 2, 10, "0"), 10s);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->state, training::kJobPending);
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("plain", 60s, [](const auto& s) { return training::IsFinal(s.state); }, &last))
      << last.state << ": " << last.reason;
  EXPECT_EQ(last.state, training::kJobSucceeded) << last.reason << "\n" << Events("plain");
  EXPECT_EQ(last.attempt, 1u);
  EXPECT_EQ(last.checkpoint_step, 10);
  EXPECT_EQ(Final(0), Expected(10, 0));
  EXPECT_EQ(Final(1), Expected(10, 1));
  const std::string events = Events("plain");
  EXPECT_NE(events.find("checkpoint committed: step 10"), std::string::npos) << events;
  // Retention (keep 3): steps 6, 8 and 10 are kept.
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/head/checkpoints/plain/step-4"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/head/checkpoints/plain/step-10/manifest.json"));
}

TEST_F(Jobs, AWorkerKilledWithMinus9RestartsTheGroupFromTheNewestCheckpoint) {
  ASSERT_TRUE(client_->SubmitJob(Trainer("kill9", 2, 60, "0.05"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("kill9", 60s, [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 10; },
                       &last))
      << last.state << ": " << last.reason;
  ASSERT_EQ(last.workers.size(), 2u);
  const int64_t victim = last.workers[1].pid;
  ASSERT_EQ(kill(static_cast<pid_t>(victim), SIGKILL), 0);
  ASSERT_TRUE(AwaitJob("kill9", 90s, [](const auto& s) { return training::IsFinal(s.state); }, &last))
      << last.state << ": " << last.reason;
  const std::string events = Events("kill9");
  EXPECT_EQ(last.state, training::kJobSucceeded) << last.reason << "\n" << events;
  EXPECT_EQ(last.attempt, 2u) << events;
  EXPECT_EQ(last.infra_failures, 1u) << events;
  EXPECT_NE(events.find("resuming from step"), std::string::npos) << events;
  // Both ranks end with the sums of an uninterrupted run: resumed from their own committed state,
  // no step lost or counted twice.
  EXPECT_EQ(Final(0), Expected(60, 0));
  EXPECT_EQ(Final(1), Expected(60, 1));
}

TEST_F(Jobs, AStoppedWorkerIsHungAndTheGroupRestarts) {
  ASSERT_TRUE(client_->SubmitJob(Trainer("sigstop", 2, 40, "0.05"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("sigstop", 60s, [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 4; },
                       &last))
      << last.state << ": " << last.reason;
  const int64_t victim = last.workers[0].pid;
  const auto stopped_at = Clock::now();
  ASSERT_EQ(kill(static_cast<pid_t>(victim), SIGSTOP), 0);
  ASSERT_TRUE(AwaitJob("sigstop", 30s, [](const auto& s) { return s.attempt >= 2; }, &last)) << Events("sigstop");
  const auto detected = Clock::now() - stopped_at;
  EXPECT_LT(detected, 10s);
  EXPECT_TRUE(Gone(victim));
  ASSERT_TRUE(AwaitJob("sigstop", 90s, [](const auto& s) { return training::IsFinal(s.state); }, &last));
  const std::string events = Events("sigstop");
  EXPECT_EQ(last.state, training::kJobSucceeded) << events;
  EXPECT_NE(events.find("hung: stopped"), std::string::npos) << events;
  EXPECT_EQ(Final(0), Expected(40, 0));
  EXPECT_EQ(Final(1), Expected(40, 1));
}

TEST_F(Jobs, PastItsRestartPolicyAJobFailsWithTheReason) {
  training::JobSpec spec = Trainer("exit3", 2, 1, "0");
  spec.entry.command = {"sh", "-c", "echo failing; exit 3"};
  spec.restart.max_user_failures = 1;
  ASSERT_TRUE(client_->SubmitJob(spec, 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("exit3", 60s, [](const auto& s) { return training::IsFinal(s.state); }, &last));
  EXPECT_EQ(last.state, training::kJobFailed);
  EXPECT_NE(last.reason.find("restart policy exceeded: 2 worker failures (max_user_failures 1)"), std::string::npos)
      << last.reason;
  EXPECT_NE(last.reason.find("exited with code 3"), std::string::npos) << last.reason;
  EXPECT_EQ(last.attempt, 2u);
}

TEST_F(Jobs, AJobTheClusterCanNeverHoldIsRefusedAndNothingIsKept) {
  training::JobSpec spec = Trainer("toobig", 2, 1, "0");
  spec.resources.cpus = 64;
  auto st = client_->SubmitJob(spec, 10s);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), StatusCode::kResourceExhausted) << st.status();
  auto list = client_->JobCommand("list", "", "", 5s);
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(*list, "[]");
  auto again = client_->SubmitJob(Trainer("toobig", 2, 1, "0"), 10s);
  EXPECT_TRUE(again.ok()) << again.status();
}

TEST_F(Jobs, StopKillsEveryWorkerAndDeleteForgetsTheJob) {
  ASSERT_TRUE(client_->SubmitJob(Trainer("stopme", 2, 100000, "0.05"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("stopme", 60s, [](const auto& s) { return s.state == training::kJobRunning; }, &last));
  const auto workers = last.workers;
  auto deleted_early = client_->JobCommand("delete", "stopme", "", 5s);
  EXPECT_EQ(deleted_early.status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(client_->JobCommand("stop", "stopme", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("stopme", 30s, [](const auto& s) { return training::IsFinal(s.state); }, &last));
  EXPECT_EQ(last.state, training::kJobStopped);
  const auto deadline = Clock::now() + 10s;
  for (const auto& w : workers) {
    while (!Gone(w.pid) && Clock::now() < deadline) {
    }
    EXPECT_TRUE(Gone(w.pid)) << "rank " << w.rank << " pid " << w.pid << " still runs";
  }
  ASSERT_TRUE(client_->JobCommand("delete", "stopme", "", 5s).ok());
  EXPECT_EQ(Show("stopme").status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/head/checkpoints/stopme"));
}

// Whether process `pid` has the file `path` open (one of its /proc/<pid>/fd links).
bool HasOpen(int pid, const std::string& path) {
  std::error_code ec;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code link_ec;
    if (std::filesystem::read_symlink(fd.path(), link_ec) == path) return true;
  }
  return false;
}

TEST_F(Jobs, AStopDoesNotWaitForACommitInFlightWhichStillCountsForTheResumedJob) {
  // Each rank saves step 2 as a sparse 1 GiB file (no disk space, but every byte is read and
  // hashed: seconds of commit), marks it done and runs on, printing.
  training::JobSpec spec = Trainer("bigsave", 2, 0, "0");
  spec.entry.command = {"sh", "-c",
                        "d=$TROUPE_CHECKPOINT_DIR/step-2; mkdir -p $d/rank-$RANK; truncate -s 1G $d/rank-$RANK/model.bin; "
                        ": > $d/rank-$RANK.done; while true; do echo alive; sleep 0.1; done"};
  ASSERT_TRUE(client_->SubmitJob(spec, 10s).ok());
  const int head = cluster_->pids.at("head");
  const std::string shard =
      std::filesystem::weakly_canonical(dir_ + "/head/checkpoints/bigsave/attempt-1/step-2/rank-0/model.bin").string();
  // The commit is in flight once the head has rank 0's shard open.
  const auto deadline = Clock::now() + 60s;
  while (!HasOpen(head, shard) && Clock::now() < deadline) std::this_thread::yield();
  ASSERT_TRUE(HasOpen(head, shard)) << "the head never read " << shard << "\n" << Events("bigsave");

  const auto stop_sent = Clock::now();
  ASSERT_TRUE(client_->JobCommand("stop", "bigsave", "", 5s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("bigsave", 10s, [](const auto& s) { return s.state == training::kJobStopped; }, &last))
      << last.state;
  const auto stop_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stop_sent).count();
  EXPECT_TRUE(HasOpen(head, shard)) << "the commit had ended by the time the job showed stopped (" << stop_ms
                                    << " ms after the stop): the stop waited for it\n"
                                    << Events("bigsave");
  std::fprintf(stderr, "stop -> stopped with a commit of 2 x 1 GiB in flight: %lld ms\n",
               static_cast<long long>(stop_ms));

  // Resumed at once, the new attempt resumes from the step the old supervisor's commit records
  // (after the job was stopped), and that late record does not turn the resumed job back to stopped.
  ASSERT_TRUE(client_->JobCommand("resume", "bigsave", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("bigsave", 120s, [](const auto& s) { return s.state == training::kJobRunning; }, &last))
      << last.state << ": " << last.reason << "\n"
      << Events("bigsave");
  // The old supervisor's event comes once its committer has also applied the retention (which
  // waits for the new one's verification of step 2).
  const std::string committed = "checkpoint committed: step 2, 2147483648 bytes (after the job was stopped)";
  std::string events = Events("bigsave");
  const auto event_deadline = Clock::now() + 60s;
  while (events.find(committed) == std::string::npos && Clock::now() < event_deadline) events = Events("bigsave");
  EXPECT_NE(events.find(committed), std::string::npos) << events;
  EXPECT_NE(events.find("resuming from step 2"), std::string::npos) << events;
  auto now = Show("bigsave");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->state, training::kJobRunning);
  EXPECT_EQ(now->checkpoint_step, 2);
  ASSERT_TRUE(client_->JobCommand("stop", "bigsave", "", 5s).ok());
}

TEST_F(Jobs, TheCliSubmitsWaitsAndShowsTheLogs) {
  std::ofstream(dir_ + "/job.yaml") << "name: cli-job\nworkers: 2\nplacement: spread\n"
                                       "entry:\n  command: [sh, trainer.sh, \"4\"]\n"
                                       "  env: {OUT_DIR: out}\n  working_dir: .\n";
  auto submit = ChildProcess::Spawn({TROUPE_BIN, "job", "submit", "-c", config_, dir_ + "/job.yaml", "--wait"});
  ASSERT_TRUE(submit.ok());
  auto done = (*submit)->ReadLineWithPrefix("job cli-job: succeeded", 60s);
  EXPECT_TRUE(done.ok()) << done.status();
  auto code = (*submit)->Wait(10s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  auto logs = ChildProcess::Spawn({TROUPE_BIN, "job", "logs", "-c", config_, "cli-job", "--worker", "1"});
  ASSERT_TRUE(logs.ok());
  auto line = (*logs)->ReadLineWithPrefix("rank 1 step 4 sum", 20s);
  EXPECT_TRUE(line.ok()) << line.status();
  auto bad = ChildProcess::Spawn({TROUPE_BIN, "job", "submit", "-c", config_, dir_ + "/nope.yaml"}, {}, true);
  ASSERT_TRUE(bad.ok());
  auto err = (*bad)->ReadLine(20s);
  EXPECT_TRUE(err.ok() && err->find("nope.yaml") != std::string::npos) << (err.ok() ? *err : err.status().ToString());
  auto bad_code = (*bad)->Wait(10s);
  ASSERT_TRUE(bad_code.ok());
  EXPECT_NE(*bad_code, 0);
}

TEST_F(Jobs, ASucceededJobRegistersItsFinalCheckpointAsTheNextModelVersion) {
  training::JobSpec spec = Trainer("modeljob", 2, 6, "0");
  spec.output_model = "sums";
  ASSERT_TRUE(client_->SubmitJob(spec, 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("modeljob", 60s, [](const auto& s) { return !s.model_version.empty(); }, &last))
      << last.state << ": " << last.reason << "\n" << Events("modeljob");
  EXPECT_EQ(last.model_version, "sums:1");
  auto models = client_->JobCommand("models", "sums", "", 5s);
  ASSERT_TRUE(models.ok()) << models.status();
  auto list = nlohmann::json::parse(*models);
  ASSERT_EQ(list.size(), 1u) << *models;
  EXPECT_EQ(list[0]["job"], "modeljob");
  EXPECT_EQ(list[0]["step"], 6);
  const std::string dir = list[0]["dir"];
  std::ifstream sum(dir + "/rank-1/sum");
  int64_t v = 0;
  sum >> v;
  EXPECT_EQ(v, Expected(6, 1));
  // Resubmitted, it runs again from scratch and becomes version 2; deleting the job keeps both.
  ASSERT_TRUE(client_->JobCommand("resubmit", "modeljob", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("modeljob", 60s, [](const auto& s) { return s.model_version == "sums:2"; }, &last))
      << last.state << ": " << last.reason << "\n" << Events("modeljob");
  EXPECT_EQ(last.attempt, 2u);
  ASSERT_TRUE(client_->JobCommand("delete", "modeljob", "", 5s).ok());
  models = client_->JobCommand("models", "", "", 5s);
  ASSERT_TRUE(models.ok());
  EXPECT_EQ(nlohmann::json::parse(*models).size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(dir + "/rank-1/sum"));
  EXPECT_EQ(client_->JobCommand("models", "nosuch", "", 5s).status().code(), StatusCode::kNotFound);
}

TEST_F(Jobs, AnUrgentJobStartsBeforeEveryWaitingNormalOne) {
  // Each job needs the whole cluster (2 workers of 2 CPUs on 2 nodes of 2 CPUs).
  auto whole = [this](const std::string& name, const std::string& priority) {
    training::JobSpec spec = Trainer(name, 2, 100000, "0.05");
    spec.resources.cpus = 2;
    spec.priority = priority;
    return spec;
  };
  ASSERT_TRUE(client_->SubmitJob(whole("hog", "normal"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("hog", 60s, [](const auto& s) { return s.state == training::kJobRunning; }, &last));
  ASSERT_TRUE(client_->SubmitJob(whole("normal", "normal"), 10s).ok());
  ASSERT_TRUE(client_->SubmitJob(whole("urgent", "urgent"), 10s).ok());
  auto normal = Show("normal");
  auto urgent = Show("urgent");
  ASSERT_TRUE(normal.ok() && urgent.ok());
  EXPECT_EQ(normal->state, training::kJobPending);
  EXPECT_NE(urgent->reason.find("queue position 1, urgent"), std::string::npos) << urgent->reason;
  EXPECT_NE(normal->reason.find("queue position 2, normal"), std::string::npos) << normal->reason;
  ASSERT_TRUE(client_->JobCommand("stop", "hog", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("urgent", 30s, [](const auto& s) { return s.state == training::kJobRunning; }, &last))
      << last.state << ": " << last.reason;
  normal = Show("normal");
  ASSERT_TRUE(normal.ok());
  EXPECT_EQ(normal->state, training::kJobPending) << "the normal job started before the urgent one";
  ASSERT_TRUE(client_->JobCommand("stop", "urgent", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("normal", 30s, [](const auto& s) { return s.state == training::kJobRunning; }, &last))
      << last.state << ": " << last.reason;
  ASSERT_TRUE(client_->JobCommand("stop", "normal", "", 5s).ok());
}

TEST_F(Jobs, ACorruptedCheckpointIsSkippedWithAnEventAndTheOneBeforeIsUsed) {
  ASSERT_TRUE(client_->SubmitJob(Trainer("corrupt", 2, 30, "0.02"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("corrupt", 60s, [](const auto& s) { return s.checkpoint_step >= 6; }, &last));
  // Both ranks wait after their step; the newest committed checkpoint is then the newest even step
  // both have passed.
  std::ofstream(dir_ + "/out/pause").close();
  auto paused_at = [this](int rank) {
    std::ifstream in(dir_ + "/out/paused-" + std::to_string(rank));
    int step = -1;
    in >> step;
    return step;
  };
  const auto deadline = Clock::now() + 30s;
  while ((paused_at(0) < 0 || paused_at(1) < 0) && Clock::now() < deadline) {
  }
  const int newest = std::min(paused_at(0), paused_at(1)) / 2 * 2;
  ASSERT_GE(newest, 6);
  ASSERT_TRUE(AwaitJob("corrupt", 30s, [newest](const auto& s) { return s.checkpoint_step == newest; }, &last))
      << "newest committed " << last.checkpoint_step << ", expected " << newest;
  {
    std::ofstream corrupt(dir_ + "/head/checkpoints/corrupt/step-" + std::to_string(newest) + "/rank-0/sum",
                          std::ios::app);
    corrupt << "garbage\n";
  }
  ASSERT_EQ(kill(static_cast<pid_t>(last.workers[1].pid), SIGKILL), 0);
  ASSERT_TRUE(AwaitJob("corrupt", 30s, [](const auto& s) { return s.attempt == 2 && s.state == training::kJobRunning; },
                       &last))
      << last.state << ": " << last.reason;
  std::filesystem::remove(dir_ + "/out/pause");
  ASSERT_TRUE(AwaitJob("corrupt", 60s, [](const auto& s) { return training::IsFinal(s.state); }, &last));
  const std::string events = Events("corrupt");
  EXPECT_EQ(last.state, training::kJobSucceeded) << events;
  EXPECT_NE(events.find("checkpoint skipped: "), std::string::npos) << events;
  EXPECT_NE(events.find("resuming from step " + std::to_string(newest - 2)), std::string::npos) << events;
  EXPECT_EQ(Final(0), Expected(30, 0));
  EXPECT_EQ(Final(1), Expected(30, 1));
}

TEST_F(Jobs, AJobKeepsTrainingThroughAHeadKilledWithMinus9AndTheNewHeadTakesItsWorkersBack) {
  ASSERT_TRUE(client_->SubmitJob(Trainer("headkill", 2, 60, "0.05"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("headkill", 60s, [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 6; },
                       &last));
  const auto workers = last.workers;
  const pid_t head = cluster_->pids["head"];
  ASSERT_GT(head, 0);
  ASSERT_EQ(kill(head, SIGKILL), 0);
  // `troupe up` starts the head again; the nodes rejoin with their workers, which never stopped.
  ASSERT_TRUE(AwaitJob("headkill", 60s, [](const auto& s) { return training::IsFinal(s.state); }, &last))
      << last.state << ": " << last.reason;
  const std::string events = Events("headkill");
  EXPECT_EQ(last.state, training::kJobSucceeded) << events;
  EXPECT_EQ(last.attempt, 1u) << "the job was restarted, not taken back\n" << events;
  EXPECT_EQ(last.infra_failures, 0u) << events;
  EXPECT_NE(events.find("took back 2 running workers of attempt 1"), std::string::npos) << events;
  EXPECT_EQ(Final(0), Expected(60, 0));
  EXPECT_EQ(Final(1), Expected(60, 1));
  EXPECT_EQ(last.checkpoint_step, 60) << "checkpoints after the head restart were not committed\n" << events;
}

TEST_F(Jobs, AStoppedJobResumesFromItsNewestCheckpoint) {
  ASSERT_TRUE(client_->SubmitJob(Trainer("resumable", 2, 30, "0.05"), 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("resumable", 60s, [](const auto& s) { return s.checkpoint_step >= 6; }, &last));
  EXPECT_EQ(client_->JobCommand("resume", "resumable", "", 5s).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(client_->JobCommand("stop", "resumable", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("resumable", 30s, [](const auto& s) { return s.state == training::kJobStopped; }, &last));
  const int64_t stopped_at = last.checkpoint_step;
  ASSERT_TRUE(client_->JobCommand("resume", "resumable", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("resumable", 60s, [](const auto& s) { return s.state == training::kJobSucceeded; }, &last))
      << last.state << ": " << last.reason;
  const std::string events = Events("resumable");
  EXPECT_EQ(last.attempt, 2u);
  EXPECT_NE(events.find("resuming from step " + std::to_string(stopped_at)), std::string::npos) << events;
  EXPECT_EQ(Final(0), Expected(30, 0));
  EXPECT_EQ(Final(1), Expected(30, 1));
}

TEST_F(Jobs, AJobWaitingWhenTheHeadRestartsWaitsOnForItsNodesAndRuns) {
  // The restarted head asks for the waiting job's placement before any node has rejoined: the
  // scheduler says no node could hold it; the job must wait, not fail.
  training::JobSpec hog = Trainer("hog2", 2, 100000, "0.05");
  hog.resources.cpus = 2;
  ASSERT_TRUE(client_->SubmitJob(hog, 10s).ok());
  training::JobStatus last;
  ASSERT_TRUE(AwaitJob("hog2", 60s, [](const auto& s) { return s.state == training::kJobRunning; }, &last));
  training::JobSpec waiting = Trainer("waiter", 2, 4, "0");
  waiting.resources.cpus = 2;
  ASSERT_TRUE(client_->SubmitJob(waiting, 10s).ok());
  ASSERT_EQ(kill(cluster_->pids["head"], SIGKILL), 0);
  ASSERT_TRUE(AwaitJob("hog2", 60s, [](const auto& s) { return s.reason.empty() && s.state == training::kJobRunning; },
                       &last))
      << last.state << ": " << last.reason << "\n" << Events("hog2");
  auto st = Show("waiter");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->state, training::kJobPending) << st->reason << "\n" << Events("waiter");
  ASSERT_TRUE(client_->JobCommand("stop", "hog2", "", 5s).ok());
  ASSERT_TRUE(AwaitJob("waiter", 60s, [](const auto& s) { return training::IsFinal(s.state); }, &last))
      << last.state << ": " << last.reason;
  EXPECT_EQ(last.state, training::kJobSucceeded) << last.reason << "\n" << Events("waiter");
}

// A cluster with simulated GPUs: a job's workers get their slice's GPU and limits.
TEST(JobsOnGpus, EachWorkerGetsItsSliceOfAGpu) {
  (void)InitLogging("warn");
  auto cluster = LocalCluster::Start("troupe-jobs-gpu", "jobsgpu",
                                     "cluster:\n  name: jobsgpu\n  token: jobs-gpu-token\n  log_level: warn\n"
                                     "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                                     "nodes:\n"
                                     "  - name: g\n    cpus: 4\n    memory: 8GiB\n"
                                     "    gpus:\n      simulated:\n        - memory: 16GiB\n        - memory: 16GiB\n"
                                     "    slice_memory: 4GiB\n");
  ASSERT_NE(cluster, nullptr);
  training::JobSpec spec;
  spec.name = "gpujob";
  spec.workers = 2;
  spec.resources.slices = 2;
  spec.resources.slice_memory_bytes = uint64_t{4} << 30;
  spec.placement = "spread";
  spec.entry.command = {"sh", "-c", "echo \"$CUDA_VISIBLE_DEVICES $TROUPE_SLICE_MEMORY_BYTES $TROUPE_GPU_SIMULATED\" > gpu-$RANK"};
  spec.entry.working_dir = cluster->dir;
  ASSERT_TRUE(cluster->client->SubmitJob(spec, 10s).ok());
  const auto deadline = Clock::now() + 60s;
  std::string state;
  while (Clock::now() < deadline) {
    auto body = cluster->client->JobCommand("show", "gpujob", "", 5s);
    if (!body.ok()) continue;
    state = nlohmann::json::parse(*body)["status"]["state"];
    if (training::IsFinal(state)) break;
  }
  ASSERT_EQ(state, training::kJobSucceeded);
  std::set<std::string> gpus;
  for (int rank = 0; rank < 2; ++rank) {
    std::ifstream in(cluster->dir + "/gpu-" + std::to_string(rank));
    std::string gpu, memory, simulated;
    ASSERT_TRUE(in >> gpu >> memory >> simulated) << "rank " << rank;
    EXPECT_EQ(memory, std::to_string(uint64_t{8} << 30)) << "two 4 GiB slices";
    EXPECT_EQ(simulated, "1");
    gpus.insert(gpu);
  }
  EXPECT_EQ(gpus.size(), 2u) << "spread: one worker per GPU";
  // Five 4 GiB slices per worker cannot fit a 16 GiB GPU: refused at submit. More than one slice
  // without a slice size is a bad spec.
  spec.name = "toomany";
  spec.resources.slices = 5;
  EXPECT_EQ(cluster->client->SubmitJob(spec, 10s).status().code(), StatusCode::kResourceExhausted);
  spec.resources.slice_memory_bytes = 0;
  EXPECT_EQ(cluster->client->SubmitJob(spec, 10s).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace troupe
