// RouterMetrics.
#include "actors/serving/router_metrics.h"

#include <algorithm>
#include <limits>

namespace troupe::serving {

namespace {

std::string OutcomeName(size_t index) {
  if (index == 0) return "ok";
  return std::string(StatusCodeName(static_cast<StatusCode>(index)));
}

// A histogram sample from per-bucket counts (not cumulative; the last one +Inf) over `bounds`.
template <size_t N, size_t M>
prometheus::ClientMetric Histogram(std::vector<prometheus::ClientMetric::Label> labels, const std::array<double, N>& bounds,
                                   const std::array<uint64_t, M>& counts, double sum) {
  static_assert(M == N + 1, "one count per bound and one for +Inf");
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    metric.histogram.bucket.push_back({cumulative, i < N ? bounds[i] : std::numeric_limits<double>::infinity()});
  }
  metric.histogram.sample_count = cumulative;
  metric.histogram.sample_sum = sum;
  return metric;
}

}  // namespace

void VersionTally::Record(StatusCode code, double seconds) {
  const size_t outcome = std::min<size_t>(static_cast<size_t>(code), outcomes.size() - 1);
  ++outcomes[outcome];
  const auto bucket = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds);
  ++buckets[static_cast<size_t>(bucket - kLatencyBuckets.begin())];
  seconds_sum += seconds;
}

void RequestTally::RecordColdStart(double seconds) {
  const auto bucket = std::lower_bound(kColdStartBuckets.begin(), kColdStartBuckets.end(), seconds);
  ++cold_start_buckets[static_cast<size_t>(bucket - kColdStartBuckets.begin())];
  cold_start_seconds_sum += seconds;
}

void RouterMetrics::Publish(const std::string& router, const std::string& deployment, const RequestTally& tally) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& entry = routers_[router];
  entry.deployment = deployment;
  entry.tally = tally;
}

void RouterMetrics::Remove(const std::string& router) {
  std::lock_guard<std::mutex> lock(mu_);
  routers_.erase(router);
}

void RouterMetrics::Collect(std::vector<prometheus::MetricFamily>& out) const {
  // Summed over routers: (deployment, version) -> counts; deployment -> load.
  std::map<std::pair<std::string, std::string>, VersionTally> versions;
  std::map<std::string, RequestTally> deployments;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [router, entry] : routers_) {
      RequestTally& sum = deployments[entry.deployment];
      sum.ongoing += entry.tally.ongoing;
      sum.queued += entry.tally.queued;
      sum.retries += entry.tally.retries;
      for (size_t i = 0; i < sum.cold_start_buckets.size(); ++i) {
        sum.cold_start_buckets[i] += entry.tally.cold_start_buckets[i];
      }
      sum.cold_start_seconds_sum += entry.tally.cold_start_seconds_sum;
      for (const auto& [version, t] : entry.tally.versions) {
        VersionTally& v = versions[{entry.deployment, version.empty() ? "none" : version}];
        for (size_t i = 0; i < t.outcomes.size(); ++i) v.outcomes[i] += t.outcomes[i];
        for (size_t i = 0; i < t.buckets.size(); ++i) v.buckets[i] += t.buckets[i];
        v.seconds_sum += t.seconds_sum;
      }
    }
  }
  auto requests = runtime::CounterFamily("troupe_serving_requests_total",
                                         "Requests that ended at the router, by deployment, version and outcome");
  prometheus::MetricFamily latency{"troupe_serving_request_duration_seconds",
                                   "Time from a request's arrival at the router to its answer or error",
                                   prometheus::MetricType::Histogram,
                                   {}};
  for (const auto& [key, t] : versions) {
    const auto& [deployment, version] = key;
    for (size_t i = 0; i < t.outcomes.size(); ++i) {
      if (t.outcomes[i] == 0) continue;
      runtime::AddSample(requests, static_cast<double>(t.outcomes[i]),
                         {{"deployment", deployment}, {"version", version}, {"outcome", OutcomeName(i)}});
    }
    latency.metric.push_back(
        Histogram({{"deployment", deployment}, {"version", version}}, kLatencyBuckets, t.buckets, t.seconds_sum));
  }
  auto ongoing = runtime::GaugeFamily("troupe_serving_router_ongoing_requests",
                                      "Requests the deployment's routers have sent to replicas and not seen answered");
  auto queued = runtime::GaugeFamily("troupe_serving_router_queued_requests",
                                     "Requests waiting at the deployment's routers for a replica with room");
  auto retries = runtime::CounterFamily("troupe_serving_router_retries_total",
                                        "Requests sent a second time, to another replica, after a refusal or bounce");
  prometheus::MetricFamily cold_starts{
      "troupe_serving_cold_start_seconds",
      "Time from a request that found no replica at the router (scale from zero) to the first ready replica",
      prometheus::MetricType::Histogram,
      {}};
  for (const auto& [deployment, t] : deployments) {
    runtime::AddSample(ongoing, t.ongoing, {{"deployment", deployment}});
    runtime::AddSample(queued, t.queued, {{"deployment", deployment}});
    runtime::AddSample(retries, static_cast<double>(t.retries), {{"deployment", deployment}});
    cold_starts.metric.push_back(Histogram({{"deployment", deployment}}, kColdStartBuckets, t.cold_start_buckets,
                                           t.cold_start_seconds_sum));
  }
  for (auto* family : {&requests, &latency, &ongoing, &queued, &retries, &cold_starts}) {
    out.push_back(std::move(*family));
  }
}

runtime::MetricsSource RouterMetricsSource(std::shared_ptr<RouterMetrics> metrics) {
  return [metrics = std::move(metrics)](std::vector<prometheus::MetricFamily>& out) { metrics->Collect(out); };
}

void ReplicaMetrics::Publish(const std::string& deployment, const std::vector<std::string>& versions,
                             const std::map<std::pair<std::string, std::string>, uint32_t>& counts) {
  std::lock_guard<std::mutex> lock(mu_);
  deployments_[deployment] = Entry{versions, counts};
}

void ReplicaMetrics::Remove(const std::string& deployment) {
  std::lock_guard<std::mutex> lock(mu_);
  deployments_.erase(deployment);
}

void ReplicaMetrics::Collect(std::vector<prometheus::MetricFamily>& out) const {
  std::map<std::string, Entry> deployments;
  {
    std::lock_guard<std::mutex> lock(mu_);
    deployments = deployments_;
  }
  auto replicas = runtime::GaugeFamily(
      "troupe_serving_replicas",
      "Replicas of the deployment by version and state (pending, starting, ready, draining, recovering)");
  for (const auto& [deployment, entry] : deployments) {
    std::map<std::pair<std::string, std::string>, uint32_t> all;
    for (const auto& version : entry.versions) {
      // recovering: after a head restart, a replica its node has not reported yet.
      for (const char* state : {"pending", "starting", "ready", "draining", "recovering"}) all[{version, state}] = 0;
    }
    for (const auto& [key, n] : entry.counts) all[key] += n;
    for (const auto& [key, n] : all) {
      runtime::AddSample(replicas, n, {{"deployment", deployment}, {"version", key.first}, {"state", key.second}});
    }
  }
  out.push_back(std::move(replicas));
}

runtime::MetricsSource ReplicaMetricsSource(std::shared_ptr<ReplicaMetrics> metrics) {
  return [metrics = std::move(metrics)](std::vector<prometheus::MetricFamily>& out) { metrics->Collect(out); };
}

}  // namespace troupe::serving
