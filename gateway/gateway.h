// Gateway: the OpenAI-compatible HTTP entrance of a troupe cluster (docs/gateway.md). It serves
// /v1/chat/completions, /v1/completions (streamed and not), /v1/models, the admin API under
// /v1/admin, /healthz, /readyz and /metrics on an api::HttpServer, and for every model request:
//
//   HTTP request --parse (api/openai.h)--> Admit to the head's api actor (key, role, limits:
//   reserved before dispatch) --> InferenceRequest to the deployment's router (serving) -->
//   response or ResponseChunks (server-sent events, passed through unchanged) --> Settle with
//   the real token counts (metering, limits)
//
// The gateway holds no limit and no key of its own: the head's api actor does, so several
// gateway processes of one cluster share every limit, and a gateway that dies has its
// reservations freed by the head (it monitors the gateway). Nothing here blocks an io thread:
// replies arrive on actor threads and are written through the responder.
#pragma once

#include <memory>
#include <string>

#include "cluster/client.h"
#include "cluster/config.h"
#include "common/status.h"

namespace troupe::gateway {

/// Counters since Start (a snapshot; each field read atomically).
struct GatewayStats {
  uint64_t requests = 0;       ///< model requests (chat and completions) received
  uint64_t admitted = 0;       ///< passed the api actor (key, role, limits)
  uint64_t refused = 0;        ///< 401, 403, 429 from the api actor
  uint64_t completed = 0;      ///< answered 200 (whole, or a stream that ended)
  uint64_t failed = 0;         ///< ended with an error after admission
  uint64_t cancelled = 0;      ///< the client went away before the response ended
  uint64_t in_flight = 0;      ///< admitted and not settled
  uint64_t head_retries = 0;     ///< attempts sent again after the head was lost (docs/gateway.md "A head restart")
  uint64_t retried_requests = 0; ///< requests sent again at least once
};

class Gateway {
 public:
  /// Starts the HTTP server on `config.gateway.listen` in front of the cluster `client` is
  /// connected to (the client must outlive the gateway). Looks up the head's api actor first:
  /// Unavailable if it cannot be reached within `timeout`; InvalidArgument for a bad listen
  /// address; Unavailable when the address cannot be bound.
  static StatusOr<std::unique_ptr<Gateway>> Start(const cluster::ClusterConfig& config, cluster::Client* client,
                                                  std::chrono::milliseconds timeout);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  /// The bound port, and "http://HOST:PORT".
  uint16_t port() const;
  std::string url() const;
  /// Stops taking requests, lets those in flight end (the HTTP server's grace), settles what is
  /// left. Idempotent.
  void Stop();
  GatewayStats stats() const;

  struct Impl;

 private:
  explicit Gateway(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace troupe::gateway
