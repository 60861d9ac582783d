// UcxTransportConfig and the rules that turn it (plus the environment) into UCX settings.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "transport/frame.h"

namespace troupe::transport {

/// UcxTransportConfig::busy_poll's default: chosen by ResolveBusyPoll from the host's cores.
inline constexpr std::chrono::microseconds kBusyPollAuto{-1};
/// Hosts with at least this many hardware threads busy-poll by default.
inline constexpr unsigned kBusyPollMinCores = 8;
/// The busy-poll time to use: `configured` unless it is kBusyPollAuto; then 200 us on a host
/// of kBusyPollMinCores hardware threads or more, and 0 (sleep on the event fd at once) below.
///
/// Every troupe process spins its own progress thread after each event, so a host whose
/// processes outnumber its cores spends them spinning instead of running the handlers the
/// messages wait for. Measured on a 2-core machine with a cluster of 4 processes (head, node,
/// gateway, load generator; bench/gateway): a request round trip through the router took
/// 1587 us p50 with 200 us of polling and 456 us with none (the gateway's closed-loop rate on
/// one connection: 526 vs 2616 requests/s). Two processes alone on idle cores gain from
/// polling (bench/transport sets 200 us explicitly to compare with raw UCX, which spins).
std::chrono::microseconds ResolveBusyPoll(std::chrono::microseconds configured, unsigned hardware_threads);

/// Everything UcxTransport needs; the runtime fills it from troupe's YAML config.
struct UcxTransportConfig {
  NodeId node_id = 0;
  /// For logs and handshakes only.
  std::string node_name;
  /// "host:port" to accept connections on (port 0 picks a free one); "" for none.
  std::string listen_address = "127.0.0.1:0";
  /// What peers are told to dial; defaults to the bound listen address.
  std::string advertise_address;
  /// Shared secret of the cluster. Never sent: peers prove they know it by HMAC.
  std::string cluster_token;
  /// Largest payload accepted or sent; larger ones are refused with ResourceExhausted. Frames
  /// carry messages (the largest, a cluster's node list, is a few MiB at 10,000 nodes); bulk
  /// data moves by descriptor and rendezvous, not as one frame.
  uint64_t max_frame_bytes = 64ull << 20;
  /// Payload bytes of rendezvous receives in flight at once, all peers together: a frame that
  /// would go above it is refused (its sender's send fails with ResourceExhausted), so peers
  /// cannot make this process allocate without bound.
  uint64_t max_rndv_bytes_in_flight = 256ull << 20;
  /// Connections that have not authenticated yet, at once; more are closed as they arrive.
  size_t max_unauthenticated_connections = 256;
  /// Peers that went (no connection left) whose learned addresses are still kept; beyond it the
  /// oldest are forgotten (a peer that comes back tells its address again in its hello).
  size_t max_departed_peers = 1024;
  /// UCX_TLS. "" keeps the environment's value or UCX's "all". `tcp` is always added.
  std::string ucx_tls;
  /// UCX_RNDV_THRESH: payloads at or above it go by rendezvous (zero-copy into the
  /// receiver's buffer). "" keeps the environment's value or troupe's default.
  std::string rndv_thresh;
  /// Keep shared-memory transports usable with peer error handling
  /// (UCX_POSIX_ERROR_HANDLING / UCX_SYSV_ERROR_HANDLING); without it same-host
  /// traffic silently falls back to TCP.
  bool shm_error_handling = true;
  /// Any other UCX variable, without the UCX_ prefix; applied last and verbatim.
  std::map<std::string, std::string> ucx_options;
  /// After authenticating over the listener connection, each side opens a direct
  /// endpoint to the other's UCX worker address and moves data there. Such endpoints
  /// carry only the transports the two workers share (shared memory on one host), while
  /// a listener connection always carries TCP lanes that UCX polls on every progress call.
  bool direct_endpoints = true;
  /// UCX_KEEPALIVE_INTERVAL: how often UCX checks its peers. Shared-memory endpoints see a
  /// killed peer only through it, and UCX runs it only from progress, so the progress
  /// thread also wakes this often while it has connections (the environment's
  /// UCX_KEEPALIVE_INTERVAL, if set, wins for UCX itself).
  std::chrono::milliseconds keepalive_interval{100};
  /// A connection that has not authenticated within this time is closed.
  std::chrono::milliseconds handshake_timeout{5000};
  /// How long the progress thread keeps polling after its last event before it sleeps
  /// on the worker's event fd. Trades a little CPU after activity for latency; an idle
  /// process always sleeps. kBusyPollAuto (the default): ResolveBusyPoll's rule.
  std::chrono::microseconds busy_poll{kBusyPollAuto};
};

/// troupe's rendezvous threshold when neither config nor environment sets one.
inline constexpr const char* kDefaultRndvThresh = "16K";
/// troupe's shared-memory FIFO element size (UCX's default is 128 bytes) when the environment
/// sets none: frames of up to about 240 bytes, envelope included, then go by UCX's short path.
inline constexpr const char* kDefaultShmFifoElemSize = "256";

/// One UCX setting (name without the UCX_ prefix) and why troupe chose it.
struct UcxSetting {
  std::string name;
  std::string value;
  std::string why;
  /// UCX 1.13 applies only context-level settings given to ucp_config_modify; settings of
  /// individual transports (POSIX_*, SYSV_*, TCP_*...) are read from the environment
  /// alone, so these are exported as UCX_<name> before UCX starts.
  bool via_environment = false;
};

/// True for settings UCX 1.13 reads only from the environment (transport-level ones).
bool IsTransportLevelUcxSetting(const std::string& name);

/// Resolves the UCX settings for `config`. Precedence: config.ucx_options, then the
/// dedicated config fields, then UCX_* environment variables, then troupe's defaults.
/// Transport-level settings come back with via_environment set.
/// `getenv` is injectable for tests. Fails on a config.ucx_options key that is empty.
StatusOr<std::vector<UcxSetting>> ResolveUcxSettings(
    const UcxTransportConfig& config,
    const std::function<const char*(const char*)>& getenv_fn);

/// Returns `tls` with `tcp` allowed: appended to an include list, removed from an
/// exclude list ("^..."), untouched for "all" or lists that already have it.
std::string EnsureTcpAllowed(const std::string& tls);

}  // namespace troupe::transport
