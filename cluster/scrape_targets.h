// ScrapeTargetsWriter: the head's Prometheus file-service-discovery list (the head's, every live
// node's and every running gateway's metrics endpoint), written to
// <head.data_dir>/prometheus-targets.json.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "cluster/messages.h"

namespace troupe::cluster {

/// Prometheus's file-SD format for the head at `head_metrics_address`, the nodes of `nodes` that
/// are not dead and have a metrics endpoint, and the gateways of `gateways` (name -> host:port of
/// its GET /metrics, as each registered itself: RegisterGateway):
/// [{"targets": [host:port], "labels": {"cluster", "role": head|node|gateway, "node": name}}, ...],
/// head first, then nodes and gateways by name.
std::string ScrapeTargetsJson(const std::string& cluster_name, const std::string& head_metrics_address,
                              const std::map<std::string, NodeRecord>& nodes,
                              const std::map<std::string, std::string>& gateways = {});

/// Writes the targets file whenever membership changes, and again later when a write failed.
///
/// Owned by the head's controller actor and used only on its mailbox. The file is replaced whole
/// (WriteFileAtomically): Prometheus never reads an empty or half-written list. On failure the
/// old list stays; the failure is logged once (not per write) and `schedule_retry` is called once
/// so that the file is written again even if membership does not change meanwhile (the disk has
/// space again); the head calls RetryDue() when that retry is due.
class ScrapeTargetsWriter {
 public:
  ScrapeTargetsWriter() = default;
  ScrapeTargetsWriter(std::string path, std::string cluster_name, std::string head_metrics_address,
                      std::function<void()> schedule_retry);

  /// Writes the list for `nodes` and the gateways added and not removed.
  void Write(const std::map<std::string, NodeRecord>& nodes);
  /// The gateway `name` serves its metrics on `metrics_address` (replaces an entry of that name);
  /// listed from the next Write.
  void AddGateway(const std::string& name, const std::string& metrics_address) { gateways_[name] = metrics_address; }
  /// The gateway `name` is gone (stopped, or its process lost); false if it was not listed.
  bool RemoveGateway(const std::string& name) { return gateways_.erase(name) > 0; }
  /// The retry asked for has come: true if the last write failed (the head writes again).
  bool RetryDue();

  bool failing() const { return failing_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string cluster_name_;
  std::string head_metrics_address_;
  std::function<void()> schedule_retry_;
  std::map<std::string, std::string> gateways_;  // name -> metrics host:port
  bool failing_ = false;
  bool retry_scheduled_ = false;
};

}  // namespace troupe::cluster
