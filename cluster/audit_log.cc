// AuditLog: the record format, the hash chain and its check, and the LMDB tables.
#include "cluster/audit_log.h"

#include <openssl/evp.h>

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "storage/table.h"

namespace troupe::cluster {

const char* const kAuditGenesisHash = "0000000000000000000000000000000000000000000000000000000000000000";

namespace {

using Json = nlohmann::json;
using SeqKey = storage::KeyCodec<uint64_t>;

constexpr char kTipKey[] = "tip";
constexpr char kAnchorKey[] = "anchor";

void AppendField(std::string& out, const std::string& field) {
  out += std::to_string(field.size());
  out += ':';
  out += field;
  out += ',';
}

std::string Hex(const unsigned char* bytes, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(size * 2, '0');
  for (size_t i = 0; i < size; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xF];
  }
  return out;
}

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  // One-shot digest: with a null engine it cannot fail on a built-in algorithm; a failure means
  // OpenSSL itself is broken, which is not something to go on from.
  const int ok = EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  if (ok != 1) std::abort();
  return Hex(digest, size);
}

std::string EncodePoint(const AuditChainPoint& point) {
  return Json{{"seq", point.seq}, {"hash", point.hash}}.dump();
}

StatusOr<AuditChainPoint> DecodePoint(std::string_view bytes, const char* what) {
  try {
    Json j = Json::parse(bytes);
    return AuditChainPoint{j.at("seq").get<uint64_t>(), j.at("hash").get<std::string>()};
  } catch (const std::exception& e) {
    return InternalError(std::string("audit_meta '") + what + "' does not decode: " + e.what());
  }
}

// The stored point under `key`, or `fallback` if there is none.
StatusOr<AuditChainPoint> ReadPoint(const storage::Txn& txn, const storage::TableId& meta, const char* key,
                                    AuditChainPoint fallback) {
  auto bytes = txn.Get(meta, key);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kNotFound) return fallback;
    return bytes.status();
  }
  return DecodePoint(*bytes, key);
}

std::string SeqRange(uint64_t first, uint64_t last) {
  return first == last ? "record " + std::to_string(first)
                       : "records " + std::to_string(first) + " to " + std::to_string(last);
}

}  // namespace

std::string AuditCanonicalBytes(const AuditRecord& r) {
  std::string out = "troupe-audit-v1,";
  AppendField(out, std::to_string(r.seq));
  AppendField(out, std::to_string(r.at_unix_ms));
  AppendField(out, r.who);
  AppendField(out, r.action);
  AppendField(out, r.target);
  AppendField(out, r.detail);
  AppendField(out, r.result);
  return out;
}

std::string AuditHash(const AuditRecord& record) { return Sha256Hex(record.prev_hash + AuditCanonicalBytes(record)); }

std::string EncodeAuditRecord(const AuditRecord& r) {
  nlohmann::ordered_json j{{"seq", r.seq},       {"at_unix_ms", r.at_unix_ms}, {"who", r.who},
                           {"action", r.action}, {"target", r.target},         {"detail", r.detail},
                           {"result", r.result}, {"prev_hash", r.prev_hash},   {"hash", r.hash}};
  return j.dump();
}

StatusOr<AuditRecord> DecodeAuditRecord(std::string_view bytes) {
  try {
    Json j = Json::parse(bytes);
    AuditRecord r;
    r.seq = j.at("seq").get<uint64_t>();
    r.at_unix_ms = j.at("at_unix_ms").get<int64_t>();
    r.who = j.at("who").get<std::string>();
    r.action = j.at("action").get<std::string>();
    r.target = j.at("target").get<std::string>();
    r.detail = j.at("detail").get<std::string>();
    r.result = j.at("result").get<std::string>();
    r.prev_hash = j.at("prev_hash").get<std::string>();
    r.hash = j.at("hash").get<std::string>();
    return r;
  } catch (const std::exception& e) {
    return InternalError(std::string("an audit record does not decode: ") + e.what());
  }
}

AuditVerification VerifyAuditChain(const std::vector<std::pair<uint64_t, AuditRecord>>& stored,
                                   const AuditChainPoint& anchor, const AuditChainPoint& tip) {
  AuditVerification v;
  v.anchor = anchor;
  v.tip = tip;
  auto fail = [&v](uint64_t position, std::string problem) {
    v.ok = false;
    v.position = position;
    v.problem = std::move(problem);
    return v;
  };
  uint64_t expected = anchor.seq + 1;
  std::string prev = anchor.hash;
  for (const auto& [key, record] : stored) {
    if (key <= anchor.seq) {
      return fail(key, "record " + std::to_string(key) + " is stored at or before the anchor (record " +
                           std::to_string(anchor.seq) + ", the last one pruned): put back or the anchor changed");
    }
    if (key > expected) {
      return fail(expected, SeqRange(expected, key - 1) + " removed (the next stored record is " +
                                std::to_string(key) + ")");
    }
    if (record.seq != key) {
      return fail(key, "record " + std::to_string(key) + " is out of place: it holds record " +
                           std::to_string(record.seq) + " (records reordered or copied)");
    }
    if (AuditHash(record) != record.hash) {
      return fail(key, "record " + std::to_string(key) + " changed: its contents do not match its hash");
    }
    if (record.prev_hash != prev) {
      const std::string before =
          key == anchor.seq + 1 ? "the anchor (record " + std::to_string(anchor.seq) + ")" : "record " + std::to_string(key - 1);
      return fail(key, "record " + std::to_string(key) + " changed: it does not link to " + before +
                           " (its prev_hash differs; it, or the one before, was rewritten with a recomputed hash)");
    }
    prev = record.hash;
    ++expected;
    ++v.records;
  }
  if (expected <= tip.seq) {
    return fail(expected, SeqRange(expected, tip.seq) + " removed from the end (the log appended up to record " +
                              std::to_string(tip.seq) + ")");
  }
  if (tip.seq != 0 && expected - 1 == tip.seq && prev != tip.hash) {
    return fail(tip.seq, "record " + std::to_string(tip.seq) + " changed: its hash is not the one the log appended");
  }
  return v;
}

StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(storage::LmdbEnv* env, const Clock* clock,
                                                   std::chrono::milliseconds retention) {
  std::unique_ptr<AuditLog> log(new AuditLog(env, clock, retention));
  ASSIGN_OR_RETURN(log->records_, env->OpenTable("audit"));
  ASSIGN_OR_RETURN(log->meta_, env->OpenTable("audit_meta"));
  {
    ASSIGN_OR_RETURN(storage::Txn txn, env->BeginRead());
    ASSIGN_OR_RETURN(log->tip_, ReadPoint(txn, log->meta_, kTipKey, AuditChainPoint{}));
  }
  RETURN_IF_ERROR(log->Prune().status());
  return log;
}

AuditChainPoint AuditLog::tip() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tip_;
}

StatusOr<AuditRecord> AuditLog::Append(AuditRecord record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (record.at_unix_ms == 0) record.at_unix_ms = clock_->UnixMs();
  record.seq = tip_.seq + 1;
  record.prev_hash = tip_.hash;
  record.hash = AuditHash(record);
  const AuditChainPoint next{record.seq, record.hash};
  ASSIGN_OR_RETURN(storage::Txn txn, env_->BeginWrite());
  RETURN_IF_ERROR(txn.Put(records_, SeqKey::Encode(record.seq), EncodeAuditRecord(record)));
  RETURN_IF_ERROR(txn.Put(meta_, kTipKey, EncodePoint(next)));
  RETURN_IF_ERROR(txn.Commit());
  tip_ = next;
  return record;
}

// List and Verify take no lock: a read transaction is a consistent snapshot (tip and records
// together), and a long read must not hold up the appends of the head's actors.
StatusOr<std::vector<AuditRecord>> AuditLog::List(int64_t since_unix_ms) const {
  ASSIGN_OR_RETURN(storage::Txn txn, env_->BeginRead());
  std::vector<AuditRecord> out;
  Status failure;
  RETURN_IF_ERROR(txn.ForEach(records_, {}, [&](std::string_view, std::string_view value) {
    auto record = DecodeAuditRecord(value);
    if (!record.ok()) {
      failure = record.status();
      return false;
    }
    if (record->at_unix_ms >= since_unix_ms) out.push_back(std::move(*record));
    return true;
  }));
  if (!failure.ok()) return failure;
  return out;
}

StatusOr<AuditVerification> AuditLog::Verify() const {
  ASSIGN_OR_RETURN(storage::Txn txn, env_->BeginRead());
  ASSIGN_OR_RETURN(AuditChainPoint anchor, ReadPoint(txn, meta_, kAnchorKey, AuditChainPoint{}));
  ASSIGN_OR_RETURN(AuditChainPoint tip, ReadPoint(txn, meta_, kTipKey, AuditChainPoint{}));
  std::vector<std::pair<uint64_t, AuditRecord>> stored;
  AuditVerification broken;
  RETURN_IF_ERROR(txn.ForEach(records_, {}, [&](std::string_view key, std::string_view value) {
    auto seq = SeqKey::Decode(key);
    auto record = DecodeAuditRecord(value);
    if (!seq.ok() || !record.ok()) {
      // Bytes that are not a record at all are a change like any other, reported where they are.
      const uint64_t at = seq.ok() ? *seq : (stored.empty() ? anchor.seq + 1 : stored.back().first + 1);
      broken.ok = false;
      broken.position = at;
      broken.problem = "record " + std::to_string(at) + " changed: it is no longer a record (" +
                       (seq.ok() ? record.status().message() : seq.status().message()) + ")";
      return false;
    }
    stored.emplace_back(*seq, std::move(*record));
    return true;
  }));
  if (broken.ok) return VerifyAuditChain(stored, anchor, tip);
  // The records before the one that does not decode may hold an earlier problem (the tip's end
  // check does not apply: the walk stopped early).
  AuditVerification before = VerifyAuditChain(stored, anchor, AuditChainPoint{});
  if (!before.ok) return before;
  broken.records = before.records;
  broken.anchor = anchor;
  broken.tip = tip;
  return broken;
}

StatusOr<uint64_t> AuditLog::Prune() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t cutoff = clock_->UnixMs() - retention_.count();
  ASSIGN_OR_RETURN(storage::Txn txn, env_->BeginWrite());
  std::vector<AuditRecord> old;
  // A record that does not decode stops pruning there: it stays for Verify to report.
  RETURN_IF_ERROR(txn.ForEach(records_, {}, [&](std::string_view, std::string_view value) {
    auto record = DecodeAuditRecord(value);
    if (!record.ok() || record->at_unix_ms >= cutoff) return false;
    old.push_back(std::move(*record));
    return true;
  }));
  if (old.empty()) return uint64_t{0};
  for (const auto& record : old) RETURN_IF_ERROR(txn.Delete(records_, SeqKey::Encode(record.seq)));
  RETURN_IF_ERROR(txn.Put(meta_, kAnchorKey, EncodePoint(AuditChainPoint{old.back().seq, old.back().hash})));
  RETURN_IF_ERROR(txn.Commit());
  return static_cast<uint64_t>(old.size());
}

std::optional<std::string> AuditedAction(const std::string& kind, const std::string& op) {
  static const char* const kDeploymentOps[] = {"deploy", "update", "rollback", "scale", "delete"};
  static const char* const kJobOps[] = {"submit", "stop", "resume", "resubmit", "delete"};
  auto find = [&op](const auto& ops) {
    for (const char* o : ops) {
      if (op == o) return true;
    }
    return false;
  };
  if ((kind == "deployment" && find(kDeploymentOps)) || (kind == "job" && find(kJobOps))) return kind + "." + op;
  return std::nullopt;
}

std::string AuditDetail(const std::string& op, const std::string& body) {
  if (op == "scale") {
    // The count as the client sent it: a number when it is one (the head refuses the others).
    const bool digits = !body.empty() && body.size() < 10 && body.find_first_not_of("0123456789") == std::string::npos;
    return digits ? Json{{"replicas", std::stoul(body)}}.dump() : Json{{"replicas", body}}.dump();
  }
  if ((op == "deploy" || op == "update" || op == "submit") && !body.empty()) {
    return Json{{"spec_sha256", Sha256Hex(body)}}.dump();
  }
  return "";
}

Status AuditCommand(AuditLog& log, const std::string& who, const std::string& kind, const std::string& op,
                    const std::string& target, const std::string& body, const Status& result) {
  std::optional<std::string> action = AuditedAction(kind, op);
  if (!action) return OkStatus();
  AuditRecord record;
  record.who = who;
  record.action = std::move(*action);
  record.target = target;
  record.detail = AuditDetail(op, body);
  record.result = result.ok() ? "ok" : result.ToString();
  return log.Append(std::move(record)).status();
}

std::string AuditReplyJson(std::vector<AuditRecord> records, const AuditVerification* verification) {
  const size_t omitted = records.size() > kMaxAuditReplyRecords ? records.size() - kMaxAuditReplyRecords : 0;
  records.erase(records.begin(), records.begin() + static_cast<std::ptrdiff_t>(omitted));
  nlohmann::ordered_json out;
  out["records"] = nlohmann::ordered_json::array();
  for (const auto& r : records) out["records"].push_back(nlohmann::ordered_json::parse(EncodeAuditRecord(r)));
  out["omitted"] = omitted;
  if (verification == nullptr) {
    out["verification"] = nullptr;
  } else {
    const AuditVerification& v = *verification;
    out["verification"] = {{"ok", v.ok},
                           {"records", v.records},
                           {"position", v.position},
                           {"problem", v.problem},
                           {"anchor", {{"seq", v.anchor.seq}, {"hash", v.anchor.hash}}},
                           {"tip", {{"seq", v.tip.seq}, {"hash", v.tip.hash}}}};
  }
  return out.dump();
}

}  // namespace troupe::cluster
