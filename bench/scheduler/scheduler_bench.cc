// scheduler_bench: placement decisions per second on simulated clusters of 100, 1,000 and
// 10,000 nodes with 8 GPUs each (8 slices per GPU), kept 90% full, for single-slice requests and
// 8-worker gang requests, timed by Google Benchmark (the scheduler is a pure function of its
// state). A decision here is a whole scheduler round trip: Submit, Schedule (the grant) and the
// Release of an older grant that keeps the cluster at 90%.
//
// Baselines printed beside, from the same run: a linear scan for the least-loaded fitting GPU
// (what a scheduler without troupe's index does per decision), and Ray's published
// placement-group create+remove rate (about 800 per second). Then the end-to-end lease latency
// through the head of a local cluster (`troupe up`, two nodes with simulated GPUs): a lease
// request and its release from a client, beside a plain request to the head (ListNodes) in the
// same run. --no-cluster skips that part.
#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cluster/client.h"
#include "cluster/scheduler.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "bench/common/report.h"

namespace troupe::bench {
namespace {

using namespace troupe::cluster::sched;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint32_t kGpusPerNode = 8;
constexpr uint32_t kSlicesPerGpu = 8;

struct Row {
  std::string metric, unit;
  double troupe;
  double baseline;
  std::string baseline_name;
  std::string target;
  bool met;
};

Snapshot MakeCluster(uint32_t nodes, std::mt19937_64& rng) {
  Snapshot s;
  std::uniform_real_distribution<double> util(0.0, 1.0);
  for (uint32_t n = 0; n < nodes; ++n) {
    NodeState node;
    node.name = "n" + std::to_string(n);
    node.cpus_total = node.cpus_free = 128;
    node.memory_total_bytes = node.memory_free_bytes = 1024 * kGiB;
    std::vector<GpuState> gpus;
    for (uint32_t g = 0; g < kGpusPerNode; ++g) {
      GpuState gpu;
      gpu.id = node.name + "-gpu" + std::to_string(g);
      gpu.index = g;
      gpu.slices_total = gpu.slices_free = kSlicesPerGpu;
      gpu.slice_memory_bytes = 10 * kGiB;
      gpu.memory_total_bytes = kSlicesPerGpu * gpu.slice_memory_bytes;
      gpu.utilisation = util(rng);
      gpus.push_back(gpu);
    }
    s.AddNode(std::move(node), std::move(gpus));
  }
  return s;
}

// A cluster whose grants are held at 90% by `workers`-worker requests (gang when > 1). Built
// once per shape and kept: Google Benchmark calls a benchmark several times while it picks an
// iteration count, and filling 10,000 nodes takes seconds. Each decision leaves it at 90%.
struct PlacementBed {
  PlacementBed(uint32_t nodes, uint32_t workers) : rng(42), sched(MakeCluster(nodes, rng)), workers(workers) {
    const uint64_t slices = uint64_t{nodes} * kGpusPerNode * kSlicesPerGpu;
    const uint64_t target = slices * 9 / 10 / workers;
    while (live.size() < target) Submit();
  }
  void Submit() {
    Request r;
    r.id = next++;
    r.count = workers;
    r.slice_memory_bytes = 10 * kGiB;
    r.gang = workers > 1;
    r.policy = workers > 1 ? Policy::kPack : Policy::kSpread;
    (void)sched.Submit(r, now);
    for (auto& g : sched.Schedule(now)) live.push_back(g.request.id);
  }
  // One decision: the release of a random older grant, then the submit and schedule of a new
  // request.
  void Decide() {
    const size_t victim = rng() % live.size();
    sched.Release(live[victim]);
    live[victim] = live.back();
    live.pop_back();
    Submit();
  }
  std::mt19937_64 rng;
  Scheduler sched;
  uint32_t workers;
  Time now{};
  uint64_t next = 1;
  std::vector<uint64_t> live;
};

void BM_Placement(benchmark::State& state) {
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<PlacementBed>> beds;
  auto& bed = beds[{state.range(0), state.range(1)}];
  if (!bed) {
    bed = std::make_unique<PlacementBed>(static_cast<uint32_t>(state.range(0)), static_cast<uint32_t>(state.range(1)));
  }
  for (auto _ : state) bed->Decide();
  if (!bed->sched.Pending(bed->now).empty()) state.SkipWithError("requests were left waiting");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Placement)->ArgsProduct({{100, 1000, 10000}, {1, 8}})->ArgNames({"nodes", "workers"});

// Baseline: the same single-slice workload decided by scanning every GPU for the least loaded
// one that fits (no index). Filled at random (scanning to fill 10,000 nodes would take
// minutes); only decisions are timed.
void BM_LinearScan(benchmark::State& state) {
  const auto nodes = static_cast<uint32_t>(state.range(0));
  std::mt19937_64 rng(42);
  Snapshot s = MakeCluster(nodes, rng);
  std::vector<GpuState> gpus = s.gpus();
  std::vector<uint32_t> live;
  const uint64_t target = uint64_t{nodes} * kGpusPerNode * kSlicesPerGpu * 9 / 10;
  while (live.size() < target) {
    const auto g = static_cast<uint32_t>(rng() % gpus.size());
    if (gpus[g].slices_free == 0) continue;
    --gpus[g].slices_free;
    live.push_back(g);
  }
  for (auto _ : state) {
    const size_t victim = rng() % live.size();
    ++gpus[live[victim]].slices_free;
    live[victim] = live.back();
    live.pop_back();
    uint32_t best = UINT32_MAX;
    double best_load = 2;
    for (uint32_t g = 0; g < gpus.size(); ++g) {
      if (gpus[g].slices_free == 0) continue;
      const double load = Snapshot::Load(gpus[g]);
      if (load < best_load) best_load = load, best = g;
    }
    if (best != UINT32_MAX) {
      --gpus[best].slices_free;
      live.push_back(best);
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LinearScan)->Arg(100)->Arg(1000)->Arg(10000)->ArgNames({"nodes"});

// Shows Google Benchmark's table as usual and keeps each benchmark's time per iteration (ns)
// for the table of ratios.
class Collector : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.run_type != Run::RT_Iteration) continue;
      if (run.error_occurred) {
        failed = true;
        continue;
      }
      ns[run.benchmark_name()] = run.GetAdjustedRealTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }
  double NsOf(const std::string& name) const {
    auto it = ns.find(name);
    return it == ns.end() ? 0 : it->second;
  }
  std::map<std::string, double> ns;
  bool failed = false;
};

// Lease + release through a real head, and a ListNodes round trip as the baseline (median of
// `n` each, in microseconds). Returns false (with a message) if the cluster did not come up.
bool TimeLeases(int n, double* lease_us, double* rtt_us) {
  using namespace std::chrono_literals;
  std::string dir = (std::filesystem::temp_directory_path() / "troupe-sbench-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) return false;
  std::string config_path = dir + "/cluster.yaml";
  std::ofstream(config_path) << "cluster:\n  name: sbench\n  token: scheduler-bench-token\n  log_level: warn\n"
                                "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\nnodes:\n"
                                "  - name: a\n    cpus: 8\n    memory: 8GiB\n"
                                "    gpus:\n      simulated:\n        - memory: 80GiB\n        - memory: 80GiB\n"
                                "    slice_memory: 10GiB\n"
                                "  - name: b\n    cpus: 8\n    memory: 8GiB\n"
                                "    gpus:\n      simulated:\n        - memory: 80GiB\n    slice_memory: 10GiB\n";
  auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_path});
  bool ok = up.ok() && (*up)->ReadLineWithPrefix("cluster sbench up", 60s).ok();
  auto config = cluster::LoadClusterConfig(config_path);
  std::unique_ptr<cluster::Client> client;
  if (ok && config.ok()) {
    auto c = cluster::Client::Connect(*config, "", 5s);
    if (c.ok()) client = std::move(*c);
  }
  if (client) {
    cluster::LeaseRequest request;
    request.slice_memory_bytes = 10 * kGiB;
    request.owner = client->runtime().Spawn([]() -> caf::behavior { return {[](caf::ok_atom) {}}; });
    std::vector<double> lease, rtt;
    for (int i = 0; i < n + 5 && ok; ++i) {  // the first 5 of each warm up
      auto start = Clock::now();
      auto l = client->RequestSlices(request, 5s);
      ok = l.ok() && client->ReleaseSlices(*l, 5s).ok();
      if (i >= 5) lease.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      start = Clock::now();
      ok = ok && client->ListNodes(5s).ok();
      if (i >= 5) rtt.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    if (ok) {
      std::sort(lease.begin(), lease.end());
      std::sort(rtt.begin(), rtt.end());
      *lease_us = lease[lease.size() / 2];
      *rtt_us = rtt[rtt.size() / 2];
    }
  } else {
    ok = false;
  }
  client.reset();
  if (up.ok()) {
    (*up)->Signal(SIGTERM);
    (void)(*up)->Wait(30s);
  }
  std::filesystem::remove_all(dir);
  if (!ok) std::fprintf(stderr, "scheduler_bench: the local cluster for the lease latency did not work\n");
  return ok;
}

int Run(bool quick, const std::string& json, bool cluster) {
  Collector collector;
  benchmark::RunSpecifiedBenchmarks(&collector);
  if (collector.failed) return 1;
  std::vector<Row> rows;
  const std::vector<uint32_t> sizes = {100, 1000, 10000};
  std::vector<double> single_ns, gang_ns;
  for (uint32_t nodes : sizes) {
    const std::string n = std::to_string(nodes);
    const double single = collector.NsOf("BM_Placement/nodes:" + n + "/workers:1");
    const double gang = collector.NsOf("BM_Placement/nodes:" + n + "/workers:8");
    const double scan = collector.NsOf("BM_LinearScan/nodes:" + n);
    if (single <= 0 || gang <= 0 || scan <= 0) {
      std::fprintf(stderr, "scheduler_bench: no figure for %u nodes (a --benchmark_filter left it out?)\n", nodes);
      return 1;
    }
    single_ns.push_back(single);
    gang_ns.push_back(gang);
    const std::string label = n + " nodes x 8 GPUs, 90% full";
    const bool target_row = nodes == 1000;
    rows.push_back({"single-slice placements/s, " + label, "1/s", 1e9 / single, 1e9 / scan, "linear scan",
                    target_row ? ">= 100000" : "(info)", !target_row || 1e9 / single >= 100000});
    rows.push_back({"single-slice placement cost, " + label, "ns", single, scan, "linear scan", "(info)", true});
    rows.push_back({"8-worker gang placements/s, " + label, "1/s", 1e9 / gang, 800, "Ray PG create+remove",
                    "(info)", true});
  }
  // Growth: cost per decision from 100 to 10,000 nodes against linear growth (100x).
  const double single_growth = single_ns.back() / single_ns.front();
  const double gang_growth = gang_ns.back() / gang_ns.front();
  rows.push_back({"single-slice cost growth, 100 -> 10,000 nodes", "x", single_growth, 100, "linear growth",
                  "<= 100", single_growth <= 100});
  rows.push_back({"gang cost growth, 100 -> 10,000 nodes", "x", gang_growth, 100, "linear growth", "<= 100",
                  gang_growth <= 100});
  rows.push_back({"single-slice placements/s at 1,000 nodes vs Ray PG rate", "x",
                  rows[3].troupe / 800.0, 1, "Ray 800/s", "(info)", true});
  if (cluster) {
    double lease_us = 0, rtt_us = 0;
    if (!TimeLeases(quick ? 20 : 200, &lease_us, &rtt_us)) return 1;
    rows.push_back({"lease + release through the head, local cluster (median)", "us", lease_us, rtt_us,
                    "ListNodes round trip", "(info)", true});
    rows.push_back({"lease + release / plain request to the head", "x", lease_us / rtt_us, 1, "ListNodes", "(info)",
                    true});
  }

  std::printf("\n%-58s %-4s %14s %14s  %-22s %-10s %s\n", "metric", "unit", "troupe", "baseline", "baseline is",
              "target", "met");
  for (const auto& r : rows) {
    std::printf("%-58s %-4s %14.1f %14.1f  %-22s %-10s %s\n", r.metric.c_str(), r.unit.c_str(), r.troupe, r.baseline,
                r.baseline_name.c_str(), r.target.c_str(), r.met ? "yes" : "no");
  }
  if (!json.empty()) {
    nlohmann::ordered_json report = {
        {"benchmark", "scheduler"}, {"quick", quick}, {"rows", nlohmann::ordered_json::array()}};
    for (const auto& r : rows) {
      report["rows"].push_back({{"metric", r.metric},
                                {"unit", r.unit},
                                {"troupe", r.troupe},
                                {"baseline", r.baseline},
                                {"baseline_is", r.baseline_name},
                                {"target", r.target},
                                {"met", r.met}});
    }
    if (!WriteJsonFile(json, report, "scheduler_bench")) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  (void)troupe::InitLogging("warn");
  bool quick = false;
  bool cluster = true;
  std::string json;
  // troupe's own flags; the rest (--benchmark_filter=..., --benchmark_min_time=...) go to
  // Google Benchmark.
  std::vector<char*> rest = {argv[0]};
  static char min_time[] = "--benchmark_min_time=0.05";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--no-cluster") {
      cluster = false;
    } else if (a.rfind("--benchmark_", 0) == 0) {
      rest.push_back(argv[i]);
    } else {
      std::cerr << "usage: scheduler_bench [--quick] [--json PATH] [--no-cluster] [--benchmark_...]\n";
      return 2;
    }
  }
  if (quick) rest.insert(rest.begin() + 1, min_time);  // a later --benchmark_min_time still wins
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  return troupe::bench::Run(quick, json, cluster);
}
