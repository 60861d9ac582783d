// nccl_bench: allreduce bus bandwidth, 1 KiB to 256 MiB of float32, of troupe's NcclCommunicator
// beside ncclAllReduce called directly on communicators of the same shape (one rank per GPU,
// world size = the GPUs visible), alternating in the same run (docs/collectives.md, "Benchmarks").
// With one GPU, NCCL's allreduce is local and the rows measure troupe's per-op overhead.
// Exits 0 with the reason printed (and in the JSON) where there is no GPU.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/common/report.h"
#include "collectives/nccl_communicator.h"

namespace {

using troupe::collectives::DataType;
using troupe::collectives::NcclCommunicator;
using troupe::collectives::ReduceOp;
using troupe::collectives::Work;
using Clock = std::chrono::steady_clock;

struct Row {
  size_t bytes = 0;
  int iterations = 0;
  double troupe_us = 0;  // median over rounds of the mean time per allreduce
  double direct_us = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "nccl_bench: %s\n", what.c_str());
  return 1;
}

bool WriteJson(const std::string& path, const nlohmann::json& j) {
  return path.empty() || troupe::bench::WriteJsonFile(path, j, "nccl_bench");
}

// Bus bandwidth of an allreduce (nccl-tests' definition): algbw * 2 (n - 1) / n; 0 for one rank.
double BusBw(size_t bytes, double us, int n) {
  const double algbw = bytes / (us * 1e-6) / 1e9;
  return algbw * 2.0 * (n - 1) / n;
}
double AlgBw(size_t bytes, double us) { return bytes / (us * 1e-6) / 1e9; }

std::string Size(size_t bytes) {
  if (bytes >= (size_t{1} << 20)) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes >> 10) + " KiB";
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::cerr << "usage: nccl_bench [--quick] [--json PATH]\n";
      return 2;
    }
  }

  auto gpus = NcclCommunicator::DeviceCount();
  if (!gpus.ok()) {
    std::printf("nccl_bench: skipped: %s (runs on a GPU machine)\n", gpus.status().message().c_str());
    if (!WriteJson(json_path, {{"bench", "nccl_bench"}, {"skipped", gpus.status().message()}})) return 1;
    return 0;
  }
  const int n = *gpus;
  int nccl_version = 0;
  ncclGetVersion(&nccl_version);
  cudaDeviceProp prop;
  std::memset(&prop, 0, sizeof(prop));
  cudaGetDeviceProperties(&prop, 0);
  std::printf("nccl_bench: %d GPU(s) (%s), NCCL %d, world size %d, one rank per GPU, float32 sum, %s\n", n, prop.name,
              nccl_version, n, quick ? "quick" : "full");
  if (n == 1) {
    std::printf("  world size 1: NCCL's allreduce has no peer, so this measures troupe's per-op overhead (queue hop,\n"
                "  argument checks, stream polling, completion) beside ncclAllReduce + cudaStreamSynchronize; bus\n"
                "  bandwidth is 0 by definition for one rank, algorithm bandwidth (bytes / time) is shown\n");
  }

  // troupe's communicators: the unique id passed as bytes, as the job supervisor hands it on.
  auto id = NcclCommunicator::NewUniqueId();
  if (!id.ok()) return Fail(id.status().ToString());
  std::vector<std::unique_ptr<NcclCommunicator>> group;
  for (int r = 0; r < n; ++r) {
    troupe::collectives::NcclOptions options;
    options.rank = r;
    options.world_size = n;
    options.device = r;
    options.unique_id = *id;
    auto comm = NcclCommunicator::Create(options);
    if (!comm.ok()) return Fail(comm.status().ToString());
    group.push_back(std::move(*comm));
  }
  for (auto& comm : group) {
    troupe::Status s = comm->ready().Wait();
    if (!s.ok()) return Fail("troupe init: " + s.ToString());
  }
  // The baseline: NCCL's own communicators (blocking mode, NCCL's defaults) on the same GPUs.
  std::vector<ncclComm_t> direct(n);
  std::vector<int> devices(n);
  for (int r = 0; r < n; ++r) devices[r] = r;
  if (ncclResult_t res = ncclCommInitAll(direct.data(), n, devices.data()); res != ncclSuccess) {
    return Fail(std::string("ncclCommInitAll: ") + ncclGetErrorString(res));
  }
  std::vector<cudaStream_t> streams(n);
  const size_t max_bytes = quick ? (size_t{64} << 20) : (size_t{256} << 20);
  std::vector<void*> bufs(n, nullptr);
  for (int r = 0; r < n; ++r) {
    cudaSetDevice(r);
    if (cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking) != cudaSuccess) return Fail("cudaStreamCreate");
    if (cudaMalloc(&bufs[r], max_bytes) != cudaSuccess) return Fail("cudaMalloc of " + Size(max_bytes));
    cudaMemset(bufs[r], 0, max_bytes);  // zeros: sums stay 0, no overflow or NaN across rounds
  }
  cudaDeviceSynchronize();

  auto troupe_batch = [&](size_t count, int iterations) -> double {
    auto start = Clock::now();
    std::vector<Work> works(n, Work::Done(troupe::OkStatus()));
    for (int i = 0; i < iterations; ++i) {
      for (int r = 0; r < n; ++r) works[r] = group[r]->AllReduce(bufs[r], count, DataType::kFloat32, ReduceOp::kSum);
      for (int r = 0; r < n; ++r) {
        troupe::Status s = works[r].Wait();
        if (!s.ok()) {
          std::fprintf(stderr, "nccl_bench: troupe allreduce failed: %s\n", s.ToString().c_str());
          std::exit(1);
        }
      }
    }
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iterations;
  };
  auto direct_batch = [&](size_t count, int iterations) -> double {
    auto start = Clock::now();
    for (int i = 0; i < iterations; ++i) {
      if (n > 1) ncclGroupStart();
      for (int r = 0; r < n; ++r) {
        cudaSetDevice(r);
        ncclResult_t res = ncclAllReduce(bufs[r], bufs[r], count, ncclFloat32, ncclSum, direct[r], streams[r]);
        if (res != ncclSuccess) {
          std::fprintf(stderr, "nccl_bench: ncclAllReduce: %s\n", ncclGetErrorString(res));
          std::exit(1);
        }
      }
      if (n > 1) ncclGroupEnd();
      for (int r = 0; r < n; ++r) cudaStreamSynchronize(streams[r]);
    }
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iterations;
  };

  std::vector<size_t> sizes;
  for (size_t bytes = 1024; bytes <= max_bytes; bytes *= 4) sizes.push_back(bytes);
  if (quick) sizes = {1024, size_t{1} << 20, size_t{64} << 20};
  const int rounds = quick ? 3 : 7;
  std::vector<Row> rows;
  std::printf("\n%10s %6s %12s %12s %12s %12s %9s\n", "size", "iters", "troupe us", "direct us",
              n > 1 ? "troupe busbw" : "troupe algbw", n > 1 ? "direct busbw" : "direct algbw", "troupe/direct");
  for (size_t bytes : sizes) {
    const size_t count = bytes / sizeof(float);
    // About 20 ms of work per batch at NVLink speeds, at least 5 and at most 500 ops.
    const int iterations = std::clamp(static_cast<int>((size_t{2} << 30) / 100 / bytes), quick ? 3 : 5, quick ? 100 : 500);
    troupe_batch(count, 3);  // warm up both paths at this size
    direct_batch(count, 3);
    std::vector<double> t, d;
    for (int round = 0; round < rounds; ++round) {  // alternate, so drift hits both
      t.push_back(troupe_batch(count, iterations));
      d.push_back(direct_batch(count, iterations));
    }
    Row row{bytes, iterations, Median(t), Median(d)};
    rows.push_back(row);
    const double tb = n > 1 ? BusBw(bytes, row.troupe_us, n) : AlgBw(bytes, row.troupe_us);
    const double db = n > 1 ? BusBw(bytes, row.direct_us, n) : AlgBw(bytes, row.direct_us);
    std::printf("%10s %6d %12.1f %12.1f %9.2f GB/s %9.2f GB/s %8.1f%%\n", Size(bytes).c_str(), iterations, row.troupe_us,
                row.direct_us, tb, db, 100.0 * row.direct_us / row.troupe_us);
    std::fflush(stdout);
  }

  nlohmann::json j = {{"bench", "nccl_bench"}, {"gpu", prop.name},       {"gpus", n},
                      {"world_size", n},       {"nccl_version", nccl_version}, {"quick", quick},
                      {"dtype", "float32"},    {"op", "sum"},           {"rounds", rounds}};
  j["note"] = n == 1 ? "world size 1: per-op overhead of troupe's path beside ncclAllReduce + cudaStreamSynchronize; "
                       "busbw is 0 for one rank, algbw = bytes / time"
                     : "busbw = algbw * 2 (n - 1) / n (nccl-tests); target troupe >= 95% of direct at >= 64 MiB";
  bool target_met = true;
  for (const Row& row : rows) {
    const double ratio = row.direct_us / row.troupe_us;
    if (row.bytes >= (size_t{64} << 20) && ratio < 0.95) target_met = false;
    j["rows"].push_back({{"bytes", row.bytes},
                         {"iterations", row.iterations},
                         {"troupe_us", row.troupe_us},
                         {"direct_us", row.direct_us},
                         {"troupe_algbw_gbps", AlgBw(row.bytes, row.troupe_us)},
                         {"direct_algbw_gbps", AlgBw(row.bytes, row.direct_us)},
                         {"troupe_busbw_gbps", BusBw(row.bytes, row.troupe_us, n)},
                         {"direct_busbw_gbps", BusBw(row.bytes, row.direct_us, n)},
                         {"troupe_over_direct", ratio},
                         {"overhead_us", row.troupe_us - row.direct_us}});
  }
  j["target_95pct_at_64MiB_and_above_met"] = target_met;
  std::printf("\ntroupe >= 95%% of direct NCCL at 64 MiB and above: %s%s\n", target_met ? "met" : "NOT met",
              n == 1 ? " (one GPU: no network in the path; see the overhead column above)" : "");
  if (!rows.empty()) {
    std::printf("per-op overhead of troupe's path at %s: %.1f us (troupe %.1f us, direct %.1f us)\n",
                Size(rows.front().bytes).c_str(), rows.front().troupe_us - rows.front().direct_us,
                rows.front().troupe_us, rows.front().direct_us);
  }

  group.clear();  // finalize troupe's communicators
  for (int r = 0; r < n; ++r) {
    cudaSetDevice(r);
    ncclCommDestroy(direct[r]);
    cudaStreamDestroy(streams[r]);
    cudaFree(bufs[r]);
  }
  if (!WriteJson(json_path, j)) return 1;
  return 0;
}
