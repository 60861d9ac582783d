// ScrapeRegistration: keeps one gateway process in the head's Prometheus scrape targets while it
// runs (docs/metrics.md, "Gateways").
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "cluster/client.h"

namespace troupe::gateway {

/// Lists a gateway's GET /metrics in the head's file-SD targets (cluster/scrape_targets.h) for as
/// long as this object lives, through a head restart.
///
/// Why this mechanism: the head already drops what belongs to an actor when the actor ends or its
/// process is lost (leases, reservations); a gateway is the same. It sends RegisterGateway with a
/// small actor of its own, the head monitors that actor and rewrites the targets file when it
/// goes: at Stop (the actor exits) or when the process dies (the head's runtime loses the node
/// after heartbeat_timeout). No record is stored at the head, so nothing stale survives a head
/// restart; instead a thread here watches the head and registers again with the new one, with
/// the node agent's rejoin back-off (100 ms doubling to at most 2 s, half of failure_timeout).
///
/// States: registering (retrying with back-off) -> registered (watching the head) -> head lost ->
/// registering ...; Stop() from any state ends the thread and the actor. The thread blocks on
/// cluster calls, never an actor thread.
class ScrapeRegistration {
 public:
  /// Starts registering `metrics_address` (host:port) under `name` at the head `client` is
  /// connected to (the client must outlive this object). Returns at once; the first
  /// registration is tried on the thread.
  static std::unique_ptr<ScrapeRegistration> Start(cluster::Client* client, std::string name,
                                                   std::string metrics_address,
                                                   std::chrono::milliseconds failure_timeout);
  ~ScrapeRegistration();
  ScrapeRegistration(const ScrapeRegistration&) = delete;
  ScrapeRegistration& operator=(const ScrapeRegistration&) = delete;

  /// Ends the registration: the head drops the target when it sees the actor exit. Idempotent.
  void Stop();
  /// How many times the head acknowledged a registration (1 after the first, +1 per head restart).
  uint64_t registrations() const;

  struct State;

 private:
  ScrapeRegistration() = default;
  std::shared_ptr<State> state_;
};

/// The address Prometheus should scrape for a server bound to `host`:`port`: `host` itself, or
/// for a wildcard host (0.0.0.0, ::, empty) this machine's host name (gethostname), which other
/// machines can resolve where a plain loopback address would name their own host.
std::string MetricsAddressFor(const std::string& host, uint16_t port);

}  // namespace troupe::gateway
