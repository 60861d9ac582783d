// AuditLog: the head's tamper-evident, append-only record of admin actions (issue 21), a hash
// chain in the LMDB tables `audit` and `audit_meta` of the head's store.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "storage/lmdb_env.h"

namespace troupe::cluster {

/// One admin action as the audit log keeps it. The caller of AuditLog::Append fills `who`,
/// `action`, `target`, `detail` and `result` (and may fill `at_unix_ms`); the log fills `seq`,
/// `prev_hash` and `hash`.
struct AuditRecord {
  uint64_t seq = 0;         ///< position in the chain: 1, 2, ... (never reused, also after pruning)
  int64_t at_unix_ms = 0;   ///< when it was done (wall clock, ms since the Unix epoch; 0: now)
  std::string who;          ///< an API key's id, "cli@<node>", "node@<name>" or "cluster-token"; never a key
  std::string action;       ///< "deployment.deploy", "job.submit", "key.create" ...
  std::string target;       ///< what it acted on (a deployment's, job's, key's or tenant's name)
  std::string detail;       ///< short JSON or text, no secrets (a spec's digest, a replica count)
  std::string result;       ///< "ok", or the error as the caller was told it
  std::string prev_hash;    ///< `hash` of the record before (kAuditGenesisHash for the first)
  std::string hash;         ///< hex SHA-256 of prev_hash and AuditCanonicalBytes(record)
};

/// The `prev_hash` of record 1: 64 zeros.
extern const char* const kAuditGenesisHash;
/// Default retention: 180 days (issue 21's default; GatewaySpec::audit_retention overrides it).
inline constexpr std::chrono::milliseconds kDefaultAuditRetention{std::chrono::hours(180 * 24)};

/// The bytes a record's hash covers after prev_hash: a version tag, then seq, at_unix_ms, who,
/// action, target, detail and result, each as "<decimal byte length>:<bytes>," (netstrings),
/// so that no two different records serialize alike whatever their fields contain.
std::string AuditCanonicalBytes(const AuditRecord& record);
/// Lowercase hex SHA-256 of `record.prev_hash` followed by AuditCanonicalBytes(record).
std::string AuditHash(const AuditRecord& record);

/// A record as stored (one JSON object with every field) and back; Internal if it does not decode.
std::string EncodeAuditRecord(const AuditRecord& record);
StatusOr<AuditRecord> DecodeAuditRecord(std::string_view bytes);

/// A point of the chain: a record's seq and hash. The anchor is the last pruned record (seq 0
/// and kAuditGenesisHash before any pruning); the tip is the last appended one.
struct AuditChainPoint {
  uint64_t seq = 0;
  std::string hash = kAuditGenesisHash;
};

/// What a walk of the chain found: ok, or the first problem and the seq it is at.
struct AuditVerification {
  bool ok = true;
  uint64_t records = 0;    ///< records checked (all stored, from the anchor on)
  uint64_t position = 0;   ///< not ok: the seq of the first record found changed, removed or out of place
  std::string problem;     ///< not ok: what is wrong there, e.g. "record 17 changed: ..."
  AuditChainPoint anchor;  ///< where the stored chain starts (after pruning)
  AuditChainPoint tip;     ///< the last record the log says it appended
};

/// Walks `stored` (key -> record, in key order, as the table holds them) from `anchor` to
/// `tip` and reports the first record that was changed (its hash does not match its contents,
/// or it does not link to the record before), removed (a gap in seq, or records missing at the
/// end up to `tip`) or reordered (a record under another record's key). Pure: no store.
AuditVerification VerifyAuditChain(const std::vector<std::pair<uint64_t, AuditRecord>>& stored,
                                   const AuditChainPoint& anchor, const AuditChainPoint& tip);

/// The head's audit log (docs/gateway.md, "Audit log"): every admin action the head performs,
/// with who asked and how it ended, each record linked to the one before by its hash.
///
/// Shared by the head's controller actor (deployments, jobs) and the head's api actor (keys,
/// tenants): Append and Prune take a mutex, List and Verify read one snapshot without it, and each
/// uses its own LMDB transaction (not HeadStore's: that one belongs to the controller's mailbox). A plain class
/// with a lock rather than an actor of its own: an append is one small write transaction that
/// the caller waits for anyway (the action is acknowledged only after its record is durable),
/// so a mailbox would add a hop and a second copy of the record for nothing.
/// Never call Append inside another write transaction on the same thread: LMDB allows one writer
/// per environment, and that thread would wait for itself.
///
/// Retention: records older than `retention` are removed from the front (Prune: at Open, and
/// whenever the owner calls it; the head does daily); the last removed record's seq and hash
/// become the anchor, stored with the removal in one transaction, so what remains verifies.
class AuditLog {
 public:
  /// Opens (creating) the tables in `env` (not owned; must outlive the log), reads the chain's
  /// tip and anchor and prunes what is older than `retention`. `clock` (not owned) gives
  /// at_unix_ms and the pruning time.
  static StatusOr<std::unique_ptr<AuditLog>> Open(storage::LmdbEnv* env, const Clock* clock,
                                                  std::chrono::milliseconds retention = kDefaultAuditRetention);

  /// Appends `record` (at_unix_ms 0: now) as the next seq, linked to the tip; durable (one
  /// committed write transaction) when it returns the stored record. The error of a failed write
  /// (e.g. ResourceExhausted when head.data_dir is full) leaves the chain as it was.
  StatusOr<AuditRecord> Append(AuditRecord record);
  /// The stored records with at_unix_ms >= since_unix_ms, oldest first.
  StatusOr<std::vector<AuditRecord>> List(int64_t since_unix_ms = 0) const;
  /// Reads every stored record in one read transaction and walks the chain (VerifyAuditChain).
  StatusOr<AuditVerification> Verify() const;
  /// Removes the records older than the retention from the front and moves the anchor; returns
  /// how many went.
  StatusOr<uint64_t> Prune();

  std::chrono::milliseconds retention() const { return retention_; }
  /// The last appended record's seq and hash.
  AuditChainPoint tip() const;

 private:
  AuditLog(storage::LmdbEnv* env, const Clock* clock, std::chrono::milliseconds retention)
      : env_(env), clock_(clock), retention_(retention) {}

  storage::LmdbEnv* env_;
  const Clock* clock_;
  const std::chrono::milliseconds retention_;
  storage::TableId records_;
  storage::TableId meta_;
  mutable std::mutex mu_;
  AuditChainPoint tip_;  // under mu_
};

/// The action name the head records for a client's command of `kind` ("deployment" or "job"),
/// e.g. "deployment.scale"; nullopt for an operation that changes nothing (list, show, events,
/// models), which is not recorded.
std::optional<std::string> AuditedAction(const std::string& kind, const std::string& op);

/// The audit `detail` of a command: {"replicas":N} for a scale, {"spec_sha256":"..."} for a
/// body that is a spec (deploy, update, submit: a digest, never the spec, which may carry
/// environment variables with secrets), empty otherwise.
std::string AuditDetail(const std::string& op, const std::string& body);

/// Appends the record of a client's `kind` command (AuditedAction: "deployment" or "job") `op`
/// on `target` with `body`, asked by `who`, that ended with `result` ("ok" or its error as the
/// client was told it). OK without a record for an op that changes nothing; else Append's result.
Status AuditCommand(AuditLog& log, const std::string& who, const std::string& kind, const std::string& op,
                    const std::string& target, const std::string& body, const Status& result);

/// The most records one AuditReply carries (about 4 MB of JSON; a frame holds 64 MiB): the newest
/// of those asked for; `omitted` says how many older ones were left out (ask with a later since).
inline constexpr size_t kMaxAuditReplyRecords = 10000;

/// `troupe audit`'s JSON (cluster/messages.h, AuditReply): `records` (the newest
/// kMaxAuditReplyRecords of them), `omitted` (how many older ones were left out) and
/// `verification` (null when not asked for).
std::string AuditReplyJson(std::vector<AuditRecord> records, const AuditVerification* verification);

}  // namespace troupe::cluster
