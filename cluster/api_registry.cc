// ApiRegistry and the head's api actor.
#include "cluster/api_registry.h"

#include <caf/all.hpp>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "cluster/admission.h"
#include "runtime/error.h"
#include "runtime/yaml_reader.h"

namespace troupe::cluster {

namespace {

using Json = nlohmann::json;

constexpr size_t kPepperBytes = 32;
constexpr uint32_t kLastAction = static_cast<uint32_t>(api::Action::kManageTenants);

Json LimitsJson(const api::Limits& l) {
  return Json{{"requests_per_minute", l.requests_per_minute},
              {"tokens_per_minute", l.tokens_per_minute},
              {"max_concurrent", l.max_concurrent}};
}

// `value` as a whole number in [0, max], or InvalidArgument naming `where`.
StatusOr<uint64_t> Count(const Json& value, const std::string& where, uint64_t max) {
  const bool whole = value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0);
  if (!whole || value.get<uint64_t>() > max) {
    return InvalidArgumentError(where + " must be a whole number from 0 to " + std::to_string(max) + " (0: unlimited)");
  }
  return value.get<uint64_t>();
}

StatusOr<api::Limits> LimitsFrom(const Json& json, const std::string& where) {
  if (!json.is_object()) return InvalidArgumentError(where + " must be an object {requests_per_minute, tokens_per_minute, max_concurrent}");
  api::Limits l;
  for (const auto& [name, value] : json.items()) {
    if (name == "requests_per_minute") {
      ASSIGN_OR_RETURN(l.requests_per_minute, Count(value, where + ".requests_per_minute", uint64_t{1} << 40));
    } else if (name == "tokens_per_minute") {
      ASSIGN_OR_RETURN(l.tokens_per_minute, Count(value, where + ".tokens_per_minute", uint64_t{1} << 50));
    } else if (name == "max_concurrent") {
      ASSIGN_OR_RETURN(uint64_t n, Count(value, where + ".max_concurrent", 1u << 30));
      l.max_concurrent = static_cast<uint32_t>(n);
    } else {
      return InvalidArgumentError(where + ": unknown field '" + name +
                                  "' (expected requests_per_minute, tokens_per_minute, max_concurrent)");
    }
  }
  return l;
}

// The body of an ApiCommand as a JSON object ({} when empty), or InvalidArgument naming the op.
StatusOr<Json> Body(const api::ApiCommand& c) {
  if (c.body.empty()) return Json::object();
  Json body = Json::parse(c.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return InvalidArgumentError(c.op + ": the body is not a JSON object");
  }
  return body;
}

// Refuses fields of `body` not in `known`.
Status KnownFields(const std::string& op, const Json& body, std::initializer_list<const char*> known) {
  for (const auto& [name, value] : body.items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return name == k; })) {
      std::string list;
      for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      return InvalidArgumentError(op + ": unknown field '" + name + "' (expected " + list + ")");
    }
  }
  return OkStatus();
}

StatusOr<std::string> StringField(const std::string& op, const Json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::string();
  if (!it->is_string()) return InvalidArgumentError(op + ": field '" + name + "' must be a string");
  return it->get<std::string>();
}

// "90d", or anything runtime::ParseDuration takes ("12h", "30m", "1500ms"); "" and "0": never.
StatusOr<std::chrono::milliseconds> ParseTtl(const std::string& text) {
  if (text.empty() || text == "0") return std::chrono::milliseconds(0);
  if (text.back() == 'd') {
    const std::string digits = text.substr(0, text.size() - 1);
    if (!digits.empty() && digits.size() <= 5 && std::all_of(digits.begin(), digits.end(), ::isdigit)) {
      return std::chrono::milliseconds(std::stoll(digits) * 24 * 3600 * 1000);
    }
    return InvalidArgumentError("expires_in '" + text + "' is not a number of days such as 90d");
  }
  auto d = runtime::ParseDuration(text);
  if (!d.ok()) return InvalidArgumentError("expires_in: " + d.status().message() + " (or days, such as 90d)");
  return *d;
}

// A key's record as lists and replies show it: never its hash.
Json PublicRecord(const api::KeyRecord& record, const api::Limits& limits) {
  Json j = Json::parse(api::KeyRecordToJson(record));
  j.erase("hash");
  j["limits"] = LimitsJson(limits);
  return j;
}

Json TenantJson(const TenantRecord& t) {
  return Json{{"name", t.name}, {"limits", LimitsJson(t.limits)}, {"created_unix_ms", t.created_unix_ms}};
}

std::string ResultOf(const Status& s) {
  return s.ok() ? "ok" : std::string(StatusCodeName(s.code())) + ": " + s.message();
}

// Reads `<data_dir>/api-pepper`, or makes it: 32 bytes of RAND_bytes written to a temporary file
// of mode 0600, synced, then renamed into place (a crash leaves the old state or the whole file).
StatusOr<std::string> LoadOrCreatePepper(const std::string& data_dir) {
  const std::string path = data_dir + "/api-pepper";
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::stringstream bytes;
    bytes << in.rdbuf();
    std::string pepper = bytes.str();
    if (pepper.size() < api::kMinPepperBytes) {
      return FailedPreconditionError(path + " holds " + std::to_string(pepper.size()) + " bytes, fewer than " +
                                     std::to_string(api::kMinPepperBytes) +
                                     ": restore it from a backup (without it no existing API key works), or remove "
                                     "it to make a new one (every existing key then stops working)");
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      spdlog::warn("head: {} can be read by others than its owner (mode {:o}); chmod 600 it", path, st.st_mode & 0777);
    }
    return pepper;
  }
  if (errno != ENOENT) return FailedPreconditionError("cannot read " + path + ": " + std::strerror(errno));
  std::string pepper(kPepperBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(pepper.data()), static_cast<int>(pepper.size())) != 1) {
    return InternalError("OpenSSL's RAND_bytes failed to make the API key pepper");
  }
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return FailedPreconditionError("cannot create " + tmp + ": " + std::strerror(errno));
  const bool written = ::write(fd, pepper.data(), pepper.size()) == static_cast<ssize_t>(pepper.size()) && ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!written || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return FailedPreconditionError("cannot write " + path + ": " + std::strerror(written ? errno : saved) +
                                   " (is head.data_dir writable and not full?)");
  }
  spdlog::info("head: made the API key pepper {} (keep it with the head's data: keys do not work without it)", path);
  return pepper;
}

}  // namespace

// ---- Metrics: written on the actor's thread, read on the scrape thread ----

struct ApiRegistry::Metrics {
  std::mutex mu;
  std::map<api::UsageSeries, api::UsageCounts> totals;
  std::map<std::pair<std::string, std::string>, uint64_t> rate_limited;  // (level, kind)
  std::map<std::string, uint64_t> refused;                                // by reason
  uint64_t open = 0;
  uint64_t unknown_settles = 0;
};

ApiRegistry::ApiRegistry(HeadStore* store, Options options, const Clock& clock, std::string pepper,
                         api::KeyHasher hasher)
    : store_(store),
      options_(options),
      clock_(clock),
      pepper_(std::move(pepper)),
      hasher_(std::move(hasher)),
      usage_(store),
      limiter_(options.global, clock, api::RateLimiter::NewRunFirstId()),
      meter_(clock, options.meter),
      metrics_(std::make_shared<Metrics>()) {}

StatusOr<std::unique_ptr<ApiRegistry>> ApiRegistry::Open(HeadStore* store, const std::string& data_dir,
                                                         Options options, const Clock& clock) {
  ASSIGN_OR_RETURN(std::string pepper, LoadOrCreatePepper(data_dir));
  ASSIGN_OR_RETURN(auto hasher, api::KeyHasher::Create(pepper));
  std::unique_ptr<ApiRegistry> registry(new ApiRegistry(store, options, clock, std::move(pepper), std::move(hasher)));
  ASSIGN_OR_RETURN(registry->keys_table_, store->env().OpenTable("api_keys"));
  ASSIGN_OR_RETURN(registry->tenants_table_, store->env().OpenTable("api_tenants"));
  RETURN_IF_ERROR(registry->usage_.Open());
  RETURN_IF_ERROR(registry->Load());
  return registry;
}

Status ApiRegistry::Load() {
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  RETURN_IF_ERROR(txn.ForEach(keys_table_, "", [&](std::string_view id, std::string_view value) {
    Json j = Json::parse(value, nullptr, false);
    StatusOr<api::KeyRecord> record = InvalidArgumentError("not a JSON object with 'record'");
    if (j.is_object() && j.contains("record")) record = api::KeyRecordFromJson(j["record"].dump());
    StatusOr<api::Limits> limits = api::Limits{};
    if (record.ok() && j.contains("limits")) limits = LimitsFrom(j["limits"], "limits");
    if (!record.ok() || !limits.ok()) {
      spdlog::error("head: API key record '{}' does not decode ({}); left out",
                    std::string(id), (!record.ok() ? record.status() : limits.status()).ToString());
      return true;
    }
    const std::string key_id = record->id;  // (the right side of = is evaluated first)
    keys_[key_id] = KeyEntry{std::move(*record), *limits};
    return true;
  }));
  return txn.ForEach(tenants_table_, "", [&](std::string_view name, std::string_view value) {
    Json j = Json::parse(value, nullptr, false);
    StatusOr<api::Limits> limits = InvalidArgumentError("not a JSON object with 'limits'");
    if (j.is_object() && j.contains("limits")) limits = LimitsFrom(j["limits"], "limits");
    if (!limits.ok()) {
      spdlog::error("head: tenant record '{}' does not decode ({}); left out", std::string(name),
                    limits.status().ToString());
      return true;
    }
    tenants_[std::string(name)] = TenantRecord{std::string(name), *limits, j.value("created_unix_ms", int64_t{0})};
    return true;
  });
}

api::Limits ApiRegistry::TenantLimits(const std::string& tenant) const {
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? api::Limits{} : it->second.limits;
}

// ---- The request path: Admit, Settle, an owner gone ----

api::AdmitReply ApiRegistry::Admit(const api::Admit& admit, uint64_t owner) {
  api::AdmitReply reply;
  auto refuse = [&](uint32_t status, const char* type, std::string message, const std::string& reason) {
    reply.http_status = status;
    reply.error_type = type;
    reply.message = std::move(message);
    std::lock_guard<std::mutex> lock(metrics_->mu);
    ++metrics_->refused[reason];
    return reply;
  };
  if (admit.action > kLastAction) {
    return refuse(400, "invalid_request_error",
                  "unknown action " + std::to_string(admit.action) + " (this head knows 0.." +
                      std::to_string(kLastAction) + "): the gateway and the head are of different builds",
                  "bad_action");
  }
  const auto action = static_cast<api::Action>(admit.action);
  auto id = api::KeyIdOf(admit.api_key);
  if (!id.ok()) {
    return refuse(401, "invalid_api_key",
                  "Incorrect API key provided: not a troupe API key (tk-<id>-<secret>); ask an admin of your tenant "
                  "for one (troupe key create)",
                  "malformed_key");
  }
  auto it = keys_.find(*id);
  if (it == keys_.end() || !hasher_.Matches(admit.api_key, it->second.record)) {
    return refuse(401, "invalid_api_key",
                  "Incorrect API key provided: key " + *id + " is not known or its secret does not match",
                  "unknown_key");
  }
  const KeyEntry& entry = it->second;
  const api::KeyRecord& record = entry.record;
  auto decision = api::Authorize(record, clock_.WallNow(), action, api::Target{record.tenant, admit.deployment});
  if (!decision.allowed) {
    return refuse(static_cast<uint32_t>(decision.http_status),
                  decision.http_status == 401 ? "invalid_api_key" : "permission_denied", decision.message,
                  api::DenialName(decision.denial));
  }
  reply.key_id = record.id;
  reply.tenant = record.tenant;
  reply.deployments = record.all_deployments ? std::vector<std::string>{"*"} : record.deployments;
  api::RateLimiter::Request request{record.id, record.tenant, entry.limits, TenantLimits(record.tenant),
                                    admit.prompt_tokens, admit.max_tokens};
  auto outcome = limiter_.Reserve(request);
  const api::RateLimitHeaders h = limiter_.Headers(record.id, record.tenant);
  if (h.limit_requests > 0) {
    reply.headers.emplace_back("x-ratelimit-limit-requests", std::to_string(h.limit_requests));
    reply.headers.emplace_back("x-ratelimit-remaining-requests", std::to_string(h.remaining_requests));
    reply.headers.emplace_back("x-ratelimit-reset-requests", h.reset_requests);
  }
  if (h.limit_tokens > 0) {
    reply.headers.emplace_back("x-ratelimit-limit-tokens", std::to_string(h.limit_tokens));
    reply.headers.emplace_back("x-ratelimit-remaining-tokens", std::to_string(h.remaining_tokens));
    reply.headers.emplace_back("x-ratelimit-reset-tokens", h.reset_tokens);
  }
  if (!outcome.ok()) {
    const api::Refusal& r = *outcome.refusal;
    {
      std::lock_guard<std::mutex> lock(metrics_->mu);
      ++metrics_->rate_limited[{api::LimitLevelName(r.level), api::LimitKindName(r.kind)}];
    }
    reply.http_status = 429;
    reply.error_type = "rate_limit_exceeded";
    reply.message = "key " + record.id + ": " + r.message;
    reply.retry_after_s = r.never ? 0 : static_cast<uint32_t>(std::min<uint64_t>(r.retry_after_seconds, UINT32_MAX));
    return reply;
  }
  const uint64_t reservation = outcome.reservation->id;
  reservations_[reservation] =
      OpenReservation{std::move(*outcome.reservation), owner, admit.deployment, clock_.Now()};
  owners_[owner].insert(reservation);
  reply.admitted = true;
  reply.reservation = reservation;
  std::lock_guard<std::mutex> lock(metrics_->mu);
  metrics_->open = reservations_.size();
  return reply;
}

void ApiRegistry::Finish(uint64_t id, uint64_t prompt, uint64_t completion, bool error,
                         const std::string& deployment) {
  auto it = reservations_.find(id);
  OpenReservation open = std::move(it->second);
  reservations_.erase(it);
  if (auto owner = owners_.find(open.owner); owner != owners_.end()) {
    owner->second.erase(id);
    if (owner->second.empty()) owners_.erase(owner);
  }
  if (Status settled = limiter_.Settle(open.reservation, prompt + completion); !settled.ok()) {
    spdlog::error("head: api: reservation {} does not settle: {}", id, settled.ToString());  // a bug: both are ours
  }
  const std::string& model = deployment.empty() ? open.deployment : deployment;
  const bool due = meter_.Record(open.reservation.key_id, open.reservation.tenant, model, prompt, completion, error);
  {
    std::lock_guard<std::mutex> lock(metrics_->mu);
    metrics_->open = reservations_.size();
  }
  // A full batch is flushed at once (the timer flushes the rest).
  if (due && meter_.pending_rows() >= options_.meter.max_batch_rows) {
    if (Status flushed = FlushUsage(); !flushed.ok()) spdlog::error("head: api: {}", flushed.ToString());
  }
}

bool ApiRegistry::Holds(uint64_t reservation, uint64_t owner) const {
  auto it = reservations_.find(reservation);
  return it != reservations_.end() && it->second.owner == owner;
}

void ApiRegistry::Settle(const api::Settle& settle) {
  if (reservations_.count(settle.reservation) == 0) {
    if (unknown_settles_++ == 0) {
      spdlog::warn("head: api: a Settle of reservation {} that is not open (settled already, cancelled with its "
                   "gateway, or never made) was ignored; later ones are only counted "
                   "(troupe_api_unknown_settles_total)",
                   settle.reservation);
    }
    std::lock_guard<std::mutex> lock(metrics_->mu);
    metrics_->unknown_settles = unknown_settles_;
    return;
  }
  Finish(settle.reservation, settle.prompt_tokens, settle.completion_tokens, settle.error, settle.deployment);
}

size_t ApiRegistry::OwnerGone(uint64_t owner) {
  auto it = owners_.find(owner);
  if (it == owners_.end()) return 0;
  const std::vector<uint64_t> ids(it->second.begin(), it->second.end());
  for (uint64_t id : ids) Finish(id, 0, 0, /*error=*/true, "");
  return ids.size();
}

size_t ApiRegistry::ExpireReservations() {
  const Clock::TimePoint cutoff = clock_.Now() - options_.reservation_ttl;
  std::vector<uint64_t> expired;
  for (const auto& [id, open] : reservations_) {
    if (open.admitted_at <= cutoff) expired.push_back(id);
  }
  for (uint64_t id : expired) Finish(id, 0, 0, /*error=*/true, "");
  if (!expired.empty()) {
    spdlog::warn("head: api: {} reservation(s) open for {} s or more were settled as cancelled (their Settle was "
                 "lost, or a gateway holds requests past its deadline)",
                 expired.size(), std::chrono::duration_cast<std::chrono::seconds>(options_.reservation_ttl).count());
  }
  return expired.size();
}

Status ApiRegistry::FlushUsage() {
  if (meter_.pending_rows() == 0 && unwritten_.empty()) return OkStatus();
  api::UsageFlush flush = meter_.Flush();
  {
    std::lock_guard<std::mutex> lock(metrics_->mu);
    for (const auto& total : flush.totals) metrics_->totals[total.series] = total.counts;
  }
  std::vector<api::UsageRow> rows = std::move(unwritten_);
  unwritten_.clear();
  rows.insert(rows.end(), flush.deltas.begin(), flush.deltas.end());
  Status added = usage_.Add(rows);
  if (!added.ok()) {
    unwritten_ = std::move(rows);
    return UnavailableError("usage of " + std::to_string(unwritten_.size()) +
                            " series-hours could not be written to the head's store (kept in memory for the next "
                            "flush): " + added.message());
  }
  return OkStatus();
}

// ---- Admin commands ----

void ApiRegistry::AddCommand(const std::string& op, api::Action needs, CommandHandler handler) {
  extra_commands_[op] = {needs, std::move(handler)};
}

StatusOr<ApiCaller> ApiRegistry::Identify(const api::ApiCommand& command, ApiAdminAction* audit) const {
  ApiCaller caller;
  if (command.api_key.empty()) {
    caller.who = command.caller.empty() ? "cli" : command.caller;
    caller.cluster_admin = true;
    audit->who = caller.who;
    return caller;
  }
  auto id = api::KeyIdOf(command.api_key);
  if (!id.ok()) {
    audit->who = "key:?";
    return PermissionDeniedError(command.op + ": the API key is not a troupe key (tk-<id>-<secret>)");
  }
  audit->who = "key:" + *id;
  auto it = keys_.find(*id);
  if (it == keys_.end() || !hasher_.Matches(command.api_key, it->second.record)) {
    return PermissionDeniedError(command.op + ": key " + *id + " is not known or its secret does not match");
  }
  caller.who = audit->who;
  caller.key = it->second.record;
  return caller;
}

Status ApiRegistry::Allow(const ApiCaller& caller, api::Action action, const std::string& tenant) const {
  if (caller.cluster_admin) return OkStatus();
  auto decision = api::Authorize(caller.key, clock_.WallNow(), action, api::Target{tenant, ""});
  if (decision.allowed) return OkStatus();
  return PermissionDeniedError(decision.message);
}

StatusOr<std::string> ApiRegistry::Command(const api::ApiCommand& command) {
  ApiAdminAction audit;
  audit.action = command.op;
  audit.target = command.name;
  StatusOr<std::string> reply = Run(command, &audit);
  const bool changes = command.op == "key.create" || command.op == "key.revoke" || command.op == "tenant.create";
  const bool refused = !reply.ok() && reply.status().code() == StatusCode::kPermissionDenied;
  // ---- The audit log's one entry point (cluster/audit_log.h, set by the head): every admin
  // action that changes keys or tenants, done or failed, and every refused command. ----
  if (audit_ && (changes || refused)) {
    audit.result = ResultOf(reply.ok() ? OkStatus() : reply.status());
    audit_(audit);
  }
  return reply;
}

StatusOr<std::string> ApiRegistry::Run(const api::ApiCommand& command, ApiAdminAction* audit) {
  if (command.op == "key.create") return CreateKey(command, audit);
  if (command.op == "key.list") return ListKeys(command, audit);
  if (command.op == "key.revoke") return RevokeKey(command, audit);
  if (command.op == "tenant.create") return CreateTenant(command, audit);
  if (command.op == "tenant.list") return ListTenants(command, audit);
  if (command.op == "usage") return Usage(command, audit);
  if (auto extra = extra_commands_.find(command.op); extra != extra_commands_.end()) {
    ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
    RETURN_IF_ERROR(Allow(caller, extra->second.first, caller.cluster_admin ? "" : caller.key.tenant));
    return extra->second.second(command, caller);
  }
  std::string ops = "key.create, key.list, key.revoke, tenant.create, tenant.list, usage";
  for (const auto& [op, handler] : extra_commands_) ops += ", " + op;
  return InvalidArgumentError("unknown api command '" + command.op + "' (this head knows " + ops + ")");
}

Status ApiRegistry::StoreKey(const KeyEntry& entry) {
  Json j{{"record", Json::parse(api::KeyRecordToJson(entry.record))}, {"limits", LimitsJson(entry.limits)}};
  Status s = store_->Commit([&](storage::Txn& txn) { return txn.Put(keys_table_, entry.record.id, j.dump()); });
  if (!s.ok()) {
    return UnavailableError("key " + entry.record.id + " could not be stored, nothing changed: " + s.message() +
                            " (is head.data_dir full?)");
  }
  return OkStatus();
}

StatusOr<std::string> ApiRegistry::CreateKey(const api::ApiCommand& command, ApiAdminAction* audit) {
  const std::string& op = command.op;
  ASSIGN_OR_RETURN(Json body, Body(command));
  RETURN_IF_ERROR(KnownFields(op, body, {"tenant", "role", "expires_in", "deployments", "limits"}));
  api::KeySpec spec;
  ASSIGN_OR_RETURN(spec.tenant, StringField(op, body, "tenant"));
  audit->target = spec.tenant;
  if (spec.tenant.empty()) return InvalidArgumentError(op + ": give the key's tenant (--tenant T)");
  ASSIGN_OR_RETURN(std::string role, StringField(op, body, "role"));
  if (!role.empty()) {
    ASSIGN_OR_RETURN(spec.role, api::ParseRole(role));
  }
  ASSIGN_OR_RETURN(std::string expires_in, StringField(op, body, "expires_in"));
  ASSIGN_OR_RETURN(spec.ttl, ParseTtl(expires_in));
  if (auto d = body.find("deployments"); d != body.end() && !d->is_null()) {
    if (!d->is_array()) return InvalidArgumentError(op + ": 'deployments' must be a list of deployment names");
    for (const auto& name : *d) {
      if (!name.is_string() || name.get<std::string>().empty()) {
        return InvalidArgumentError(op + ": 'deployments' must hold deployment names (non-empty strings)");
      }
      spec.deployments.push_back(name.get<std::string>());
    }
    if (spec.deployments == std::vector<std::string>{"*"}) spec.deployments.clear();
  }
  api::Limits limits;
  if (auto l = body.find("limits"); l != body.end() && !l->is_null()) {
    ASSIGN_OR_RETURN(limits, LimitsFrom(*l, "limits"));
  }
  ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
  RETURN_IF_ERROR(Allow(caller, api::Action::kManageKeys, spec.tenant));
  if (spec.tenant != api::kSystemTenant && tenants_.count(spec.tenant) == 0) {
    RETURN_IF_ERROR(api::ValidateTenantName(spec.tenant));
    return NotFoundError(op + ": no tenant '" + spec.tenant + "'; create it first (troupe tenant create " + spec.tenant + ")");
  }
  ASSIGN_OR_RETURN(api::NewKey made, api::CreateKey(spec, pepper_, clock_));
  KeyEntry entry{made.record, limits};
  audit->target = made.record.id;
  Json detail = PublicRecord(entry.record, limits);
  audit->detail = detail.dump();
  RETURN_IF_ERROR(StoreKey(entry));
  keys_[entry.record.id] = entry;
  return Json{{"key", made.key}, {"record", std::move(detail)}}.dump();
}

StatusOr<std::string> ApiRegistry::ListKeys(const api::ApiCommand& command, ApiAdminAction* audit) {
  ASSIGN_OR_RETURN(Json body, Body(command));
  RETURN_IF_ERROR(KnownFields(command.op, body, {"tenant"}));
  ASSIGN_OR_RETURN(std::string tenant, StringField(command.op, body, "tenant"));
  ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
  // A key lists its own tenant's keys unless it names another (refused unless a system admin's).
  if (tenant.empty() && !caller.cluster_admin && caller.key.tenant != api::kSystemTenant) tenant = caller.key.tenant;
  RETURN_IF_ERROR(Allow(caller, api::Action::kManageKeys, tenant));
  Json out = Json::array();
  for (const auto& [id, entry] : keys_) {
    if (tenant.empty() || entry.record.tenant == tenant) out.push_back(PublicRecord(entry.record, entry.limits));
  }
  return out.dump();
}

StatusOr<std::string> ApiRegistry::RevokeKey(const api::ApiCommand& command, ApiAdminAction* audit) {
  ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
  auto it = keys_.find(command.name);
  if (it == keys_.end()) {
    return NotFoundError("key.revoke: no key '" + command.name + "' (troupe key list shows the key ids)");
  }
  RETURN_IF_ERROR(Allow(caller, api::Action::kManageKeys, it->second.record.tenant));
  if (!it->second.record.revoked) {
    KeyEntry revoked = it->second;
    revoked.record.revoked = true;
    revoked.record.revoked_unix_ms = clock_.UnixMs();
    RETURN_IF_ERROR(StoreKey(revoked));
    it->second = std::move(revoked);
  }
  audit->detail = Json{{"tenant", it->second.record.tenant}}.dump();
  return Json{{"record", PublicRecord(it->second.record, it->second.limits)}}.dump();
}

StatusOr<std::string> ApiRegistry::CreateTenant(const api::ApiCommand& command, ApiAdminAction* audit) {
  const std::string& name = command.name;
  ASSIGN_OR_RETURN(Json body, Body(command));
  RETURN_IF_ERROR(KnownFields(command.op, body, {"limits"}));
  TenantRecord tenant{name, {}, clock_.UnixMs()};
  if (auto l = body.find("limits"); l != body.end() && !l->is_null()) {
    ASSIGN_OR_RETURN(tenant.limits, LimitsFrom(*l, "limits"));
  }
  ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
  RETURN_IF_ERROR(Allow(caller, api::Action::kManageTenants, name));
  RETURN_IF_ERROR(api::ValidateTenantName(name));
  if (name == api::kSystemTenant || tenants_.count(name) != 0) {
    return AlreadyExistsError("tenant.create: tenant '" + name + "' exists (troupe tenant list)");
  }
  Json record{{"limits", LimitsJson(tenant.limits)}, {"created_unix_ms", tenant.created_unix_ms}};
  audit->detail = record.dump();
  Status s = store_->Commit([&](storage::Txn& txn) { return txn.Put(tenants_table_, name, record.dump()); });
  if (!s.ok()) {
    return UnavailableError("tenant '" + name + "' could not be stored, nothing changed: " + s.message() +
                            " (is head.data_dir full?)");
  }
  tenants_[name] = tenant;
  return Json{{"tenant", TenantJson(tenant)}}.dump();
}

StatusOr<std::string> ApiRegistry::ListTenants(const api::ApiCommand& command, ApiAdminAction* audit) {
  ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
  RETURN_IF_ERROR(Allow(caller, api::Action::kManageTenants, ""));
  Json out = Json::array();
  Json system = TenantJson(TenantRecord{std::string(api::kSystemTenant), {}, 0});
  system["builtin"] = true;
  out.push_back(std::move(system));
  for (const auto& [name, tenant] : tenants_) out.push_back(TenantJson(tenant));
  return out.dump();
}

StatusOr<std::string> ApiRegistry::Usage(const api::ApiCommand& command, ApiAdminAction* audit) {
  ASSIGN_OR_RETURN(Json body, Body(command));
  RETURN_IF_ERROR(KnownFields(command.op, body, {"key_id", "tenant", "model", "since_unix_ms"}));
  UsageStore::Filter filter;
  ASSIGN_OR_RETURN(filter.key_id, StringField(command.op, body, "key_id"));
  ASSIGN_OR_RETURN(filter.tenant, StringField(command.op, body, "tenant"));
  ASSIGN_OR_RETURN(filter.model, StringField(command.op, body, "model"));
  if (auto s = body.find("since_unix_ms"); s != body.end() && !s->is_null()) {
    if (!s->is_number_integer()) return InvalidArgumentError("usage: 'since_unix_ms' must be a whole number");
    filter.since_unix_ms = s->get<int64_t>();
  }
  ASSIGN_OR_RETURN(ApiCaller caller, Identify(command, audit));
  if (!caller.cluster_admin) {
    const api::KeyRecord& key = caller.key;
    if (!api::RoleAllows(key.role, api::Action::kReadTenantUsage)) {
      // A user key reads its own usage only.
      if (!filter.key_id.empty() && filter.key_id != key.id) {
        return PermissionDeniedError("key " + key.id + ": role " + api::RoleName(key.role) +
                                     " reads only its own usage: it needs role operator or admin for key " +
                                     filter.key_id);
      }
      RETURN_IF_ERROR(Allow(caller, api::Action::kReadOwnUsage, key.tenant));
      filter.key_id = key.id;
    } else {
      if (filter.tenant.empty() && key.tenant != api::kSystemTenant) filter.tenant = key.tenant;
      RETURN_IF_ERROR(Allow(caller, api::Action::kReadTenantUsage, filter.tenant));
    }
  }
  // What was metered since the last flush is counted too.
  RETURN_IF_ERROR(FlushUsage());
  ASSIGN_OR_RETURN(auto rows, usage_.Query(filter));
  Json out_rows = Json::array();
  api::UsageCounts totals;
  for (const auto& row : rows) {
    out_rows.push_back(Json{{"hour_unix_s", row.hour_unix_s},
                            {"key_id", row.series.key_id},
                            {"tenant", row.series.tenant},
                            {"model", row.series.model},
                            {"requests", row.counts.requests},
                            {"errors", row.counts.errors},
                            {"input_tokens", row.counts.input_tokens},
                            {"output_tokens", row.counts.output_tokens}});
    totals += row.counts;
  }
  return Json{{"rows", std::move(out_rows)},
              {"totals",
               {{"requests", totals.requests},
                {"errors", totals.errors},
                {"input_tokens", totals.input_tokens},
                {"output_tokens", totals.output_tokens}}}}
      .dump();
}

runtime::MetricsSource ApiRegistry::MetricsSource() const {
  return [metrics = metrics_](std::vector<prometheus::MetricFamily>& out) {
    std::lock_guard<std::mutex> lock(metrics->mu);
    auto requests = runtime::CounterFamily("troupe_api_requests_total", "API gateway requests settled, per key, tenant and model");
    auto errors = runtime::CounterFamily("troupe_api_errors_total", "API gateway requests that ended in an error (a subset of requests)");
    auto tokens = runtime::CounterFamily("troupe_api_tokens_total", "Tokens metered: input (prompt) and output (completion)");
    for (const auto& [s, c] : metrics->totals) {
      std::vector<std::pair<std::string, std::string>> labels = {
          {"key_id", s.key_id}, {"tenant", s.tenant}, {"model", s.model}};
      runtime::AddSample(requests, static_cast<double>(c.requests), labels);
      runtime::AddSample(errors, static_cast<double>(c.errors), labels);
      auto in = labels;
      in.emplace_back("kind", "input");
      runtime::AddSample(tokens, static_cast<double>(c.input_tokens), in);
      labels.emplace_back("kind", "output");
      runtime::AddSample(tokens, static_cast<double>(c.output_tokens), labels);
    }
    out.push_back(std::move(requests));
    out.push_back(std::move(errors));
    out.push_back(std::move(tokens));
    auto limited = runtime::CounterFamily("troupe_api_rate_limited_total", "Requests refused with 429, by level and limit");
    for (const auto& [which, n] : metrics->rate_limited) {
      runtime::AddSample(limited, static_cast<double>(n), {{"level", which.first}, {"kind", which.second}});
    }
    out.push_back(std::move(limited));
    auto refused = runtime::CounterFamily("troupe_api_refused_total", "Requests refused with 400, 401 or 403, by reason");
    for (const auto& [reason, n] : metrics->refused) runtime::AddSample(refused, static_cast<double>(n), {{"reason", reason}});
    out.push_back(std::move(refused));
    auto open = runtime::GaugeFamily("troupe_api_reservations_open", "Admitted requests not yet settled");
    runtime::AddSample(open, static_cast<double>(metrics->open));
    out.push_back(std::move(open));
    auto unknown = runtime::CounterFamily("troupe_api_unknown_settles_total", "Settles of reservations that were not open (ignored)");
    runtime::AddSample(unknown, static_cast<double>(metrics->unknown_settles));
    out.push_back(std::move(unknown));
  };
}

// ---- The api actor ----

namespace {

using api_flush_atom = caf::atom_constant<caf::atom("api_flush")>;

struct ApiActorState {
  std::unique_ptr<ApiRegistry> registry;
  std::chrono::milliseconds flush_interval{1000};
  // Admit senders, numbered as reservation owners, and watched until they end.
  std::map<caf::actor_addr, uint64_t> owners;
  uint64_t next_owner = 0;
};

void Flush(ApiRegistry& registry) {
  if (Status s = registry.FlushUsage(); !s.ok()) spdlog::error("head: api: {}", s.ToString());
}

caf::behavior ApiActor(caf::stateful_actor<ApiActorState>* self, std::unique_ptr<ApiRegistry> registry,
                       std::chrono::milliseconds flush_interval) {
  self->state.registry = std::move(registry);
  self->state.flush_interval = flush_interval;
  self->delayed_send(self, flush_interval, api_flush_atom::value);
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& st = self->state;
    auto it = st.owners.find(msg.source);
    if (it == st.owners.end()) return;
    const size_t n = st.registry->OwnerGone(it->second);
    st.owners.erase(it);
    if (n > 0) {
      spdlog::info("head: api: a gateway actor ended ({}): its {} open reservation(s) settled as cancelled",
                   runtime::ToStatus(msg.reason).ToString(), n);
    }
  });
  // Admits for the current sender, the reservation's owner.
  auto admit_for_sender = [self](const api::Admit& admit) {
    auto& st = self->state;
    const auto sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
    auto known = sender ? st.owners.find(sender) : st.owners.end();
    const uint64_t owner = known != st.owners.end() ? known->second : (sender ? st.next_owner + 1 : 0);
    api::AdmitReply reply = st.registry->Admit(admit, owner);
    if (reply.admitted && sender && known == st.owners.end()) {
      // Watched from its first admitted request until it ends; its node's loss kills its proxy.
      st.owners[sender] = ++st.next_owner;
      self->monitor(self->current_sender());
    }
    return reply;
  };
  return {
      [admit_for_sender](api::Admit& admit) -> api::AdmitReply { return admit_for_sender(admit); },
      [self, admit_for_sender](AdmitAndInfer& call) -> caf::result<AdmitAndInferReply> {
        auto& st = self->state;
        AdmitAndInferReply reply;
        if (call.reservation != 0) {
          const auto sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
          auto known = sender ? st.owners.find(sender) : st.owners.end();
          if (known == st.owners.end() || !st.registry->Holds(call.reservation, known->second)) {
            reply.error_code = static_cast<uint32_t>(StatusCode::kFailedPrecondition);
            reply.error_message = "reservation " + std::to_string(call.reservation) +
                                  " is not open for this sender (settled, cancelled, or another's)";
            return reply;
          }
          reply.admit.admitted = true;
          reply.admit.reservation = call.reservation;
        } else {
          reply.admit = admit_for_sender(call.admit);
          if (!reply.admit.admitted) return reply;
          // A deployment of another tenant is, to this key, a model that does not exist.
          if (reply.admit.tenant != call.deployment_tenant) {
            reply.error_code = static_cast<uint32_t>(StatusCode::kNotFound);
            reply.error_message = "another tenant's deployment";
            return reply;
          }
        }
        if (!call.router.valid()) {
          // No such actor here: the head restarted (or the deployment was deployed again) since
          // the gateway looked the router up. It looks it up again and retries.
          reply.error_code = static_cast<uint32_t>(StatusCode::kUnavailable);
          reply.error_message = "the router named in the call is not on this head any more";
          return reply;
        }
        reply.dispatched = true;
        const auto timeout = RouterReplyTimeout(call.request.deadline_unix_ms, st.registry->clock().UnixMs());
        auto promise = self->make_response_promise<AdmitAndInferReply>();
        // One copy of the admission for whichever handler runs (it carries the headers).
        auto pending = std::make_shared<AdmitAndInferReply>(std::move(reply));
        self->request(call.router.handle(), timeout, std::move(call.request))
            .then(
                [promise, pending](serving::InferenceResponse& response) mutable {
                  pending->response = std::move(response);
                  promise.deliver(std::move(*pending));
                },
                [promise, pending](caf::error& error) mutable {
                  Status status = runtime::ToStatus(error);
                  if (status.ok()) status = InternalError("the router failed without a reason");
                  pending->error_code = static_cast<uint32_t>(status.code());
                  pending->error_message = status.message();
                  promise.deliver(std::move(*pending));
                });
        return promise;
      },
      [self](api::Settle& settle) { self->state.registry->Settle(settle); },
      [self](api::ApiCommand& command) -> caf::result<api::ApiCommandReply> {
        auto reply = self->state.registry->Command(command);
        if (!reply.ok()) return runtime::ToCafError(reply.status());
        return api::ApiCommandReply{std::move(*reply)};
      },
      [self](ApiFlush) -> ApiFlushed {
        Status s = self->state.registry->FlushUsage();
        return ApiFlushed{s.ok() ? "" : s.ToString()};
      },
      [self](api_flush_atom) {
        self->state.registry->ExpireReservations();
        if (self->state.registry->FlushDue()) Flush(*self->state.registry);
        self->delayed_send(self, self->state.flush_interval, api_flush_atom::value);
      },
  };
}

}  // namespace

StatusOr<caf::actor> StartApiActor(runtime::Runtime& runtime, std::unique_ptr<ApiRegistry> registry,
                                   std::chrono::milliseconds flush_interval) {
  if (flush_interval.count() <= 0) flush_interval = std::chrono::milliseconds(1000);
  // Detached: it writes LMDB (fsync) and must not hold the transport's progress thread.
  caf::actor actor = runtime.system().spawn<caf::detached>(ApiActor, std::move(registry), flush_interval);
  RETURN_IF_ERROR(runtime.RegisterName(api::kApiActorName, runtime.Ref(actor)));
  return actor;
}

}  // namespace troupe::cluster
