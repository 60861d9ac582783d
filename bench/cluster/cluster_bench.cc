// cluster_bench: how long a local cluster of 1, 4 and 16 nodes takes to be fully joined after
// `troupe up`; how fast the head sees a kill -9 of a node (median of several); and the
// heartbeat traffic per node. Baseline, printed beside: Ray's default node health check
// (health_check_period_ms 3000, health_check_timeout_ms 10000, failure threshold 5 in its
// ray_config_def.h), which declares a dead node after 15-50 s; troupe's target is under 1 s.
#include <nlohmann/json.hpp>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/client.h"
#include "cluster/config.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "bench/common/report.h"

namespace troupe::bench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Row {
  std::string metric, unit;
  double troupe;
  std::string baseline;
  std::string target;
  bool met;
};

std::string WriteConfig(const std::string& dir, int nodes) {
  std::string path = dir + "/cluster-" + std::to_string(nodes) + ".yaml";
  std::ofstream out(path);
  out << "cluster:\n  name: bench" << nodes << "\n  token: cluster-bench-token\n  log_level: warn\n"
      << "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head-" << nodes << "\nnodes:\n";
  for (int i = 0; i < nodes; ++i) out << "  - name: n" << i << "\n    cpus: 1\n    memory: 1GiB\n";
  return path;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? -1 : v[v.size() / 2];
}

int Run(bool quick, const std::string& json, int idle_minutes) {
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-cbench-XXXXXX").string();
  if (mkdtemp(templ.data()) == nullptr) return 1;
  std::vector<Row> rows;
  std::vector<int> sizes = quick ? std::vector<int>{1, 4} : std::vector<int>{1, 4, 16};
  for (int n : sizes) {
    std::string config_path = WriteConfig(templ, n);
    auto start = Clock::now();
    auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_path});
    if (!up.ok()) return 1;
    auto line = (*up)->ReadLineWithPrefix("cluster bench", 120s);
    if (!line.ok()) {
      std::cerr << "cluster_bench: " << n << "-node cluster did not come up: " << line.status() << "\n";
      return 1;
    }
    double join_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    rows.push_back({"fully joined after `troupe up`, " + std::to_string(n) + " node(s)", "ms", join_ms, "(none)",
                    "(info)", true});

    if (n == 4) {
      auto config = cluster::LoadClusterConfig(config_path);
      auto client = config.ok() ? cluster::Client::Connect(*config, "", 5s) : StatusOr<std::unique_ptr<cluster::Client>>(config.status());
      if (!client.ok()) {
        std::cerr << "cluster_bench: " << client.status() << "\n";
        return 1;
      }
      // Heartbeat traffic: what an idle peer receives from the head, per second.
      auto before = (*client)->runtime().stats().transport;
      auto t0 = Clock::now();
      auto idle = quick ? 1s : 3s;
      std::this_thread::sleep_for(idle);  // nothing but heartbeats on the connection meanwhile
      auto after = (*client)->runtime().stats().transport;
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      double frames = (after.frames_received - before.frames_received) / secs;
      double bytes = (after.bytes_received - before.bytes_received) / secs;
      rows.push_back({"heartbeat frames per node and direction (interval 100 ms)", "frames/s", frames, "(none)",
                      "(info)", true});
      rows.push_back({"heartbeat payload bytes per node and direction (+ ~40 B envelope each)", "B/s", bytes,
                      "(none)", "(info)", true});

      // Failure detection: kill -9 a node, time until the head says dead; `up` restarts it.
      std::vector<double> detections;
      int rounds = quick ? 3 : 7;
      for (int r = 0; r < rounds; ++r) {
        std::string name = "n" + std::to_string(r % n);
        auto list = (*client)->ListNodes(5s);
        if (!list.ok()) return 1;
        int64_t pid = 0;
        uint64_t joins = 0;
        for (const auto& node : list->nodes) {
          if (node.name == name && node.state == "alive") pid = node.pid, joins = node.joins;
        }
        if (pid == 0) {
          --r;  // still rejoining from the last round
          std::this_thread::sleep_for(20ms);
          continue;
        }
        auto killed = Clock::now();
        kill(static_cast<pid_t>(pid), SIGKILL);
        double seen = -1;
        while (Clock::now() - killed < 10s && seen < 0) {
          auto l = (*client)->ListNodes(2s);
          if (!l.ok()) continue;
          for (const auto& node : l->nodes) {
            if (node.name == name && (node.state == "dead" || node.joins > joins)) {
              seen = std::chrono::duration<double, std::milli>(Clock::now() - killed).count();
            }
          }
        }
        detections.push_back(seen);
      }
      double median = Median(detections);
      rows.push_back({"kill -9 of a node seen dead by the head (median of " + std::to_string(rounds) + ")", "ms",
                      median, "Ray default: 15000-50000 ms", "< 1000 ms", median >= 0 && median < 1000});
    }
    if (n == 16 && idle_minutes > 0) {
      // An idle 16-node cluster: any node reported dead or suspect is a false positive.
      auto config = cluster::LoadClusterConfig(config_path);
      auto client = config.ok() ? cluster::Client::Connect(*config, "", 5s)
                                : StatusOr<std::unique_ptr<cluster::Client>>(config.status());
      if (!client.ok()) return 1;
      std::atomic<int> losses{0};
      auto sub = (*client)->SubscribeMembership(
          [&losses](const cluster::NodeRecord& node) {
            if (node.state != "alive") {
              ++losses;
              std::fprintf(stderr, "false positive: node %s %s (%s)\n", node.name.c_str(), node.state.c_str(),
                           node.reason.c_str());
            }
          },
          5s);
      if (!sub.ok()) return 1;
      int suspects = 0;
      int64_t max_age = 0;
      auto until = Clock::now() + std::chrono::minutes(idle_minutes);
      while (Clock::now() < until) {
        std::this_thread::sleep_for(1s);
        auto list = (*client)->ListNodes(5s);
        if (!list.ok()) continue;
        for (const auto& node : list->nodes) {
          if (node.state == "suspect") ++suspects;
          max_age = std::max(max_age, node.heartbeat_age_ms);
        }
      }
      std::fprintf(stderr, "idle run: %d minute(s), %d loss event(s), %d suspect sightings, max heartbeat age %lld ms\n",
                   idle_minutes, losses.load(), suspects, static_cast<long long>(max_age));
      rows.push_back({"false node losses, 16 idle nodes for " + std::to_string(idle_minutes) + " min", "events",
                      static_cast<double>(losses.load()), "(none)", "0", losses.load() == 0});
      rows.push_back({"max heartbeat age seen in the idle run (1 s polls)", "ms", static_cast<double>(max_age), "(none)",
                      "< 1000 ms", max_age < 1000});
    }
    (*up)->Signal(SIGTERM);
    (void)(*up)->Wait(30s);
  }
  std::filesystem::remove_all(templ);

  std::printf("\n%-70s %-9s %10s  %-28s %-10s %s\n", "metric", "unit", "troupe", "baseline", "target", "met");
  for (const auto& r : rows) {
    std::printf("%-70s %-9s %10.1f  %-28s %-10s %s\n", r.metric.c_str(), r.unit.c_str(), r.troupe, r.baseline.c_str(),
                r.target.c_str(), r.met ? "yes" : "no");
  }
  if (!json.empty()) {
    nlohmann::ordered_json report = {{"benchmark", "cluster"}, {"quick", quick}, {"rows", nlohmann::ordered_json::array()}};
    for (const auto& r : rows) {
      report["rows"].push_back({{"metric", r.metric},
                                {"unit", r.unit},
                                {"troupe", r.troupe},
                                {"baseline", r.baseline},
                                {"target", r.target},
                                {"met", r.met}});
    }
    if (!WriteJsonFile(json, report, "cluster_bench")) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  (void)troupe::InitLogging("warn");
  bool quick = false;
  int idle_minutes = 0;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--idle-minutes" && i + 1 < argc) {
      idle_minutes = std::atoi(argv[++i]);
    } else {
      std::cerr << "usage: cluster_bench [--quick] [--json PATH] [--idle-minutes M]\n";
      return 2;
    }
  }
  return troupe::bench::Run(quick, json, idle_minutes);
}
