// Reading one sample out of the metric families a MetricsSource appends, for tests.
#pragma once

#include <prometheus/metric_family.h>

#include <map>
#include <string>
#include <vector>

namespace troupe::testing {

/// The value of the sample of `family` whose labels include all of `labels` (a counter's or a
/// gauge's value); -1 if there is none.
inline double MetricSample(const std::vector<prometheus::MetricFamily>& out, const std::string& family,
                           const std::map<std::string, std::string>& labels) {
  for (const auto& f : out) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      size_t matched = 0;
      for (const auto& l : m.label) {
        auto it = labels.find(l.name);
        if (it != labels.end() && it->second == l.value) ++matched;
      }
      if (matched == labels.size()) return f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
    }
  }
  return -1;
}

}  // namespace troupe::testing
