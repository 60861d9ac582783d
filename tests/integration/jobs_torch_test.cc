// Training jobs end to end with real PyTorch: the example DDP script examples/training/train.py
// (two CPU workers on gloo) as a job on a real local cluster (`troupe up`, two nodes). An
// uninterrupted run gives the reference weights (rank 0's `final-weights-sha256` line, read through
// the cluster like `troupe job logs`); then a worker killed with -9, a worker stopped with SIGSTOP,
// a node killed with -9 and the head killed with -9 (`troupe up` starts the killed member again):
// each time the job goes on (from its newest committed checkpoint, or, after a head restart,
// with its workers taken back) and ends with exactly the reference weights. Needs PyTorch for /usr/bin/python3 (Debian's python3-torch; scripts/bootstrap.sh
// installs it); without it every test is skipped, saying why.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/training/worker_launcher.h"
#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "tests/support/local_cluster.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kPython = "/usr/bin/python3";

// Empty if /usr/bin/python3 can import torch, else why not (checked once per process).
const std::string& TorchMissing() {
  static const std::string reason = [] {
    auto child = ChildProcess::Spawn({kPython, "-c", "import torch"}, {}, /*merge_stderr=*/true);
    if (!child.ok()) return std::string(kPython) + " cannot run: " + child.status().ToString();
    std::string output;
    for (int i = 0; i < 200; ++i) {
      auto line = (*child)->ReadLine(60s);
      if (!line.ok()) break;  // end of output (or 60 s of silence)
      output += *line + "\n";
    }
    auto code = (*child)->Wait(30s);
    if (!code.ok()) return std::string(kPython) + " -c 'import torch' did not end: " + code.status().ToString();
    if (WIFEXITED(*code) && WEXITSTATUS(*code) == 0) return std::string();
    return std::string(kPython) + " cannot import torch, so this end-to-end test is skipped (it runs in the release "
                                  "pass of `scripts/bootstrap.sh test`, which installs Debian's python3-torch; by hand: "
                                  "apt-get install python3-torch):\n" + output;
  }();
  return reason;
}

// The reference weights: rank 0's final-weights-sha256 of an uninterrupted run, found once per
// process (by the Reference test, or by the first test that needs it).
std::optional<std::string>& ReferenceSha() {
  static std::optional<std::string> sha;
  return sha;
}

class JobsTorch : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!TorchMissing().empty()) GTEST_SKIP() << TorchMissing();
    (void)InitLogging("warn");
  }

  // A cluster of two CPU nodes of 2 CPUs each; its head listens on `head_port` (0: any port).
  void StartCluster(int head_port = 0) {
    cluster_ = LocalCluster::Start("troupe-jobs-torch", "jobs-torch",
                                   "cluster:\n  name: jobs-torch\n  token: jobs-torch-test-token\n  log_level: warn\n"
                                   "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
                                   "head:\n  address: 127.0.0.1\n  port: " + std::to_string(head_port) +
                                   "\n  data_dir: head\n"
                                   "nodes:\n"
                                   "  - name: a\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-a\n"
                                   "  - name: b\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-b\n");
    ASSERT_NE(cluster_, nullptr);
    client_ = cluster_->client.get();
  }

  // A TCP port free on 127.0.0.1 now (the kernel's pick for port 0).
  static int FreePort() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    int port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    close(fd);
    return port;
  }

  // train.py as a job of two CPU workers, one per node: 120 steps, a checkpoint every 20, paced
  // (20 ms a step) so that a run lasts a few seconds and can be hit mid-way.
  training::JobSpec TrainPy(const std::string& name) {
    training::JobSpec spec;
    spec.name = name;
    spec.workers = 2;
    spec.resources.cpus = 1;
    spec.placement = "spread";
    spec.entry.command = {kPython, TROUPE_SOURCE_DIR "/examples/training/train.py", "--steps", "120",
                          "--checkpoint-every", "20", "--sleep-per-step", "0.02"};
    spec.entry.working_dir = cluster_->dir;
    spec.restart.backoff_initial = 100ms;
    spec.restart.backoff_max = 500ms;
    spec.restart.max_infra_failures = 5;
    spec.step_watchdog = 30s;
    return spec;
  }

  StatusOr<training::JobStatus> Show(const std::string& name) {
    ASSIGN_OR_RETURN(std::string body, client_->JobCommand("show", name, "", 5s));
    return training::JobStatusFromJson(nlohmann::json::parse(body).at("status").dump());
  }

  std::string Events(const std::string& name) {
    auto body = client_->JobCommand("events", name, "", 5s);
    if (!body.ok()) return "(troupe job events: " + body.status().ToString() + ")";
    std::ostringstream out;
    out << "troupe job events " << name << ":\n";
    auto events = nlohmann::json::parse(*body, nullptr, false);
    if (!events.is_array()) return *body;
    for (const auto& e : events) {
      out << "  " << e.value("unix_ms", int64_t{0}) << " attempt " << e.value("attempt", uint64_t{0}) << " "
          << e.value("state", std::string()) << ": " << e.value("message", std::string()) << "\n";
    }
    return out.str();
  }

  // The end of every worker log of every attempt of the job, read through the nodes' agents.
  std::string Logs(const std::string& name) {
    auto st = Show(name);
    if (!st.ok()) return "(logs: " + st.status().ToString() + ")\n";
    std::ostringstream out;
    for (uint64_t attempt = 1; attempt <= st->attempt; ++attempt) {
      for (uint32_t rank = 0; rank < 2; ++rank) {
        for (const char* node : {"a", "b"}) {
          training::ReadWorkerLog request;
          request.job = name;
          request.attempt = attempt;
          request.rank = rank;
          request.max_bytes = 1;
          auto head = client_->ReadWorkerLog(node, request, 5s);
          if (!head.ok() || head->size == 0) continue;
          request.offset = head->size > 1500 ? head->size - 1500 : 0;
          request.max_bytes = 1500;
          auto tail = client_->ReadWorkerLog(node, request, 5s);
          out << "--- log of attempt " << attempt << " rank " << rank << " (node " << node << "), its last "
              << (tail.ok() ? tail->data.size() : 0) << " of " << head->size << " bytes:\n"
              << (tail.ok() ? tail->data : tail.status().ToString()) << "\n";
        }
      }
    }
    return out.str();
  }

  // What a failure message shows: the job's events and the ends of its workers' logs.
  std::string Report(const std::string& name) { return Events(name) + Logs(name); }

  static std::string Describe(const training::JobStatus& s) {
    std::ostringstream out;
    out << s.state << " (attempt " << s.attempt << ", checkpoint " << s.checkpoint_step << ", user failures "
        << s.user_failures << ", infra failures " << s.infra_failures << "): " << s.reason;
    return out.str();
  }

  // Polls the job (a tiny pause between polls) until `done` holds; false after `timeout`, with
  // `why` saying which condition, the last status or error and the job's events. Errors (the head
  // restarting) are tolerated until then.
  bool AwaitJob(const std::string& name, const std::string& condition, std::chrono::milliseconds timeout,
                const std::function<bool(const training::JobStatus&)>& done, training::JobStatus* last,
                std::string* why) {
    const auto start = Clock::now();
    const auto deadline = start + timeout;
    Status last_error = OkStatus();
    bool seen = false;
    while (Clock::now() < deadline) {
      auto st = Show(name);
      if (st.ok()) {
        *last = *st;
        seen = true;
        if (done(*st)) return true;
      } else {
        last_error = st.status();
      }
      std::this_thread::sleep_for(20ms);
    }
    std::ostringstream out;
    out << "job " << name << ": not " << condition << " within " << timeout.count() << " ms; last status: "
        << (seen ? Describe(*last) : "none") << "; last error: " << last_error.ToString() << "\n"
        << Report(name);
    *why = out.str();
    return false;
  }

  // The log of `rank` of the job's `attempt` (on `node`), read through the agent of its node (as
  // `troupe job logs`).
  StatusOr<std::string> RankLog(const std::string& name, const std::string& node, uint64_t attempt, uint32_t rank) {
    training::ReadWorkerLog request;
    request.job = name;
    request.attempt = attempt;
    request.rank = rank;
    request.offset = 0;
    request.max_bytes = 64 * 1024;
    std::string log;
    for (int chunks = 0; chunks < 1000; ++chunks) {
      ASSIGN_OR_RETURN(training::WorkerLogChunk chunk, client_->ReadWorkerLog(node, request, 5s));
      log += chunk.data;
      if (chunk.next_offset >= chunk.size || chunk.data.empty()) break;
      request.offset = chunk.next_offset;
    }
    return log;
  }

  // Rank 0's final-weights-sha256 of the job's current attempt, from its log.
  StatusOr<std::string> FinalSha(const std::string& name, const training::JobStatus& st) {
    std::string node;
    for (const auto& w : st.workers) {
      if (w.rank == 0) node = w.node;
    }
    if (node.empty()) return Status(StatusCode::kNotFound, "job " + name + " has no rank 0 in its status");
    ASSIGN_OR_RETURN(std::string log, RankLog(name, node, st.attempt, 0));
    const std::string key = "final-weights-sha256 ";
    const auto at = log.rfind(key);
    if (at == std::string::npos) {
      return Status(StatusCode::kNotFound, "no '" + key + "' line in rank 0's log (node " + node + ", attempt " +
                                               std::to_string(st.attempt) + "):\n" + log.substr(log.size() > 3000 ? log.size() - 3000 : 0));
    }
    std::string hex = log.substr(at + key.size(), 64);
    if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return Status(StatusCode::kInternal, "bad final-weights-sha256 line: " + log.substr(at, 100));
    }
    return hex;
  }

  // Runs `name` uninterrupted to its end: its final sha, or a test failure and "".
  std::string RunUninterrupted(const std::string& name) {
    auto submitted = client_->SubmitJob(TrainPy(name), 10s);
    if (!submitted.ok()) {
      ADD_FAILURE() << "submit " << name << ": " << submitted.status();
      return "";
    }
    training::JobStatus last;
    std::string why;
    if (!AwaitJob(name, "finished", 90s, [](const auto& s) { return training::IsFinal(s.state); }, &last, &why)) {
      ADD_FAILURE() << why;
      return "";
    }
    if (last.state != training::kJobSucceeded || last.attempt != 1u) {
      ADD_FAILURE() << "job " << name << ": " << Describe(last) << "\n" << Report(name);
      return "";
    }
    auto sha = FinalSha(name, last);
    if (!sha.ok()) {
      ADD_FAILURE() << sha.status() << "\n" << Report(name);
      return "";
    }
    return *sha;
  }

  // The reference sha: found once per process, on this test's cluster if not yet.
  std::string Reference() {
    if (!ReferenceSha()) {
      const std::string sha = RunUninterrupted("reference");
      if (!sha.empty()) ReferenceSha() = sha;
    }
    return ReferenceSha().value_or("");
  }

  // Submits `name` and waits until it runs with a committed checkpoint of step 20 or later.
  bool StartAndAwaitCheckpoint(const std::string& name, training::JobStatus* last) {
    return StartAndAwaitCheckpoint(TrainPy(name), last);
  }
  bool StartAndAwaitCheckpoint(const training::JobSpec& spec, training::JobStatus* last) {
    const std::string& name = spec.name;
    auto submitted = client_->SubmitJob(spec, 10s);
    EXPECT_TRUE(submitted.ok()) << "submit " << name << ": " << submitted.status();
    if (!submitted.ok()) return false;
    std::string why;
    const bool ok = AwaitJob(
        name, "running with a committed checkpoint of step >= 20", 60s,
        [](const auto& s) { return s.state == training::kJobRunning && s.checkpoint_step >= 20 && s.workers.size() == 2; },
        last, &why);
    EXPECT_TRUE(ok) << why;
    return ok;
  }

  // Waits for the job's end; it must have succeeded with the reference weights.
  void ExpectSucceedsWithTheReferenceWeights(const std::string& name, const std::string& reference,
                                             training::JobStatus* last) {
    std::string why;
    ASSERT_TRUE(AwaitJob(name, "finished", 120s, [](const auto& s) { return training::IsFinal(s.state); }, last, &why))
        << why;
    ASSERT_EQ(last->state, training::kJobSucceeded) << Describe(*last) << "\n" << Report(name);
    auto sha = FinalSha(name, *last);
    ASSERT_TRUE(sha.ok()) << sha.status() << "\n" << Report(name);
    EXPECT_EQ(*sha, reference) << "the resumed run's weights differ from the uninterrupted run's\n" << Report(name);
    std::printf("[ %s ] %s\n", name.c_str(), Describe(*last).c_str());
  }

  static int64_t PidOf(const training::JobStatus& s, uint32_t rank) {
    for (const auto& w : s.workers) {
      if (w.rank == rank) return w.pid;
    }
    return 0;
  }

  // The process is gone (or a zombie: it ran to its end or was killed, not yet reaped).
  static bool Gone(int64_t pid) {
    if (kill(static_cast<pid_t>(pid), 0) != 0) return true;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto paren = content.rfind(')');
    return paren != std::string::npos && paren + 2 < content.size() && content[paren + 2] == 'Z';
  }

  static bool AwaitGone(int64_t pid, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!Gone(pid) && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
    return Gone(pid);
  }

  std::unique_ptr<LocalCluster> cluster_;
  cluster::Client* client_ = nullptr;
};

TEST_F(JobsTorch, AnUninterruptedRunGivesTheReferenceWeights) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  const auto t0 = Clock::now();
  const std::string sha = RunUninterrupted("reference");
  ASSERT_FALSE(sha.empty());
  if (!ReferenceSha()) ReferenceSha() = sha;
  EXPECT_EQ(sha, *ReferenceSha());
  std::printf("[ reference ] final-weights-sha256 %s in %lld ms\n%s", sha.c_str(),
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()),
              Events("reference").c_str());
}

TEST_F(JobsTorch, AWorkerKilledWithMinus9ResumesToTheSameWeights) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  const std::string reference = Reference();
  ASSERT_FALSE(reference.empty());
  training::JobStatus last;
  ASSERT_TRUE(StartAndAwaitCheckpoint("kill9", &last));
  const int64_t victim = PidOf(last, 1);
  ASSERT_GT(victim, 0) << Describe(last);
  ASSERT_EQ(kill(static_cast<pid_t>(victim), SIGKILL), 0);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceedsWithTheReferenceWeights("kill9", reference, &last));
  EXPECT_EQ(last.attempt, 2u) << Describe(last) << "\n" << Report("kill9");
  const std::string events = Events("kill9");
  EXPECT_NE(events.find("resuming from step"), std::string::npos) << events;
}

// docs/jobs.md, "Standby workers": with entry.preload: [torch] each node keeps an interpreter that
// imported torch; the restarted group runs in them and ends with the same weights.
TEST_F(JobsTorch, AWorkerKilledWithMinus9RestartsInStandbysWithTheSameWeights) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  const std::string reference = Reference();
  ASSERT_FALSE(reference.empty());
  training::JobSpec spec = TrainPy("standby");
  spec.entry.preload = {"torch"};
  // 100 ms a step instead of 20 (the weights do not depend on it): the standbys import torch
  // while the first attempt still runs.
  for (auto& arg : spec.entry.command) {
    if (arg == "0.02") arg = "0.1";
  }
  training::JobStatus last;
  ASSERT_TRUE(StartAndAwaitCheckpoint(spec, &last));
  // Each rank's log says when a standby is ready on its node.
  const auto deadline = Clock::now() + 60s;
  std::string missing;
  do {
    missing.clear();
    for (const auto& w : last.workers) {
      auto log = RankLog("standby", w.node, last.attempt, w.rank);
      if (!log.ok() || log->find(training::WorkerLauncher::kStandbyReadyLogLine) == std::string::npos) {
        missing += " rank " + std::to_string(w.rank) + " on " + w.node;
      }
    }
    if (!missing.empty()) std::this_thread::sleep_for(50ms);
  } while (!missing.empty() && Clock::now() < deadline);
  ASSERT_TRUE(missing.empty()) << "no ready standby for" << missing << "\n" << Report("standby");
  auto now = Show("standby");
  ASSERT_TRUE(now.ok() && now->state == training::kJobRunning && now->attempt == 1u)
      << "the job did not run long enough to be killed: " << (now.ok() ? Describe(*now) : now.status().ToString());
  const int64_t victim = PidOf(last, 1);
  ASSERT_GT(victim, 0) << Describe(last);
  ASSERT_EQ(kill(static_cast<pid_t>(victim), SIGKILL), 0);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceedsWithTheReferenceWeights("standby", reference, &last));
  EXPECT_EQ(last.attempt, 2u) << Describe(last) << "\n" << Report("standby");
  for (const auto& w : last.workers) {
    auto log = RankLog("standby", w.node, last.attempt, w.rank);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_EQ(log->rfind(training::WorkerLauncher::kStartedInStandbyLogLine, 0), 0u)
        << "rank " << w.rank << " of attempt 2 on " << w.node << " did not start in a standby:\n" << *log;
  }
}

TEST_F(JobsTorch, AStoppedWorkerIsHungAndTheGroupResumesToTheSameWeights) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  const std::string reference = Reference();
  ASSERT_FALSE(reference.empty());
  training::JobStatus last;
  ASSERT_TRUE(StartAndAwaitCheckpoint("sigstop", &last));
  const int64_t victim = PidOf(last, 0);
  ASSERT_GT(victim, 0) << Describe(last);
  const auto stopped_at = Clock::now();
  ASSERT_EQ(kill(static_cast<pid_t>(victim), SIGSTOP), 0);
  std::string why;
  ASSERT_TRUE(AwaitJob("sigstop", "restarted (attempt 2)", 30s, [](const auto& s) { return s.attempt >= 2; }, &last, &why))
      << why;
  EXPECT_LT(Clock::now() - stopped_at, 10s) << Report("sigstop");
  EXPECT_TRUE(AwaitGone(victim, 5s)) << "the stopped rank 0 (pid " << victim << ") still exists\n" << Report("sigstop");
  ASSERT_NO_FATAL_FAILURE(ExpectSucceedsWithTheReferenceWeights("sigstop", reference, &last));
  const std::string events = Events("sigstop");
  EXPECT_NE(events.find("hung: stopped"), std::string::npos) << events;
  EXPECT_EQ(last.attempt, 2u) << Describe(last) << "\n" << events << Logs("sigstop");
}

TEST_F(JobsTorch, ANodeKilledWithMinus9CostsTheStepsSinceTheCheckpointOnly) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  const std::string reference = Reference();
  ASSERT_FALSE(reference.empty());
  ASSERT_GT(cluster_->pids["node b"], 0);
  training::JobStatus last;
  ASSERT_TRUE(StartAndAwaitCheckpoint("nodekill", &last));
  const uint64_t attempt = last.attempt;
  ASSERT_EQ(kill(cluster_->pids["node b"], SIGKILL), 0);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceedsWithTheReferenceWeights("nodekill", reference, &last));
  EXPECT_GT(last.attempt, attempt) << Describe(last) << "\n" << Report("nodekill");
}

// docs/jobs.md, "When the head restarts": the restarted head either takes the running workers
// back (the attempt goes on) or stops them as their nodes rejoin and starts the group again from
// the newest committed checkpoint. Either way the job ends with the reference weights and no
// worker of the attempt that ran at the kill outlives the job.
TEST_F(JobsTorch, AJobOutlivesItsHeadKilledWithMinus9) {
  // A fixed port: the client looks the restarted head up again at the address it resolved at
  // Connect (with port 0 the new head would listen elsewhere and only head.address says where).
  const int head_port = FreePort();
  ASSERT_GT(head_port, 0);
  ASSERT_NO_FATAL_FAILURE(StartCluster(head_port));
  const std::string reference = Reference();
  ASSERT_FALSE(reference.empty());
  ASSERT_GT(cluster_->pids["head"], 0);
  training::JobStatus last;
  ASSERT_TRUE(StartAndAwaitCheckpoint("headkill", &last));
  const uint64_t attempt = last.attempt;
  const auto old_workers = last.workers;
  ASSERT_EQ(kill(cluster_->pids["head"], SIGKILL), 0);
  std::string why;
  const bool finished =
      AwaitJob("headkill", "finished", 120s, [](const auto& s) { return training::IsFinal(s.state); }, &last, &why);
  EXPECT_TRUE(finished) << why;
  const std::string events = Events("headkill");
  for (const auto& w : old_workers) {
    EXPECT_TRUE(AwaitGone(w.pid, 1s)) << "rank " << w.rank << " of attempt " << attempt << " (pid " << w.pid
                                      << ", node " << w.node << ") still runs after the job ended ("
                                      << Describe(last) << ")\n" << events;
  }
  ASSERT_TRUE(finished);
  ASSERT_EQ(last.state, training::kJobSucceeded) << Describe(last) << "\n" << events << Logs("headkill");
  if (last.attempt > attempt) {
    EXPECT_NE(events.find("resuming from step"), std::string::npos) << events;
  }
  std::printf("[ head kill ] attempt %llu at the kill, %llu at the end (%s)\n", static_cast<unsigned long long>(attempt),
              static_cast<unsigned long long>(last.attempt),
              last.attempt > attempt ? "restarted from a checkpoint" : "workers taken back");
  auto sha = FinalSha("headkill", last);
  ASSERT_TRUE(sha.ok()) << sha.status() << "\n" << events;
  EXPECT_EQ(*sha, reference) << "the weights differ from the uninterrupted run's\n" << events;
}

}  // namespace
}  // namespace troupe
