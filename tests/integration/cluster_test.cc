// A real local cluster: `troupe head` and `troupe node` processes from a config file, `troupe
// status --json`, kill -9 and SIGSTOP of nodes, a head restart recovering its state from LMDB,
// and `troupe up` / `troupe down`.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "common/child_process.h"
#include "tests/support/http_get.h"
#include "tests/support/troupe_processes.h"

#include <nlohmann/json.hpp>

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class Cluster : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-cluster-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    config_ = dir_ + "/cluster.yaml";
    std::ofstream(config_) << "cluster:\n  name: test\n  token: cluster-test-token\n  log_level: warn\n"
                              "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
                              "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                              "nodes:\n"
                              "  - name: a\n    cpus: 2\n    memory: 4GiB\n"
                              "    gpus:\n      simulated:\n        - memory: 16GiB\n    slice_memory: 4GiB\n"
                              "  - name: b\n    cpus: 1\n    memory: 1GiB\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<ChildProcess> Start(std::vector<std::string> args, const std::string& ready) {
    args.insert(args.begin(), TROUPE_BIN);
    args.insert(args.end(), {"-c", config_});
    return testing::StartUntilReady(args, ready);
  }

  // `troupe status --json`, one line ("" when it fails: check with StatusExitCode).
  std::string Status() { return testing::FirstLine({TROUPE_BIN, "status", "-c", config_, "--json"}); }

  // The exit code of `troupe status` and what it printed: non-zero with a message naming the
  // head when nothing answers (not merely "printed nothing", which a crash would do too).
  std::pair<int, std::string> StatusExitCode() {
    auto status = ChildProcess::Spawn({TROUPE_BIN, "status", "-c", config_}, {}, /*merge_stderr=*/true);
    if (!status.ok()) return {-1, status.status().ToString()};
    std::string out;
    for (auto line = (*status)->ReadLine(20s); line.ok(); line = (*status)->ReadLine(20s)) out += *line + "\n";
    auto rc = (*status)->Wait(20s);
    return {rc.ok() && WIFEXITED(*rc) ? WEXITSTATUS(*rc) : -1, out};
  }

  static std::string Field(const std::string& status, const std::string& name, const std::string& field) {
    return testing::NodeField(status, name, field);
  }

  // Polls status until node `name` has `state`; returns how long it took (or -1 ms).
  std::chrono::milliseconds WaitState(const std::string& name, const std::string& state, std::chrono::milliseconds limit) {
    auto start = Clock::now();
    while (Clock::now() - start < limit) {
      if (Field(Status(), name, "state") == state) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
      }
    }
    return std::chrono::milliseconds(-1);
  }

  std::string dir_, config_;
};

TEST_F(Cluster, NodesJoinFailAndRejoinAndTheHeadRecoversItsState) {
  auto head = Start({"head"}, "READY ");
  ASSERT_TRUE(head);
  auto a = Start({"node", "--name", "a"}, "JOINED ");
  auto b = Start({"node", "--name", "b"}, "JOINED ");
  ASSERT_TRUE(a && b);

  std::string status = Status();
  EXPECT_EQ(Field(status, "a", "state"), "alive") << status;
  EXPECT_EQ(Field(status, "b", "state"), "alive") << status;
  EXPECT_EQ(Field(status, "a", "cpus"), "2");
  EXPECT_NE(status.find("\"simulated\": true"), std::string::npos) << "simulated GPUs must say so: " << status;

  // kill -9: the head marks it dead within 1 s, by the time it records for the change (each
  // `troupe status` poll takes hundreds of ms under ASan: timing the polls measured them, and
  // failed at 1036 ms in a CI run where the head had seen the loss at once).
  const int64_t killed_unix_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  a->Signal(SIGKILL);
  ASSERT_TRUE(a->Wait(5s).ok());
  auto seen = WaitState("a", "dead", 5s);
  ASSERT_GE(seen.count(), 0) << "node a was never reported dead: " << Status();
  status = Status();
  const std::string since = Field(status, "a", "state_since_unix_ms");
  ASSERT_FALSE(since.empty()) << status;
  const int64_t dead_after = std::stoll(since) - killed_unix_ms;
  EXPECT_GE(dead_after, 0) << "the head's record of a's loss is older than the kill: " << status;
  EXPECT_LE(dead_after, 1000) << "kill -9 seen after " << dead_after << " ms";
  std::printf("kill -9 of a node marked dead by the head %lld ms after the kill\n", static_cast<long long>(dead_after));

  // Restarted, it rejoins under the same name.
  a = Start({"node", "--name", "a"}, "JOINED ");
  ASSERT_TRUE(a);
  status = Status();
  EXPECT_EQ(Field(status, "a", "state"), "alive") << status;
  EXPECT_EQ(Field(status, "a", "joins"), "2") << status;

  // A hung node (SIGSTOP) is dead within the failure timeout (plus the poll).
  auto stopped_at = Clock::now();
  ASSERT_TRUE(b->Suspend().ok());
  ASSERT_GE(WaitState("b", "dead", 10s).count(), 0) << "hung node b was never reported dead";
  auto hung_after = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped_at);
  EXPECT_LE(hung_after, 2500ms);
  std::printf("SIGSTOP of a node reported dead %lld ms later (failure timeout 1 s)\n",
              static_cast<long long>(hung_after.count()));
  b->Signal(SIGKILL);
  (void)b->Wait(5s);

  // kill -9 of the head: a new head recovers the nodes from LMDB and node a rejoins by itself.
  head->Signal(SIGKILL);
  ASSERT_TRUE(head->Wait(5s).ok());
  head = Start({"head"}, "READY ");
  ASSERT_TRUE(head);
  ASSERT_GE(WaitState("a", "alive", 15s).count(), 0) << "node a did not rejoin the restarted head: " << Status();
  status = Status();
  EXPECT_EQ(Field(status, "a", "joins"), "3") << status;
  EXPECT_EQ(Field(status, "b", "state"), "dead") << "the head forgot node b: " << status;
  head->Signal(SIGTERM);
  a->Signal(SIGTERM);
  EXPECT_TRUE(head->Wait(10s).ok());
  EXPECT_TRUE(a->Wait(10s).ok());
}

TEST_F(Cluster, UpStartsEverythingRestartsACrashedNodeAndDownStopsIt) {
  auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_});
  ASSERT_TRUE(up.ok()) << up.status();
  auto line = (*up)->ReadLineWithPrefix("cluster test up", 60s);
  ASSERT_TRUE(line.ok()) << "troupe up did not come up: " << line.status();
  std::string status = Status();
  EXPECT_EQ(Field(status, "a", "state"), "alive") << status;
  EXPECT_EQ(Field(status, "b", "state"), "alive") << status;

  pid_t b_pid = std::stoi(Field(status, "b", "pid"));
  ASSERT_EQ(kill(b_pid, SIGKILL), 0);
  auto restarted = (*up)->ReadLineWithPrefix("node b exited", 10s);
  ASSERT_TRUE(restarted.ok()) << "up did not restart node b: " << restarted.status();
  auto deadline = Clock::now() + 15s;
  while (Clock::now() < deadline && Field(Status(), "b", "joins") != "2") {
  }
  EXPECT_EQ(Field(Status(), "b", "joins"), "2") << "the restarted node b did not rejoin";

  auto down = ChildProcess::Spawn({TROUPE_BIN, "down", "-c", config_});
  ASSERT_TRUE(down.ok());
  auto rc = (*down)->Wait(30s);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(WEXITSTATUS(*rc), 0);
  auto up_rc = (*up)->Wait(30s);
  ASSERT_TRUE(up_rc.ok()) << "troupe up did not exit after down";
  EXPECT_EQ(WEXITSTATUS(*up_rc), 0);
  auto [code, said] = StatusExitCode();
  EXPECT_EQ(code, 1) << "the head still answers after down: " << said;
  EXPECT_NE(said.find("head"), std::string::npos) << said;
}

// The command line `ps` shows for `pid`, its NUL separators as spaces.
std::string CommandLine(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  for (char& c : text) c = c == '\0' ? ' ' : c;
  return text;
}

TEST_F(Cluster, UpMembersShowTheirNamesAndDieWithAKilledUp) {
  auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_});
  ASSERT_TRUE(up.ok()) << up.status();
  std::map<std::string, pid_t> members;  // "head", "node a", "node b" -> pid
  for (int i = 0; i < 3; ++i) {
    auto line = (*up)->ReadLine(60s);  // "node a         pid 1234"
    ASSERT_TRUE(line.ok()) << "troupe up did not list its members: " << line.status();
    auto at = line->find(" pid ");
    ASSERT_NE(at, std::string::npos) << *line;
    std::string label = line->substr(0, at);
    label.erase(label.find_last_not_of(' ') + 1);
    members[label] = std::stoi(line->substr(at + 5));
  }
  ASSERT_TRUE((*up)->ReadLineWithPrefix("cluster test up", 60s).ok());
  ASSERT_EQ(members.size(), 3u);
  // Operators look for `troupe head` and `troupe node --name a`, not /proc/self/exe.
  EXPECT_EQ(CommandLine(members["head"]).rfind("troupe head -c ", 0), 0u) << CommandLine(members["head"]);
  EXPECT_EQ(CommandLine(members["node a"]).rfind("troupe node --name a -c ", 0), 0u) << CommandLine(members["node a"]);
  std::ifstream comm("/proc/" + std::to_string(members["head"]) + "/comm");
  std::string name;
  std::getline(comm, name);
  EXPECT_EQ(name, "troupe");

  // kill -9 of `troupe up` takes its cluster with it: nothing is left that `troupe down` could
  // not stop and that a new `troupe up` would collide with.
  (*up)->Signal(SIGKILL);
  ASSERT_TRUE((*up)->Wait(10s).ok());
  for (const auto& [label, pid] : members) {
    const bool gone = testing::ExitsWithin(pid, 10s);
    EXPECT_TRUE(gone) << label << " (pid " << pid << ") outlived troupe up";
    if (!gone) kill(pid, SIGKILL);
  }
}

// Series of `metric` in a Prometheus text exposition.
int SeriesOf(const std::string& exposition, const std::string& metric) {
  int n = 0;
  for (size_t at = exposition.find("\n" + metric + "{"); at != std::string::npos;
       at = exposition.find("\n" + metric + "{", at + 1)) {
    ++n;
  }
  return n;
}

TEST_F(Cluster, ShortLivedClientsLeaveNoSeriesOrPeerStateBehindInTheHead) {
  auto head = Start({"head"}, "READY ");
  ASSERT_TRUE(head);
  // The head's metrics endpoint, from the scrape list it writes.
  std::ifstream targets(dir_ + "/head/prometheus-targets.json");
  auto list = nlohmann::json::parse(targets, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(list.is_array() && !list.empty()) << "no scrape list";
  const std::string address = list[0]["targets"][0].get<std::string>();
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  // Twenty `troupe status` calls: each is a new node id to the head (66 series became 306
  // after 60 such calls when every peer id stayed a label value).
  for (int i = 0; i < 20; ++i) ASSERT_NE(Status(), "") << "troupe status failed";
  std::string metrics;
  auto deadline = Clock::now() + 10s;
  do {
    metrics = testing::HttpGet(port, "/metrics");
  } while ((SeriesOf(metrics, "troupe_transport_peer_frames_total") > 2 ||
            metrics.find("\ntroupe_transport_peers_known{node=\"head\"} 0") == std::string::npos) &&
           Clock::now() < deadline);
  ASSERT_NE(metrics, "") << "no metrics from the head at " << address;
  EXPECT_EQ(SeriesOf(metrics, "troupe_transport_peer_frames_total"), 2)
      << "per-client series stay after the clients went (only peer=\"departed\" in and out should)";
  EXPECT_NE(metrics.find("peer=\"departed\""), std::string::npos) << "the clients' traffic is not summed";
  EXPECT_NE(metrics.find("\ntroupe_transport_peers_known{node=\"head\"} 0"), std::string::npos)
      << "the head still tracks clients that went";
  head->Signal(SIGTERM);
  EXPECT_TRUE(head->Wait(10s).ok());
}

// SIGTERM stops a joined node (with slice actors) and the head, each with exit status 0. Under
// ASan this is also the leak check: an actor left running when a process's actor system goes
// is never freed, and LeakSanitizer then turns the exit status into 1.
TEST_F(Cluster, ANodeAndTheHeadStoppedBySigtermExitCleanly) {
  auto head = Start({"head"}, "READY ");
  ASSERT_TRUE(head);
  auto a = Start({"node", "--name", "a"}, "JOINED ");
  ASSERT_TRUE(a);
  a->Signal(SIGTERM);
  auto a_exit = a->Wait(10s);
  ASSERT_TRUE(a_exit.ok()) << "node a did not stop within 10 s of SIGTERM";
  EXPECT_TRUE(WIFEXITED(*a_exit) && WEXITSTATUS(*a_exit) == 0)
      << "node a: wait status " << *a_exit
      << " (under ASan, LeakSanitizer ends a leaking process with status 1, or SIGABRT with abort_on_error)";
  head->Signal(SIGTERM);
  auto head_exit = head->Wait(10s);
  ASSERT_TRUE(head_exit.ok()) << "the head did not stop within 10 s of SIGTERM";
  EXPECT_TRUE(WIFEXITED(*head_exit) && WEXITSTATUS(*head_exit) == 0) << "head: wait status " << *head_exit;
}

TEST_F(Cluster, AClientProgramSeesMembershipEvents) {
  auto head = Start({"head"}, "READY ");
  auto a = Start({"node", "--name", "a"}, "JOINED ");
  ASSERT_TRUE(head && a);
  auto client = ChildProcess::Spawn({TROUPE_CLUSTER_CLIENT_BIN, "-c", config_, "--watch", "30"});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->ReadLineWithPrefix("  node a is alive", 20s).ok()) << "the client did not list node a";
  ASSERT_TRUE((*client)->ReadLineWithPrefix("watching membership", 20s).ok());
  auto b = Start({"node", "--name", "b"}, "JOINED ");
  ASSERT_TRUE(b);
  EXPECT_TRUE((*client)->ReadLineWithPrefix("event: node b is alive", 20s).ok()) << "no event for b joining";
  b->Signal(SIGKILL);
  ASSERT_TRUE(b->Wait(5s).ok());
  auto dead = (*client)->ReadLineWithPrefix("event: node b is dead", 20s);
  EXPECT_TRUE(dead.ok()) << "no event for b's loss";
  (*client)->Signal(SIGTERM);
  (void)(*client)->Wait(10s);
  head->Signal(SIGTERM);
  a->Signal(SIGTERM);
  (void)head->Wait(10s);
  (void)a->Wait(10s);
}

TEST_F(Cluster, ANodeWithTheWrongTokenIsRefused) {
  auto head = Start({"head"}, "READY ");
  ASSERT_TRUE(head);
  std::string wrong = dir_ + "/wrong-token.yaml";
  {
    std::ifstream in(config_);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    text.replace(text.find("cluster-test-token"), 18, "not-the-real-token");
    // Same cluster and head, so the node finds the head; only the token differs.
    text.replace(text.find("data_dir: head"), 14, "data_dir: " + dir_ + "/head");
    std::ofstream(wrong) << text;
  }
  auto node = ChildProcess::Spawn({TROUPE_BIN, "node", "-c", wrong, "--name", "a", "--log-level", "info"}, {},
                                  /*merge_stderr=*/true);
  ASSERT_TRUE(node.ok());
  bool saw_refusal = false;
  auto deadline = Clock::now() + 10s;
  while (!saw_refusal && Clock::now() < deadline) {
    auto line = (*node)->ReadLine(5s);
    if (!line.ok()) break;
    ASSERT_EQ(line->find("JOINED"), std::string::npos) << "a node with the wrong token joined";
    saw_refusal = line->find("cannot join the head yet") != std::string::npos;
  }
  EXPECT_TRUE(saw_refusal) << "the node did not report that it cannot join";
  const std::string listed = Status();
  auto nodes = nlohmann::json::parse(listed, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(nodes.contains("nodes")) << "troupe status failed: " << listed;
  for (const auto& n : nodes["nodes"]) {
    EXPECT_NE(n.value("name", ""), "a") << "the head lists a node that never authenticated: " << listed;
  }
  (*node)->Signal(SIGTERM);
  (void)(*node)->Wait(10s);
  head->Signal(SIGTERM);
  EXPECT_TRUE(head->Wait(10s).ok());
}

TEST_F(Cluster, ANodesOwnLogLevelOverridesTheClusters) {
  // The cluster logs at warn; node a asks for info in its own entry.
  {
    std::ifstream in(config_);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    text.replace(text.find("  - name: a\n"), 12, "  - name: a\n    log_level: info\n");
    std::ofstream(config_) << text;
  }
  auto head = Start({"head"}, "READY ");
  ASSERT_TRUE(head);
  auto node = ChildProcess::Spawn({TROUPE_BIN, "node", "-c", config_, "--name", "a"}, {}, /*merge_stderr=*/true);
  ASSERT_TRUE(node.ok()) << node.status();
  bool info_logged = false;
  while (!info_logged) {
    auto line = (*node)->ReadLine(20s);
    if (!line.ok()) break;
    info_logged = line->find(" info ") != std::string::npos && line->find("joined cluster") != std::string::npos;
  }
  EXPECT_TRUE(info_logged) << "node a did not log at its own level (info)";
  (*node)->Signal(SIGTERM);
  EXPECT_TRUE((*node)->Wait(10s).ok());
  head->Signal(SIGTERM);
  EXPECT_TRUE(head->Wait(10s).ok());
}

TEST_F(Cluster, BadConfigAndUnreachableHeadGiveClearErrors) {
  std::ofstream(dir_ + "/bad.yaml") << "cluster:\n  name: x\n  tokn: 1\n";
  auto bad = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", dir_ + "/bad.yaml"}, {}, /*merge_stderr=*/true);
  ASSERT_TRUE(bad.ok());
  auto msg = (*bad)->ReadLine(10s);
  ASSERT_TRUE(msg.ok());
  EXPECT_NE(msg->find("bad.yaml:3:3: cluster.tokn: unknown key"), std::string::npos) << *msg;
  EXPECT_EQ(WEXITSTATUS(*(*bad)->Wait(10s)), 2);

  auto status = ChildProcess::Spawn({TROUPE_BIN, "status", "-c", config_}, {}, /*merge_stderr=*/true);
  ASSERT_TRUE(status.ok());
  auto err = (*status)->ReadLine(20s);
  ASSERT_TRUE(err.ok());
  EXPECT_NE(err->find("head.address"), std::string::npos) << *err;
  EXPECT_EQ(WEXITSTATUS(*(*status)->Wait(20s)), 1);
}

}  // namespace
}  // namespace troupe
