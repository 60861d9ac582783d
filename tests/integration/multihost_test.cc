// Multi-host on one machine: the head and two nodes each in their own network namespace with
// their own address (a bridge in the head's namespace, a veth to each node). Cutting a node's
// link marks it dead within the failure timeout; restoring the link brings it back. Skips, with
// the reason, where namespaces cannot be made (not root, no CAP_NET_ADMIN, no `ip`).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "tests/support/troupe_processes.h"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

int RunCommand(const std::vector<std::string>& argv) { return testing::RunToExit(argv); }

class MultiHost : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string id = std::to_string(getpid() % 100000);
    ns_ = {"trp" + id + "h", "trp" + id + "a", "trp" + id + "b"};
    veth_host_ = {"vh1-" + id, "vh2-" + id};
    veth_node_ = {"vn1-" + id, "vn2-" + id};
    std::vector<std::vector<std::string>> setup = {
        {"ip", "netns", "add", ns_[0]}, {"ip", "netns", "add", ns_[1]}, {"ip", "netns", "add", ns_[2]},
        {"ip", "-n", ns_[0], "link", "set", "lo", "up"}, {"ip", "-n", ns_[1], "link", "set", "lo", "up"},
        {"ip", "-n", ns_[2], "link", "set", "lo", "up"},
        {"ip", "-n", ns_[0], "link", "add", "br0", "type", "bridge"},
        {"ip", "-n", ns_[0], "addr", "add", "10.77.0.1/24", "dev", "br0"},
        {"ip", "-n", ns_[0], "link", "set", "br0", "up"},
    };
    for (int k = 0; k < 2; ++k) {
      const std::string& node_ns = ns_[k + 1];
      std::string ip = "10.77.0.1" + std::to_string(k + 1) + "/24";
      std::vector<std::vector<std::string>> link = {
          {"ip", "link", "add", veth_host_[k], "type", "veth", "peer", "name", veth_node_[k]},
          {"ip", "link", "set", veth_host_[k], "netns", ns_[0]},
          {"ip", "link", "set", veth_node_[k], "netns", node_ns},
          {"ip", "-n", ns_[0], "link", "set", veth_host_[k], "master", "br0"},
          {"ip", "-n", ns_[0], "link", "set", veth_host_[k], "up"},
          {"ip", "-n", node_ns, "addr", "add", ip, "dev", veth_node_[k]},
          {"ip", "-n", node_ns, "link", "set", veth_node_[k], "up"},
      };
      setup.insert(setup.end(), link.begin(), link.end());
    }
    for (const auto& cmd : setup) {
      if (RunCommand(cmd) != 0) {
        std::string text;
        for (const auto& a : cmd) text += a + " ";
        skip_ = "cannot create network namespaces here (needs root with CAP_NET_ADMIN and iproute2): `" + text +
                "` failed. It runs where those exist: in CI, where .ci/run runs as root and "
                "scripts/bootstrap.sh installs iproute2, or by hand with `sudo ctest -R MultiHost`";
        return;
      }
    }
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-mh-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    config_ = dir_ + "/cluster.yaml";
    std::ofstream(config_) << "cluster:\n  name: mh\n  token: multi-host-test-token\n  log_level: warn\n"
                              "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
                              "head:\n  address: 10.77.0.1\n  port: 7400\n  data_dir: head\n"
                              "nodes:\n  - name: a\n    listen: 10.77.0.11:7401\n"
                              "  - name: b\n    listen: 10.77.0.12:7401\n";
  }

  void TearDown() override {
    for (const auto& ns : ns_) RunCommand({"ip", "netns", "del", ns});
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // The interface each namespace talks through (UCX_NET_DEVICES): a real host with several
  // NICs would name its cluster network the same way.
  std::string DeviceOf(const std::string& ns) const {
    if (ns == ns_[1]) return veth_node_[0];
    if (ns == ns_[2]) return veth_node_[1];
    return "br0";
  }

  std::unique_ptr<ChildProcess> StartIn(const std::string& ns, std::vector<std::string> args, const std::string& ready) {
    std::vector<std::string> argv = {"ip", "netns", "exec", ns, TROUPE_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"-c", config_});
    // Namespaces share /dev/shm, so UCX would pick shared memory and bypass the links under
    // test; separate hosts could only use the network, so these processes do too.
    return testing::StartUntilReady(argv, ready, {"UCX_TLS=tcp", "UCX_NET_DEVICES=" + DeviceOf(ns)});
  }

  std::string State(const std::string& node, std::string* joins = nullptr) {
    last_status_ = testing::FirstLine({"ip", "netns", "exec", ns_[0], TROUPE_BIN, "status", "-c", config_, "--json"},
                                      {"UCX_TLS=tcp"});
    if (joins) *joins = testing::NodeField(last_status_, node, "joins");
    return testing::NodeField(last_status_, node, "state");
  }

  std::vector<std::string> ns_, veth_host_, veth_node_;
  std::string dir_, config_, skip_, last_status_;
};

TEST_F(MultiHost, ACutLinkMarksTheNodeDeadAndRestoringItBringsItBack) {
  if (!skip_.empty()) GTEST_SKIP() << skip_;
  auto head = StartIn(ns_[0], {"head"}, "READY ");
  ASSERT_TRUE(head);
  auto a = StartIn(ns_[1], {"node", "--name", "a"}, "JOINED ");
  auto b = StartIn(ns_[2], {"node", "--name", "b"}, "JOINED ");
  ASSERT_TRUE(a && b);
  ASSERT_EQ(State("a"), "alive") << last_status_;
  ASSERT_EQ(State("b"), "alive") << last_status_;

  auto cut = Clock::now();
  ASSERT_EQ(RunCommand({"ip", "-n", ns_[0], "link", "set", veth_host_[0], "down"}), 0);
  std::string state;
  while (Clock::now() - cut < 10s && (state = State("a")) != "dead") {
  }
  auto seen = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - cut);
  ASSERT_EQ(state, "dead") << "node a was not marked dead after its link was cut";
  EXPECT_LE(seen, 2500ms) << "failure timeout is 1 s; seen after " << seen.count() << " ms";
  EXPECT_EQ(State("b"), "alive") << "the other node was affected";
  std::printf("link cut: node a dead after %lld ms (failure timeout 1 s)\n", static_cast<long long>(seen.count()));

  ASSERT_EQ(RunCommand({"ip", "-n", ns_[0], "link", "set", veth_host_[0], "up"}), 0);
  std::string joins;
  auto restored = Clock::now();
  while (Clock::now() - restored < 30s && !(State("a", &joins) == "alive" && joins == "2")) {
  }
  EXPECT_EQ(State("a", &joins), "alive") << "node a did not come back after the link was restored";
  EXPECT_EQ(joins, "2");
  std::printf("link restored: node a back after %lld ms\n",
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - restored).count()));
  for (auto* p : {&a, &b, &head}) (*p)->Signal(SIGTERM);
  for (auto* p : {&a, &b, &head}) (void)(*p)->Wait(10s);
}

}  // namespace
}  // namespace troupe
