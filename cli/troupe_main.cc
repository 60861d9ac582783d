// troupe: the command-line entry point: the cluster commands (up, down, status, head, node;
// cli/cluster_commands.cc) and `troupe demo`, two processes exchanging frames over UCX.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include "cli/check_command.h"
#include "cli/cluster_commands.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "transport/ucx_transport.h"

namespace troupe::cli {
namespace {

using namespace std::chrono_literals;
using transport::Frame;
using transport::FrameHeader;
using transport::NodeId;
using transport::TransportHandler;
using transport::UcxTransport;
using transport::UcxTransportConfig;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: troupe <command> [options]

commands:
  up -c FILE            start the head and every node of FILE here; restart what crashes; Ctrl-C stops
  down -c FILE          stop the cluster that `troupe up -c FILE` started
  status -c FILE        the cluster's nodes: state, address, resources, heartbeat (--json for scripts)
  slices -c FILE        every GPU's slices, their owners and free capacity, waiting requests (--json)
  events -c FILE        supervision events (restarts, escalations) the head was sent (--json)
  run -c FILE [--memory SIZE] [--compute PCT] [--cpus N] [--tenant T] [--priority urgent|normal]
      [--policy pack|spread] [--timeout D] -- CMD [ARGS...]
                        lease a GPU slice and run CMD on it (CUDA_VISIBLE_DEVICES, MPS limits) with
                        this terminal's stdin/stdout/stderr; TERM, INT, HUP, USR1 and USR2 are passed
                        on to CMD, CMD dies with troupe run, and the lease ends once CMD is gone
  check -c FILE         validate FILE without starting anything: every error, file:line:col (--json)
  head -c FILE          run the head of the cluster in FILE
  node -c FILE --name N run node N of the cluster in FILE (--head HOST:PORT overrides the head address)
  demo        start a second troupe process and exchange frames with it over UCX
  version     print the version
  help        print this text

demo options:
  --frames N      frames to exchange (default 10000)
  --size BYTES    payload size of each frame (default 64)
  --tls LIST      UCX transports, e.g. shm,self,tcp or tcp (default: UCX's choice)
  --json          print the result as JSON on stdout
  --log-level L   trace, debug, info, warn, error or off (default warn)
)";

struct DemoOptions {
  uint64_t frames = 10000;
  uint64_t size = 64;
  std::string tls;
  bool json = false;
  std::string log_level = "warn";
};

// Parses a non-negative integer flag value; errors name the flag and the value.
StatusOr<uint64_t> ParseCount(const std::string& flag, const std::string& value, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || value[0] == '-' || v > max) {
    return InvalidArgumentError(flag + ": '" + value + "' is not a whole number in 0.." + std::to_string(max));
  }
  return static_cast<uint64_t>(v);
}

StatusOr<DemoOptions> ParseDemoOptions(const std::vector<std::string>& args) {
  DemoOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> StatusOr<std::string> {
      if (i + 1 >= args.size()) return InvalidArgumentError(a + " needs a value");
      return args[++i];
    };
    if (a == "--json") {
      o.json = true;
    } else if (a == "--frames" || a == "--size" || a == "--tls" || a == "--log-level") {
      ASSIGN_OR_RETURN(std::string v, value());
      if (a == "--frames") {
        ASSIGN_OR_RETURN(o.frames, ParseCount(a, v, 100000000));
        if (o.frames == 0) return InvalidArgumentError("--frames must be at least 1");
      } else if (a == "--size") {
        ASSIGN_OR_RETURN(o.size, ParseCount(a, v, 256u << 20));
      } else if (a == "--tls") {
        o.tls = v;
      } else {
        o.log_level = v;
      }
    } else {
      return InvalidArgumentError("unknown option '" + a + "' for 'troupe demo'");
    }
  }
  return o;
}

UcxTransportConfig DemoConfig(NodeId id, const std::string& tls, const std::string& token) {
  UcxTransportConfig config;
  config.node_id = id;
  config.node_name = id == 1 ? "demo-client" : "demo-peer";
  config.cluster_token = token;
  config.ucx_tls = tls;
  return config;
}

// The second process: echoes every frame back until stdin says "quit" or closes.
int RunDemoPeer(const std::vector<std::string>& args) {
  if (args.size() != 2) {
    std::cerr << "troupe demo-peer: internal command, started by 'troupe demo'\n";
    return 2;
  }
  const char* token = std::getenv("TROUPE_DEMO_TOKEN");
  if (token == nullptr) {
    std::cerr << "troupe demo-peer: TROUPE_DEMO_TOKEN is not set\n";
    return 2;
  }
  InitLogging(args[1]).IgnoreError();
  UcxTransport transport(DemoConfig(2, args[0] == "-" ? "" : args[0], token));
  TransportHandler handler;
  handler.on_frame = [&transport](NodeId peer, Frame frame) {
    transport.Send(peer, frame.header, std::move(frame.payload)).IgnoreError();
  };
  if (auto s = transport.Start(std::move(handler)); !s.ok()) {
    std::cerr << "troupe demo-peer: " << s << "\n";
    return 1;
  }
  std::cout << "LISTEN " << transport.listen_address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line) && line != "quit") {
  }
  transport.Stop();
  return 0;
}

std::string RandomToken() {
  auto now = Clock::now().time_since_epoch().count();
  return "demo-" + std::to_string(getpid()) + "-" + std::to_string(now);
}

int RunDemo(const std::vector<std::string>& args, const std::string& self_path) {
  auto parsed = ParseDemoOptions(args);
  if (!parsed.ok()) {
    std::cerr << "troupe demo: " << parsed.status().message() << "\n\n" << kUsage;
    return 2;
  }
  DemoOptions o = *parsed;
  if (auto s = InitLogging(o.log_level); !s.ok()) {
    std::cerr << "troupe demo: --log-level: " << s.message() << "\n";
    return 2;
  }
  auto say = [&](const std::string& line) {
    if (!o.json) std::cout << line << std::endl;
  };
  const std::string token = RandomToken();
  say("troupe demo: starting a peer process");
  auto peer = ChildProcess::Spawn({self_path, "demo-peer", o.tls.empty() ? "-" : o.tls, o.log_level},
                                  {"TROUPE_DEMO_TOKEN=" + token});
  if (!peer.ok()) {
    std::cerr << "troupe demo: cannot start the peer process: " << peer.status().message() << "\n";
    return 1;
  }
  auto address = (*peer)->ReadLineWithPrefix("LISTEN ", 30s);
  if (!address.ok()) {
    std::cerr << "troupe demo: the peer process did not come up: " << address.status().message() << "\n";
    return 1;
  }
  say("troupe demo: peer (pid " + std::to_string((*peer)->pid()) + ") listening on " + *address);

  std::mutex mu;
  std::condition_variable cv;
  uint64_t received = 0;
  uint64_t bad = 0;
  bool lost = false;
  std::string lost_reason;
  std::vector<double> rtt_us;
  rtt_us.reserve(o.frames);
  std::vector<Clock::time_point> sent_at(o.frames);

  UcxTransport transport(DemoConfig(1, o.tls, token));
  TransportHandler handler;
  handler.on_frame = [&](NodeId, Frame frame) {
    auto now = Clock::now();
    std::lock_guard<std::mutex> lock(mu);
    uint64_t seq = frame.header.request_id;
    bool intact = seq < o.frames && seq == received && frame.payload.size() == o.size &&
                  std::all_of(frame.payload.data(), frame.payload.data() + frame.payload.size(),
                              [&](uint8_t b) { return b == static_cast<uint8_t>(seq); });
    if (!intact) ++bad;
    if (seq < o.frames) rtt_us.push_back(std::chrono::duration<double, std::micro>(now - sent_at[seq]).count());
    ++received;
    cv.notify_all();
  };
  handler.on_peer_failed = [&](NodeId, const Status& reason) {
    std::lock_guard<std::mutex> lock(mu);
    lost = true;
    lost_reason = reason.ToString();
    cv.notify_all();
  };
  if (auto s = transport.Start(std::move(handler)); !s.ok()) {
    std::cerr << "troupe demo: " << s << "\n";
    return 1;
  }
  transport.AddPeer(2, *address);

  // Keep a bounded window of frames in flight; report progress every tenth.
  const uint64_t window = 64;
  auto start = Clock::now();
  uint64_t next_report = std::max<uint64_t>(1, o.frames / 10);
  for (uint64_t seq = 0; seq < o.frames; ++seq) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_for(lock, 30s, [&] { return lost || seq - received < window; }) || lost) break;
    }
    Buffer payload = Buffer::Allocate(o.size);
    if (o.size > 0) std::memset(payload.data(), static_cast<uint8_t>(seq), o.size);
    FrameHeader h;
    h.request_id = seq;
    sent_at[seq] = Clock::now();
    if (auto s = transport.Send(2, h, std::move(payload)); !s.ok()) {
      std::cerr << "troupe demo: send failed: " << s << "\n";
      return 1;
    }
    if ((seq + 1) % next_report == 0) say("troupe demo: sent " + std::to_string(seq + 1) + "/" + std::to_string(o.frames));
  }
  bool complete;
  {
    std::unique_lock<std::mutex> lock(mu);
    complete = cv.wait_for(lock, 60s, [&] { return lost || received == o.frames; }) && !lost;
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  auto stats = transport.stats();
  transport.Stop();
  (*peer)->WriteLine("quit").IgnoreError();
  (*peer)->Wait(10s).IgnoreError();

  std::lock_guard<std::mutex> lock(mu);
  std::sort(rtt_us.begin(), rtt_us.end());
  auto pct = [&](double q) { return rtt_us.empty() ? 0.0 : rtt_us[static_cast<size_t>(q * (rtt_us.size() - 1))]; };
  bool ok = complete && bad == 0;
  if (o.json) {
    std::printf(
        "{\"ok\": %s, \"frames_sent\": %llu, \"frames_echoed\": %llu, \"frames_corrupt\": %llu, "
        "\"payload_bytes\": %llu, \"seconds\": %.6f, \"frames_per_second\": %.1f, "
        "\"rtt_us\": {\"p50\": %.2f, \"p99\": %.2f, \"max\": %.2f}, \"peer_lost\": %s}\n",
        ok ? "true" : "false", static_cast<unsigned long long>(stats.frames_sent),
        static_cast<unsigned long long>(received), static_cast<unsigned long long>(bad),
        static_cast<unsigned long long>(o.size), seconds, received / seconds, pct(0.5), pct(0.99), pct(1.0),
        lost ? "true" : "false");
  } else {
    std::printf("troupe demo: %llu of %llu frames echoed intact in %.3f s (%.0f frames/s)\n",
                static_cast<unsigned long long>(received - bad), static_cast<unsigned long long>(o.frames), seconds,
                received / seconds);
    std::printf("troupe demo: round trip p50 %.1f us, p99 %.1f us (window of %llu frames in flight)\n", pct(0.5),
                pct(0.99), static_cast<unsigned long long>(window));
    if (lost) std::printf("troupe demo: peer lost: %s\n", lost_reason.c_str());
    std::printf("troupe demo: %s\n", ok ? "ok" : "FAILED");
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace troupe::cli

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << troupe::cli::kUsage;
    return args.empty() ? 2 : 0;
  }
  std::string command = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "version" || command == "--version") {
    std::cout << "troupe " << TROUPE_VERSION << "\n";
    return 0;
  }
  // The demo talks to its peer over a pipe; a closed pipe must not kill it.
  signal(SIGPIPE, SIG_IGN);
  if (command == "demo") return troupe::cli::RunDemo(rest, "/proc/self/exe");
  if (command == "check") return troupe::cli::RunCheck(rest);
  if (command == "head") return troupe::cli::RunHead(rest);
  if (command == "node") return troupe::cli::RunNode(rest);
  if (command == "up") return troupe::cli::RunUp(rest);
  if (command == "down") return troupe::cli::RunDown(rest);
  if (command == "status") return troupe::cli::RunStatus(rest);
  if (command == "slices") return troupe::cli::RunSlices(rest);
  if (command == "events") return troupe::cli::RunEvents(rest);
  if (command == "run") return troupe::cli::RunOnSlice(rest);
  if (command == "demo-peer") return troupe::cli::RunDemoPeer(rest);
  std::cerr << "troupe: unknown command '" << command << "'\n\n" << troupe::cli::kUsage;
  return 2;
}
