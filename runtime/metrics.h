// Metrics: a Prometheus endpoint per process (prometheus-cpp), whose values are read from their
// sources at scrape time, and the families that describe a runtime (transport and bridge).
#pragma once

#include <prometheus/metric_family.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/runtime.h"

namespace prometheus {
class Exposer;
}

namespace troupe::runtime {

/// Appends metric families at scrape time (called on the exposer's HTTP thread).
using MetricsSource = std::function<void(std::vector<prometheus::MetricFamily>& out)>;

/// Serves `GET /metrics` on host:port (port 0: any free port). Thread-safe.
class MetricsServer {
 public:
  /// Unavailable (naming the address) if it cannot listen, e.g. the port is in use.
  static StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, uint16_t port);
  ~MetricsServer();

  void AddSource(MetricsSource source);
  /// "host:port" actually listened on.
  const std::string& address() const { return address_; }

 private:
  class Collector;
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<Collector> collector_;
  std::string address_;
};

/// Helpers to build families.
prometheus::MetricFamily CounterFamily(const std::string& name, const std::string& help);
prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help);
void AddSample(prometheus::MetricFamily& family, double value,
               std::vector<std::pair<std::string, std::string>> labels = {});

/// The runtime's metrics: transport frames/bytes/errors/rejections/peers and bridge
/// messages/requests/proxies/node losses, all labelled node="<name>".
MetricsSource RuntimeMetrics(Runtime& runtime);

}  // namespace troupe::runtime
