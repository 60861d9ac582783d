// transport_bench: troupe's UCX transport against raw UCX (ucx_perftest), side by side, in
// one run: latency for 8 B / 64 KiB / 1 MiB, small-message rate and 1 MiB bandwidth, over
// shared memory and over TCP, between two processes on this machine.
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/logging.h"
#include "transport/ucx_transport.h"

namespace troupe::bench {
namespace {

using namespace std::chrono_literals;
using transport::Frame;
using transport::FrameHeader;
using transport::NodeId;
using transport::TransportHandler;
using transport::UcxTransport;
using transport::UcxTransportConfig;
using Clock = std::chrono::steady_clock;

constexpr const char* kToken = "bench-token";
constexpr NodeId kClient = 1;
constexpr NodeId kServer = 2;
constexpr uint32_t kPing = 1;
constexpr uint32_t kStream = 2;
constexpr uint32_t kAck = 3;
constexpr uint32_t kFin = 1;

struct Mode {
  std::string name;
  std::string tls;
};

struct Options {
  bool quick = false;
  bool latency_only = false;  // for profiling: troupe's latency figures only
  std::string only_mode;
  std::string json_path;
  std::string self_path;
};

// Recycles payload buffers of one size so the measured path does not include page faults.
class BufferPool {
 public:
  explicit BufferPool(size_t size) : size_(size) {}
  ~BufferPool() {
    for (uint8_t* p : free_) std::free(p);
  }
  Buffer Get() {
    uint8_t* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        p = free_.back();
        free_.pop_back();
      }
    }
    if (p == nullptr) {
      p = static_cast<uint8_t*>(std::aligned_alloc(64, (size_ + 63) / 64 * 64));
      std::memset(p, 0x5a, size_);
    }
    return Buffer(p, size_, [this](uint8_t* d, size_t) {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(d);
    });
  }
  size_t size() const { return size_; }

 private:
  size_t size_;
  std::mutex mu_;
  std::vector<uint8_t*> free_;
};

UcxTransportConfig MakeConfig(NodeId id, const std::string& tls) {
  UcxTransportConfig config;
  config.node_id = id;
  config.node_name = id == kClient ? "bench-client" : "bench-server";
  config.cluster_token = kToken;
  config.ucx_tls = tls;
  config.max_frame_bytes = 64u << 20;
  // Raw UCX, the baseline, spins in its ping-pong loop: troupe polls too (the default does not
  // below kBusyPollMinCores cores, where more processes than cores share the machine).
  config.busy_poll = std::chrono::microseconds(200);
  return config;
}

// ---- Server process -------------------------------------------------------------------

int Serve(const std::string& tls) {
  UcxTransport transport(MakeConfig(kServer, tls));
  BufferPool big(1u << 20);
  uint64_t streamed = 0;
  TransportHandler handler;
  handler.allocate_payload = [&big](const FrameHeader&, size_t size) {
    return size == big.size() ? big.Get() : Buffer::Allocate(size);
  };
  handler.on_frame = [&](NodeId peer, Frame frame) {
    if (frame.header.type_id == kPing) {
      transport.Send(peer, frame.header, std::move(frame.payload)).IgnoreError();
    } else if (frame.header.type_id == kStream) {
      ++streamed;
      if (frame.header.flags & kFin) {
        FrameHeader ack;
        ack.type_id = kAck;
        ack.request_id = streamed;
        streamed = 0;
        transport.Send(peer, ack, Buffer()).IgnoreError();
      }
    }
  };
  auto status = transport.Start(std::move(handler));
  if (!status.ok()) {
    std::cerr << "transport_bench server: " << status << "\n";
    return 1;
  }
  std::cout << "LISTEN " << transport.listen_address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line) && line != "quit") {
  }
  transport.Stop();
  return 0;
}

// ---- Client side: troupe figures ------------------------------------------------------

struct TroupeFigures {
  std::vector<std::pair<size_t, double>> latency_us;  // one-way (half round trip)
  double caller_thread_latency_us = 0;                // 8 B, ping issued from a non-progress thread
  double msg_rate = 0;                                // 8 B frames per second
  double bandwidth_mbs = 0;                           // 1 MiB frames, MB/s (10^6)
  double caller_msg_rate = 0;                         // the same, sent from a non-progress thread
  double caller_bandwidth_mbs = 0;
};

class Client {
 public:
  explicit Client(const std::string& tls) : transport_(MakeConfig(kClient, tls)), big_(1u << 20) {}

  Status Start(const std::string& server_address) {
    TransportHandler handler;
    handler.on_frame = [this](NodeId peer, Frame frame) { OnFrame(peer, std::move(frame)); };
    RETURN_IF_ERROR(transport_.Start(std::move(handler)));
    transport_.AddPeer(kServer, server_address);
    return OkStatus();
  }
  void Stop() { transport_.Stop(); }

  // UCX_* assignments for the settings this transport applied, for the raw baseline.
  std::vector<std::string> UcxEnvironment() const {
    std::vector<std::string> env;
    for (const auto& s : transport_.ucx_settings()) env.push_back("UCX_" + s.name + "=" + s.value);
    return env;
  }

  // Ping-pong driven from the progress thread, as the runtime's bridge will drive it.
  double Latency(size_t size, int iterations) {
    PingPong(size, std::max(10, iterations / 10));  // warm-up
    auto start = Clock::now();
    PingPong(size, iterations);
    double total_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
    return total_us / iterations / 2;
  }

  // Each ping sent from this (non-progress) thread and the pong awaited here: includes
  // the queue hand-off and wake-ups both ways.
  double CallerThreadLatency(int iterations) {
    auto run = [&](int n) {
      for (int i = 0; i < n; ++i) {
        std::unique_lock<std::mutex> lock(mu_);
        caller_pong_ = false;
        caller_mode_ = true;
        lock.unlock();
        FrameHeader h;
        h.type_id = kPing;
        transport_.Send(kServer, h, Buffer::Allocate(8)).IgnoreError();
        lock.lock();
        cv_.wait(lock, [&] { return caller_pong_; });
      }
      std::lock_guard<std::mutex> lock(mu_);
      caller_mode_ = false;
    };
    run(std::max(10, iterations / 10));
    auto start = Clock::now();
    run(iterations);
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iterations / 2;
  }

  // Streams `count` frames with at most `window` in flight, each completion sending the
  // next frame from the progress thread (how the runtime's bridge will pipeline, and how
  // ucx_perftest drives UCX). Returns seconds until the server acknowledged the last one.
  double StreamFromProgressThread(size_t size, int count, int window) {
    std::promise<uint64_t> acked;
    auto future = ArmAck(&acked);
    auto start = Clock::now();
    stream_size_ = size;
    stream_left_ = count;
    stream_window_ = window;
    stream_in_flight_ = 0;
    // Only the first frame leaves from this thread; every later one is sent from the
    // progress thread, so frames leave in the order they are numbered.
    SendNextStreamFrame();
    return AwaitAck(std::move(future), start, count);
  }

  // Streams `count` frames from this (non-progress) thread with at most `window` in flight;
  // includes the hand-off to the progress thread for every frame.
  double StreamFromCallerThread(size_t size, int count, int window) {
    std::promise<uint64_t> acked;
    auto future = ArmAck(&acked);
    auto start = Clock::now();
    for (int i = 0; i < count; ++i) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return in_flight_ < window; });
        ++in_flight_;
      }
      FrameHeader h;
      h.type_id = kStream;
      h.flags = i + 1 == count ? kFin : 0;
      Buffer payload = size == big_.size() ? big_.Get() : Buffer::Allocate(size);
      auto status = transport_.Send(kServer, h, std::move(payload), [this](const Status&) {
        std::lock_guard<std::mutex> lock(mu_);
        --in_flight_;
        cv_.notify_one();
      });
      if (!status.ok()) {
        std::cerr << "stream send failed: " << status << "\n";
        std::exit(1);
      }
    }
    return AwaitAck(std::move(future), start, count);
  }

 private:
  // Points the next server acknowledgement at `acked`.
  std::future<uint64_t> ArmAck(std::promise<uint64_t>* acked) {
    std::lock_guard<std::mutex> lock(mu_);
    ack_ = acked;
    return acked->get_future();
  }

  double AwaitAck(std::future<uint64_t> future, Clock::time_point start, int count) {
    if (future.wait_for(120s) != std::future_status::ready) {
      std::cerr << "stream: no acknowledgement from the server\n";
      std::exit(1);
    }
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    uint64_t received = future.get();
    if (received != static_cast<uint64_t>(count)) {
      std::cerr << "stream: server received " << received << " of " << count << " frames\n";
      std::exit(1);
    }
    return seconds;
  }

  // Sends one stream frame; its completion sends the next, plus one more while the window
  // is not yet full (progress thread after the first frame).
  void SendNextStreamFrame() {
    if (stream_left_.load() <= 0) return;
    int left = --stream_left_;
    ++stream_in_flight_;
    FrameHeader h;
    h.type_id = kStream;
    h.flags = left == 0 ? kFin : 0;
    Buffer payload = stream_size_ == big_.size() ? big_.Get() : Buffer::Allocate(stream_size_);
    transport_.Send(kServer, h, std::move(payload), [this](const Status& s) {
      if (!s.ok()) {
        std::cerr << "stream send failed: " << s << "\n";
        std::exit(1);
      }
      --stream_in_flight_;
      SendNextStreamFrame();
      if (stream_in_flight_ < stream_window_) SendNextStreamFrame();
    }).IgnoreError();
  }

  void PingPong(size_t size, int iterations) {
    std::promise<void> done;
    auto future = done.get_future();
    remaining_ = iterations;
    done_ = &done;
    FrameHeader h;
    h.type_id = kPing;
    transport_.Send(kServer, h, size == big_.size() ? big_.Get() : Buffer::Allocate(size)).IgnoreError();
    if (future.wait_for(120s) != std::future_status::ready) {
      std::cerr << "latency: ping-pong stalled\n";
      std::exit(1);
    }
  }

  void OnFrame(NodeId peer, Frame frame) {
    if (frame.header.type_id == kPing) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (caller_mode_) {
          caller_pong_ = true;
          cv_.notify_one();
          return;
        }
      }
      if (--remaining_ > 0) {
        transport_.Send(peer, frame.header, std::move(frame.payload)).IgnoreError();
      } else {
        done_->set_value();
      }
    } else if (frame.header.type_id == kAck) {
      std::lock_guard<std::mutex> lock(mu_);
      ack_->set_value(frame.header.request_id);
    }
  }

  UcxTransport transport_;
  BufferPool big_;
  int remaining_ = 0;          // progress thread only
  size_t stream_size_ = 0;
  std::atomic<int> stream_left_{0};
  std::atomic<int> stream_in_flight_{0};
  int stream_window_ = 1;
  std::promise<void>* done_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  int in_flight_ = 0;
  bool caller_mode_ = false;
  bool caller_pong_ = false;
  std::promise<uint64_t>* ack_ = nullptr;
};

// ---- Raw UCX baseline (ucx_perftest) --------------------------------------------------

struct PerftestResult {
  double latency_us = 0;  // average one-way latency
  double bandwidth_mbs = 0;
  double msg_rate = 0;
};

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// Runs ucx_perftest with exactly the UCX settings troupe applied (`env`) and with peer
// error handling (-e), which troupe needs to see peers fail.
StatusOr<PerftestResult> RunPerftest(const std::vector<std::string>& env, const std::string& test, size_t size,
                                     int iterations) {
  // The port is picked by binding port 0 and released again, so another process can take
  // it before ucx_perftest binds it: a server that does not come up is retried on a new port.
  std::unique_ptr<ChildProcess> server;
  std::string port;
  std::string server_output;
  for (int attempt = 0; attempt < 3 && server == nullptr; ++attempt) {
    port = std::to_string(FreePort());
    auto spawned = ChildProcess::Spawn({"stdbuf", "-oL", "ucx_perftest", "-p", port, "-e"}, env,
                                       /*merge_stderr=*/true);
    if (!spawned.ok()) return spawned.status();
    while (true) {
      auto line = (*spawned)->ReadLine(20s);
      if (!line.ok()) break;
      if (line->rfind("Waiting for connection", 0) == 0) {
        server = std::move(*spawned);
        break;
      }
      server_output += *line + "\n";
    }
  }
  if (server == nullptr) return UnavailableError("ucx_perftest server did not start:\n" + server_output);
  auto client = ChildProcess::Spawn({"stdbuf", "-oL", "ucx_perftest", "127.0.0.1", "-p", port, "-e", "-t", test,
                                     "-s", std::to_string(size), "-n", std::to_string(iterations)},
                                    env);
  if (!client.ok()) return client.status();
  auto final_line = (*client)->ReadLineWithPrefix("Final:", 300s);
  if (!final_line.ok()) return UnavailableError("ucx_perftest gave no result: " + final_line.status().message());
  std::istringstream in(*final_line);
  double iters, p50, avg_lat, overall_lat, avg_bw, overall_bw, avg_rate, overall_rate;
  in >> iters >> p50 >> avg_lat >> overall_lat >> avg_bw >> overall_bw >> avg_rate >> overall_rate;
  (*client)->Wait(30s).IgnoreError();
  server->Wait(30s).IgnoreError();
  PerftestResult r;
  r.latency_us = overall_lat;
  r.bandwidth_mbs = overall_bw * 1.048576;  // perftest's MB is 2^20 bytes
  r.msg_rate = overall_rate;
  return r;
}

// ---- Driver ---------------------------------------------------------------------------

struct Row {
  std::string mode;
  std::string metric;
  std::string unit;
  double troupe = 0;
  double ucx = 0;
  double ratio = 0;        // troupe / ucx
  std::string target;      // e.g. "<= 1.5"
  bool met = false;
};

// A row of the report. `target` is "<= X", ">= X" or "(info)" for figures without one.
Row MakeRow(const std::string& mode, const std::string& metric, const std::string& unit, double troupe,
            double ucx, const std::string& target) {
  Row r{mode, metric, unit, troupe, ucx, troupe / ucx, target, true};
  if (target.rfind("<= ", 0) == 0) r.met = r.ratio <= std::stod(target.substr(3));
  if (target.rfind(">= ", 0) == 0) r.met = r.ratio >= std::stod(target.substr(3));
  return r;
}

std::string SizeName(size_t size) {
  if (size >= (1u << 20)) return std::to_string(size >> 20) + " MiB";
  if (size >= 1024) return std::to_string(size >> 10) + " KiB";
  return std::to_string(size) + " B";
}

int RunBench(const Options& options) {
  const std::vector<Mode> modes = {{"shm", "shm,self,tcp"}, {"tcp", "tcp"}};
  const int scale = options.quick ? 10 : 1;
  struct LatCase {
    size_t size;
    int iterations;
  };
  const std::vector<LatCase> lat_cases = {{8, 20000 / scale}, {64u << 10, 4000 / scale}, {1u << 20, 1000 / scale}};
  const int rate_count = 200000 / scale;
  const int bw_count = 2000 / scale;

  std::vector<Row> rows;
  for (const auto& mode : modes) {
    if (!options.only_mode.empty() && mode.name != options.only_mode) continue;
    std::fprintf(stderr, "== %s (UCX_TLS=%s)\n", mode.name.c_str(), mode.tls.c_str());
    auto server = ChildProcess::Spawn({options.self_path, "--serve", mode.tls});
    if (!server.ok()) {
      std::cerr << server.status() << "\n";
      return 1;
    }
    auto address = (*server)->ReadLineWithPrefix("LISTEN ", 20s);
    if (!address.ok()) {
      std::cerr << "bench server did not start: " << address.status() << "\n";
      return 1;
    }
    Client client(mode.tls);
    if (auto s = client.Start(*address); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
    TroupeFigures t;
    const std::vector<std::string> ucx_env = client.UcxEnvironment();
    std::string env_text;
    for (const auto& e : ucx_env) env_text += " " + e;
    std::fprintf(stderr, "   UCX settings for troupe and ucx_perftest -e:%s\n", env_text.c_str());
    for (const auto& c : lat_cases) {
      t.latency_us.emplace_back(c.size, client.Latency(c.size, c.iterations));
      std::fprintf(stderr, "   troupe latency %-8s %8.2f us\n", SizeName(c.size).c_str(), t.latency_us.back().second);
    }
    if (options.latency_only) {
      client.Stop();
      continue;
    }
    t.caller_thread_latency_us = client.CallerThreadLatency(lat_cases[0].iterations / 4);
    t.msg_rate = rate_count / client.StreamFromProgressThread(8, rate_count, 256);
    t.bandwidth_mbs = bw_count * double(1u << 20) / client.StreamFromProgressThread(1u << 20, bw_count, 16) / 1e6;
    t.caller_msg_rate = rate_count / client.StreamFromCallerThread(8, rate_count, 4096);
    t.caller_bandwidth_mbs =
        bw_count * double(1u << 20) / client.StreamFromCallerThread(1u << 20, bw_count, 16) / 1e6;
    std::fprintf(stderr, "   troupe rate %.0f msg/s, bandwidth %.0f MB/s\n", t.msg_rate, t.bandwidth_mbs);
    client.Stop();
    (*server)->WriteLine("quit").IgnoreError();
    (*server)->Wait(20s).IgnoreError();

    for (size_t i = 0; i < lat_cases.size(); ++i) {
      auto raw = RunPerftest(ucx_env, "ucp_am_lat", lat_cases[i].size, lat_cases[i].iterations);
      if (!raw.ok()) {
        std::cerr << "ucx_perftest: " << raw.status() << "\n";
        return 1;
      }
      rows.push_back(MakeRow(mode.name, "latency " + SizeName(lat_cases[i].size), "us", t.latency_us[i].second,
                             raw->latency_us, "<= 1.5"));
      if (i == 0) {
        rows.push_back(MakeRow(mode.name, "latency 8 B from caller thread", "us", t.caller_thread_latency_us,
                               raw->latency_us, "(info)"));
      }
    }
    auto raw_rate = RunPerftest(ucx_env, "ucp_am_bw", 8, rate_count);
    auto raw_bw = RunPerftest(ucx_env, "ucp_am_bw", 1u << 20, bw_count);
    if (!raw_rate.ok() || !raw_bw.ok()) {
      std::cerr << "ucx_perftest failed\n";
      return 1;
    }
    rows.push_back(MakeRow(mode.name, "message rate 8 B", "msg/s", t.msg_rate, raw_rate->msg_rate, "(info)"));
    rows.push_back(MakeRow(mode.name, "message rate 8 B from caller thread", "msg/s", t.caller_msg_rate,
                           raw_rate->msg_rate, "(info)"));
    rows.push_back(MakeRow(mode.name, "bandwidth 1 MiB", "MB/s", t.bandwidth_mbs, raw_bw->bandwidth_mbs, ">= 0.8"));
    rows.push_back(MakeRow(mode.name, "bandwidth 1 MiB from caller thread", "MB/s", t.caller_bandwidth_mbs,
                           raw_bw->bandwidth_mbs, "(info)"));
  }

  std::printf("\n%-5s %-32s %14s %14s %8s %8s %5s\n", "mode", "metric", "troupe", "raw UCX", "ratio", "target", "met");
  for (const auto& r : rows) {
    std::printf("%-5s %-32s %10.2f %-3s %10.2f %-3s %8.2f %8s %5s\n", r.mode.c_str(), r.metric.c_str(), r.troupe,
                r.unit == "msg/s" ? "/s" : r.unit.c_str(), r.ucx, r.unit == "msg/s" ? "/s" : r.unit.c_str(), r.ratio,
                r.target.c_str(), r.met ? "yes" : "NO");
  }
  if (!options.json_path.empty()) {
    nlohmann::ordered_json report = {
        {"benchmark", "transport"}, {"quick", options.quick}, {"rows", nlohmann::ordered_json::array()}};
    for (const auto& r : rows) {
      report["rows"].push_back({{"mode", r.mode},
                                {"metric", r.metric},
                                {"unit", r.unit},
                                {"troupe", r.troupe},
                                {"raw_ucx", r.ucx},
                                {"ratio", r.ratio},
                                {"target", r.target},
                                {"met", r.met}});
    }
    std::ofstream out(options.json_path);
    out << report.dump(2) << "\n";
    if (!out) {
      std::cerr << "cannot write " << options.json_path << "\n";
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  troupe::InitLogging("warn").IgnoreError();
  troupe::bench::Options options;
  options.self_path = argv[0];
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--serve" && i + 1 < argc) return troupe::bench::Serve(argv[i + 1]);
    if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--latency-only") {
      options.latency_only = true;
    } else if (arg == "--mode" && i + 1 < argc) {
      options.only_mode = argv[++i];
    } else if (arg == "--json" && i + 1 < argc) {
      options.json_path = argv[++i];
    } else {
      std::cerr << "usage: transport_bench [--quick] [--json PATH] [--mode shm|tcp] [--latency-only]\n"
                << "unknown argument '" << arg << "'\n";
      return 2;
    }
  }
  return troupe::bench::RunBench(options);
}
