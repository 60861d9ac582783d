// The head's API registry without an actor system: keys and tenants stored before they are
// acknowledged and kept across a reopen, Admit's refusals (401, 403, 429) and headers, Settle
// metered once, an owner's reservations freed when it goes, commands by role, the audit hook;
// and the api protocol's codecs.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "cluster/api_registry.h"
#include "common/clock.h"
#include "runtime/codec.h"
#include "tests/cluster/head_test_support.h"
#include "tests/fakes/fake_ref_codec.h"
#include "tests/support/metric_sample.h"

namespace troupe::cluster {
namespace {

using Json = nlohmann::json;
using namespace std::chrono_literals;

class ApiRegistryTest : public testing::HeadStoreTest {
 protected:
  void SetUp() override {
    HeadStoreTest::SetUp();
    Open();
  }
  void TearDown() override {
    registry_.reset();
    HeadStoreTest::TearDown();
  }
  void Open(ApiRegistry::Options options = {}) {
    registry_.reset();
    auto registry = ApiRegistry::Open(store_.get(), dir_, options, clock_);
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = std::move(*registry);
    registry_->SetAuditHook([this](const ApiAdminAction& a) { audit_.push_back(a); });
  }
  // A head restart: the store and the registry opened again.
  void Restart() {
    registry_.reset();
    Reopen();
    Open();
  }
  StatusOr<std::string> Cli(const std::string& op, const std::string& name, const Json& body) {
    return registry_->Command(api::ApiCommand{op, name, body.is_null() ? "" : body.dump(), "", "cli@test"});
  }
  StatusOr<std::string> ByKey(const std::string& key, const std::string& op, const std::string& name, const Json& body) {
    return registry_->Command(api::ApiCommand{op, name, body.is_null() ? "" : body.dump(), key, ""});
  }
  void Tenant(const std::string& name, const Json& limits = Json::object()) {
    auto made = Cli("tenant.create", name, Json{{"limits", limits}});
    ASSERT_TRUE(made.ok()) << made.status();
  }
  // A new key's {"key", "record"}.
  Json Key(const Json& body) {
    auto made = Cli("key.create", "", body);
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? Json::parse(*made) : Json::object();
  }
  api::AdmitReply Admit(const std::string& key, const std::string& deployment = "chat", uint64_t owner = 1,
                        uint32_t prompt = 10, uint32_t max_tokens = 20,
                        api::Action action = api::Action::kCallModel) {
    return registry_->Admit(api::Admit{key, deployment, static_cast<uint32_t>(action), prompt, max_tokens}, owner);
  }
  Json Usage(const Json& filter = Json::object()) {
    auto usage = Cli("usage", "", filter);
    EXPECT_TRUE(usage.ok()) << usage.status();
    return usage.ok() ? Json::parse(*usage) : Json::object();
  }

  ManualClock clock_;
  std::unique_ptr<ApiRegistry> registry_;
  std::vector<ApiAdminAction> audit_;
};

TEST_F(ApiRegistryTest, KeysAndTenantsAreStoredAndWorkAfterARestartWithTheSamePepper) {
  const std::string pepper_file = dir_ + "/api-pepper";
  struct stat st {};
  ASSERT_EQ(stat(pepper_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  std::stringstream before;
  before << std::ifstream(pepper_file).rdbuf();

  Tenant("acme", {{"requests_per_minute", 100}});
  Json made = Key({{"tenant", "acme"}, {"role", "operator"}, {"deployments", {"chat"}},
                   {"limits", {{"max_concurrent", 2}}}});
  const std::string key = made.value("key", "");
  const std::string id = made["record"].value("id", "");
  ASSERT_EQ(key.rfind("tk-" + id + "-", 0), 0u) << key;
  EXPECT_FALSE(made["record"].contains("hash"));
  EXPECT_EQ(made["record"]["limits"]["max_concurrent"], 2);

  Restart();
  std::stringstream after;
  after << std::ifstream(pepper_file).rdbuf();
  EXPECT_EQ(before.str(), after.str());
  auto admitted = Admit(key);
  EXPECT_TRUE(admitted.admitted) << admitted.message;
  EXPECT_EQ(admitted.key_id, id);
  EXPECT_EQ(admitted.tenant, "acme");
  EXPECT_EQ(admitted.deployments, std::vector<std::string>{"chat"});
  auto tenants = Json::parse(*Cli("tenant.list", "", nullptr));
  ASSERT_EQ(tenants.size(), 2u);  // system, acme
  EXPECT_EQ(tenants[1]["name"], "acme");
  EXPECT_EQ(tenants[1]["limits"]["requests_per_minute"], 100);
  auto keys = Json::parse(*Cli("key.list", "", Json{{"tenant", "acme"}}));
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0]["id"], id);
  EXPECT_FALSE(keys[0].contains("hash"));
}

TEST_F(ApiRegistryTest, BadRevokedAndExpiredKeysGet401AndKeysOutsideTheirRightsGet403) {
  Tenant("acme");
  const std::string key = Key({{"tenant", "acme"}, {"deployments", {"chat"}}, {"expires_in", "1h"}})["key"];
  const std::string id = key.substr(3, api::kKeyIdChars);

  auto malformed = Admit("sk-not-a-troupe-key");
  EXPECT_FALSE(malformed.admitted);
  EXPECT_EQ(malformed.http_status, 401u);
  EXPECT_EQ(malformed.error_type, "invalid_api_key");

  std::string wrong = key;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  auto mismatch = Admit(wrong);
  EXPECT_EQ(mismatch.http_status, 401u);
  EXPECT_NE(mismatch.message.find(id), std::string::npos) << mismatch.message;
  EXPECT_EQ(mismatch.message.find(wrong.substr(16)), std::string::npos) << "the secret must never be echoed";

  auto other = Admit(key, "embed");
  EXPECT_EQ(other.http_status, 403u);
  EXPECT_EQ(other.error_type, "permission_denied");
  EXPECT_NE(other.message.find("embed"), std::string::npos) << other.message;

  auto manage = Admit(key, "", 1, 0, 0, api::Action::kManageKeys);
  EXPECT_EQ(manage.http_status, 403u);

  auto bad_action = registry_->Admit(api::Admit{key, "chat", 99, 1, 1}, 1);
  EXPECT_EQ(bad_action.http_status, 400u);

  clock_.Advance(1h);
  auto expired = Admit(key);
  EXPECT_EQ(expired.http_status, 401u);
  EXPECT_NE(expired.message.find("expired"), std::string::npos) << expired.message;

  const std::string key2 = Key({{"tenant", "acme"}})["key"];
  ASSERT_TRUE(Admit(key2).admitted);
  const std::string id2 = key2.substr(3, api::kKeyIdChars);
  ASSERT_TRUE(Cli("key.revoke", id2, nullptr).ok());
  Restart();
  auto revoked = Admit(key2);
  EXPECT_EQ(revoked.http_status, 401u);
  EXPECT_NE(revoked.message.find("revoked"), std::string::npos) << revoked.message;
  EXPECT_EQ(registry_->open_reservations(), 0u) << "refusals reserve nothing";
}

TEST_F(ApiRegistryTest, ALimitHitGets429WithRetryAfterAndAdmittedRequestsGetTheHeaders) {
  Tenant("acme", {{"requests_per_minute", 2}});
  const std::string key = Key({{"tenant", "acme"}, {"limits", {{"tokens_per_minute", 1000}}}})["key"];
  auto first = Admit(key);
  ASSERT_TRUE(first.admitted) << first.message;
  std::map<std::string, std::string> headers(first.headers.begin(), first.headers.end());
  EXPECT_EQ(headers["x-ratelimit-limit-requests"], "2");
  EXPECT_EQ(headers["x-ratelimit-remaining-requests"], "1");
  EXPECT_EQ(headers["x-ratelimit-limit-tokens"], "1000");
  EXPECT_EQ(headers["x-ratelimit-remaining-tokens"], "970");
  ASSERT_TRUE(Admit(key).admitted);
  auto third = Admit(key);
  EXPECT_FALSE(third.admitted);
  EXPECT_EQ(third.http_status, 429u);
  EXPECT_EQ(third.error_type, "rate_limit_exceeded");
  EXPECT_GE(third.retry_after_s, 1u);
  EXPECT_LE(third.retry_after_s, 30u);
  clock_.Advance(std::chrono::seconds(third.retry_after_s));
  EXPECT_TRUE(Admit(key).admitted) << "Retry-After is enough when nothing else happens";

  clock_.Advance(1min);
  auto never = Admit(key, "chat", 1, 600, 600);
  EXPECT_EQ(never.http_status, 429u);
  EXPECT_EQ(never.retry_after_s, 0u) << never.message;
}

TEST_F(ApiRegistryTest, ASettleIsMeteredOnceAndAnUnknownOneIsIgnored) {
  Tenant("acme");
  const std::string key = Key({{"tenant", "acme"}})["key"];
  auto a = Admit(key, "chat");
  auto b = Admit(key, "chat");
  ASSERT_TRUE(a.admitted && b.admitted);
  registry_->Settle(api::Settle{a.reservation, "chat", 12, 7, false});
  registry_->Settle(api::Settle{a.reservation, "chat", 12, 7, false});  // again: ignored
  registry_->Settle(api::Settle{987654, "chat", 100, 100, false});     // never made: ignored
  registry_->Settle(api::Settle{b.reservation, "", 3, 0, true});        // the Admit's deployment
  Json usage = Usage({{"tenant", "acme"}});
  ASSERT_EQ(usage["rows"].size(), 1u) << usage.dump();
  EXPECT_EQ(usage["rows"][0]["model"], "chat");
  EXPECT_EQ(usage["rows"][0]["key_id"], a.key_id);
  EXPECT_EQ(usage["totals"]["requests"], 2);
  EXPECT_EQ(usage["totals"]["errors"], 1);
  EXPECT_EQ(usage["totals"]["input_tokens"], 15);
  EXPECT_EQ(usage["totals"]["output_tokens"], 7);
  EXPECT_EQ(registry_->open_reservations(), 0u);

  // Stored: a restart keeps it, and a later hour is a row of its own.
  Restart();
  const std::string key2 = key;
  clock_.Advance(1h);
  auto c = Admit(key2, "chat");
  ASSERT_TRUE(c.admitted);
  registry_->Settle(api::Settle{c.reservation, "chat", 1, 1, false});
  usage = Usage();
  ASSERT_EQ(usage["rows"].size(), 2u) << usage.dump();
  EXPECT_EQ(usage["rows"][1]["hour_unix_s"].get<int64_t>() - usage["rows"][0]["hour_unix_s"].get<int64_t>(), 3600);
  EXPECT_EQ(usage["totals"]["requests"], 3);
  const int64_t now_ms = clock_.UnixMs();
  EXPECT_EQ(Usage({{"since_unix_ms", now_ms}})["totals"]["requests"], 1);
  EXPECT_EQ(Usage({{"model", "other"}})["rows"].size(), 0u);
}

TEST_F(ApiRegistryTest, AnOwnersReservationsAreCancelledWhenItGoesAndFreeTheConcurrencySlot) {
  Tenant("acme");
  const std::string key = Key({{"tenant", "acme"}, {"limits", {{"max_concurrent", 1}}}})["key"];
  auto first = Admit(key, "chat", /*owner=*/1);
  ASSERT_TRUE(first.admitted);
  auto second = Admit(key, "chat", /*owner=*/2);
  EXPECT_EQ(second.http_status, 429u);
  EXPECT_TRUE(registry_->HasReservations(1));
  EXPECT_FALSE(registry_->HasReservations(2));
  EXPECT_EQ(registry_->OwnerGone(1), 1u);
  EXPECT_EQ(registry_->OwnerGone(1), 0u);
  auto again = Admit(key, "chat", 2);
  EXPECT_TRUE(again.admitted) << again.message;
  registry_->Settle(api::Settle{first.reservation, "chat", 5, 5, false});  // late: ignored
  Json usage = Usage();
  EXPECT_EQ(usage["totals"]["requests"], 1);
  EXPECT_EQ(usage["totals"]["errors"], 1) << "a cancelled request counts as an error";
  EXPECT_EQ(usage["totals"]["input_tokens"], 0);
}

// A gateway's request admitted by a head that is then killed ends after the restart, and its
// Settle reaches the new head: it must match nothing there (reservation ids that started at 1
// again settled another key's request with its counts, and that request's own Settle was lost).
TEST_F(ApiRegistryTest, ASettleFromBeforeARestartMatchesNoReservationOfTheRestartedHead) {
  Tenant("acme");
  Tenant("beta");
  const std::string a = Key({{"tenant", "acme"}})["key"];
  const std::string b = Key({{"tenant", "beta"}})["key"];
  auto before = Admit(a);  // in flight at the kill
  ASSERT_TRUE(before.admitted);
  Restart();
  auto after = Admit(b);
  ASSERT_TRUE(after.admitted);
  EXPECT_NE(after.reservation, before.reservation) << "a restarted head numbers reservations as the last run did";
  registry_->Settle(api::Settle{before.reservation, "chat", 50, 50, false});  // the old request ends: ignored
  registry_->Settle(api::Settle{after.reservation, "chat", 3, 4, false});
  const Json usage = Usage();
  ASSERT_EQ(usage["rows"].size(), 1u) << usage.dump();
  EXPECT_EQ(usage["rows"][0]["key_id"], after.key_id);
  EXPECT_EQ(usage["totals"]["requests"], 1);
  EXPECT_EQ(usage["totals"]["input_tokens"], 3) << "another run's Settle was metered under this run's reservation";
  EXPECT_EQ(usage["totals"]["output_tokens"], 4);
  EXPECT_EQ(registry_->open_reservations(), 0u);
}

TEST_F(ApiRegistryTest, AReservationNeverSettledIsCancelledAfterItsTtl) {
  ApiRegistry::Options options;
  options.reservation_ttl = 2min;
  Open(options);
  Tenant("acme");
  const std::string key = Key({{"tenant", "acme"}, {"limits", {{"max_concurrent", 1}}}})["key"];
  auto lost = Admit(key);  // its Settle never comes
  ASSERT_TRUE(lost.admitted);
  EXPECT_EQ(Admit(key).http_status, 429u);
  clock_.Advance(2min - 1ms);
  EXPECT_EQ(registry_->ExpireReservations(), 0u);
  clock_.Advance(1ms);
  EXPECT_EQ(registry_->ExpireReservations(), 1u);
  EXPECT_TRUE(Admit(key).admitted);
  EXPECT_EQ(Usage()["totals"]["errors"], 1);
}

TEST_F(ApiRegistryTest, CommandsByKeyFollowTheirRoleAndTenant) {
  Tenant("acme");
  Tenant("other");
  const std::string admin = Key({{"tenant", "acme"}, {"role", "admin"}})["key"];
  const std::string user = Key({{"tenant", "acme"}})["key"];
  const std::string system = Key({{"tenant", "system"}, {"role", "admin"}})["key"];
  const std::string user_id = user.substr(3, api::kKeyIdChars);

  EXPECT_TRUE(ByKey(admin, "key.create", "", Json{{"tenant", "acme"}}).ok());
  auto elsewhere = ByKey(admin, "key.create", "", Json{{"tenant", "other"}});
  EXPECT_EQ(elsewhere.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(elsewhere.status().message().find("belongs to tenant acme"), std::string::npos) << elsewhere.status();
  EXPECT_EQ(ByKey(admin, "tenant.create", "new", nullptr).status().code(), StatusCode::kPermissionDenied);
  auto own = ByKey(admin, "key.list", "", nullptr);
  ASSERT_TRUE(own.ok()) << own.status();
  for (const auto& k : Json::parse(*own)) EXPECT_EQ(k["tenant"], "acme");

  auto by_user = ByKey(user, "key.list", "", nullptr);
  EXPECT_EQ(by_user.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(by_user.status().message().find("role admin"), std::string::npos) << by_user.status();
  EXPECT_TRUE(ByKey(user, "usage", "", nullptr).ok()) << "a user reads its own usage";
  EXPECT_EQ(ByKey(user, "usage", "", Json{{"key_id", "AAAAAAAAAAAA"}}).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(ByKey("tk-AAAAAAAAAAAA-" + std::string(43, 'b'), "key.list", "", nullptr).status().code(),
            StatusCode::kPermissionDenied);

  EXPECT_TRUE(ByKey(system, "tenant.create", "new", nullptr).ok());
  EXPECT_TRUE(ByKey(system, "key.revoke", user_id, nullptr).ok());
  EXPECT_EQ(ByKey(user, "usage", "", nullptr).status().code(), StatusCode::kPermissionDenied) << "revoked";
}

TEST_F(ApiRegistryTest, BadCommandsSayWhatIsWrong) {
  Tenant("acme");
  auto expect = [&](const StatusOr<std::string>& r, StatusCode code, const std::string& text) {
    ASSERT_FALSE(r.ok()) << *r;
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status();
  };
  expect(Cli("key.create", "", Json{{"tenant", "acme"}, {"colour", "red"}}), StatusCode::kInvalidArgument, "'colour'");
  expect(Cli("key.create", "", Json{{"tenant", "acme"}, {"role", "root"}}), StatusCode::kInvalidArgument, "root");
  expect(Cli("key.create", "", Json{{"tenant", "acme"}, {"expires_in", "soon"}}), StatusCode::kInvalidArgument,
         "expires_in");
  expect(Cli("key.create", "", Json{{"tenant", "acme"}, {"limits", {{"max_concurrent", -1}}}}),
         StatusCode::kInvalidArgument, "max_concurrent");
  expect(Cli("key.create", "", Json{{"tenant", "nobody"}}), StatusCode::kNotFound, "troupe tenant create nobody");
  expect(Cli("key.create", "", Json::object()), StatusCode::kInvalidArgument, "--tenant");
  expect(Cli("key.revoke", "AAAAAAAAAAAA", nullptr), StatusCode::kNotFound, "troupe key list");
  expect(Cli("tenant.create", "acme", nullptr), StatusCode::kAlreadyExists, "acme");
  expect(Cli("tenant.create", "system", nullptr), StatusCode::kAlreadyExists, "system");
  expect(Cli("tenant.create", "Not_A_Label", nullptr), StatusCode::kInvalidArgument, "Not_A_Label");
  expect(registry_->Command(api::ApiCommand{"key.create", "", "{not json", "", ""}), StatusCode::kInvalidArgument,
         "not a JSON object");
  expect(Cli("key.rotate", "", nullptr), StatusCode::kInvalidArgument, "key.create");
}

TEST_F(ApiRegistryTest, EveryChangeAndEveryRefusalReachesTheAuditHookWithoutTheKey) {
  Tenant("acme");
  Json made = Key({{"tenant", "acme"}});
  const std::string key = made["key"];
  const std::string id = made["record"]["id"];
  ASSERT_TRUE(Cli("key.revoke", id, nullptr).ok());
  (void)Cli("key.revoke", "AAAAAAAAAAAA", nullptr);
  (void)ByKey(key, "key.list", "", nullptr);
  (void)Cli("key.list", "", nullptr);  // a read: not reported
  ASSERT_EQ(audit_.size(), 5u);
  EXPECT_EQ(audit_[0].action, "tenant.create");
  EXPECT_EQ(audit_[0].target, "acme");
  EXPECT_EQ(audit_[1].action, "key.create");
  EXPECT_EQ(audit_[1].who, "cli@test");
  EXPECT_EQ(audit_[1].target, id);
  EXPECT_EQ(audit_[1].result, "ok");
  EXPECT_EQ(audit_[2].action, "key.revoke");
  EXPECT_EQ(audit_[3].result.rfind("not_found", 0), 0u) << audit_[3].result;
  EXPECT_EQ(audit_[4].who, "key:" + id);
  EXPECT_EQ(audit_[4].result.rfind("permission_denied", 0), 0u) << audit_[4].result;
  for (const auto& a : audit_) {
    EXPECT_EQ(a.detail.find(key.substr(16)), std::string::npos);
    EXPECT_EQ(a.detail.find("hash"), std::string::npos);
  }
}

using ::troupe::testing::MetricSample;

TEST_F(ApiRegistryTest, MetricsCountTokensRequestsAndRefusalsAsFlushed) {
  Tenant("acme", {{"requests_per_minute", 1}});
  const std::string key = Key({{"tenant", "acme"}})["key"];
  const std::string id = key.substr(3, api::kKeyIdChars);
  auto admitted = Admit(key, "chat");
  ASSERT_TRUE(admitted.admitted);
  EXPECT_EQ(Admit(key, "chat").http_status, 429u);
  EXPECT_EQ(Admit("tk-bad").http_status, 401u);
  auto source = registry_->MetricsSource();
  std::vector<prometheus::MetricFamily> out;
  source(out);
  EXPECT_EQ(MetricSample(out, "troupe_api_reservations_open", {}), 1);
  EXPECT_EQ(MetricSample(out, "troupe_api_rate_limited_total", {{"level", "tenant"}, {"kind", "requests"}}), 1);
  EXPECT_EQ(MetricSample(out, "troupe_api_refused_total", {{"reason", "malformed_key"}}), 1);
  registry_->Settle(api::Settle{admitted.reservation, "chat", 30, 12, false});
  ASSERT_TRUE(registry_->FlushUsage().ok());
  out.clear();
  source(out);
  const std::map<std::string, std::string> series = {{"key_id", id}, {"tenant", "acme"}, {"model", "chat"}};
  auto with = [&](const char* kind) {
    auto labels = series;
    labels["kind"] = kind;
    return labels;
  };
  EXPECT_EQ(MetricSample(out, "troupe_api_requests_total", series), 1);
  EXPECT_EQ(MetricSample(out, "troupe_api_errors_total", series), 0);
  EXPECT_EQ(MetricSample(out, "troupe_api_tokens_total", with("input")), 30);
  EXPECT_EQ(MetricSample(out, "troupe_api_tokens_total", with("output")), 12);
  EXPECT_EQ(MetricSample(out, "troupe_api_reservations_open", {}), 0);
}

}  // namespace
}  // namespace troupe::cluster

// The api protocol's codecs (actors/api/messages.h): every field comes back, and bytes that are
// not a message are refused with InvalidArgument.

namespace troupe::api {
namespace {

TEST(ApiMessages, EveryMessageRoundTripsAndTruncatedBytesAreRefused) {
  runtime::CodecRegistry codecs;
  ASSERT_TRUE(AddApiCodecs(codecs).ok());
  testing::FakeRefCodec refs;
  auto round_trip = [&](auto message, uint32_t type_id) {
    auto encoded = codecs.Encode(caf::make_message(message), refs);
    EXPECT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_EQ(encoded->type_id, type_id);
    auto decoded = codecs.Decode(encoded->type_id, encoded->payload, refs);
    EXPECT_TRUE(decoded.ok()) << decoded.status();
    auto truncated = codecs.Decode(type_id, encoded->payload.data(), encoded->payload.size() / 2, refs);
    EXPECT_FALSE(truncated.ok());
    return decoded->template get_as<decltype(message)>(0);
  };
  auto admit = round_trip(Admit{"tk-x", "chat", 1, 10, 20}, kAdmit);
  EXPECT_EQ(admit.api_key, "tk-x");
  EXPECT_EQ(admit.deployment, "chat");
  EXPECT_EQ(admit.action, 1u);
  EXPECT_EQ(admit.prompt_tokens, 10u);
  EXPECT_EQ(admit.max_tokens, 20u);
  AdmitReply reply;
  reply.admitted = true;
  reply.http_status = 429;
  reply.error_type = "rate_limit_exceeded";
  reply.message = "key x: tenant request limit";
  reply.retry_after_s = 3;
  reply.reservation = 77;
  reply.key_id = "x";
  reply.tenant = "acme";
  reply.deployments = {"a", "b"};
  reply.headers = {{"x-ratelimit-limit-requests", "60"}, {"x-ratelimit-reset-tokens", "6m0s"}};
  auto back = round_trip(reply, kAdmitReply);
  EXPECT_TRUE(back.admitted);
  EXPECT_EQ(back.http_status, 429u);
  EXPECT_EQ(back.error_type, reply.error_type);
  EXPECT_EQ(back.message, reply.message);
  EXPECT_EQ(back.retry_after_s, 3u);
  EXPECT_EQ(back.reservation, 77u);
  EXPECT_EQ(back.key_id, "x");
  EXPECT_EQ(back.tenant, "acme");
  EXPECT_EQ(back.deployments, reply.deployments);
  EXPECT_EQ(back.headers, reply.headers);
  auto settle = round_trip(Settle{77, "chat", 11, 5, true}, kSettle);
  EXPECT_EQ(settle.reservation, 77u);
  EXPECT_EQ(settle.deployment, "chat");
  EXPECT_EQ(settle.prompt_tokens, 11u);
  EXPECT_EQ(settle.completion_tokens, 5u);
  EXPECT_TRUE(settle.error);
  auto command = round_trip(ApiCommand{"key.create", "n", std::string("{\"a\":1}\0\xff", 9), "tk-k", "cli@c"}, kApiCommand);
  EXPECT_EQ(command.op, "key.create");
  EXPECT_EQ(command.name, "n");
  EXPECT_EQ(command.body.size(), 9u);
  EXPECT_EQ(command.api_key, "tk-k");
  EXPECT_EQ(command.caller, "cli@c");
  EXPECT_EQ(round_trip(ApiCommandReply{"[]"}, kApiCommandReply).json, "[]");
}

}  // namespace
}  // namespace troupe::api
