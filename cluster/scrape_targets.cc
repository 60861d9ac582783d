// ScrapeTargetsWriter.
#include "cluster/scrape_targets.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <utility>

#include "common/file_util.h"

namespace troupe::cluster {

std::string ScrapeTargetsJson(const std::string& cluster_name, const std::string& head_metrics_address,
                              const std::map<std::string, NodeRecord>& nodes,
                              const std::map<std::string, std::string>& gateways) {
  nlohmann::ordered_json targets = nlohmann::ordered_json::array();
  targets.push_back({{"targets", nlohmann::ordered_json::array({head_metrics_address})},
                     {"labels", {{"cluster", cluster_name}, {"role", "head"}, {"node", "head"}}}});
  for (const auto& [name, record] : nodes) {
    if (record.metrics_address.empty() || record.state == "dead") continue;
    targets.push_back({{"targets", nlohmann::ordered_json::array({record.metrics_address})},
                       {"labels", {{"cluster", cluster_name}, {"role", "node"}, {"node", name}}}});
  }
  for (const auto& [name, address] : gateways) {
    if (address.empty()) continue;
    targets.push_back({{"targets", nlohmann::ordered_json::array({address})},
                       {"labels", {{"cluster", cluster_name}, {"role", "gateway"}, {"node", name}}}});
  }
  return targets.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

ScrapeTargetsWriter::ScrapeTargetsWriter(std::string path, std::string cluster_name, std::string head_metrics_address,
                                         std::function<void()> schedule_retry)
    : path_(std::move(path)),
      cluster_name_(std::move(cluster_name)),
      head_metrics_address_(std::move(head_metrics_address)),
      schedule_retry_(std::move(schedule_retry)) {}

void ScrapeTargetsWriter::Write(const std::map<std::string, NodeRecord>& nodes) {
  Status written = WriteFileAtomically(path_, ScrapeTargetsJson(cluster_name_, head_metrics_address_, nodes, gateways_));
  if (!written.ok() && !failing_) {
    spdlog::error("head: {}; Prometheus keeps the previous list until a write succeeds", written.ToString());
  } else if (written.ok() && failing_) {
    spdlog::info("head: {} written again", path_);
  }
  failing_ = !written.ok();
  if (failing_ && !retry_scheduled_ && schedule_retry_) {
    retry_scheduled_ = true;
    schedule_retry_();
  }
}

bool ScrapeTargetsWriter::RetryDue() {
  retry_scheduled_ = false;
  return failing_;
}

}  // namespace troupe::cluster
