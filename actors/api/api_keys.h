// API keys of the API gateway: their format, generation, hashed storage, the role matrix that
// says what a key may do, and the redaction that keeps keys out of logs (docs/gateway.md "API keys").
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace troupe::api {

/// A key is `tk-<id>-<secret>`: "tk-", a 12-character base62 key id (random, not secret: shown
/// in lists, logs and the audit log), "-", and 43 base62 characters from a CSPRNG (256 bits,
/// the strength of 32 random bytes). The fixed prefix and shape let secret scanners (GitHub's
/// push protection, gitleaks, trufflehog) find leaked keys, the way OpenAI's `sk-` and GitHub's
/// `ghp_` keys are found; the id lets the gateway find the record without a scan and lets people
/// name a key without holding it. The tenant is not in the key: it is not secret, but a key
/// that names its tenant tells whoever sees it where it works, and tenants can be renamed.
inline constexpr std::string_view kKeyPrefix = "tk-";
inline constexpr size_t kKeyIdChars = 12;
inline constexpr size_t kKeySecretChars = 43;
inline constexpr size_t kKeyChars = 3 + kKeyIdChars + 1 + kKeySecretChars;
/// The tenant whose admin keys act on every tenant and manage tenants (Kubernetes' cluster-admin
/// bound cluster-wide, where other admins are bound in their own namespace).
inline constexpr std::string_view kSystemTenant = "system";
/// The shortest pepper accepted: 16 bytes (128 bits). 32 random bytes are recommended.
inline constexpr size_t kMinPepperBytes = 16;

/// What a key may do, from least to most. The matrix is in RoleAllows and docs/gateway.md.
enum class Role { kUser, kOperator, kAdmin };
/// "user", "operator", "admin".
const char* RoleName(Role role);
/// InvalidArgument naming the allowed names for anything else.
StatusOr<Role> ParseRole(std::string_view name);

/// The things a key can ask the gateway for.
enum class Action {
  kCallModel,          ///< POST /v1/chat/completions, /v1/completions
  kListModels,         ///< GET /v1/models (filtered to the deployments the key may call)
  kReadOwnUsage,       ///< usage of the calling key
  kReadTenantUsage,    ///< usage of every key of the tenant
  kManageDeployments,  ///< create, scale, update, delete deployments
  kManageJobs,         ///< submit, cancel training jobs
  kManageKeys,         ///< create, list, revoke keys of the tenant
  kReadAudit,          ///< read the audit log
  kManageTenants,      ///< create, list tenants (admins of the system tenant only)
};
/// "call_model", "list_models", ... (snake case of the enumerator).
const char* ActionName(Action action);

/// The role matrix (Kubernetes RBAC's idea: a role is a fixed set of allowed verbs; a key is
/// bound to one role in one tenant). user: call and list models, read its own usage. operator:
/// that, plus the tenant's usage, deployments and jobs. admin: that, plus keys and the audit log;
/// tenants only for admins of the system tenant (checked in Authorize).
bool RoleAllows(Role role, Action action);

/// A stored key: never the key itself, only its hash.
struct KeyRecord {
  std::string id;
  /// Hex HMAC-SHA256 of the whole key under the deployment's pepper (HashKey).
  std::string hash;
  std::string tenant;
  Role role = Role::kUser;
  /// Wall-clock milliseconds since the Unix epoch. expires 0: never.
  int64_t created_unix_ms = 0;
  int64_t expires_unix_ms = 0;
  /// Every deployment of the tenant, or only those in `deployments`.
  bool all_deployments = true;
  std::vector<std::string> deployments;
  bool revoked = false;
  int64_t revoked_unix_ms = 0;

  friend bool operator==(const KeyRecord& a, const KeyRecord& b);
};

/// The record as one JSON object: {"id","hash","tenant","role","created_unix_ms",
/// "expires_unix_ms","all_deployments","deployments","revoked","revoked_unix_ms"}.
std::string KeyRecordToJson(const KeyRecord& record);
/// The record back, or InvalidArgument naming the field that is missing, of the wrong type or
/// malformed (id shape, 64 hex digits of hash, tenant name, role, negative times).
StatusOr<KeyRecord> KeyRecordFromJson(std::string_view json);

/// OK if `name` is a tenant name: 1 to 63 of [a-z0-9-], starting and ending with a letter or
/// digit (a DNS label, as Kubernetes namespaces), else InvalidArgument saying so.
Status ValidateTenantName(std::string_view name);

/// What a new key is made from.
struct KeySpec {
  std::string tenant;
  Role role = Role::kUser;
  /// How long the key lives; zero: it never expires.
  std::chrono::milliseconds ttl{0};
  /// Empty: every deployment of the tenant.
  std::vector<std::string> deployments;
};

/// A new key and its record. The key is shown once, at creation, and never stored.
struct NewKey {
  std::string key;
  KeyRecord record;
};

/// Makes a key from RAND_bytes (OpenSSL's CSPRNG) and its record (created now by the wall
/// clock of `clock`). InvalidArgument for a bad tenant name, a negative ttl or a pepper under
/// kMinPepperBytes; Internal if the CSPRNG fails.
StatusOr<NewKey> CreateKey(const KeySpec& spec, std::string_view pepper, const Clock& clock);

/// The key id of a string shaped like a key, or InvalidArgument (the message never repeats the
/// string: it may be a real key with a typo).
StatusOr<std::string> KeyIdOf(std::string_view key);

/// Hex HMAC-SHA256(pepper, key). A fast keyed hash, not PBKDF2 or scrypt: those slow down
/// guessing of low-entropy passwords, and a 256-bit random key cannot be guessed; slowing every
/// request by tens of milliseconds would buy nothing. The pepper (a per-deployment secret kept
/// out of the key store) means a stolen store alone cannot even check a candidate key. GitHub
/// and Stripe store their tokens the same way (a fast hash of a high-entropy token).
std::string HashKey(std::string_view key, std::string_view pepper);

/// True if `key` hashes to `record.hash` under `pepper`, compared in constant time
/// (CRYPTO_memcmp), so timing tells nothing of how much of the hash matched.
bool KeyMatches(std::string_view key, const KeyRecord& record, std::string_view pepper);

/// HashKey and KeyMatches with the pepper keyed once: what the gateway keeps for its request
/// path. OpenSSL 3's one-shot HMAC() looks the algorithm up and keys it on every call; a keyed
/// context copied per call takes less than half as long (bench/api/api_core_bench.cc: 1.3 us
/// against 3.0 us on a loaded 2-core machine).
/// Thread-safe: each call works on its own copy. Cheap to copy (the keyed context is shared).
class KeyHasher {
 public:
  /// InvalidArgument for a pepper under kMinPepperBytes; Internal if OpenSSL cannot make an
  /// HMAC-SHA256 context.
  static StatusOr<KeyHasher> Create(std::string_view pepper);
  /// The same hex digest as HashKey(key, pepper).
  std::string Hash(std::string_view key) const;
  /// The same answer as KeyMatches(key, record, pepper), in constant time.
  bool Matches(std::string_view key, const KeyRecord& record) const;

 private:
  struct Keyed;
  explicit KeyHasher(std::shared_ptr<const Keyed> keyed) : keyed_(std::move(keyed)) {}
  std::shared_ptr<const Keyed> keyed_;
};

/// Why Authorize said no.
enum class Denial {
  kNone,
  kRevoked,               ///< 401: the key was revoked
  kExpired,               ///< 401: the key's expiry has passed
  kRoleLacksAction,       ///< 403: the key's role may not do this
  kWrongTenant,           ///< 403: the target belongs to another tenant
  kDeploymentNotAllowed,  ///< 403: the key may not call this deployment
};
/// "none", "revoked", "expired", "role_lacks_action", "wrong_tenant", "deployment_not_allowed".
const char* DenialName(Denial denial);

/// What a request acts on: the tenant it belongs to and, for model calls, the deployment.
struct Target {
  std::string tenant;
  std::string deployment;
};

struct AuthzDecision {
  bool allowed = false;
  Denial denial = Denial::kNone;
  /// 200 when allowed; 401 for revoked and expired keys (OpenAI answers 401 to keys that do not
  /// work), 403 for the rest.
  int http_status = 200;
  /// One line for the error body and the audit log; names the key by id, never the key.
  std::string message;
};

/// May `record` do `action` on `target` at `now` (wall clock)? Checks, in order: revoked,
/// expired, the role matrix (and tenants only for system admins), the tenant (only system admins
/// act on other tenants), and for kCallModel the deployment list.
AuthzDecision Authorize(const KeyRecord& record, std::chrono::system_clock::time_point now, Action action,
                        const Target& target);

/// True if the key may call `deployment` of its tenant (GET /v1/models lists these).
bool DeploymentAllowed(const KeyRecord& record, std::string_view deployment);

/// `text` with every secret part of anything that looks like a key masked: a troupe key keeps
/// `tk-<id>-` and loses its secret ("tk-AbC...-[redacted]"); any other `tk-` followed by 20 or
/// more key characters, and the token after "Bearer " (any case), become "[redacted]". For log
/// lines and error messages that may quote a request (the issue: logs never show raw keys).
std::string RedactKeys(std::string_view text);

}  // namespace troupe::api
