// WorkerLauncher with real child processes (no actor system): exits reported with their codes,
// hangs (silence past the watchdog, SIGSTOP) found and killed, the progress file, Stop() taking the
// whole process group, log rotation, and WorkerEnvironment's torchrun contract.
#include "actors/training/worker_launcher.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <vector>

#include "actors/training/job_supervisor.h"
#include "common/logging.h"

namespace troupe::training {
namespace {

using namespace std::chrono_literals;

class WorkerLauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-launcher-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override {
    launcher_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Make(uint64_t max_log_bytes = WorkerLauncher::kMaxLogFileBytes) {
    launcher_ = std::make_unique<WorkerLauncher>(
        dir_ + "/logs",
        [this](const StartWorker&, const WorkerExited& exit) {
          std::lock_guard<std::mutex> lock(mu_);
          exits_.push_back(exit);
          cv_.notify_all();
        },
        max_log_bytes);
  }

  StartWorker Worker(const std::string& script, int64_t watchdog_ms = 0, uint32_t rank = 0) {
    StartWorker w;
    w.job = "job";
    w.attempt = 1;
    w.rank = rank;
    w.argv = {"sh", "-c", script};
    w.env = {"RANK=" + std::to_string(rank)};
    w.working_dir = dir_;
    w.watchdog_ms = watchdog_ms;
    return w;
  }

  // The first reported exit, within `timeout`.
  std::optional<WorkerExited> AwaitExit(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [this] { return !exits_.empty(); })) return std::nullopt;
    return exits_.front();
  }

  // True once no worker runs (an exit is reported just before the worker leaves the table).
  bool AwaitIdle(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (launcher_->running() > 0) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
    }
    return true;
  }

  std::string Log(uint32_t rank = 0) {
    std::ifstream in(launcher_->LogPath("job", 1, rank));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  static bool GoneWithin(pid_t pid, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (kill(pid, 0) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
    }
    return true;
  }

  std::string dir_;
  std::unique_ptr<WorkerLauncher> launcher_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WorkerExited> exits_;
};

TEST_F(WorkerLauncherTest, AnExitIsReportedWithItsCodeAndTheOutputIsLogged) {
  Make();
  auto started = launcher_->Start(Worker("echo hello from $RANK; echo progress=$TROUPE_PROGRESS_FILE; exit 3"), {});
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_GT(started->pid, 0);
  auto exit = AwaitExit(10s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code, 3);
  EXPECT_EQ(exit->signal, 0);
  EXPECT_FALSE(exit->hung);
  EXPECT_EQ(exit->reason, "exited with code 3");
  const std::string log = Log();
  EXPECT_NE(log.find("hello from 0"), std::string::npos) << log;
  EXPECT_NE(log.find("progress=" + dir_ + "/logs/job/attempt-1/rank-0.progress"), std::string::npos) << log;
  EXPECT_NE(log.find("[troupe] worker exited with code 3"), std::string::npos) << log;
  EXPECT_TRUE(AwaitIdle(10s));
}

TEST_F(WorkerLauncherTest, ASilentWorkerIsHungPastItsWatchdogAndKilledWithItsGroup) {
  Make();
  auto started = launcher_->Start(Worker("sleep 1000 & echo $! > child.pid; echo started; wait", 300), {});
  ASSERT_TRUE(started.ok()) << started.status();
  auto exit = AwaitExit(10s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->hung);
  EXPECT_NE(exit->reason.find("no progress"), std::string::npos) << exit->reason;
  EXPECT_TRUE(GoneWithin(static_cast<pid_t>(started->pid), 5s));
  std::ifstream in(dir_ + "/child.pid");
  pid_t child = 0;
  ASSERT_TRUE(in >> child);
  EXPECT_TRUE(GoneWithin(child, 5s)) << "the worker's child outlived it";
}

TEST_F(WorkerLauncherTest, TouchingTheProgressFileKeepsAQuietWorkerAlive) {
  Make();
  // Silent for 1.5 s in all, longer than the watchdog, but touching the file every 0.1 s.
  auto started = launcher_->Start(
      Worker("i=0; while [ $i -lt 15 ]; do touch \"$TROUPE_PROGRESS_FILE\"; sleep 0.1; i=$((i+1)); done", 600), {});
  ASSERT_TRUE(started.ok()) << started.status();
  auto exit = AwaitExit(20s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_FALSE(exit->hung) << exit->reason;
  EXPECT_EQ(exit->exit_code, 0);
}

TEST_F(WorkerLauncherTest, AStoppedWorkerIsHung) {
  Make();
  auto started = launcher_->Start(Worker("while true; do echo tick; sleep 0.05; done"), {});
  ASSERT_TRUE(started.ok()) << started.status();
  const auto stopped_at = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(static_cast<pid_t>(started->pid), SIGSTOP), 0);
  auto exit = AwaitExit(10s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->hung);
  EXPECT_NE(exit->reason.find("stopped (SIGSTOP)"), std::string::npos) << exit->reason;
  EXPECT_GE(std::chrono::steady_clock::now() - stopped_at, WorkerLauncher::kStoppedGrace);
  EXPECT_TRUE(GoneWithin(static_cast<pid_t>(started->pid), 5s));
}

TEST_F(WorkerLauncherTest, StopKillsTheWholeGroupAndReportsNothing) {
  Make();
  auto started = launcher_->Start(Worker("sleep 1000 & echo $! > child.pid; echo started; wait"), {});
  ASSERT_TRUE(started.ok()) << started.status();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!std::filesystem::exists(dir_ + "/child.pid") && std::chrono::steady_clock::now() < deadline) {
  }
  EXPECT_EQ(launcher_->Start(Worker("true"), {}).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(launcher_->Stop("job", 1), 1u);
  EXPECT_EQ(launcher_->running(), 0u);
  EXPECT_TRUE(GoneWithin(static_cast<pid_t>(started->pid), 5s));
  std::ifstream in(dir_ + "/child.pid");
  pid_t child = 0;
  ASSERT_TRUE(in >> child);
  EXPECT_TRUE(GoneWithin(child, 5s));
  EXPECT_FALSE(AwaitExit(200ms).has_value());
  EXPECT_EQ(launcher_->Stop("job", 1), 0u);
}

TEST_F(WorkerLauncherTest, TheLogRotatesAndKeepsTwoOlderFiles) {
  Make(/*max_log_bytes=*/1000);
  auto started = launcher_->Start(Worker("i=0; while [ $i -lt 300 ]; do echo line-$i-xxxxxxxxxx; i=$((i+1)); done"), {});
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(AwaitExit(20s).has_value());
  ASSERT_TRUE(AwaitIdle(10s));
  const std::string log = launcher_->LogPath("job", 1, 0);
  EXPECT_TRUE(std::filesystem::exists(log + ".1"));
  EXPECT_TRUE(std::filesystem::exists(log + ".2"));
  EXPECT_FALSE(std::filesystem::exists(log + ".3"));
  for (const auto& f : {log, log + ".1", log + ".2"}) EXPECT_LE(std::filesystem::file_size(f), 1000u) << f;
  auto chunk = launcher_->ReadLog(ReadWorkerLog{"job", 1, 0, 0, 64 * 1024});
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_NE(chunk->data.find("[troupe] worker exited with code 0"), std::string::npos);
  EXPECT_FALSE(chunk->running);
  EXPECT_EQ(launcher_->ReadLog(ReadWorkerLog{"job", 9, 0, 0, 10}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(launcher_->ReadLog(ReadWorkerLog{"../x", 1, 0, 0, 10}).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(WorkerLauncherTest, AProgramThatCannotStartOrAMissingDirectoryIsRefused) {
  Make();
  StartWorker w = Worker("true");
  w.argv = {"/nonexistent/trainer"};
  EXPECT_EQ(launcher_->Start(w, {}).status().code(), StatusCode::kUnavailable);
  w = Worker("true");
  w.working_dir = dir_ + "/nope";
  auto refused = launcher_->Start(w, {});
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("working directory"), std::string::npos);
  auto port = PickFreePort("127.0.0.1");
  ASSERT_TRUE(port.ok());
  EXPECT_GT(*port, 0);
}

TEST(WorkerEnvironmentTest, TheTorchrunContractForTwoNodes) {
  JobSpec spec;
  spec.name = "envjob";
  spec.entry.env = {{"DATA", "/data"}};
  Placement p;
  auto place = [](const std::string& node, const std::string& host) {
    WorkerPlace w;
    w.node = node;
    w.host = host;
    return w;
  };
  p.workers = {place("a", "10.0.0.1"), place("b", "10.0.0.2"), place("a", "10.0.0.1")};
  storage::CheckpointRecord resume;
  resume.dir = "/ckpt/step-20";
  resume.step = 20;
  auto env = WorkerEnvironment(spec, p, 2, 3, "/ckpt/attempt-3", resume);
  auto has = [&](const std::string& e) { return std::find(env.begin(), env.end(), e) != env.end(); };
  EXPECT_TRUE(has("DATA=/data"));
  EXPECT_TRUE(has("RANK=2"));
  EXPECT_TRUE(has("LOCAL_RANK=1"));
  EXPECT_TRUE(has("WORLD_SIZE=3"));
  EXPECT_TRUE(has("LOCAL_WORLD_SIZE=2"));
  EXPECT_TRUE(has("GROUP_RANK=0"));
  EXPECT_TRUE(has("MASTER_ADDR=10.0.0.1"));
  EXPECT_TRUE(has("TORCHELASTIC_RESTART_COUNT=2"));
  EXPECT_TRUE(has("TROUPE_ATTEMPT=3"));
  EXPECT_TRUE(has("TROUPE_CHECKPOINT_DIR=/ckpt/attempt-3"));
  EXPECT_TRUE(has("TROUPE_RESUME_DIR=/ckpt/step-20"));
  EXPECT_TRUE(has("TROUPE_RESUME_STEP=20"));
  auto fresh = WorkerEnvironment(spec, p, 1, 1, "/ckpt/attempt-1", std::nullopt);
  EXPECT_TRUE(std::find(fresh.begin(), fresh.end(), "GROUP_RANK=1") != fresh.end());
  EXPECT_TRUE(std::none_of(fresh.begin(), fresh.end(), [](const std::string& e) { return e.rfind("TROUPE_RESUME", 0) == 0; }));
}

}  // namespace
}  // namespace troupe::training
