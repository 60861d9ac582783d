// api_core_bench: what the API gateway's core costs per request, timed by Google Benchmark (the
// classes are pure): RateLimiter Reserve + Settle at three levels over 1,000 keys and 10 tenants,
// UsageMeter::Record, KeyHasher::Matches (HMAC-SHA256 + CRYPTO_memcmp; and the one-shot
// KeyMatches), Authorize, RedactKeys of a
// 200-character log line.
//
// Baselines printed beside, from the same run: the per-request budget of a whole gateway
// core (20,000 requests/s: 50 us per request) and its overhead target (200 us p50); for the key
// check, PBKDF2-HMAC-SHA256 at OWASP's 600,000 iterations, the slow hash troupe does not use
// (docs/gateway.md "API keys").
#include <benchmark/benchmark.h>
#include <openssl/evp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "actors/api/api_keys.h"
#include "actors/api/rate_limiter.h"
#include "actors/api/usage_meter.h"
#include "bench/common/report.h"

namespace troupe::bench {
namespace {

using namespace troupe::api;

constexpr int kKeys = 1000;
constexpr int kTenants = 10;
const std::string kPepper(32, 'p');

std::vector<RateLimiter::Request> MakeRequests() {
  // Limits high enough never to refuse: the cost of the admitting path.
  Limits limits{1000000000, 1000000000, 1000};
  std::vector<RateLimiter::Request> requests;
  for (int i = 0; i < kKeys; ++i) {
    RateLimiter::Request r;
    r.key_id = "k" + std::to_string(100000000000 + i);
    r.tenant = "tenant-" + std::to_string(i % kTenants);
    r.key_limits = limits;
    r.tenant_limits = limits;
    r.prompt_tokens = 100;
    r.max_tokens = 200;
    requests.push_back(std::move(r));
  }
  return requests;
}

void BM_ReserveSettle(benchmark::State& state) {
  ManualClock clock;
  RateLimiter limiter({1000000000, 1000000000, 0}, clock);
  auto requests = MakeRequests();
  size_t i = 0;
  for (auto _ : state) {
    auto outcome = limiter.Reserve(requests[i++ % requests.size()]);
    clock.Advance(std::chrono::microseconds(1));
    benchmark::DoNotOptimize(limiter.Settle(*outcome.reservation, 150));
  }
}
BENCHMARK(BM_ReserveSettle);

void BM_MeterRecord(benchmark::State& state) {
  ManualClock clock;
  UsageMeter meter(clock, {std::chrono::hours(1), size_t{1} << 20});
  auto requests = MakeRequests();
  size_t i = 0;
  for (auto _ : state) {
    const auto& r = requests[i++ % requests.size()];
    benchmark::DoNotOptimize(meter.Record(r.key_id, r.tenant, "chat-model", 100, 50, false));
  }
}
BENCHMARK(BM_MeterRecord);

void BM_KeyCheck(benchmark::State& state) {
  ManualClock clock;
  StatusOr<NewKey> key = CreateKey({"acme", Role::kUser, {}, {}}, kPepper, clock);
  if (!key.ok()) {
    state.SkipWithError(key.status().ToString().c_str());
    return;
  }
  StatusOr<KeyHasher> hasher = KeyHasher::Create(kPepper);
  if (!hasher.ok()) {
    state.SkipWithError(hasher.status().ToString().c_str());
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(hasher->Matches(key->key, key->record));
}
BENCHMARK(BM_KeyCheck);

// The one-shot path (OpenSSL's HMAC(): looks up and keys HMAC-SHA256 on every call).
void BM_KeyCheckOneShot(benchmark::State& state) {
  ManualClock clock;
  StatusOr<NewKey> key = CreateKey({"acme", Role::kUser, {}, {}}, kPepper, clock);
  if (!key.ok()) {
    state.SkipWithError(key.status().ToString().c_str());
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(KeyMatches(key->key, key->record, kPepper));
}
BENCHMARK(BM_KeyCheckOneShot);

void BM_Authorize(benchmark::State& state) {
  ManualClock clock;
  KeyRecord record;
  record.id = "AAAAAAAAAAAA";
  record.tenant = "acme";
  record.all_deployments = false;
  record.deployments = {"chat", "embed"};
  Target target{"acme", "embed"};
  for (auto _ : state) benchmark::DoNotOptimize(Authorize(record, clock.WallNow(), Action::kCallModel, target));
}
BENCHMARK(BM_Authorize);

void BM_Redact(benchmark::State& state) {
  ManualClock clock;
  StatusOr<NewKey> key = CreateKey({"acme", Role::kUser, {}, {}}, kPepper, clock);
  if (!key.ok()) {
    state.SkipWithError(key.status().ToString().c_str());
    return;
  }
  std::string line = "request 7f3a from " + key->key + " to deployment chat failed: upstream closed; header Bearer " +
                     key->key + " ok";
  for (auto _ : state) benchmark::DoNotOptimize(RedactKeys(line));
  state.SetLabel(std::to_string(line.size()) + " chars");
}
BENCHMARK(BM_Redact);

// PBKDF2-HMAC-SHA256 at OWASP's 2023 recommendation (600,000 iterations), timed directly: a
// few calls take seconds.
double Pbkdf2Ns(int calls) {
  unsigned char out[32];
  const std::string key = "tk-AAAAAAAAAAAA-" + std::string(43, 'b');
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) {
    PKCS5_PBKDF2_HMAC(key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(kPepper.data()),
                      static_cast<int>(kPepper.size()), 600000, EVP_sha256(), sizeof out, out);
    benchmark::DoNotOptimize(out);
  }
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / calls;
}

struct Row {
  std::string metric, unit;
  double troupe;
  double baseline;
  std::string baseline_name;
  std::string target;
  bool met;
};

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
  std::map<std::string, double> ns;
  bool failed = false;
};

int Run(bool quick, const std::string& json) {
  Collector collector;
  benchmark::RunSpecifiedBenchmarks(&collector);
  if (collector.failed) return 1;
  for (const char* name :
       {"BM_ReserveSettle", "BM_MeterRecord", "BM_KeyCheck", "BM_KeyCheckOneShot", "BM_Authorize", "BM_Redact"}) {
    if (collector.ns[name] <= 0) {
      std::fprintf(stderr, "api_core_bench: no figure for %s (a --benchmark_filter left it out?)\n", name);
      return 1;
    }
  }
  const double budget_ns = 1e9 / 20000;  // the issue: 20,000 requests/s per gateway core
  const double overhead_ns = 200000;     // the issue: at most 200 us p50 overhead, whole gateway
  const double reserve = collector.ns["BM_ReserveSettle"];
  const double record = collector.ns["BM_MeterRecord"];
  const double check = collector.ns["BM_KeyCheck"];
  const double check_one_shot = collector.ns["BM_KeyCheckOneShot"];
  const double authorize = collector.ns["BM_Authorize"];
  const double redact = collector.ns["BM_Redact"];
  const double pbkdf2 = Pbkdf2Ns(quick ? 1 : 3);
  const double core = reserve + record + check + authorize;
  std::vector<Row> rows = {
      {"reserve + settle, 3 levels, 1,000 keys", "ns", reserve, budget_ns, "budget/req at 20k/s", "(info)", true},
      {"usage record", "ns", record, budget_ns, "budget/req at 20k/s", "(info)", true},
      {"key check, KeyHasher (HMAC-SHA256 keyed once)", "ns", check, pbkdf2, "PBKDF2 600k iter", "(info)", true},
      {"key check, KeyHasher vs one-shot HMAC()", "ns", check, check_one_shot, "one-shot KeyMatches", "(info)",
       true},
      {"authorize", "ns", authorize, budget_ns, "budget/req at 20k/s", "(info)", true},
      {"redact a 200-char log line", "ns", redact, budget_ns, "budget/req at 20k/s", "(info)", true},
      {"core per request (check+authorize+reserve/settle+record)", "ns", core, budget_ns, "budget/req at 20k/s",
       "<= 10% of it", core <= budget_ns / 10},
      {"core per request / issue's p50 overhead target", "x", core / overhead_ns, 1, "200 us", "(info)", true},
  };
  std::printf("\n%-58s %-4s %14s %14s  %-22s %-12s %s\n", "metric", "unit", "troupe", "baseline", "baseline is",
              "target", "met");
  for (const auto& r : rows) {
    std::printf("%-58s %-4s %14.4g %14.4g  %-22s %-12s %s\n", r.metric.c_str(), r.unit.c_str(), r.troupe, r.baseline,
                r.baseline_name.c_str(), r.target.c_str(), r.met ? "yes" : "no");
  }
  if (!json.empty()) {
    nlohmann::ordered_json report = {{"benchmark", "api_core"}, {"quick", quick}, {"rows", nlohmann::ordered_json::array()}};
    for (const auto& r : rows) {
      report["rows"].push_back({{"metric", r.metric},
                                {"unit", r.unit},
                                {"troupe", r.troupe},
                                {"baseline", r.baseline},
                                {"baseline_is", r.baseline_name},
                                {"target", r.target},
                                {"met", r.met}});
    }
    if (!WriteJsonFile(json, report, "api_core_bench")) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  bool quick = false;
  std::string json;
  // troupe's own flags; the rest (--benchmark_filter=..., --benchmark_min_time=...) go to Google Benchmark.
  std::vector<char*> rest = {argv[0]};
  static char min_time[] = "--benchmark_min_time=0.05";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a.rfind("--benchmark_", 0) == 0) {
      rest.push_back(argv[i]);
    } else {
      std::cerr << "usage: api_core_bench [--quick] [--json PATH] [--benchmark_...]\n";
      return 2;
    }
  }
  if (quick) rest.insert(rest.begin() + 1, min_time);  // a later --benchmark_min_time still wins
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  return troupe::bench::Run(quick, json);
}
