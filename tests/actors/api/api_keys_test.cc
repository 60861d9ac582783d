// API keys: format, hashing, JSON round-trip, the role matrix and refusals, redaction.
#include "actors/api/api_keys.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace troupe::api {
namespace {

const std::string kPepper = "0123456789abcdef0123456789abcdef";

NewKey MakeKey(const KeySpec& spec, const Clock& clock) {
  StatusOr<NewKey> made = CreateKey(spec, kPepper, clock);
  EXPECT_TRUE(made.ok()) << made.status();
  return *made;
}

TEST(ApiKeys, KeysHaveThePrefixIdAndSecretShape) {
  ManualClock clock;
  NewKey k = MakeKey({"acme", Role::kUser, {}, {}}, clock);
  ASSERT_EQ(k.key.size(), kKeyChars);
  EXPECT_EQ(k.key.substr(0, 3), "tk-");
  StatusOr<std::string> id = KeyIdOf(k.key);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, k.record.id);
  EXPECT_EQ(k.record.tenant, "acme");
  EXPECT_EQ(k.record.created_unix_ms, ManualClock::kStartUnixMs);
  EXPECT_EQ(k.record.expires_unix_ms, 0);
  EXPECT_TRUE(k.record.all_deployments);
  EXPECT_EQ(k.key.find(k.record.hash), std::string::npos);
}

TEST(ApiKeys, KeysAreDistinctAndUseTheWholeAlphabet) {
  ManualClock clock;
  std::set<std::string> keys, ids;
  std::set<char> chars;
  for (int i = 0; i < 200; ++i) {
    NewKey k = MakeKey({"acme", Role::kUser, {}, {}}, clock);
    keys.insert(k.key);
    ids.insert(k.record.id);
    for (char c : k.key.substr(3 + kKeyIdChars + 1)) chars.insert(c);
  }
  EXPECT_EQ(keys.size(), 200u);
  EXPECT_EQ(ids.size(), 200u);
  EXPECT_EQ(chars.size(), 62u) << "8600 secret characters cover all of base62";
}

TEST(ApiKeys, StoredHashMatchesOnlyTheKeyUnderThePepper) {
  ManualClock clock;
  NewKey k = MakeKey({"acme", Role::kUser, {}, {}}, clock);
  EXPECT_EQ(k.record.hash.size(), 64u);
  EXPECT_TRUE(KeyMatches(k.key, k.record, kPepper));
  std::string typo = k.key;
  typo.back() = typo.back() == 'a' ? 'b' : 'a';
  EXPECT_FALSE(KeyMatches(typo, k.record, kPepper));
  EXPECT_FALSE(KeyMatches(k.key, k.record, "another pepper of 32 bytes......"));
  // HMAC-SHA256 of RFC 4231 test case 2.
  EXPECT_EQ(HashKey("what do ya want for nothing?", "Jefe"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(ApiKeys, KeyHasherAgreesWithHashKey) {
  ManualClock clock;
  NewKey k = MakeKey({"acme", Role::kUser, {}, {}}, clock);
  StatusOr<KeyHasher> hasher = KeyHasher::Create(kPepper);
  ASSERT_TRUE(hasher.ok()) << hasher.status();
  EXPECT_EQ(hasher->Hash(k.key), k.record.hash);
  EXPECT_TRUE(hasher->Matches(k.key, k.record));
  KeyHasher copy = *hasher;
  EXPECT_FALSE(copy.Matches(k.key.substr(0, k.key.size() - 1) + "!", k.record));
  EXPECT_EQ(copy.Hash(k.key), k.record.hash) << "a call leaves the keyed context as it was";
  EXPECT_EQ(KeyHasher::Create("short").status().code(), StatusCode::kInvalidArgument);
}

TEST(ApiKeys, CreateRefusesBadTenantShortPepperAndNegativeTtl) {
  ManualClock clock;
  EXPECT_EQ(CreateKey({"Acme_Corp", Role::kUser, {}, {}}, kPepper, clock).status().code(), StatusCode::kInvalidArgument);
  auto short_pepper = CreateKey({"acme", Role::kUser, {}, {}}, "short", clock);
  EXPECT_EQ(short_pepper.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_pepper.status().message().find("32 random bytes"), std::string::npos);
  EXPECT_EQ(CreateKey({"acme", Role::kUser, std::chrono::milliseconds(-1), {}}, kPepper, clock).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ApiKeys, KeyIdOfRefusesOtherShapesWithoutEchoingThem) {
  const std::string id(12, 'a');
  const std::vector<std::string> bad_keys = {"", "sk-abc", "tk-short-secret", "tk-" + id + "_" + std::string(43, 'b'),
                                             "tk-" + id + "-" + std::string(42, 'b') + "!"};
  for (const std::string& bad : bad_keys) {
    StatusOr<std::string> id_of = KeyIdOf(bad);
    ASSERT_FALSE(id_of.ok()) << bad;
    if (!bad.empty()) {
      EXPECT_EQ(id_of.status().message().find(bad), std::string::npos);
    }
  }
}

TEST(ApiKeys, RecordsRoundTripThroughJson) {
  ManualClock clock;
  NewKey k = MakeKey({"acme", Role::kOperator, std::chrono::hours(24), {"chat", "embed"}}, clock);
  k.record.revoked = true;
  k.record.revoked_unix_ms = 1767225700000;
  std::string json = KeyRecordToJson(k.record);
  EXPECT_EQ(json.find(k.key), std::string::npos);
  StatusOr<KeyRecord> back = KeyRecordFromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, k.record);
  EXPECT_EQ(back->expires_unix_ms, ManualClock::kStartUnixMs + 24 * 3600 * 1000);
  EXPECT_FALSE(back->all_deployments);
}

TEST(ApiKeys, BadJsonRecordsNameTheField) {
  ManualClock clock;
  std::string good = KeyRecordToJson(MakeKey({"acme", Role::kUser, {}, {}}, clock).record);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return KeyRecordFromJson(s);
  };
  EXPECT_NE(KeyRecordFromJson("{").status().message().find("not a JSON object"), std::string::npos);
  EXPECT_NE(with("\"role\":\"user\"", "\"role\":\"root\"").status().message().find("\"role\""), std::string::npos);
  EXPECT_NE(with("\"tenant\":\"acme\"", "\"tenant\":7").status().message().find("\"tenant\""), std::string::npos);
  EXPECT_NE(with("\"expires_unix_ms\":0", "\"expires_unix_ms\":-4").status().message().find("negative"),
            std::string::npos);
  EXPECT_NE(with("\"deployments\":[]", "\"deployments\":[1]").status().message().find("\"deployments\""),
            std::string::npos);
  EXPECT_NE(with("\"revoked\":false", "\"revoked\":\"no\"").status().message().find("\"revoked\""), std::string::npos);
}

TEST(ApiKeys, RoleMatrix) {
  struct Row {
    Action action;
    bool user, op, admin;
  };
  const Row rows[] = {
      {Action::kCallModel, true, true, true},          {Action::kListModels, true, true, true},
      {Action::kReadOwnUsage, true, true, true},       {Action::kReadTenantUsage, false, true, true},
      {Action::kManageDeployments, false, true, true}, {Action::kManageJobs, false, true, true},
      {Action::kManageKeys, false, false, true},       {Action::kReadAudit, false, false, true},
      {Action::kManageTenants, false, false, true},
  };
  for (const Row& row : rows) {
    EXPECT_EQ(RoleAllows(Role::kUser, row.action), row.user) << ActionName(row.action);
    EXPECT_EQ(RoleAllows(Role::kOperator, row.action), row.op) << ActionName(row.action);
    EXPECT_EQ(RoleAllows(Role::kAdmin, row.action), row.admin) << ActionName(row.action);
  }
}

class AuthorizeTest : public ::testing::Test {
 protected:
  KeyRecord Record(Role role, std::string tenant = "acme") {
    KeyRecord r;
    r.id = "AAAAAAAAAAAA";
    r.tenant = std::move(tenant);
    r.role = role;
    r.created_unix_ms = ManualClock::kStartUnixMs;
    return r;
  }
  ManualClock clock;
};

TEST_F(AuthorizeTest, AllowsWhatTheRoleMayDoInItsTenant) {
  AuthzDecision d = Authorize(Record(Role::kUser), clock.WallNow(), Action::kCallModel, {"acme", "chat"});
  EXPECT_TRUE(d.allowed) << d.message;
  EXPECT_EQ(d.http_status, 200);
}

TEST_F(AuthorizeTest, RevokedAndExpiredKeysAre401) {
  KeyRecord r = Record(Role::kAdmin);
  r.expires_unix_ms = ManualClock::kStartUnixMs + 1000;
  EXPECT_TRUE(Authorize(r, clock.WallNow(), Action::kCallModel, {"acme", "chat"}).allowed);
  clock.Advance(std::chrono::seconds(1));
  AuthzDecision expired = Authorize(r, clock.WallNow(), Action::kCallModel, {"acme", "chat"});
  EXPECT_EQ(expired.denial, Denial::kExpired);
  EXPECT_EQ(expired.http_status, 401);
  r.revoked = true;
  AuthzDecision revoked = Authorize(r, clock.WallNow(), Action::kCallModel, {"acme", "chat"});
  EXPECT_EQ(revoked.denial, Denial::kRevoked) << "revocation is reported before expiry";
  EXPECT_NE(revoked.message.find("key AAAAAAAAAAAA"), std::string::npos) << revoked.message;
}

TEST_F(AuthorizeTest, RoleLacksActionSaysWhatIsNeeded) {
  AuthzDecision d = Authorize(Record(Role::kUser), clock.WallNow(), Action::kManageDeployments, {"acme", ""});
  EXPECT_EQ(d.denial, Denial::kRoleLacksAction);
  EXPECT_EQ(d.http_status, 403);
  EXPECT_NE(d.message.find("role user may not manage_deployments: it needs role operator or admin"),
            std::string::npos)
      << d.message;
  AuthzDecision keys = Authorize(Record(Role::kOperator), clock.WallNow(), Action::kManageKeys, {"acme", ""});
  EXPECT_EQ(keys.denial, Denial::kRoleLacksAction);
  EXPECT_NE(keys.message.find("needs role admin"), std::string::npos) << keys.message;
}

TEST_F(AuthorizeTest, OnlySystemAdminsManageTenantsAndCrossTenants) {
  AuthzDecision tenant_admin = Authorize(Record(Role::kAdmin), clock.WallNow(), Action::kManageTenants, {"", ""});
  EXPECT_EQ(tenant_admin.denial, Denial::kRoleLacksAction);
  EXPECT_NE(tenant_admin.message.find("an admin key of the system tenant"), std::string::npos);
  EXPECT_TRUE(Authorize(Record(Role::kAdmin, "system"), clock.WallNow(), Action::kManageTenants, {"", ""}).allowed);

  AuthzDecision other = Authorize(Record(Role::kAdmin), clock.WallNow(), Action::kManageKeys, {"globex", ""});
  EXPECT_EQ(other.denial, Denial::kWrongTenant);
  EXPECT_NE(other.message.find("belongs to tenant acme, not globex"), std::string::npos) << other.message;
  EXPECT_TRUE(Authorize(Record(Role::kAdmin, "system"), clock.WallNow(), Action::kManageKeys, {"globex", ""}).allowed);
  EXPECT_EQ(Authorize(Record(Role::kOperator, "system"), clock.WallNow(), Action::kManageJobs, {"globex", ""}).denial,
            Denial::kWrongTenant)
      << "only the system tenant's admins cross tenants";
}

TEST_F(AuthorizeTest, DeploymentListLimitsModelCalls) {
  KeyRecord r = Record(Role::kUser);
  r.all_deployments = false;
  r.deployments = {"chat"};
  EXPECT_TRUE(Authorize(r, clock.WallNow(), Action::kCallModel, {"acme", "chat"}).allowed);
  AuthzDecision d = Authorize(r, clock.WallNow(), Action::kCallModel, {"acme", "embed"});
  EXPECT_EQ(d.denial, Denial::kDeploymentNotAllowed);
  EXPECT_NE(d.message.find("may not call deployment embed (it may call: chat)"), std::string::npos) << d.message;
  EXPECT_TRUE(Authorize(r, clock.WallNow(), Action::kListModels, {"acme", ""}).allowed);
  EXPECT_FALSE(DeploymentAllowed(r, "embed"));
}

TEST(RedactKeys, MasksSecretsAndKeepsTheKeyId) {
  ManualClock clock;
  NewKey k = MakeKey({"acme", Role::kUser, {}, {}}, clock);
  std::string line = "request from " + k.key + " failed";
  std::string redacted = RedactKeys(line);
  EXPECT_EQ(redacted, "request from tk-" + k.record.id + "-[redacted] failed");
  EXPECT_EQ(RedactKeys("{\"key\":\"" + k.key + "\"}"), "{\"key\":\"tk-" + k.record.id + "-[redacted]\"}");
  // A truncated key still loses its secret part.
  EXPECT_EQ(RedactKeys(k.key.substr(0, 30)), "tk-" + k.record.id + "-[redacted]");
  EXPECT_EQ(RedactKeys("Authorization: Bearer sk-abc123XYZ next"), "Authorization: Bearer [redacted] next");
  EXPECT_EQ(RedactKeys("authorization: bearer " + k.key), "authorization: bearer [redacted]");
  EXPECT_EQ(RedactKeys("tk-aaaaaaaaaaaaaaaaaaaaaaaa"), "tk-[redacted]");
  EXPECT_EQ(RedactKeys("network-check tk-ok deployments"), "network-check tk-ok deployments") << "nothing key-like";
}

}  // namespace
}  // namespace troupe::api
