// GPU slices on a real local cluster (`troupe up`, simulated GPUs): `troupe run` puts a command
// on a slice with its environment; leases from a client program are placed by the head's
// scheduler and shown by `troupe slices --json`; a lease comes back when its holder is killed;
// quotas are refused clearly; supervision events reach the head and `troupe events`.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>

#include "cluster/client.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "runtime/supervisor.h"
#include "tests/support/local_cluster.h"
#include "tests/support/pty_process.h"
#include "tests/support/troupe_processes.h"

#include <nlohmann/json.hpp>

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kGiB = uint64_t{1} << 30;

class Slices : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)InitLogging("warn");
    cluster_ = LocalCluster::Start("troupe-slices", "slices",
                                   "cluster:\n  name: slices\n  token: slices-test-token\n  log_level: warn\n"
                                   "scheduler:\n  quotas:\n    team-a: 8GiB\n"
                                   "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                                   "nodes:\n"
                                   "  - name: a\n    cpus: 4\n    memory: 8GiB\n"
                                   "    gpus:\n      simulated:\n        - memory: 16GiB\n    slice_memory: 4GiB\n"
                                   "  - name: b\n    cpus: 4\n    memory: 8GiB\n"
                                   "    gpus:\n      simulated:\n        - memory: 8GiB\n");
    ASSERT_NE(cluster_, nullptr);
    dir_ = cluster_->dir;
    config_ = cluster_->config;
    head_pid_ = cluster_->pids["head"];
    ASSERT_GT(head_pid_, 0) << "troupe up printed no head pid";
    client_ = std::move(cluster_->client);
  }
  void TearDown() override { client_.reset(); }

  std::string SlicesJson() {
    auto child = ChildProcess::Spawn({TROUPE_BIN, "slices", "-c", config_, "--json"});
    if (!child.ok()) return "";
    auto line = (*child)->ReadLine(20s);
    (void)(*child)->Wait(20s);
    return line.ok() ? *line : "";
  }
  // slices_free of node `node`'s GPU 0, from `troupe slices --json` (-1 if absent).
  int FreeSlices(const std::string& node) {
    auto list = nlohmann::json::parse(SlicesJson(), nullptr, /*allow_exceptions=*/false);
    if (!list.contains("gpus")) return -1;
    for (const auto& gpu : list["gpus"]) {
      if (gpu.value("node", "") == node && gpu.value("index", -1) == 0) return gpu.value("slices_free", -1);
    }
    return -1;
  }

  // True once `troupe slices` shows `n` free slices on node `node`'s GPU 0, within `timeout` (the
  // head ends a killed owner's lease when it sees the owner gone, a moment after the kill).
  bool FreeSlicesBecome(const std::string& node, int n, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (FreeSlices(node) != n) {
      if (Clock::now() >= deadline) return false;
    }
    return true;
  }

  // A gang of two 4 GiB workers spread strictly over both nodes (one on a, one on b).
  static cluster::LeaseRequest TwoNodeGang() {
    cluster::LeaseRequest gang;
    gang.count = 2;
    gang.slice_memory_bytes = 4 * kGiB;
    gang.gang = true;
    gang.policy = "strict_spread";
    return gang;
  }

  std::unique_ptr<LocalCluster> cluster_;
  std::string dir_, config_;
  pid_t head_pid_ = 0;
  std::unique_ptr<cluster::Client> client_;
};

TEST_F(Slices, RunPutsACommandOnASliceWithItsEnvironment) {
  auto run = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
                                  "echo CVD=$CUDA_VISIBLE_DEVICES MEM=$TROUPE_SLICE_MEMORY_BYTES SIM=$TROUPE_GPU_SIMULATED"});
  ASSERT_TRUE(run.ok()) << run.status();
  auto line = (*run)->ReadLineWithPrefix("CVD=", 20s);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "0 MEM=" + std::to_string(4 * kGiB) + " SIM=1");
  auto rc = (*run)->Wait(20s);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(WEXITSTATUS(*rc), 0);
  // Its lease ended with the command.
  EXPECT_EQ(FreeSlices("a"), 4);
}

TEST_F(Slices, RunGivesItsCommandStdinAndTheSliceEnvironmentInsteadOfTheCallers) {
  // The caller's own CUDA_VISIBLE_DEVICES and TROUPE_* values must not reach the command: it would
  // see GPU 7, not its slice (getenv returns the first of two same-named entries).
  auto run = ChildProcess::Spawn(
      {TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
       "read line; echo \"IN=$line CVD=$CUDA_VISIBLE_DEVICES N=$(env | grep -c ^CUDA_VISIBLE_DEVICES=) "
       "LEASE=$(env | grep -c ^TROUPE_LEASE_ID=) OTHER=${TROUPE_CALLERS_OWN:-unset}\""},
      {"CUDA_VISIBLE_DEVICES=7", "TROUPE_LEASE_ID=999", "TROUPE_CALLERS_OWN=x"});
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE((*run)->WriteLine("hi").ok());
  auto line = (*run)->ReadLineWithPrefix("IN=", 20s);
  ASSERT_TRUE(line.ok()) << "the command did not get troupe run's stdin: " << line.status();
  EXPECT_EQ(*line, "hi CVD=0 N=1 LEASE=1 OTHER=unset");
  auto rc = (*run)->Wait(20s);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(WEXITSTATUS(*rc), 0);

  // A lease without a GPU hides every GPU.
  auto cpu_only = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "0", "--", "sh", "-c",
                                       "echo CVD=${CUDA_VISIBLE_DEVICES-unset}"},
                                      {"CUDA_VISIBLE_DEVICES=7"});
  ASSERT_TRUE(cpu_only.ok()) << cpu_only.status();
  auto hidden = (*cpu_only)->ReadLineWithPrefix("CVD=", 20s);
  ASSERT_TRUE(hidden.ok()) << hidden.status();
  EXPECT_EQ(*hidden, "") << "a lease without a GPU must set CUDA_VISIBLE_DEVICES empty";
  EXPECT_TRUE((*cpu_only)->Wait(20s).ok());
}

TEST_F(Slices, RunForwardsSignalsToItsCommandAndReleasesTheSliceOnlyOnceItIsGone) {
  // The command reports USR1, USR2, HUP and INT and, on TERM, exits 3; its sleeper goes with it.
  auto run = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
                                  "sleep 60 & s=$!; for sig in USR1 USR2 HUP INT; do trap \"echo got $sig\" $sig; done; "
                                  "trap 'echo got TERM; kill $s; exit 3' TERM; echo ready; "
                                  "while :; do wait $s; done"},
                                 {}, /*merge_stderr=*/true);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE((*run)->ReadLineWithPrefix("ready", 20s).ok()) << "the command did not start";
  ASSERT_EQ(FreeSlices("a"), 3);
  for (auto [sig, name] : std::vector<std::pair<int, std::string>>{
           {SIGUSR1, "USR1"}, {SIGUSR2, "USR2"}, {SIGHUP, "HUP"}, {SIGINT, "INT"}, {SIGTERM, "TERM"}}) {
    (*run)->Signal(sig);
    auto line = (*run)->ReadLineWithPrefix("got " + name, 10s);
    ASSERT_TRUE(line.ok()) << "the command was not sent SIG" << name << ": " << line.status();
  }
  auto rc = (*run)->Wait(10s);
  ASSERT_TRUE(rc.ok()) << "troupe run did not end with its command";
  ASSERT_TRUE(WIFEXITED(*rc)) << "troupe run itself was killed by signal " << WTERMSIG(*rc);
  EXPECT_EQ(WEXITSTATUS(*rc), 3) << "troupe run returns its command's exit code";
  EXPECT_EQ(FreeSlices("a"), 4) << "the slice was not released after the command ended";
}

TEST_F(Slices, RunKillsWhatItsCommandLeftRunningBeforeItReleasesTheSlice) {
  auto run = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
                                  "sleep 60 >/dev/null 2>&1 & echo left $!"},
                                 {}, /*merge_stderr=*/true);
  ASSERT_TRUE(run.ok()) << run.status();
  auto left = (*run)->ReadLineWithPrefix("left ", 20s);
  ASSERT_TRUE(left.ok()) << left.status();
  const pid_t sleeper = std::stoi(*left);
  auto rc = (*run)->Wait(20s);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(WEXITSTATUS(*rc), 0);
  // Gone (killed and reaped) before `troupe run` released the slice and exited.
  const bool gone = testing::ExitsWithin(sleeper, 100ms);
  EXPECT_TRUE(gone) << "the command's background process outlived its lease";
  if (!gone) kill(sleeper, SIGKILL);
  EXPECT_EQ(FreeSlices("a"), 4);
}

TEST_F(Slices, WhatACommandStartedDiesWithItsKilledLauncherToo) {
  // The command's own child (not the command) would have outlived a kill -9 of `troupe run`.
  auto holder = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
                                     "sleep 60 >/dev/null 2>&1 & echo child $!; wait"});
  ASSERT_TRUE(holder.ok()) << holder.status();
  auto child_line = (*holder)->ReadLineWithPrefix("child ", 20s);
  ASSERT_TRUE(child_line.ok()) << child_line.status();
  const pid_t grandchild = std::stoi(*child_line);
  (*holder)->Signal(SIGKILL);
  ASSERT_TRUE((*holder)->Wait(5s).ok());
  const bool gone = testing::ExitsWithin(grandchild, 10s);
  EXPECT_TRUE(gone) << "the command's child outlived its killed `troupe run`";
  if (!gone) kill(grandchild, SIGKILL);
}

// Typed at a terminal, `troupe run` is a foreground job of the user's shell. Its command's own
// child ignores SIGHUP (as a nohup'd data loader does), so the hang-up that the terminal's
// session sends its foreground group when `troupe run` dies does not end it: only the killed
// group does.
TEST_F(Slices, WhatACommandStartedOnATerminalDiesWithItsKilledLauncherToo) {
  auto holder = testing::PtyProcess::Start({TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
                                            "trap '' HUP; sleep 60 >/dev/null 2>&1 & echo child $!; wait"});
  ASSERT_TRUE(holder.ok()) << holder.status();
  auto child_line = (*holder)->ReadLineWithPrefix("child ", 20s);
  ASSERT_TRUE(child_line.ok()) << child_line.status();
  const pid_t grandchild = std::stoi(*child_line);
  kill((*holder)->pid(), SIGKILL);
  ASSERT_TRUE((*holder)->WaitForChange(5s).ok());
  const bool gone = testing::ExitsWithin(grandchild, 10s);
  EXPECT_TRUE(gone) << "the command's child outlived its killed `troupe run` on a terminal";
  if (!gone) kill(grandchild, SIGKILL);
  EXPECT_TRUE(FreeSlicesBecome("a", 4, 10s)) << "the killed holder's slice did not come back";
}

// On a terminal the command is the foreground job: it reads the terminal, Ctrl-Z stops it and
// `troupe run` with it (the user's shell sees its job stop), continuing `troupe run` (the shell's
// `fg`) gives the command the terminal back, and Ctrl-C ends it.
TEST_F(Slices, OnATerminalTheCommandIsTheForegroundJobAndCtrlZAndCtrlCReachIt) {
  auto run = testing::PtyProcess::Start({TROUPE_BIN, "run", "-c", config_, "--memory", "4GiB", "--", "sh", "-c",
                                         "echo ready; read a; echo \"got $a\"; read b; echo \"got $b\"; sleep 60"});
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE((*run)->ReadLineWithPrefix("ready", 20s).ok()) << "the command did not start";
  ASSERT_TRUE((*run)->Type("one\n").ok());
  auto first = (*run)->ReadLineWithPrefix("got ", 10s);
  ASSERT_TRUE(first.ok()) << "the command could not read the terminal: " << first.status();
  EXPECT_EQ(*first, "one");

  ASSERT_TRUE((*run)->Type("\x1a").ok());  // Ctrl-Z
  auto stopped = (*run)->WaitForChange(20s);
  ASSERT_TRUE(stopped.ok()) << "troupe run did not stop with its command: " << stopped.status();
  ASSERT_TRUE(WIFSTOPPED(*stopped)) << "troupe run ended instead of stopping: " << *stopped;
  kill((*run)->pid(), SIGCONT);  // `fg`: troupe run leads the terminal's foreground group again
  ASSERT_TRUE((*run)->Type("two\n").ok());
  auto second = (*run)->ReadLineWithPrefix("got ", 20s);
  ASSERT_TRUE(second.ok()) << "the continued command did not get the terminal back: " << second.status();
  EXPECT_EQ(*second, "two");

  // A Ctrl-C that lands while the shell forks `sleep` is taken by the shell's own handler in the
  // child just before it runs sleep, and is lost, as at any shell: a user presses it again, and so
  // does this test (at most 10 times). troupe run ends once its command is gone and the lease is
  // released (a request to the head); a Ctrl-C meanwhile must not cut that short.
  StatusOr<int> ended = DeadlineExceededError("no Ctrl-C typed");
  for (int press = 0; press < 10 && !ended.ok(); ++press) {
    ASSERT_TRUE((*run)->Type("\x03").ok());
    ended = (*run)->WaitForChange(3s);
  }
  ASSERT_TRUE(ended.ok()) << "Ctrl-C did not end the command: " << ended.status();
  ASSERT_TRUE(WIFEXITED(*ended)) << *ended;
  EXPECT_EQ(WEXITSTATUS(*ended), 128 + SIGINT) << "troupe run returns its command's exit";
  EXPECT_EQ(FreeSlices("a"), 4);
}

TEST_F(Slices, ACommandDiesWithItsKilledLauncherAndItsSliceIsNeverLeasedTwice) {
  // 12 GiB fits on a alone (3 of its 4 slices): two such leases can never be held at once.
  auto holder = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "12GiB", "--", "sh", "-c",
                                     "echo pid $$; exec sleep 60"});
  ASSERT_TRUE(holder.ok()) << holder.status();
  auto pid_line = (*holder)->ReadLineWithPrefix("pid ", 20s);
  ASSERT_TRUE(pid_line.ok()) << pid_line.status();
  const pid_t command = std::stoi(*pid_line);
  (*holder)->Signal(SIGKILL);
  ASSERT_TRUE((*holder)->Wait(5s).ok());
  EXPECT_TRUE(testing::ExitsWithin(command, 10s)) << "the command outlived its killed `troupe run`";

  // The next holder of the slice finds the first command gone (a zombie not yet reaped by init
  // counts as gone: it runs nothing).
  const std::string state = "$(cut -d' ' -f3 /proc/" + std::to_string(command) + "/stat 2>/dev/null)";
  auto next = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "12GiB", "--", "sh", "-c",
                                   "s=" + state + "; [ -n \"$s\" ] && [ \"$s\" != Z ] && echo shared || echo alone"});
  ASSERT_TRUE(next.ok()) << next.status();
  auto verdict = (*next)->ReadLine(30s);
  ASSERT_TRUE(verdict.ok()) << verdict.status();
  EXPECT_EQ(*verdict, "alone") << "two commands ran on one slice";
  EXPECT_TRUE((*next)->Wait(20s).ok());
  kill(command, SIGKILL);
}

TEST_F(Slices, LeasesArePlacedShownAndReturnedWhenTheirHolderIsKilled) {
  auto lease = client_->RequestSlices(TwoNodeGang(), 10s);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(lease->grant.workers.size(), 2u);
  EXPECT_NE(lease->grant.workers[0].node, lease->grant.workers[1].node);
  EXPECT_EQ(FreeSlices("a"), 3);
  EXPECT_EQ(FreeSlices("b"), 0);
  std::string status = testing::FirstLine({TROUPE_BIN, "status", "-c", config_, "--json"});
  EXPECT_EQ(testing::NodeField(status, "a", "slices_free"), "3") << status;
  EXPECT_EQ(testing::NodeField(status, "a", "slices_total"), "4") << status;
  std::string json = SlicesJson();
  EXPECT_NE(json.find("\"lease_id\": " + std::to_string(lease->grant.lease_id)), std::string::npos) << json;
  EXPECT_NE(json.find(lease->owner.ToString()), std::string::npos) << "the owner is shown: " << json;
  ASSERT_TRUE(client_->ReleaseSlices(*lease, 5s).ok());
  EXPECT_EQ(FreeSlices("a"), 4);
  EXPECT_EQ(FreeSlices("b"), 1);

  // A quota that can never be met is refused at once, naming the tenant.
  cluster::LeaseRequest big;
  big.tenant = "team-a";
  big.slice_memory_bytes = 12 * kGiB;
  auto refused = client_->RequestSlices(big, 5s);
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("team-a"), std::string::npos) << refused.status();

  // A process holding a lease is killed: the lease comes back.
  auto holder = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "12GiB", "--", "sleep", "60"});
  ASSERT_TRUE(holder.ok());
  auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && FreeSlices("a") != 1) {
  }
  ASSERT_EQ(FreeSlices("a"), 1) << "troupe run did not get its 3 slices";
  auto killed = Clock::now();
  (*holder)->Signal(SIGKILL);
  (void)(*holder)->Wait(5s);
  const bool came_back = FreeSlicesBecome("a", 4, 10s);
  auto back = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed);
  EXPECT_TRUE(came_back) << "the killed holder's slices did not come back";
  std::printf("slices returned %lld ms after kill -9 of their holder\n", static_cast<long long>(back.count()));

  // Leases come and go repeatedly under one owner (scheduler_bench times this path).
  cluster::LeaseRequest one;
  one.slice_memory_bytes = 4 * kGiB;
  one.owner = client_->runtime().Spawn([]() -> caf::behavior { return {[](caf::ok_atom) {}}; });
  for (int i = 0; i < 10; ++i) {
    auto l = client_->RequestSlices(one, 5s);
    ASSERT_TRUE(l.ok()) << l.status();
    ASSERT_TRUE(client_->ReleaseSlices(*l, 5s).ok());
  }
  EXPECT_EQ(FreeSlices("a") + FreeSlices("b"), 5) << "every slice is free again";
}

TEST_F(Slices, ALeaseEndsWhenANodeItUsesIsLostAndItsOwnerIsTold) {
  // A lease over both nodes owned here, and `troupe run` (2 slices of a; b is full).
  auto told = std::make_shared<std::promise<std::string>>();
  auto lease = client_->RequestSlices(TwoNodeGang(), 10s, [told](const cluster::LeaseEnded& e) {
    try {
      told->set_value(e.reason);
    } catch (const std::future_error&) {  // told once is enough
    }
  });
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto holder = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "8GiB", "--", "sleep", "60"}, {},
                                    /*merge_stderr=*/true);
  ASSERT_TRUE(holder.ok());
  auto granted = (*holder)->ReadLineWithPrefix("troupe run: lease", 20s);
  ASSERT_TRUE(granted.ok()) << granted.status();
  ASSERT_NE(granted->find("node a"), std::string::npos) << *granted;
  ASSERT_EQ(FreeSlices("a"), 1);
  const std::string status = testing::FirstLine({TROUPE_BIN, "status", "-c", config_, "--json"});
  const std::string a_pid = testing::NodeField(status, "a", "pid");
  ASSERT_FALSE(a_pid.empty()) << status;
  ASSERT_EQ(kill(std::stoi(a_pid), SIGKILL), 0);

  // Both leases end: their owners are told, `troupe run` stops its command, and the gang's
  // slice on b comes back at once.
  auto reason = told->get_future();
  ASSERT_EQ(reason.wait_for(10s), std::future_status::ready) << "the lease's owner was not told";
  EXPECT_NE(reason.get().find("node 'a'"), std::string::npos);
  bool stopped = false;
  for (int i = 0; i < 10 && !stopped; ++i) {
    auto line = (*holder)->ReadLine(10s);
    if (!line.ok()) break;
    stopped = line->find(" ended: node 'a' was lost; stopping the command") != std::string::npos;
  }
  EXPECT_TRUE(stopped) << "troupe run did not report its lost lease";
  auto rc = (*holder)->Wait(10s);
  ASSERT_TRUE(rc.ok()) << "troupe run did not stop its command";
  EXPECT_EQ(WEXITSTATUS(*rc), 128 + SIGTERM);
  EXPECT_EQ(FreeSlices("b"), 1) << "the lost lease's slice on the surviving node did not come back";
  EXPECT_EQ(client_->ReleaseSlices(*lease, 5s).code(), StatusCode::kNotFound);

  // a is restarted by troupe up, rejoins, and its GPU takes work again.
  auto a_alive = [&] { return SlicesJson().find("{\"node\": \"a\", \"node_state\": \"alive\"") != std::string::npos; };
  auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && !a_alive()) {
  }
  EXPECT_TRUE(a_alive()) << "a did not rejoin";
  EXPECT_EQ(FreeSlices("a"), 4) << "a's GPU is free again";
  cluster::LeaseRequest whole_a;
  whole_a.slice_memory_bytes = 16 * kGiB;
  auto again = client_->RequestSlices(whole_a, 10s);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->grant.workers.at(0).node, "a");
}

TEST_F(Slices, LeasesOutliveARestartOfTheHead) {
  // Two holders: a lease over both nodes owned here, and `troupe run` (its own process) on a.
  cluster::LeaseRequest gang = TwoNodeGang();
  gang.key = "outlives-the-head";
  auto lease = client_->RequestSlices(gang, 10s);
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto holder = ChildProcess::Spawn({TROUPE_BIN, "run", "-c", config_, "--memory", "8GiB", "--", "sleep", "60"});
  ASSERT_TRUE(holder.ok());
  auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && FreeSlices("a") != 1) {
  }
  ASSERT_EQ(FreeSlices("a"), 1) << "troupe run did not get its 2 slices";

  // kill -9 of the head, and of the second holder while the head is down (troupe up starts the
  // head again). The new head takes both leases back from the nodes' reports; the dead
  // holder's comes back free, the live one stays counted: a has 3 free, b none.
  const auto killed = Clock::now();
  ASSERT_EQ(kill(head_pid_, SIGKILL), 0);
  (*holder)->Signal(SIGKILL);
  (void)(*holder)->Wait(5s);
  auto restarted = cluster_->up->ReadLineWithPrefix("head exited", 10s);
  ASSERT_TRUE(restarted.ok()) << "troupe up did not restart the head: " << restarted.status();
  deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && (FreeSlices("a") != 3 || FreeSlices("b") != 0)) {
  }
  std::printf("leases taken back %lld ms after kill -9 of the head\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed).count()));
  EXPECT_EQ(FreeSlices("a"), 3) << SlicesJson();
  EXPECT_EQ(FreeSlices("b"), 0) << "the live lease's slice on b was handed out again: " << SlicesJson();
  const std::string json = SlicesJson();
  EXPECT_NE(json.find("\"lease_id\": " + std::to_string(lease->grant.lease_id)), std::string::npos) << json;
  EXPECT_NE(json.find(lease->owner.ToString()), std::string::npos) << "the owner is shown again: " << json;

  // The request sent again with its key (as after a reply lost with the old head) gets the same
  // lease, not a second one; the key is not for another owner.
  gang.owner = lease->owner;
  auto same = client_->RequestSlices(gang, 10s);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->grant.lease_id, lease->grant.lease_id);
  EXPECT_EQ(FreeSlices("a"), 3) << "the lease was counted twice";
  gang.owner = {};
  EXPECT_EQ(client_->RequestSlices(gang, 10s).status().code(), StatusCode::kAlreadyExists);

  // The client finds the new head by itself; the lease is released there like any other.
  ASSERT_TRUE(client_->ReleaseSlices(*lease, 10s).ok());
  EXPECT_EQ(FreeSlices("a"), 4);
  EXPECT_EQ(FreeSlices("b"), 1);
}

TEST_F(Slices, SupervisionEventsReachTheHead) {
  runtime::SupervisorSpec spec;
  spec.name = "jobs";
  spec.event_sink = client_->head();
  runtime::ChildSpec child;
  child.id = "worker";
  auto& rt = client_->runtime();
  child.start = [&rt](const runtime::StartContext& ctx) -> StatusOr<runtime::ActorRef> {
    auto a = rt.system().spawn([](caf::event_based_actor* self) -> caf::behavior { return {[](caf::ok_atom) {}}; });
    if (ctx.attempt == 0) caf::anon_send_exit(a, caf::exit_reason::kill);  // fails once
    return rt.Ref(a);
  };
  spec.children.push_back(child);
  auto sup = runtime::StartSupervisor(rt, spec);
  auto deadline = Clock::now() + 10s;
  std::string json;
  while (Clock::now() < deadline && json.find("\"restarting\"") == std::string::npos) {
    auto child_process = ChildProcess::Spawn({TROUPE_BIN, "events", "-c", config_, "--json"});
    ASSERT_TRUE(child_process.ok());
    auto line = (*child_process)->ReadLine(20s);
    (void)(*child_process)->Wait(20s);
    json = line.ok() ? *line : "";
  }
  EXPECT_NE(json.find("\"supervisor\": \"jobs\", \"child\": \"worker\", \"kind\": \"restarting\""), std::string::npos)
      << json;
  caf::anon_send_exit(sup.handle(), caf::exit_reason::user_shutdown);
}

}  // namespace
}  // namespace troupe
