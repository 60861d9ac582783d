// API keys: generation from OpenSSL's CSPRNG, HMAC-SHA256 storage, the role matrix, redaction.
#include "actors/api/api_keys.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>

namespace troupe::api {

namespace {

using nlohmann::json;

constexpr std::string_view kBase62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool IsBase62(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

bool AllBase62(std::string_view s) { return std::all_of(s.begin(), s.end(), IsBase62); }

// `n` base62 characters, each uniform: bytes of 248 or more are dropped (248 = 4 * 62), so
// byte % 62 has no bias.
StatusOr<std::string> RandomBase62(size_t n) {
  std::string out;
  out.reserve(n);
  unsigned char buf[64];
  while (out.size() < n) {
    if (RAND_bytes(buf, sizeof buf) != 1) {
      return InternalError("api keys: OpenSSL RAND_bytes failed (the CSPRNG is not seeded?); no key was made");
    }
    for (unsigned char b : buf) {
      if (b >= 248) continue;
      out += kBase62[b % 62];
      if (out.size() == n) break;
    }
  }
  return out;
}

std::string Hex(const unsigned char* data, size_t size) {
  constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(2 * size, '0');
  for (size_t i = 0; i < size; ++i) {
    hex[2 * i] = kDigits[data[i] >> 4];
    hex[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return hex;
}

bool SameHash(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Status ValidatePepper(std::string_view pepper) {
  if (pepper.size() < kMinPepperBytes) {
    return InvalidArgumentError(fmt::format(
        "API key pepper is {} bytes, fewer than {}: set the gateway's key pepper to 32 random bytes", pepper.size(),
        kMinPepperBytes));
  }
  return OkStatus();
}

Status FieldError(std::string_view field, std::string_view what) {
  return InvalidArgumentError(fmt::format("key record: field \"{}\" {}", field, what));
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kUser: return "user";
    case Role::kOperator: return "operator";
    case Role::kAdmin: return "admin";
  }
  return "unknown";
}

StatusOr<Role> ParseRole(std::string_view name) {
  for (Role role : {Role::kUser, Role::kOperator, Role::kAdmin}) {
    if (name == RoleName(role)) return role;
  }
  return InvalidArgumentError(fmt::format("unknown role \"{}\": use admin, operator or user", name));
}

const char* ActionName(Action action) {
  switch (action) {
    case Action::kCallModel: return "call_model";
    case Action::kListModels: return "list_models";
    case Action::kReadOwnUsage: return "read_own_usage";
    case Action::kReadTenantUsage: return "read_tenant_usage";
    case Action::kManageDeployments: return "manage_deployments";
    case Action::kManageJobs: return "manage_jobs";
    case Action::kManageKeys: return "manage_keys";
    case Action::kReadAudit: return "read_audit";
    case Action::kManageTenants: return "manage_tenants";
  }
  return "unknown";
}

bool RoleAllows(Role role, Action action) {
  switch (action) {
    case Action::kCallModel:
    case Action::kListModels:
    case Action::kReadOwnUsage:
      return true;
    case Action::kReadTenantUsage:
    case Action::kManageDeployments:
    case Action::kManageJobs:
      return role == Role::kOperator || role == Role::kAdmin;
    case Action::kManageKeys:
    case Action::kReadAudit:
    case Action::kManageTenants:
      return role == Role::kAdmin;
  }
  return false;
}

bool operator==(const KeyRecord& a, const KeyRecord& b) {
  return a.id == b.id && a.hash == b.hash && a.tenant == b.tenant && a.role == b.role &&
         a.created_unix_ms == b.created_unix_ms && a.expires_unix_ms == b.expires_unix_ms &&
         a.all_deployments == b.all_deployments && a.deployments == b.deployments && a.revoked == b.revoked &&
         a.revoked_unix_ms == b.revoked_unix_ms;
}

std::string KeyRecordToJson(const KeyRecord& record) {
  json j = {{"id", record.id},
            {"hash", record.hash},
            {"tenant", record.tenant},
            {"role", RoleName(record.role)},
            {"created_unix_ms", record.created_unix_ms},
            {"expires_unix_ms", record.expires_unix_ms},
            {"all_deployments", record.all_deployments},
            {"deployments", record.deployments},
            {"revoked", record.revoked},
            {"revoked_unix_ms", record.revoked_unix_ms}};
  return j.dump();
}

Status ValidateTenantName(std::string_view name) {
  auto ok_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; };
  if (name.empty() || name.size() > 63 || !std::all_of(name.begin(), name.end(), ok_char) || name.front() == '-' ||
      name.back() == '-') {
    return InvalidArgumentError(fmt::format(
        "tenant name \"{}\" is not a DNS label: use 1 to 63 of a-z, 0-9 and -, starting and ending with a letter or "
        "digit",
        name));
  }
  return OkStatus();
}

StatusOr<KeyRecord> KeyRecordFromJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("key record: not a JSON object");
  KeyRecord r;
  auto get_string = [&](const char* field, std::string& out) -> Status {
    auto it = j.find(field);
    if (it == j.end() || !it->is_string()) return FieldError(field, "is missing or not a string");
    out = it->get<std::string>();
    return OkStatus();
  };
  auto get_int = [&](const char* field, int64_t& out) -> Status {
    auto it = j.find(field);
    if (it == j.end() || !it->is_number_integer()) return FieldError(field, "is missing or not an integer");
    out = it->get<int64_t>();
    if (out < 0) return FieldError(field, "is negative");
    return OkStatus();
  };
  auto get_bool = [&](const char* field, bool& out) -> Status {
    auto it = j.find(field);
    if (it == j.end() || !it->is_boolean()) return FieldError(field, "is missing or not true/false");
    out = it->get<bool>();
    return OkStatus();
  };
  RETURN_IF_ERROR(get_string("id", r.id));
  if (r.id.size() != kKeyIdChars || !AllBase62(r.id)) {
    return FieldError("id", fmt::format("is not {} base62 characters", kKeyIdChars));
  }
  RETURN_IF_ERROR(get_string("hash", r.hash));
  if (r.hash.size() != 64 || !std::all_of(r.hash.begin(), r.hash.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      })) {
    return FieldError("hash", "is not 64 lower-case hex digits (an HMAC-SHA256)");
  }
  RETURN_IF_ERROR(get_string("tenant", r.tenant));
  if (Status s = ValidateTenantName(r.tenant); !s.ok()) return FieldError("tenant", s.message());
  std::string role;
  RETURN_IF_ERROR(get_string("role", role));
  StatusOr<Role> parsed = ParseRole(role);
  if (!parsed.ok()) return FieldError("role", parsed.status().message());
  r.role = *parsed;
  RETURN_IF_ERROR(get_int("created_unix_ms", r.created_unix_ms));
  RETURN_IF_ERROR(get_int("expires_unix_ms", r.expires_unix_ms));
  RETURN_IF_ERROR(get_bool("all_deployments", r.all_deployments));
  auto deployments = j.find("deployments");
  if (deployments == j.end() || !deployments->is_array()) return FieldError("deployments", "is missing or not a list");
  for (const json& d : *deployments) {
    if (!d.is_string()) return FieldError("deployments", "holds something that is not a string");
    r.deployments.push_back(d.get<std::string>());
  }
  RETURN_IF_ERROR(get_bool("revoked", r.revoked));
  RETURN_IF_ERROR(get_int("revoked_unix_ms", r.revoked_unix_ms));
  return r;
}

std::string HashKey(std::string_view key, std::string_view pepper) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  HMAC(EVP_sha256(), pepper.data(), static_cast<int>(pepper.size()), reinterpret_cast<const unsigned char*>(key.data()),
       key.size(), mac, &size);
  return Hex(mac, size);
}

bool KeyMatches(std::string_view key, const KeyRecord& record, std::string_view pepper) {
  return SameHash(HashKey(key, pepper), record.hash);
}

struct KeyHasher::Keyed {
  EVP_MAC* mac = nullptr;
  EVP_MAC_CTX* ctx = nullptr;
  ~Keyed() {
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
  }
};

StatusOr<KeyHasher> KeyHasher::Create(std::string_view pepper) {
  RETURN_IF_ERROR(ValidatePepper(pepper));
  auto keyed = std::make_shared<Keyed>();
  keyed->mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (keyed->mac != nullptr) keyed->ctx = EVP_MAC_CTX_new(keyed->mac);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  if (keyed->ctx == nullptr ||
      EVP_MAC_init(keyed->ctx, reinterpret_cast<const unsigned char*>(pepper.data()), pepper.size(), params) != 1) {
    return InternalError("api keys: OpenSSL could not make an HMAC-SHA256 context (is the default provider loaded?)");
  }
  return KeyHasher(std::move(keyed));
}

std::string KeyHasher::Hash(std::string_view key) const {
  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx(EVP_MAC_CTX_dup(keyed_->ctx), &EVP_MAC_CTX_free);
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t size = 0;
  // A failure here is a broken OpenSSL, not bad input: crash rather than compare against garbage.
  if (ctx == nullptr || EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(key.data()), key.size()) != 1 ||
      EVP_MAC_final(ctx.get(), mac, &size, sizeof mac) != 1) {
    std::abort();
  }
  return Hex(mac, size);
}

bool KeyHasher::Matches(std::string_view key, const KeyRecord& record) const { return SameHash(Hash(key), record.hash); }

StatusOr<std::string> KeyIdOf(std::string_view key) {
  if (key.size() != kKeyChars || key.substr(0, kKeyPrefix.size()) != kKeyPrefix ||
      key[kKeyPrefix.size() + kKeyIdChars] != '-' || !AllBase62(key.substr(kKeyPrefix.size(), kKeyIdChars)) ||
      !AllBase62(key.substr(kKeyPrefix.size() + kKeyIdChars + 1))) {
    return InvalidArgumentError(fmt::format(
        "not a troupe API key: expected tk-<{} characters>-<{} characters> (letters and digits), {} characters in all",
        kKeyIdChars, kKeySecretChars, kKeyChars));
  }
  return std::string(key.substr(kKeyPrefix.size(), kKeyIdChars));
}

StatusOr<NewKey> CreateKey(const KeySpec& spec, std::string_view pepper, const Clock& clock) {
  RETURN_IF_ERROR(ValidateTenantName(spec.tenant));
  if (spec.ttl.count() < 0) return InvalidArgumentError("key ttl is negative: give 0 (never expires) or a duration");
  RETURN_IF_ERROR(ValidatePepper(pepper));
  ASSIGN_OR_RETURN(std::string id, RandomBase62(kKeyIdChars));
  ASSIGN_OR_RETURN(std::string secret, RandomBase62(kKeySecretChars));
  NewKey made;
  made.key = fmt::format("{}{}-{}", kKeyPrefix, id, secret);
  KeyRecord& r = made.record;
  r.id = std::move(id);
  r.hash = HashKey(made.key, pepper);
  r.tenant = spec.tenant;
  r.role = spec.role;
  r.created_unix_ms = clock.UnixMs();
  r.expires_unix_ms = spec.ttl.count() == 0 ? 0 : r.created_unix_ms + spec.ttl.count();
  r.all_deployments = spec.deployments.empty();
  r.deployments = spec.deployments;
  return made;
}

const char* DenialName(Denial denial) {
  switch (denial) {
    case Denial::kNone: return "none";
    case Denial::kRevoked: return "revoked";
    case Denial::kExpired: return "expired";
    case Denial::kRoleLacksAction: return "role_lacks_action";
    case Denial::kWrongTenant: return "wrong_tenant";
    case Denial::kDeploymentNotAllowed: return "deployment_not_allowed";
  }
  return "unknown";
}

bool DeploymentAllowed(const KeyRecord& record, std::string_view deployment) {
  return record.all_deployments ||
         std::find(record.deployments.begin(), record.deployments.end(), deployment) != record.deployments.end();
}

AuthzDecision Authorize(const KeyRecord& record, std::chrono::system_clock::time_point now, Action action,
                        const Target& target) {
  auto deny = [&](Denial denial, int status, std::string message) {
    return AuthzDecision{false, denial, status, fmt::format("key {}: {}", record.id, message)};
  };
  int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  if (record.revoked) return deny(Denial::kRevoked, 401, "revoked; ask an admin of the tenant for a new key");
  if (record.expires_unix_ms != 0 && now_ms >= record.expires_unix_ms) {
    return deny(Denial::kExpired, 401,
                fmt::format("expired {} s ago; ask an admin of the tenant for a new key",
                            (now_ms - record.expires_unix_ms) / 1000));
  }
  bool system_admin = record.role == Role::kAdmin && record.tenant == kSystemTenant;
  if (!RoleAllows(record.role, action) || (action == Action::kManageTenants && !system_admin)) {
    std::string_view needs = action == Action::kManageTenants ? "an admin key of the system tenant"
                             : RoleAllows(Role::kOperator, action) ? "role operator or admin"
                                                                   : "role admin";
    return deny(Denial::kRoleLacksAction, 403,
                fmt::format("role {} may not {}: it needs {}", RoleName(record.role), ActionName(action), needs));
  }
  if (!system_admin && !target.tenant.empty() && target.tenant != record.tenant) {
    return deny(Denial::kWrongTenant, 403,
                fmt::format("belongs to tenant {}, not {}", record.tenant, target.tenant));
  }
  if (action == Action::kCallModel && !DeploymentAllowed(record, target.deployment)) {
    return deny(Denial::kDeploymentNotAllowed, 403,
                fmt::format("may not call deployment {} (it may call: {})", target.deployment,
                            fmt::join(record.deployments, ", ")));
  }
  return AuthzDecision{true, Denial::kNone, 200, ""};
}

std::string RedactKeys(std::string_view text) {
  constexpr std::string_view kRedacted = "[redacted]";
  auto run_length = [&](size_t from, auto accept) {
    size_t end = from;
    while (end < text.size() && accept(text[end])) ++end;
    return end - from;
  };
  auto key_char = [](char c) { return IsBase62(c) || c == '-' || c == '_'; };
  auto not_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) == 0 && c != '"' && c != '\''; };
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text.compare(i, kKeyPrefix.size(), kKeyPrefix) == 0) {
      size_t body = i + kKeyPrefix.size();
      size_t id_len = run_length(body, IsBase62);
      size_t sep = body + kKeyIdChars;
      if (id_len == kKeyIdChars && sep < text.size() && text[sep] == '-' && run_length(sep + 1, IsBase62) >= 8) {
        // A troupe key (or most of one): its id is not secret and says which key leaked.
        out.append(text.substr(i, kKeyPrefix.size() + kKeyIdChars + 1));
        out.append(kRedacted);
        i = sep + 1 + run_length(sep + 1, key_char);
        continue;
      }
      size_t rest = run_length(body, key_char);
      if (rest >= 20) {
        out.append(kKeyPrefix);
        out.append(kRedacted);
        i = body + rest;
        continue;
      }
    }
    constexpr std::string_view kBearer = "bearer ";
    if (i + kBearer.size() <= text.size() &&
        std::equal(kBearer.begin(), kBearer.end(), text.begin() + static_cast<std::ptrdiff_t>(i),
                   [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); })) {
      size_t token = i + kBearer.size();
      size_t len = run_length(token, not_space);
      if (len > 0) {
        out.append(text.substr(i, kBearer.size()));
        out.append(kRedacted);
        i = token + len;
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

}  // namespace troupe::api
