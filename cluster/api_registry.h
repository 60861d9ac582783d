// ApiRegistry: the head's API keys and tenants (LMDB tables `api_keys`, `api_tenants`), the
// cluster's rate limits (one RateLimiter for every gateway) and the metered usage (a UsageMeter
// flushed to `api_usage`), behind the head's api actor named api::kApiActorName
// (docs/gateway.md, "The api actor").
#pragma once

#include <caf/actor.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "actors/api/api_keys.h"
#include "actors/api/messages.h"
#include "actors/api/rate_limiter.h"
#include "actors/api/usage_meter.h"
#include "cluster/head_store.h"
#include "cluster/usage_store.h"
#include "common/clock.h"
#include "common/status.h"
#include "runtime/metrics.h"
#include "runtime/runtime.h"

namespace troupe::cluster {

/// A tenant: a name (a DNS label, api::ValidateTenantName) and its limits (0: unlimited).
/// The tenant api::kSystemTenant always exists, unlimited, without a record.
struct TenantRecord {
  std::string name;
  api::Limits limits;
  int64_t created_unix_ms = 0;
};

/// One admin action for the audit log (cluster/audit_log.h): who (the CLI's caller, or
/// "key:<id>"; never a key), what ("key.create" ...), on what (a key id, a tenant), details
/// (JSON, no secrets), and the result ("ok", or the error's code and message).
struct ApiAdminAction {
  std::string who;
  std::string action;
  std::string target;
  std::string detail;
  std::string result;
};
using ApiAuditHook = std::function<void(const ApiAdminAction&)>;

/// Who sent an ApiCommand, once authenticated: the CLI (cluster token) acts as admin of every
/// tenant; a key acts within its role and tenant.
struct ApiCaller {
  std::string who;       ///< "cli@<node>" or "key:<id>"
  bool cluster_admin = false;
  api::KeyRecord key;    ///< the caller's key (empty for the CLI)
};

/// The keys, tenants, limits and usage of the cluster's API gateways.
///
/// Owned by the head's api actor (StartApiActor) and used only on its mailbox: the limiter and
/// meter have no locks, and every gateway asks the one actor, so limits hold across gateways.
/// The metrics source (MetricsSource) is read on the scrape thread through a copy under a mutex.
///
/// Durability: a key, revocation or tenant is acknowledged only once written (the LMDB commit
/// returns before the reply); a write that fails changes nothing and answers Unavailable. Usage
/// is counted in memory (api::UsageMeter) and added to `api_usage` at every flush (FlushUsage:
/// every usage_flush_interval, on `usage`, and at the head's stop): a kill -9 loses at most the
/// counts since the last flush, and nothing is added twice.
///
/// Reservations belong to an owner (the actor that sent the Admit, numbered by the api actor):
/// OwnerGone settles the owner's open reservations as cancelled (0 tokens, counted as errors).
class ApiRegistry {
 public:
  struct Options {
    /// The cluster's global limits (cluster config gateway.limits).
    api::Limits global;
    /// usage_flush_interval and the batch bound.
    api::UsageMeterConfig meter;
    /// A reservation still open this long after its Admit is settled as cancelled
    /// (ExpireReservations): Settle is one-way and delivery is at most once, so a lost Settle
    /// would otherwise hold its concurrency slot and tokens for good. The head sets it to twice
    /// gateway.request_timeout (a request's deadline), at least a minute.
    std::chrono::milliseconds reservation_ttl{std::chrono::minutes(10)};
  };

  /// Opens the tables (call before any actor runs: LMDB opens tables outside concurrent
  /// transactions), loads the keys and tenants, and reads the pepper from
  /// `<data_dir>/api-pepper` or creates it there (32 bytes of RAND_bytes, mode 0600) at the first
  /// start. `store` and `clock` outlive the registry. Errors name the file or table and what to do.
  static StatusOr<std::unique_ptr<ApiRegistry>> Open(HeadStore* store, const std::string& data_dir, Options options,
                                                     const Clock& clock);

  /// Authenticates, authorizes and reserves for `admit` (docs/gateway.md); `owner` is who the
  /// reservation belongs to. Always an AdmitReply: refusals carry their HTTP status.
  api::AdmitReply Admit(const api::Admit& admit, uint64_t owner);
  /// Settles a reservation and meters it. Unknown reservations (settled already, cancelled with
  /// their owner, or never made) are ignored: the first one is logged, all are counted.
  void Settle(const api::Settle& settle);
  /// The clock the registry reads (the head's: injectable).
  const Clock& clock() const { return clock_; }
  /// True if `reservation` is open and belongs to `owner` (a retry of AdmitAndInfer with it).
  bool Holds(uint64_t reservation, uint64_t owner) const;
  /// Settles every open reservation of `owner` as cancelled; returns how many there were.
  size_t OwnerGone(uint64_t owner);
  /// Settles as cancelled every reservation admitted reservation_ttl ago or earlier (by the
  /// clock's Now); returns how many. The api actor calls it at every flush tick.
  size_t ExpireReservations();
  /// True while `owner` holds an open reservation.
  bool HasReservations(uint64_t owner) const { return owners_.count(owner) != 0; }
  size_t open_reservations() const { return reservations_.size(); }

  /// An admin operation (api::ApiCommand's ops) and its JSON reply.
  StatusOr<std::string> Command(const api::ApiCommand& command);
  /// Another op for Command (the audit log's "audit"): `needs` is checked for key callers
  /// (api::Authorize against the caller's own tenant) before `handler` runs.
  using CommandHandler = std::function<StatusOr<std::string>(const api::ApiCommand&, const ApiCaller&)>;
  void AddCommand(const std::string& op, api::Action needs, CommandHandler handler);
  /// Where every admin action's outcome goes (the audit log). Set before the actor runs.
  void SetAuditHook(ApiAuditHook hook) { audit_ = std::move(hook); }

  /// True if a flush is due (api::UsageMeter::FlushDue).
  bool FlushDue() const { return meter_.FlushDue(); }
  /// Adds the meter's batch to `api_usage` and updates the metrics. On a write error the batch
  /// is kept in memory and added at the next flush (a kill -9 meanwhile loses it).
  Status FlushUsage();

  /// The Prometheus families (docs/metrics.md, "API gateway"): troupe_api_requests_total,
  /// troupe_api_errors_total and troupe_api_tokens_total{kind=input|output} per key_id, tenant and
  /// model (as flushed), troupe_api_rate_limited_total{level,kind},
  /// troupe_api_refused_total{reason} (401 and 403 refusals), troupe_api_reservations_open.
  runtime::MetricsSource MetricsSource() const;

 private:
  struct KeyEntry {
    api::KeyRecord record;
    api::Limits limits;
  };
  struct OpenReservation {
    api::Reservation reservation;
    uint64_t owner = 0;
    std::string deployment;
    Clock::TimePoint admitted_at;
  };
  struct Metrics;

  ApiRegistry(HeadStore* store, Options options, const Clock& clock, std::string pepper, api::KeyHasher hasher);
  Status Load();
  // The caller of `command` (the CLI, or a key that exists and matches), or PermissionDenied.
  StatusOr<ApiCaller> Identify(const api::ApiCommand& command, ApiAdminAction* audit) const;
  // OK if `caller` may do `action` on `tenant` (api::Authorize for keys), else PermissionDenied.
  Status Allow(const ApiCaller& caller, api::Action action, const std::string& tenant) const;
  StatusOr<std::string> Run(const api::ApiCommand& command, ApiAdminAction* audit);
  StatusOr<std::string> CreateKey(const api::ApiCommand& command, ApiAdminAction* audit);
  StatusOr<std::string> ListKeys(const api::ApiCommand& command, ApiAdminAction* audit);
  StatusOr<std::string> RevokeKey(const api::ApiCommand& command, ApiAdminAction* audit);
  StatusOr<std::string> CreateTenant(const api::ApiCommand& command, ApiAdminAction* audit);
  StatusOr<std::string> ListTenants(const api::ApiCommand& command, ApiAdminAction* audit);
  StatusOr<std::string> Usage(const api::ApiCommand& command, ApiAdminAction* audit);
  Status StoreKey(const KeyEntry& entry);
  api::Limits TenantLimits(const std::string& tenant) const;
  void Finish(uint64_t id, uint64_t prompt, uint64_t completion, bool error, const std::string& deployment);

  HeadStore* store_;
  Options options_;
  const Clock& clock_;
  std::string pepper_;
  api::KeyHasher hasher_;
  storage::TableId keys_table_;
  storage::TableId tenants_table_;
  UsageStore usage_;
  api::RateLimiter limiter_;
  api::UsageMeter meter_;
  std::map<std::string, KeyEntry> keys_;
  std::map<std::string, TenantRecord> tenants_;
  std::unordered_map<uint64_t, OpenReservation> reservations_;
  std::unordered_map<uint64_t, std::set<uint64_t>> owners_;
  std::map<std::string, std::pair<api::Action, CommandHandler>> extra_commands_;
  ApiAuditHook audit_;
  // Flushed rows whose write failed, added again at the next flush.
  std::vector<api::UsageRow> unwritten_;
  uint64_t unknown_settles_ = 0;
  std::shared_ptr<Metrics> metrics_;
};

/// Spawns the head's api actor (detached: it writes LMDB) around `registry`, names it
/// api::kApiActorName, and returns it. It answers Admit, AdmitAndInfer (cluster/admission.h:
/// admitted, the request goes on to the router and its reply comes back in the answer), Settle,
/// ApiCommand and ApiFlush, flushes
/// usage every `flush_interval` (a timer on the actor), and monitors each Admit's sender: when it
/// ends or its node is lost, the sender's open reservations are settled as cancelled.
StatusOr<caf::actor> StartApiActor(runtime::Runtime& runtime, std::unique_ptr<ApiRegistry> registry,
                                   std::chrono::milliseconds flush_interval);

/// Head -> api actor (local, before it stops): flush usage now. Reply: ApiFlushed.
struct ApiFlush {};
struct ApiFlushed {
  std::string error;  ///< empty: flushed
};

}  // namespace troupe::cluster

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ApiFlush)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::ApiFlushed)
