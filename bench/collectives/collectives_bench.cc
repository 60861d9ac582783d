// collectives_bench: allreduce bus bandwidth of troupe's GlooCommunicator beside Gloo's own
// allreduce called directly on a gloo::Context set up the same way (same world size, same
// loopback TCP device, same run, rounds alternating), as ranks on threads of one process.
//
// Bus bandwidth as nccl-tests define it (PERFORMANCE.md there): busbw = 2(n-1)/n * bytes / time,
// the rate each rank's link carries in a ring allreduce; time is the median of the measured
// iterations after warm-up, from all ranks released together until the last one finishes.
// Target (issue 22): troupe at least 95% of Gloo's busbw at 64 MiB and above.
//
// --overhead: the cost troupe adds to one small op (world 2; 4 B, 1 KiB, 16 KiB): each timed
// region runs 200 allreduces back to back on every rank, Gloo's directly and troupe's (Submit and
// Wait), and the difference of the median per-op times is troupe's overhead per op; first, the
// OpQueue alone: an empty op submitted and waited for beside the same function called directly.
//
// Usage: collectives_bench [--quick | --overhead] [--json PATH]
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/hash_store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench/common/report.h"
#include "collectives/gloo_communicator.h"

namespace troupe::bench {
namespace {

using collectives::DataType;
using collectives::GlooCommunicator;
using collectives::ReduceOp;
using Clock = std::chrono::steady_clock;

struct Options {
  bool quick = false;
  bool overhead = false;
  std::string json_path;
};

// Releases `n` threads together, again and again (C++17 has no std::barrier).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void ArriveAndWait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t generation = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

// The two groups of one world size, connected once and reused for every size.
struct Groups {
  std::vector<std::shared_ptr<gloo::rendezvous::Context>> gloo;
  std::vector<std::unique_ptr<GlooCommunicator>> troupe;
};

Groups Connect(int world) {
  Groups groups;
  groups.gloo.resize(world);
  groups.troupe.resize(world);
  auto gloo_store = std::make_shared<gloo::rendezvous::HashStore>();
  auto troupe_store = std::make_shared<gloo::rendezvous::HashStore>();
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      // The baseline: what GlooCommunicator::Create does, without troupe around it.
      try {
        gloo::transport::tcp::attr attr;
        attr.hostname = "127.0.0.1";
        auto device = gloo::transport::tcp::CreateDevice(attr);
        auto context = std::make_shared<gloo::rendezvous::Context>(rank, world);
        context->setTimeout(std::chrono::seconds(30));
        context->connectFullMesh(*gloo_store, device);
        groups.gloo[rank] = context;
      } catch (const std::exception& e) {
        std::cerr << "gloo connectFullMesh (rank " << rank << "): " << e.what() << "\n";
        std::exit(1);
      }
      auto made = GlooCommunicator::Create(rank, world, troupe_store);
      if (!made.ok()) {
        std::cerr << "GlooCommunicator::Create: " << made.status().ToString() << "\n";
        std::exit(1);
      }
      groups.troupe[rank] = std::move(made).value();
    });
  }
  for (auto& thread : threads) thread.join();
  return groups;
}

// One thread per rank, kept for the whole run (no thread start inside a timed region). Time()
// releases every rank into `op` together and returns the seconds until the last one finished.
class RankThreads {
 public:
  explicit RankThreads(int world) : start_(world + 1), done_(world + 1) {
    for (int rank = 0; rank < world; ++rank) {
      threads_.emplace_back([this, rank] {
        while (true) {
          start_.ArriveAndWait();
          if (stop_) return;
          (*op_)(rank);
          done_.ArriveAndWait();
        }
      });
    }
  }
  ~RankThreads() {
    stop_ = true;
    start_.ArriveAndWait();
    for (auto& thread : threads_) thread.join();
  }

  double Time(const std::function<void(int rank)>& op) {
    op_ = &op;
    start_.ArriveAndWait();
    const auto start = Clock::now();
    done_.ArriveAndWait();
    return std::chrono::duration<double>(Clock::now() - start).count();
  }

 private:
  Barrier start_;
  Barrier done_;
  const std::function<void(int)>* op_ = nullptr;  // written before start_, read after it
  bool stop_ = false;                              // likewise
  std::vector<std::thread> threads_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Row {
  int world;
  size_t bytes;
  int iterations;
  double gloo_seconds;
  double troupe_seconds;
  double BusBw(double seconds) const { return 2.0 * (world - 1) / world * static_cast<double>(bytes) / seconds / 1e9; }
  double ratio() const { return gloo_seconds / troupe_seconds; }
};

std::string Size(size_t bytes) {
  if (bytes >= (size_t{1} << 20)) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes >> 10) + " KiB";
}

// One float32 sum allreduce of Gloo's own, on `context`, with `tag`; a failure ends the run.
void GlooAllReduce(const std::shared_ptr<gloo::rendezvous::Context>& context, float* data, size_t count,
                   uint32_t tag) {
  gloo::AllreduceOptions opts(context);
  opts.setOutput(data, count);
  opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
  opts.setTag(tag);
  try {
    gloo::allreduce(opts);
  } catch (const std::exception& e) {
    std::cerr << "gloo allreduce (rank " << context->rank << "): " << e.what() << "\n";
    std::exit(1);
  }
}

// The same through troupe's communicator (Submit, then Wait); a failure ends the run.
void TroupeAllReduce(GlooCommunicator& comm, float* data, size_t count) {
  Status status = comm.AllReduce(data, count, DataType::kFloat32, ReduceOp::kSum).Wait();
  if (!status.ok()) {
    std::cerr << "troupe allreduce: " << status.ToString() << "\n";
    std::exit(1);
  }
}

// Times `gloo_op` and `troupe_op` on every rank in `rounds` rounds after a warm-up one, which goes
// first alternating (so neither always runs on a warmer cache); `after_round` runs after each.
// Returns the rounds' seconds, Gloo's and troupe's.
std::pair<std::vector<double>, std::vector<double>> Alternate(RankThreads& ranks, const std::function<void(int)>& gloo_op,
                                                              const std::function<void(int)>& troupe_op, int rounds,
                                                              const std::function<void()>& after_round) {
  std::vector<double> gloo_times, troupe_times;
  for (int round = -1; round < rounds; ++round) {  // round -1: warm-up, not counted
    const bool gloo_first = round % 2 == 0;
    double g = 0, t = 0;
    if (gloo_first) g = ranks.Time(gloo_op);
    t = ranks.Time(troupe_op);
    if (!gloo_first) g = ranks.Time(gloo_op);
    after_round();
    if (round < 0) continue;
    gloo_times.push_back(g);
    troupe_times.push_back(t);
  }
  return {gloo_times, troupe_times};
}

// --overhead: per-op time of small allreduces, back to back, Gloo direct beside troupe.
int RunOverhead(const Options& options) {
  constexpr int kWorld = 2;
  constexpr int kOpsPerRound = 200;
  constexpr int kRounds = 15;
  const std::vector<size_t> sizes = {4, 1024, 16384};
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  {
    // The queue's own cost, without Gloo: an empty op through OpQueue (Submit, then Wait) beside
    // the same function called directly, 20000 times each, median of 15 rounds.
    constexpr int kOps = 20000;
    collectives::OpQueue queue([](const Status&) {});
    std::function<Status()> empty = [] { return OkStatus(); };
    std::vector<double> direct_times, queue_times;
    for (int round = -1; round < kRounds; ++round) {
      auto start = Clock::now();
      for (int i = 0; i < kOps; ++i) {
        if (!empty().ok()) std::exit(1);
      }
      const double direct = std::chrono::duration<double>(Clock::now() - start).count() / kOps;
      start = Clock::now();
      for (int i = 0; i < kOps; ++i) {
        if (!queue.Submit(empty, std::chrono::milliseconds(60000), "empty").Wait().ok()) std::exit(1);
      }
      const double queued = std::chrono::duration<double>(Clock::now() - start).count() / kOps;
      if (round < 0) continue;
      direct_times.push_back(direct);
      queue_times.push_back(queued);
    }
    const double d = Median(direct_times) * 1e6, q = Median(queue_times) * 1e6;
    std::printf("OpQueue, empty op: direct %.3f us/op, Submit+Wait %.3f us/op, overhead %.3f us/op\n", d, q, q - d);
    rows.push_back({{"backend", "none"}, {"op", "opqueue_empty"}, {"library_us_per_op", d}, {"troupe_us_per_op", q},
                    {"overhead_us_per_op", q - d}});
  }
  Groups groups = Connect(kWorld);
  RankThreads ranks(kWorld);
  std::vector<std::vector<float>> buffers(kWorld, std::vector<float>(sizes.back() / sizeof(float), 0.0f));
  std::printf("allreduce float32 sum, world %d, %d ops back to back per timed region, median of %d regions\n", kWorld,
              kOpsPerRound, kRounds);
  std::printf("%-8s %14s %14s %14s\n", "size", "gloo us/op", "troupe us/op", "overhead us");
  uint32_t tag = 0;  // one per op, as GlooCommunicator gives one per op
  for (size_t bytes : sizes) {
    const size_t count = bytes / sizeof(float);
    std::function<void(int)> gloo_op = [&](int rank) {
      for (int i = 0; i < kOpsPerRound; ++i) GlooAllReduce(groups.gloo[rank], buffers[rank].data(), count, tag + static_cast<uint32_t>(i));
    };
    std::function<void(int)> troupe_op = [&](int rank) {
      for (int i = 0; i < kOpsPerRound; ++i) TroupeAllReduce(*groups.troupe[rank], buffers[rank].data(), count);
    };
    auto [gloo_times, troupe_times] = Alternate(ranks, gloo_op, troupe_op, kRounds, [&] { tag += kOpsPerRound; });
    for (double& v : gloo_times) v /= kOpsPerRound;
    for (double& v : troupe_times) v /= kOpsPerRound;
    const double g = Median(gloo_times) * 1e6, t = Median(troupe_times) * 1e6;
    std::printf("%-8s %14.1f %14.1f %14.1f\n", (std::to_string(bytes) + " B").c_str(), g, t, t - g);
    std::fflush(stdout);
    rows.push_back({{"backend", "gloo"}, {"op", "allreduce_sum_float32"}, {"world", kWorld}, {"bytes", bytes},
                    {"ops_per_region", kOpsPerRound}, {"library_us_per_op", g}, {"troupe_us_per_op", t},
                    {"overhead_us_per_op", t - g}});
  }
  if (!options.json_path.empty()) {
    nlohmann::ordered_json report = {{"benchmark", "collectives_overhead"}, {"rows", rows}};
    if (!WriteJsonFile(options.json_path, report, "collectives_bench")) return 1;
  }
  return 0;
}

int Run(const Options& options) {
  const std::vector<int> worlds = {2, 4};
  std::vector<size_t> sizes;
  const size_t largest = options.quick ? (size_t{1} << 20) : (size_t{256} << 20);
  for (size_t bytes = 1024; bytes <= largest; bytes *= 4) sizes.push_back(bytes);

  std::vector<Row> rows;
  for (int world : worlds) {
    Groups groups = Connect(world);
    RankThreads ranks(world);
    std::vector<std::vector<float>> buffers(world, std::vector<float>(largest / sizeof(float), 0.0f));
    for (size_t bytes : sizes) {
      const size_t count = bytes / sizeof(float);
      // Fewer iterations where one takes long; always a warm-up round first.
      const int iterations = options.quick ? 3 : bytes >= (size_t{64} << 20) ? 11 : bytes >= (size_t{4} << 20) ? 15 : 31;
      uint32_t tag = 0;  // one per round, as GlooCommunicator gives one per op
      std::function<void(int)> gloo_op = [&](int rank) {
        GlooAllReduce(groups.gloo[rank], buffers[rank].data(), count, tag);
      };
      std::function<void(int)> troupe_op = [&](int rank) {
        TroupeAllReduce(*groups.troupe[rank], buffers[rank].data(), count);
      };
      auto [gloo_times, troupe_times] = Alternate(ranks, gloo_op, troupe_op, iterations, [&] { ++tag; });
      Row row{world, bytes, iterations, Median(gloo_times), Median(troupe_times)};
      std::printf("world %d %8s  gloo %8.3f GB/s  troupe %8.3f GB/s  ratio %.3f\n", world, Size(bytes).c_str(),
                  row.BusBw(row.gloo_seconds), row.BusBw(row.troupe_seconds), row.ratio());
      std::fflush(stdout);
      rows.push_back(row);
    }
  }

  std::printf("\nallreduce float32 sum, busbw = 2(n-1)/n * bytes / median time; target: troupe >= 95%% of Gloo "
              "at >= 64 MiB\n");
  std::printf("%-5s %-8s %12s %12s %12s %12s %7s %5s\n", "world", "size", "gloo us", "troupe us", "gloo GB/s",
              "troupe GB/s", "ratio", "met");
  bool all_met = true;
  for (const auto& r : rows) {
    const bool targeted = r.bytes >= (size_t{64} << 20);
    const bool met = r.ratio() >= 0.95;
    if (targeted) all_met = all_met && met;
    std::printf("%-5d %-8s %12.1f %12.1f %12.3f %12.3f %7.3f %5s\n", r.world, Size(r.bytes).c_str(),
                r.gloo_seconds * 1e6, r.troupe_seconds * 1e6, r.BusBw(r.gloo_seconds), r.BusBw(r.troupe_seconds),
                r.ratio(), targeted ? (met ? "yes" : "NO") : "-");
  }
  if (!options.json_path.empty()) {
    nlohmann::ordered_json report = {
        {"benchmark", "collectives"}, {"quick", options.quick}, {"rows", nlohmann::ordered_json::array()}};
    for (const auto& r : rows) {
      report["rows"].push_back({{"backend", "gloo"},
                                {"op", "allreduce_sum_float32"},
                                {"world", r.world},
                                {"bytes", r.bytes},
                                {"iterations", r.iterations},
                                {"library_seconds", r.gloo_seconds},
                                {"troupe_seconds", r.troupe_seconds},
                                {"library_busbw_gbps", r.BusBw(r.gloo_seconds)},
                                {"troupe_busbw_gbps", r.BusBw(r.troupe_seconds)},
                                {"ratio", r.ratio()},
                                {"target", r.bytes >= (size_t{64} << 20) ? ">= 0.95" : "-"}});
    }
    report["target_met"] = all_met;
    if (!WriteJsonFile(options.json_path, report, "collectives_bench")) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  troupe::bench::Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--overhead") {
      options.overhead = true;
    } else if (arg == "--json" && i + 1 < argc) {
      options.json_path = argv[++i];
    } else {
      std::cerr << "usage: collectives_bench [--quick | --overhead] [--json PATH]\n";
      return 2;
    }
  }
  if (options.overhead) return troupe::bench::RunOverhead(options);
  return troupe::bench::Run(options);
}
