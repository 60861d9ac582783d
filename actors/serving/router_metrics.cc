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

}  // namespace

void VersionTally::Record(StatusCode code, double seconds) {
  const size_t outcome = std::min<size_t>(static_cast<size_t>(code), outcomes.size() - 1);
  ++outcomes[outcome];
  const auto bucket = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds);
  ++buckets[static_cast<size_t>(bucket - kLatencyBuckets.begin())];
  seconds_sum += seconds;
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
    prometheus::ClientMetric metric;
    metric.label = {{"deployment", deployment}, {"version", version}};
    uint64_t cumulative = 0;
    for (size_t i = 0; i < t.buckets.size(); ++i) {
      cumulative += t.buckets[i];
      const double bound =
          i < kLatencyBuckets.size() ? kLatencyBuckets[i] : std::numeric_limits<double>::infinity();
      metric.histogram.bucket.push_back({cumulative, bound});
    }
    metric.histogram.sample_count = cumulative;
    metric.histogram.sample_sum = t.seconds_sum;
    latency.metric.push_back(std::move(metric));
  }
  auto ongoing = runtime::GaugeFamily("troupe_serving_router_ongoing_requests",
                                      "Requests the deployment's routers have sent to replicas and not seen answered");
  auto queued = runtime::GaugeFamily("troupe_serving_router_queued_requests",
                                     "Requests waiting at the deployment's routers for a replica with room");
  auto retries = runtime::CounterFamily("troupe_serving_router_retries_total",
                                        "Requests sent a second time, to another replica, after a refusal or bounce");
  for (const auto& [deployment, t] : deployments) {
    runtime::AddSample(ongoing, t.ongoing, {{"deployment", deployment}});
    runtime::AddSample(queued, t.queued, {{"deployment", deployment}});
    runtime::AddSample(retries, static_cast<double>(t.retries), {{"deployment", deployment}});
  }
  for (auto* family : {&requests, &latency, &ongoing, &queued, &retries}) out.push_back(std::move(*family));
}

runtime::MetricsSource RouterMetricsSource(std::shared_ptr<RouterMetrics> metrics) {
  return [metrics = std::move(metrics)](std::vector<prometheus::MetricFamily>& out) { metrics->Collect(out); };
}

}  // namespace troupe::serving
