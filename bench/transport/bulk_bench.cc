// bulk_bench: the bulk path (runtime/bulk.h) between two processes on this machine, for 1, 16, 64
// and 256 MiB: into the receiver's memory beside raw UCX (ucx_perftest ucp_am_bw, the same size,
// troupe's UCX settings) and into a file (mmap, fdatasync) beside `dd conv=fdatasync` of the same
// size on the same file system, all in one run.
//
//   bulk_bench [--quick] [--json PATH] [--dir DIR] [--mib N]...   (--mib: only these sizes)
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/common/report.h"
#include "common/child_process.h"
#include "common/free_port.h"
#include "common/logging.h"
#include "runtime/bulk.h"
#include "runtime/runtime.h"

namespace troupe::bench {
namespace {

using namespace std::chrono_literals;
using runtime::BulkEndpoint;
using runtime::BulkSource;
using runtime::NodeId;
using Clock = std::chrono::steady_clock;

constexpr const char* kToken = "bulk-bench-token";
constexpr NodeId kSender = 1, kReceiver = 2;
constexpr uint64_t kMiB = 1u << 20;
constexpr uint64_t kMaxSize = 256 * kMiB;

runtime::RuntimeConfig Config(NodeId id, const std::string& name) {
  runtime::RuntimeConfig config;
  config.node_id = id;
  config.node_name = name;
  config.transport.cluster_token = kToken;
  // As bench/transport: 200 us of polling after each event, to compare with raw UCX, which spins
  // (the default on a host under 4 cores is 0, and a rendezvous then pays a wake-up per fragment;
  // BULK_BUSY_POLL_US overrides).
  const char* poll = getenv("BULK_BUSY_POLL_US");
  config.transport.busy_poll = std::chrono::microseconds(poll ? std::stoll(poll) : 200);
  return config;
}

// The receiver: a "mem" sink (one reused 256 MiB buffer, as a tensor's memory would be) and a
// "file" sink (MakeFileSink under `dir`, the path the checkpoint shards take).
int Serve(const std::string& dir) {
  auto rt = runtime::Runtime::Start(Config(kReceiver, "bulk-receiver"));
  if (!rt.ok()) {
    std::cerr << "bulk_bench receiver: " << rt.status() << "\n";
    return 2;
  }
  auto endpoint = BulkEndpoint::Attach(**rt);
  if (!endpoint.ok()) return 2;
  auto memory = std::make_shared<Buffer>(Buffer::Allocate(kMaxSize));
  std::fill(memory->data(), memory->data() + memory->size(), 0);  // fault the pages in once
  (*endpoint)
      ->RegisterSink("mem",
                     [memory](NodeId, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
                       if (d.size > memory->size()) return ResourceExhaustedError("above the bench buffer");
                       runtime::BulkSink sink;
                       sink.data = memory->data();
                       sink.keep = memory;
                       sink.finish = [](const Status&) { return OkStatus(); };
                       return sink;
                     })
      .IgnoreError();
  (*endpoint)
      ->RegisterSink("file",
                     [dir](NodeId, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
                       const bool mmap = getenv("BULK_FILE_MMAP") != nullptr;
                       return runtime::MakeFileSink(dir + "/bulk.bin", d.size,
                                                    mmap ? runtime::FileSinkMode::kMmap : runtime::FileSinkMode::kWrite);
                     })
      .IgnoreError();
  std::cout << "READY " << (*rt)->address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line) && line != "quit") {
  }
  endpoint->reset();
  (*rt)->Stop();
  (*rt)->AwaitActors(5s);
  return 0;
}

// Bytes per second of `reps` transfers of `size` bytes of kind `kind`, one after another.
StatusOr<double> BulkRate(BulkEndpoint& endpoint, const BulkSource& source, uint64_t size, const std::string& kind,
                          int reps) {
  runtime::BulkDescriptor d;
  d.kind = kind;
  BulkSource part{source.data, size, source.keep};
  RETURN_IF_ERROR(endpoint.SendAndWait(kReceiver, d, part, 120s));  // warm-up
  auto start = Clock::now();
  for (int i = 0; i < reps; ++i) RETURN_IF_ERROR(endpoint.SendAndWait(kReceiver, d, part, 120s));
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return double(size) * reps / seconds;
}

// ucx_perftest ucp_am_bw for `size` bytes with troupe's UCX settings (`env`) and peer error
// handling (-e, which troupe needs and which rules out CMA): bytes per second.
StatusOr<double> RawUcxRate(const std::vector<std::string>& env, uint64_t size, int iterations) {
  auto port = PickFreePort("127.0.0.1");
  if (!port.ok()) return port.status();
  auto server = ChildProcess::Spawn({"stdbuf", "-oL", "ucx_perftest", "-p", std::to_string(*port), "-e"}, env,
                                    /*merge_stderr=*/true);
  if (!server.ok()) return server.status();
  if (auto waiting = (*server)->ReadLineWithPrefix("Waiting for connection", 20s); !waiting.ok()) {
    return UnavailableError("ucx_perftest server did not start: " + waiting.status().message());
  }
  auto client = ChildProcess::Spawn({"stdbuf", "-oL", "ucx_perftest", "127.0.0.1", "-p", std::to_string(*port), "-e", "-t",
                                     "ucp_am_bw", "-s", std::to_string(size), "-n", std::to_string(iterations)},
                                    env);
  if (!client.ok()) return client.status();
  auto final_line = (*client)->ReadLineWithPrefix("Final:", 300s);
  if (!final_line.ok()) return UnavailableError("ucx_perftest gave no result: " + final_line.status().message());
  std::istringstream in(final_line->substr(6));
  double iters, p50, avg_lat, overall_lat, avg_bw, overall_bw;
  in >> iters >> p50 >> avg_lat >> overall_lat >> avg_bw >> overall_bw;
  (*client)->Wait(30s).IgnoreError();
  (*server)->Wait(30s).IgnoreError();
  return overall_bw * double(kMiB);  // perftest's MB/s is MiB/s
}

// `dd` writing `size` bytes of zeros to `path` with conv=fdatasync: bytes per second (wall time
// of the process, as a user would time it).
StatusOr<double> DdRate(const std::string& path, uint64_t size) {
  auto start = Clock::now();
  auto dd = ChildProcess::Spawn({"dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=" + std::to_string(size / kMiB),
                                 "conv=fdatasync", "status=none"});
  if (!dd.ok()) return dd.status();
  auto rc = (*dd)->Wait(300s);
  if (!rc.ok() || *rc != 0) return InternalError("dd failed");
  return double(size) / std::chrono::duration<double>(Clock::now() - start).count();
}

int Run(bool quick, const std::string& json_path, std::string dir, const std::string& self,
        const std::vector<uint64_t>& sizes_mib) {
  if (dir.empty()) dir = std::filesystem::temp_directory_path().string();
  dir += "/troupe-bulk-bench-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  auto receiver = ChildProcess::Spawn({self, "--serve", "--dir", dir});
  if (!receiver.ok()) return 2;
  auto ready = (*receiver)->ReadLineWithPrefix("READY ", 30s);
  if (!ready.ok()) {
    std::cerr << "bulk_bench: receiver did not start: " << ready.status() << "\n";
    return 2;
  }
  auto rt = runtime::Runtime::Start(Config(kSender, "bulk-sender"));
  if (!rt.ok()) return 2;
  (*rt)->AddNode(kReceiver, *ready);  // the line after its prefix
  runtime::BulkConfig bulk_config;
  if (const char* chunk = getenv("BULK_CHUNK_MIB")) bulk_config.chunk_bytes = std::stoull(chunk) * kMiB;
  if (const char* window = getenv("BULK_WINDOW")) bulk_config.chunks_in_flight = std::stoull(window);
  auto endpoint = BulkEndpoint::Attach(**rt, bulk_config);
  if (!endpoint.ok()) return 2;
  std::vector<std::string> env;
  for (const auto& s : (*rt)->transport().ucx_settings()) env.push_back("UCX_" + s.name + "=" + s.value);

  Buffer data = Buffer::Allocate(kMaxSize);
  for (uint64_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<uint8_t>(i * 131);
  BulkSource source = BulkSource::Of(std::move(data));

  std::vector<ReportRow> rows;
  bool described = false;
  for (uint64_t mib : sizes_mib) {
    const uint64_t size = mib * kMiB;
    const int reps = quick ? 2 : std::max<int>(3, int(1024 / mib));
    const std::string name = std::to_string(mib) + " MiB";
    auto bulk = BulkRate(**endpoint, source, size, "mem", reps);
    if (!described) {
      described = true;
      auto lanes = (*rt)->transport().DescribePeer(kReceiver);
      std::fprintf(stderr, "connection to the receiver: %s\n", lanes.ok() ? lanes->c_str() : "?");
    }
    auto raw = RawUcxRate(env, size, reps);
    auto file = BulkRate(**endpoint, source, size, "file", quick ? 1 : std::max<int>(2, int(256 / mib)));
    auto dd = DdRate(dir + "/dd.bin", size);
    if (!raw.ok()) {  // a machine without a working ucx_perftest: the row keeps a 0 baseline
      std::cerr << "bulk_bench " << name << ": raw UCX baseline missing: " << raw.status() << "\n";
      raw = 0.0;
    }
    if (!bulk.ok() || !file.ok() || !dd.ok()) {
      std::cerr << "bulk_bench " << name << ": " << bulk.status() << " / " << raw.status() << " / " << file.status()
                << " / " << dd.status() << "\n";
      return 1;
    }
    std::fprintf(stderr, "%s: bulk->memory %.0f MB/s, raw ucp_am_bw %.0f MB/s, bulk->file %.0f MB/s, dd %.0f MB/s\n",
                 name.c_str(), *bulk / 1e6, *raw / 1e6, *file / 1e6, *dd / 1e6);
    ReportRow mem{"bulk->memory " + name, "MB/s", *bulk / 1e6, *raw / 1e6, "ucx_perftest ucp_am_bw", ">= 0.8"};
    mem.met = mem.Ratio() >= 0.8;
    ReportRow disk{"bulk->file " + name, "MB/s", *file / 1e6, *dd / 1e6, "dd conv=fdatasync", ">= 0.8"};
    disk.met = disk.Ratio() >= 0.8;
    rows.push_back(mem);
    rows.push_back(disk);
  }
  PrintReport("bulk", rows);
  if (!json_path.empty() && !WriteReportJson(json_path, "bulk", quick, rows)) return 1;
  endpoint->reset();
  (*rt)->Stop();
  (*rt)->AwaitActors(5s);
  (*receiver)->WriteLine("quit").IgnoreError();
  (*receiver)->Wait(10s).IgnoreError();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  bool serve = false, quick = false;
  std::string json_path, dir;
  std::vector<uint64_t> sizes_mib;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--serve") serve = true;
    else if (arg == "--quick") quick = true;
    else if (arg == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (arg == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (arg == "--mib" && i + 1 < argc) {
      const std::string mib = argv[++i];
      const uint64_t n = mib.find_first_not_of("0123456789") == std::string::npos && mib.size() < 4 ? std::stoull(mib) : 0;
      if (n == 0 || n * troupe::bench::kMiB > troupe::bench::kMaxSize) {
        std::cerr << "bulk_bench: --mib " << mib << ": give a size in MiB from 1 to 256\n";
        return 2;
      }
      sizes_mib.push_back(n);
    } else {
      std::cerr << "usage: bulk_bench [--quick] [--json PATH] [--dir DIR] [--mib N]...\n";
      return 2;
    }
  }
  if (sizes_mib.empty()) sizes_mib = {1, 16, 64, 256};
  if (!troupe::InitLogging("warn").ok()) return 2;
  if (serve) return troupe::bench::Serve(dir);
  return troupe::bench::Run(quick, json_path, dir, "/proc/self/exe", sizes_mib);
}
