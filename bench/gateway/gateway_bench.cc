// gateway_bench: what the HTTP gateway adds to a request (issue 21's benchmark). A real local
// cluster (`troupe up`: head, one node, the gateway process) serves a no-op deployment of the
// test model (one token, no pacing); a key with limits at every level (global, tenant, key)
// makes every request pass the key check, the three reservations, the settle and the meter.
//
//   baseline: the same chat completion sent straight to the deployment's router by a cluster
//             client (Client::Infer: this process -> head's router -> replica and back), one at
//             a time at a fixed rate;
//   gateway:  POST /v1/chat/completions over a keep-alive HTTP/1.1 connection, at the same rate
//             (this process -> gateway -> head's api actor (Admit) -> router -> replica, back,
//             then Settle off the request path).
// Overhead = gateway - baseline at p50 and p99, both measured in this run, alternating rounds.
// Then the highest rate the gateway sustains with p99 under 10 ms (closed loop, 1..16
// connections), and the gateway process's CPU time per request from /proc: requests per second
// per gateway core = requests / CPU seconds of the gateway process.
// Then wrk (Debian's `wrk`, the load generator the issue names; skipped, with the reason printed,
// where it is not installed) at the connection count of that best rate, one wrk thread, with a
// Lua script for the POST (JSON body, Authorization header) written to a temporary file: its
// rate, p50 and p99 (from --latency's distribution) beside this bench's own client at the same
// connections, and its requests per gateway CPU-second.
//
// Usage: gateway_bench [--quick] [--json PATH]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "actors/serving/deployment_spec.h"
#include "bench/common/report.h"
#include "cluster/client.h"
#include "cluster/config.h"
#include "common/child_process.h"
#include "common/logging.h"

namespace troupe::bench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
namespace beast = boost::beast;
namespace http = beast::http;

constexpr const char* kBody = R"({"model":"noop","messages":[{"role":"user","content":"hi"}],"max_tokens":1})";

struct Options {
  bool quick = false;
  std::string json;
};

// One keep-alive HTTP/1.1 connection to the gateway.
class Connection {
 public:
  Connection(int port, std::string key) : stream_(io_), key_(std::move(key)) {
    stream_.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                                   static_cast<unsigned short>(port)));
    stream_.socket().set_option(boost::asio::ip::tcp::no_delay(true));
  }
  // The status of one chat completion (0: the connection failed).
  int Post() {
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::authorization, "Bearer " + key_);
    req.set(http::field::content_type, "application/json");
    req.keep_alive(true);
    req.body() = kBody;
    req.prepare_payload();
    beast::error_code ec;
    stream_.expires_after(10s);
    http::write(stream_, req, ec);
    if (ec) return 0;
    http::response<http::string_body> res;
    http::read(stream_, buffer_, res, ec);
    if (ec) return 0;
    if (res.result_int() != 200 && last_error_.empty()) last_error_ = std::to_string(res.result_int()) + " " + res.body();
    return static_cast<int>(res.result_int());
  }
  // The first answer that was not 200, "" if none.
  const std::string& last_error() const { return last_error_; }

 private:
  boost::asio::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::string key_;
  std::string last_error_;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

// CPU seconds (user + system) of process `pid` so far, from /proc/PID/stat.
double CpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// What one wrk run measured (wrk --latency's report).
struct WrkResult {
  double rate = 0;           // Requests/sec
  double p50_us = 0, p99_us = 0;
  uint64_t requests = 0;     // "N requests in ..."
  uint64_t non_2xx = 0;      // "Non-2xx or 3xx responses: N"
  std::string socket_errors; // "Socket errors: ..." as printed, "" if none
};

// "612.00us", "1.23ms", "1.00s", "2.00m" in microseconds; -1 if it is none of these.
double WrkDurationUs(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    return -1;
  }
  const std::string unit = text.substr(used);
  if (unit == "us") return value;
  if (unit == "ms") return value * 1e3;
  if (unit == "s") return value * 1e6;
  if (unit == "m") return value * 60e6;
  return -1;
}

// Parses wrk's report (run with --latency): the rate, the request count, errors, and p50 and p99
// of the "Latency Distribution" block. InvalidArgument, quoting the report, if a figure is missing.
StatusOr<WrkResult> ParseWrkReport(const std::string& report) {
  WrkResult r;
  bool have_rate = false, have_p50 = false, have_p99 = false;
  std::istringstream lines(report);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string first, second;
    words >> first >> second;
    if (first == "Requests/sec:") {
      r.rate = std::strtod(second.c_str(), nullptr);
      have_rate = true;
    }
    if (first == "50%") have_p50 = (r.p50_us = WrkDurationUs(second)) >= 0;
    if (first == "99%") have_p99 = (r.p99_us = WrkDurationUs(second)) >= 0;
    if (second == "requests") r.requests = std::strtoull(first.c_str(), nullptr, 10);
    if (line.find("Non-2xx or 3xx responses:") != std::string::npos) {
      r.non_2xx = std::strtoull(line.substr(line.find(':') + 1).c_str(), nullptr, 10);
    }
    if (line.find("Socket errors:") != std::string::npos) r.socket_errors = line.substr(line.find(':') + 2);
  }
  if (!have_rate || !have_p50 || !have_p99) {
    return InvalidArgumentError("wrk's report has no Requests/sec or no 50%/99% latency line (was it run with "
                                "--latency?):\n" + report);
  }
  return r;
}

// wrk's path, or "" if it is not on PATH.
std::string FindWrk() {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/wrk";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Runs `wrk` against the gateway on `port`: POST /v1/chat/completions with kBody and `key` from a
// Lua script written to a file in `dir`, `connections` connections on one thread for `window`.
StatusOr<WrkResult> RunWrk(const std::string& wrk, const std::string& dir, int port, const std::string& key,
                           int connections, std::chrono::seconds window) {
  const std::string script = dir + "/gateway_post.lua";
  {
    std::ofstream lua(script);
    // Long brackets: the JSON body's quotes need no escaping.
    lua << "wrk.method = \"POST\"\nwrk.body = [[" << kBody << "]]\n"
        << "wrk.headers[\"Content-Type\"] = \"application/json\"\n"
        << "wrk.headers[\"Authorization\"] = \"Bearer " << key << "\"\n";
    if (!lua) return InternalError("cannot write the wrk script " + script);
  }
  auto child = ChildProcess::Spawn({wrk, "-t1", "-c" + std::to_string(connections),
                                    "-d" + std::to_string(window.count()) + "s", "--timeout", "10s", "--latency",
                                    "-s", script, "http://127.0.0.1:" + std::to_string(port) + "/v1/chat/completions"});
  if (!child.ok()) return child.status();
  std::string report;
  for (;;) {
    auto line = (*child)->ReadLine(window + 30s);
    if (!line.ok()) break;  // end of output (or wrk hung: its exit status says)
    report += *line + "\n";
  }
  auto exited = (*child)->Wait(10s);
  if (!exited.ok() || !WIFEXITED(*exited) || WEXITSTATUS(*exited) != 0) {
    return UnavailableError("wrk did not finish cleanly: " + (exited.ok() ? std::to_string(*exited) : exited.status().ToString()) +
                            "\n" + report);
  }
  return ParseWrkReport(report);
}

// `n` calls of `call` one at a time, each started on a fixed schedule (`rate` per second; a call
// that runs late starts the next at once); their latencies in us.
std::vector<double> FixedRate(int n, double rate, const std::function<bool()>& call, int* failures) {
  std::vector<double> out;
  out.reserve(static_cast<size_t>(n));
  const auto interval = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / rate));
  auto next = Clock::now();
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_until(next);  // the load generator's pacing, not a test's wait
    next += interval;
    const auto t0 = Clock::now();
    if (!call()) ++*failures;
    out.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return out;
}

int Main(const Options& o) {
  char templ[] = "/tmp/troupe-gateway-bench-XXXXXX";
  if (mkdtemp(templ) == nullptr) {
    std::cerr << "gateway_bench: mkdtemp failed\n";
    return 1;
  }
  const std::string dir = templ;
  const std::string config_path = dir + "/cluster.yaml";
  std::ofstream(config_path)
      << "cluster:\n  name: gwbench\n  token: gateway-bench-token\n  log_level: warn\n"
         "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
         "nodes:\n  - name: a\n    cpus: 4\n    memory: 4GiB\n    data_dir: node-a\n"
         "gateway:\n  listen: 127.0.0.1:0\n  limits:\n    requests_per_minute: 100000000\n"
         "    tokens_per_minute: 10000000000\n    max_concurrent: 100000\n";
  auto up = ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_path});
  if (!up.ok()) {
    std::cerr << "gateway_bench: " << up.status() << "\n";
    return 1;
  }
  int gateway_pid = 0;
  for (;;) {
    auto line = (*up)->ReadLine(120s);
    if (!line.ok()) {
      std::cerr << "gateway_bench: troupe up did not come up: " << line.status() << "\n";
      return 1;
    }
    if (line->rfind("gateway ", 0) == 0 && line->find(" pid ") != std::string::npos) {
      gateway_pid = std::atoi(line->c_str() + line->find(" pid ") + 5);
    }
    if (line->rfind("cluster gwbench up", 0) == 0) break;
  }
  auto cleanup = [&] {
    (*up)->Signal(SIGTERM);
    (void)(*up)->Wait(20s);
    std::filesystem::remove_all(dir);
  };
  auto config = cluster::LoadClusterConfig(config_path);
  auto client = config.ok() ? cluster::Client::Connect(*config, "", 10s) : StatusOr<std::unique_ptr<cluster::Client>>(config.status());
  if (!client.ok()) {
    std::cerr << "gateway_bench: " << client.status() << "\n";
    cleanup();
    return 1;
  }
  auto fail = [&](const std::string& what, const Status& s) {
    std::cerr << "gateway_bench: " << what << ": " << s << "\n";
    client->reset();
    cleanup();
    return 1;
  };
  auto spec = serving::ParseDeploymentSpec(
      "name: noop\ntenant: bench\nversions:\n  - name: v1\n    backend: {test: {tokens_per_second: 0, first_token_latency: 0ms}}\n"
      "replicas: {min: 1, max: 1, initial: 1}\nmax_ongoing_requests: 64\nautoscaling: {target_ongoing_requests: 2}\n",
      "bench spec");
  if (!spec.ok()) return fail("spec", spec.status());
  if (auto d = (*client)->Deploy(*spec, 10s); !d.ok()) return fail("deploy", d.status());
  const auto ready_by = Clock::now() + 60s;
  bool ready = false;
  while (!ready && Clock::now() < ready_by) {
    auto shown = (*client)->DeploymentCommand("show", "noop", "", 5s);
    ready = shown.ok() && Json::parse(*shown)["status"]["replicas_by_state"].value("ready", 0) == 1;
  }
  if (!ready) return fail("deploy", DeadlineExceededError("no ready replica within 60 s"));
  if (auto t = (*client)->ApiCommand("tenant.create", "bench",
                                     R"({"limits": {"requests_per_minute": 100000000, "tokens_per_minute": 10000000000, "max_concurrent": 100000}})",
                                     5s);
      !t.ok()) {
    return fail("tenant", t.status());
  }
  auto made = (*client)->ApiCommand(
      "key.create", "",
      R"({"tenant": "bench", "limits": {"requests_per_minute": 100000000, "tokens_per_minute": 10000000000, "max_concurrent": 100000}})",
      5s);
  if (!made.ok()) return fail("key", made.status());
  const std::string key = Json::parse(*made)["key"];
  std::string url;
  std::getline(std::ifstream(dir + "/head/gateway.url"), url);
  const int port = std::atoi(url.substr(url.rfind(':') + 1).c_str());

  // Warm both paths (connections, lookups, caches).
  Connection conn(port, key);
  for (int i = 0; i < 200; ++i) {
    (void)conn.Post();
    (void)(*client)->Infer("noop", "/v1/chat/completions", kBody, 5s);
  }

  // Fixed rate, alternating rounds.
  const double rate = 200;
  const int per_round = o.quick ? 200 : 1000;
  const int rounds = o.quick ? 1 : 3;
  std::vector<double> direct, gateway;
  int direct_failed = 0, gateway_failed = 0;
  for (int r = 0; r < rounds; ++r) {
    auto d = FixedRate(per_round, rate, [&] { return (*client)->Infer("noop", "/v1/chat/completions", kBody, 5s).ok(); },
                       &direct_failed);
    auto g = FixedRate(per_round, rate, [&] { return conn.Post() == 200; }, &gateway_failed);
    direct.insert(direct.end(), d.begin(), d.end());
    gateway.insert(gateway.end(), g.begin(), g.end());
  }
  if (!conn.last_error().empty()) std::cerr << "gateway_bench: a request through the gateway got " << conn.last_error() << "\n";
  const double d50 = Percentile(direct, 0.5), d99 = Percentile(direct, 0.99);
  const double g50 = Percentile(gateway, 0.5), g99 = Percentile(gateway, 0.99);

  // The highest closed-loop rate with p99 under 10 ms, and the gateway's CPU per request.
  double best_rate = 0, best_p99 = 0, best_cpu_rate = 0;
  int best_connections = 0;
  std::map<int, std::pair<double, double>> own_p50_p99;  // by connections, for wrk's baseline
  const auto window = o.quick ? 1s : 3s;
  for (int connections : {1, 2, 4, 8, 16}) {
    std::vector<std::unique_ptr<Connection>> conns;
    for (int i = 0; i < connections; ++i) conns.push_back(std::make_unique<Connection>(port, key));
    std::mutex mu;
    std::vector<double> latencies;
    std::atomic<uint64_t> done{0}, failed{0};
    std::atomic<bool> stop{false};
    const double cpu0 = CpuSeconds(gateway_pid);
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (auto& c : conns) {
      threads.emplace_back([&, c = c.get()] {
        std::vector<double> mine;
        while (!stop.load()) {
          const auto s = Clock::now();
          if (c->Post() == 200) {
            ++done;
          } else {
            ++failed;
          }
          mine.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
        }
        std::lock_guard<std::mutex> lock(mu);
        latencies.insert(latencies.end(), mine.begin(), mine.end());
      });
    }
    std::this_thread::sleep_for(window);  // the measurement window of a load generator
    stop = true;
    for (auto& t : threads) t.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu = CpuSeconds(gateway_pid) - cpu0;
    const double rate_now = static_cast<double>(done.load()) / seconds;
    const double p99 = Percentile(latencies, 0.99);
    own_p50_p99[connections] = {Percentile(latencies, 0.5), p99};
    const double per_core = cpu > 0 ? static_cast<double>(done.load()) / cpu : 0;
    std::printf("closed loop, %2d connection(s): %8.0f req/s, p99 %8.0f us, %llu failed, gateway CPU %.2f s "
                "(%.0f req per CPU-second)\n",
                connections, rate_now, p99, static_cast<unsigned long long>(failed.load()), cpu, per_core);
    if (p99 < 10000 && rate_now > best_rate) {
      best_rate = rate_now;
      best_p99 = p99;
      best_connections = connections;
      best_cpu_rate = per_core;
    }
  }

  // wrk at the connections of the best closed-loop rate (1 if none had p99 under 10 ms).
  const int wrk_connections = best_connections > 0 ? best_connections : 1;
  std::optional<WrkResult> wrk_result;
  double wrk_per_core = 0;
  int wrk_failed = 0;
  if (const std::string wrk = FindWrk(); wrk.empty()) {
    std::printf("wrk rows skipped: wrk is not installed (Debian's package wrk; `bash scripts/bootstrap.sh test` "
                "installs it)\n");
  } else {
    const double cpu0 = CpuSeconds(gateway_pid);
    auto measured = RunWrk(wrk, dir, port, key, wrk_connections, o.quick ? 1s : 5s);
    const double cpu = CpuSeconds(gateway_pid) - cpu0;
    if (!measured.ok()) {
      std::cerr << "gateway_bench: wrk: " << measured.status() << "\n";
      wrk_failed = 1;
    } else {
      wrk_result = *measured;
      wrk_per_core = cpu > 0 ? static_cast<double>(measured->requests) / cpu : 0;
      wrk_failed = static_cast<int>(measured->non_2xx);
      std::printf("wrk, %2d connection(s), 1 thread: %8.0f req/s, p50 %6.0f us, p99 %8.0f us, %llu requests, %llu "
                  "not 2xx%s%s, gateway CPU %.2f s (%.0f req per CPU-second)\n",
                  wrk_connections, measured->rate, measured->p50_us, measured->p99_us,
                  static_cast<unsigned long long>(measured->requests),
                  static_cast<unsigned long long>(measured->non_2xx),
                  measured->socket_errors.empty() ? "" : ", socket errors: ", measured->socket_errors.c_str(), cpu,
                  wrk_per_core);
    }
  }

  std::vector<ReportRow> rows = {
      {"request p50", "us", g50, d50, "direct to the router", "", true},
      {"request p99", "us", g99, d99, "direct to the router", "", true},
      {"gateway overhead p50", "us", g50 - d50, 2000, "LiteLLM median (published)", "<= 200", g50 - d50 <= 200},
      {"gateway overhead p99", "us", g99 - d99, 13000, "LiteLLM p99 (published)", "<= 1000", g99 - d99 <= 1000},
      {"rate, p99 < 10 ms", "req/s", best_rate, 1170, "LiteLLM, 4 instances", "", true},
      {"req per gateway core", "req/s", best_cpu_rate, 1170.0 / 4, "LiteLLM per instance", ">= 20000",
       best_cpu_rate >= 20000},
  };
  if (wrk_result) {
    const auto& own = own_p50_p99[wrk_connections];
    const std::string conns = std::to_string(wrk_connections) + " conn";
    rows.push_back({"wrk rate, " + conns, "req/s", wrk_result->rate, best_connections > 0 ? best_rate : 0,
                    "this bench's client, same conns", "", true});
    rows.push_back({"wrk p50, " + conns, "us", wrk_result->p50_us, own.first, "this bench's client, same conns", "",
                    true});
    rows.push_back({"wrk p99, " + conns, "us", wrk_result->p99_us, own.second, "this bench's client, same conns",
                    "< 10000", wrk_result->p99_us < 10000});
    rows.push_back({"wrk req per gw core", "req/s", wrk_per_core, best_cpu_rate, "this bench's client, same conns",
                    ">= 20000", wrk_per_core >= 20000});
  }
  PrintReport("gateway", rows);
  std::printf("(%zu requests a path at %.0f req/s in %d alternating round(s), %d + %d failed; the best closed-loop "
              "rate with %d connection(s), p99 %.0f us; keys, three limit levels and metering on; every process of "
              "the cluster and this load generator share this machine's %u cores)\n",
              direct.size(), rate, rounds, direct_failed, gateway_failed, best_connections, best_p99,
              std::thread::hardware_concurrency());
  int rc = 0;
  if (!o.json.empty() && !WriteReportJson(o.json, "gateway", o.quick, rows)) rc = 1;
  if (direct_failed + gateway_failed + wrk_failed > 0) {
    std::cerr << "gateway_bench: " << direct_failed + gateway_failed + wrk_failed << " requests failed\n";
    rc = 1;
  }
  client->reset();
  cleanup();
  return rc;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  using namespace troupe::bench;
  (void)troupe::InitLogging("warn");
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--quick") {
      o.quick = true;
    } else if (arg == "--json" && i + 1 < argc) {
      o.json = argv[++i];
    } else {
      std::cerr << "usage: gateway_bench [--quick] [--json PATH]\n";
      return 2;
    }
  }
  return Main(o);
}
