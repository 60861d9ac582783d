// WorkerLauncher with real child processes (no actor system): exits reported with their codes,
// hangs (silence past the watchdog, SIGSTOP) found and killed, the progress file, Stop() taking the
// whole process group, log rotation, and WorkerEnvironment's torchrun contract.
#include "actors/training/worker_launcher.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <vector>

#include "actors/training/job_supervisor.h"
#include "actors/training/standby.h"
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
  // Written, not only created: the shell's `>` creates the file before `echo` writes the pid.
  auto written = [&] {
    std::error_code ec;
    const auto size = std::filesystem::file_size(dir_ + "/child.pid", ec);
    return !ec && size > 0;
  };
  while (!written() && std::chrono::steady_clock::now() < deadline) {
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

// ---- standby workers (entry.preload) ----

// A Python worker that shows what it was given: its argv, working directory, RANK, whether json
// was imported before it ran (a standby preloads it) and its __name__; then it waits (rank 0) or
// exits 3.
const char* kShowScript = R"PY(
import sys
preloaded = "json" in sys.modules
import os
print("argv=%s" % sys.argv, flush=True)
print("cwd=%s rank=%s preloaded=%s name=%s" % (os.getcwd(), os.environ.get("RANK"), preloaded, __name__), flush=True)
print("path0=%s" % sys.path[0], flush=True)
if os.environ["RANK"] == "0":
    import time
    time.sleep(600)
sys.exit(3)
)PY";

class StandbyTest : public WorkerLauncherTest {
 protected:
  void SetUp() override {
    WorkerLauncherTest::SetUp();
    if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3 (scripts/bootstrap.sh installs it)";
    std::filesystem::create_directories(dir_ + "/work");
    std::ofstream(dir_ + "/work/show.py") << kShowScript;
  }
  StartWorker PythonWorker(uint64_t attempt, uint32_t rank, std::vector<std::string> preload = {"json"}) {
    StartWorker w;
    w.job = "job";
    w.attempt = attempt;
    w.rank = rank;
    w.argv = {"/usr/bin/python3", "-u", "show.py", "one arg", "two"};
    w.env = {"RANK=" + std::to_string(rank)};
    w.working_dir = dir_ + "/work";
    w.preload = std::move(preload);
    return w;
  }
  bool AwaitStandbys(size_t n, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (launcher_->ready_standbys("job") != n) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
    }
    return true;
  }
  std::string LogOf(uint64_t attempt, uint32_t rank) {
    std::ifstream in(launcher_->LogPath("job", attempt, rank));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

TEST_F(StandbyTest, ARestartedWorkerRunsInTheStandbyExactlyAsItWouldStartCold) {
  Make();
  auto first = launcher_->Start(PythonWorker(1, 0), {});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->standby);
  ASSERT_TRUE(AwaitStandbys(1, 20s)) << "no standby after the worker's first line; its log:\n" << LogOf(1, 0);
  // The worker's watcher says so in its log within a poll or two.
  const auto said_by = std::chrono::steady_clock::now() + 20s;
  while (LogOf(1, 0).find(WorkerLauncher::kStandbyReadyLogLine) == std::string::npos &&
         std::chrono::steady_clock::now() < said_by) {
  }
  // A restart: the attempt's workers go, the standby stays for the next.
  EXPECT_EQ(launcher_->Stop("job", 1), 1u);
  EXPECT_EQ(launcher_->ready_standbys("job"), 1u);

  auto second = launcher_->Start(PythonWorker(2, 1), {});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->standby);
  auto exit = AwaitExit(20s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code, 3) << exit->reason;
  const std::string cold = LogOf(1, 0);
  const std::string warm = LogOf(2, 1);
  // What `python3 -u show.py 'one arg' two` sees, cold or in a standby, but for the preload.
  for (const std::string& log : {cold, warm}) {
    EXPECT_NE(log.find("argv=['show.py', 'one arg', 'two']"), std::string::npos) << log;
    EXPECT_NE(log.find("path0=" + dir_ + "/work"), std::string::npos) << log;
    EXPECT_NE(log.find("name=__main__"), std::string::npos) << log;
  }
  EXPECT_NE(cold.find("cwd=" + dir_ + "/work rank=0 preloaded=False"), std::string::npos) << cold;
  EXPECT_NE(warm.find("cwd=" + dir_ + "/work rank=1 preloaded=True"), std::string::npos) << warm;
  EXPECT_NE(warm.find("[troupe] worker exited with code 3"), std::string::npos) << warm;
  // The logs say it: the first worker's when its standby was ready, the second's first line.
  EXPECT_NE(cold.find(WorkerLauncher::kStandbyReadyLogLine), std::string::npos) << cold;
  EXPECT_EQ(warm.rfind(WorkerLauncher::kStartedInStandbyLogLine, 0), 0u) << warm;
  EXPECT_EQ(cold.find(WorkerLauncher::kStartedInStandbyLogLine), std::string::npos) << cold;
}

TEST_F(StandbyTest, AStandbyThatCannotImportIsNeverUsedAndAFinalStopTakesTheStandbys) {
  Make();
  ASSERT_TRUE(launcher_->Start(PythonWorker(1, 0, {"no_such_module_for_troupe"}), {}).ok());
  EXPECT_EQ(launcher_->Stop("job", 1), 1u);
  // Its import fails, so it is never ready: the next worker starts cold, and runs.
  auto second = launcher_->Start(PythonWorker(2, 1, {"no_such_module_for_troupe"}), {});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->standby);
  auto exit = AwaitExit(20s);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code, 3) << exit->reason;
  EXPECT_EQ(launcher_->ready_standbys("job"), 0u);

  // A job that runs no more takes its standbys with it.
  exits_.clear();
  ASSERT_TRUE(launcher_->Start(PythonWorker(3, 0), {}).ok());
  ASSERT_TRUE(AwaitStandbys(1, 20s));
  EXPECT_EQ(launcher_->Stop("job", 3, /*final=*/true), 1u);
  EXPECT_EQ(launcher_->ready_standbys("job"), 0u);
  auto cold = launcher_->Start(PythonWorker(4, 1), {});
  ASSERT_TRUE(cold.ok()) << cold.status();
  EXPECT_FALSE(cold->standby);
}

TEST(StandbyCommand, OnlyScriptsAndModulesWithOptionsTheyCanTakeLater) {
  auto script = ParsePythonCommand({"/usr/bin/python3", "-u", "train.py", "--steps", "5"});
  ASSERT_TRUE(script.ok()) << script.status();
  EXPECT_FALSE(script->module);
  EXPECT_EQ(script->target, "train.py");
  EXPECT_EQ(script->options, std::vector<std::string>({"-u"}));
  EXPECT_EQ(script->args, std::vector<std::string>({"--steps", "5"}));
  auto module = ParsePythonCommand({"python3.11", "-m", "pkg.train", "-x"});
  ASSERT_TRUE(module.ok()) << module.status();
  EXPECT_TRUE(module->module);
  EXPECT_EQ(module->target, "pkg.train");
  EXPECT_EQ(module->args, std::vector<std::string>({"-x"}));
  EXPECT_EQ(ParsePythonCommand({"bash", "train.sh"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ParsePythonCommand({"python3", "-O", "t.py"}).status().message().find("'-O'"), std::string::npos);
  EXPECT_EQ(ParsePythonCommand({"python3", "-u"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParsePythonCommand({"python3", "-m"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(IsPythonModuleName("torch.distributed"));
  EXPECT_FALSE(IsPythonModuleName("torch..x"));
  EXPECT_FALSE(IsPythonModuleName("1torch"));
  EXPECT_FALSE(IsPythonModuleName("os; import x"));
  // The activation line is one line of JSON, whatever the values hold.
  const std::string line = ActivationLine(*script, {"A=1", "B=two\nlines", "bad"}, "/w");
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["env"]["B"], "two\nlines");
  EXPECT_FALSE(json["env"].contains("bad"));
  EXPECT_EQ(json["cwd"], "/w");
  EXPECT_EQ(json["args"], nlohmann::json({"--steps", "5"}));
}

}  // namespace
}  // namespace troupe::training
