// LocalCluster: a real cluster for a test, started with `troupe up` from a cluster file written
// into a fresh temporary directory, and a client connected to it.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "cluster/client.h"
#include "common/child_process.h"

namespace troupe {

/// The cluster file of a cluster `name` with a head and two CPU nodes `a` and `b` (2 CPUs, 4 GiB
/// each) on loopback, a 100 ms heartbeat and a 1 s failure timeout: nodes lost fast, for tests.
inline std::string TwoNodeClusterYaml(const std::string& name) {
  return "cluster:\n  name: " + name + "\n  token: " + name + "-test-token\n  log_level: warn\n"
         "  heartbeat_interval: 100ms\n  failure_timeout: 1s\n"
         "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
         "nodes:\n"
         "  - name: a\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-a\n"
         "  - name: b\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-b\n";
}

class LocalCluster {
 public:
  /// Writes `yaml` (a cluster file whose cluster is called `name`; relative data_dirs land in the
  /// directory) to `<dir>/cluster.yaml` in a new directory `/tmp/<prefix>-XXXXXX`, runs
  /// `troupe up` on it and waits (60 s at most) for "cluster <name> up", noting each member's pid
  /// ("head", "node a"), then connects a client. On failure records a test failure and returns
  /// nullptr. Destroying it stops the cluster (SIGTERM) and removes the directory.
  static std::unique_ptr<LocalCluster> Start(const std::string& prefix, const std::string& name,
                                             const std::string& yaml) {
    using namespace std::chrono_literals;
    std::unique_ptr<LocalCluster> c(new LocalCluster());
    std::string templ = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (mkdtemp(templ.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
      return nullptr;
    }
    c->dir = templ;
    c->config = c->dir + "/cluster.yaml";
    std::ofstream(c->config) << yaml;
    auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", c->config});
    if (!up.ok()) {
      ADD_FAILURE() << up.status();
      return nullptr;
    }
    c->up = std::move(*up);
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      auto line = c->up->ReadLine(std::max(left, std::chrono::milliseconds(1)));
      if (!line.ok()) {
        ADD_FAILURE() << "troupe up did not come up: " << line.status();
        return nullptr;
      }
      if (line->rfind("cluster " + name + " up", 0) == 0) break;
      // "head           pid 1234", "node a         pid 1235"
      if (auto at = line->find(" pid "); at != std::string::npos) {
        std::string label = line->substr(0, at);
        label.erase(label.find_last_not_of(' ') + 1);
        c->pids[label] = std::atoi(line->c_str() + at + 5);
      }
    }
    auto config = cluster::LoadClusterConfig(c->config);
    if (!config.ok()) {
      ADD_FAILURE() << config.status();
      return nullptr;
    }
    auto client = cluster::Client::Connect(*config, "", 5s);
    if (!client.ok()) {
      ADD_FAILURE() << client.status();
      return nullptr;
    }
    c->client = std::move(*client);
    return c;
  }

  ~LocalCluster() {
    client.reset();
    if (up) {
      up->Signal(SIGTERM);
      (void)up->Wait(std::chrono::seconds(30));
    }
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }

  std::string dir;
  std::string config;
  std::unique_ptr<ChildProcess> up;
  std::unique_ptr<cluster::Client> client;
  /// The members' pids as `troupe up` printed them at start ("head", "node a", ...).
  std::map<std::string, pid_t> pids;

 private:
  LocalCluster() = default;
};

}  // namespace troupe
