// RouterMetrics: what the routers of a process report to Prometheus (docs/serving.md, "Metrics"):
// requests by deployment, version and outcome, their latency at the router, and the requests
// ongoing and queued. A router counts into a RequestTally of its own with no lock on the request
// path and publishes it every load_report_interval; the scrape sums the routers.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "runtime/metrics.h"

namespace troupe::serving {

/// Upper bounds of the latency histogram's buckets, in seconds (+Inf is implied): from 0.5 ms
/// (a no-op through the router takes about 2 us, a first token a few ms) to 60 s (the router's
/// default deadline).
inline constexpr std::array<double, 16> kLatencyBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                            0.25,   0.5,   1,      2.5,   5,    10,   30,    60};

/// Upper bounds of the cold-start histogram's buckets, in seconds (+Inf is implied): from 50 ms
/// (a test-model replica on a warm node) to 10 min (vLLM loading a large model; the process
/// backend's default ready_timeout is 10 min).
inline constexpr std::array<double, 13> kColdStartBuckets = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};

/// One version's requests as one router saw them end.
struct VersionTally {
  /// By outcome: index 0 is "ok", then StatusCode values (kCancelled = 1 ... kInternal = 10).
  std::array<uint64_t, 11> outcomes{};
  /// Per bucket (not cumulative), the last one +Inf.
  std::array<uint64_t, kLatencyBuckets.size() + 1> buckets{};
  double seconds_sum = 0;

  /// Counts a request that ended with `code` (kOk: answered) after `seconds` at the router.
  void Record(StatusCode code, double seconds);
};

/// A router's counts since it started: by version ("" for requests that ended before reaching a
/// replica: refused or expired in the queue), and its load now.
struct RequestTally {
  std::unordered_map<std::string, VersionTally> versions;
  uint64_t retries = 0;
  uint32_t ongoing = 0;
  uint32_t queued = 0;
  /// Cold starts: from a request that found no replica in the router's table (scale from zero,
  /// or a deployment whose replicas were all gone) to the first replica set with a replica in it,
  /// per bucket of kColdStartBuckets (not cumulative, the last one +Inf), and their sum.
  std::array<uint64_t, kColdStartBuckets.size() + 1> cold_start_buckets{};
  double cold_start_seconds_sum = 0;
  void RecordColdStart(double seconds);
};

/// The process's routers as the scrape sees them (thread-safe: routers publish, the metrics
/// server's thread collects).
class RouterMetrics {
 public:
  /// Router `router` (unique in the process) of `deployment` has these counts now.
  void Publish(const std::string& router, const std::string& deployment, const RequestTally& tally);
  /// The router ended: its series go (counters restart from 0 with a new router, as Prometheus'
  /// rate() expects of a restarted process).
  void Remove(const std::string& router);
  /// Appends, summed over the process's routers:
  ///   troupe_serving_requests_total{deployment, version, outcome} (counter; version "none" for
  ///     requests that never reached a replica; outcome "ok" or a Status code's name, such as
  ///     "unavailable", "deadline_exceeded", "resource_exhausted");
  ///   troupe_serving_request_duration_seconds{deployment, version} (histogram: admission at the
  ///     router to the answer or error, queueing included);
  ///   troupe_serving_router_ongoing_requests{deployment}, troupe_serving_router_queued_requests
  ///     {deployment} (gauges); troupe_serving_router_retries_total{deployment} (counter);
  ///   troupe_serving_cold_start_seconds{deployment} (histogram of RequestTally's cold starts;
  ///     present with 0 counts for every deployment with a router).
  void Collect(std::vector<prometheus::MetricFamily>& out) const;

 private:
  struct Entry {
    std::string deployment;
    RequestTally tally;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> routers_;
};

/// The scrape source of the process's routers (MetricsServer::AddSource).
runtime::MetricsSource RouterMetricsSource(std::shared_ptr<RouterMetrics> metrics);

/// The replicas of the process's deployments by version and state, as their deployment actors
/// last published them (thread-safe: deployment actors publish, the scrape thread collects).
class ReplicaMetrics {
 public:
  /// Deployment `deployment` runs these replicas now: (version, state) -> count. States are
  /// "pending", "starting", "ready", "draining", "recovering"; `versions` lists the versions to
  /// export even at 0.
  void Publish(const std::string& deployment, const std::vector<std::string>& versions,
               const std::map<std::pair<std::string, std::string>, uint32_t>& counts);
  /// The deployment ended: its series go.
  void Remove(const std::string& deployment);
  /// Appends troupe_serving_replicas{deployment, version, state} (gauge), every state of every
  /// published version (0 included, so a panel shows a line at 0 rather than none).
  void Collect(std::vector<prometheus::MetricFamily>& out) const;

 private:
  struct Entry {
    std::vector<std::string> versions;
    std::map<std::pair<std::string, std::string>, uint32_t> counts;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> deployments_;
};

/// The scrape source of the process's deployments' replica counts.
runtime::MetricsSource ReplicaMetricsSource(std::shared_ptr<ReplicaMetrics> metrics);

}  // namespace troupe::serving
