// AuditLog: the hash chain on a real LMDB file, its check finding changed, removed and reordered
// records by position, and pruning that keeps it verifiable.
#include "cluster/audit_log.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "storage/table.h"

namespace troupe::cluster {
namespace {

using namespace std::chrono_literals;
using SeqKey = storage::KeyCodec<uint64_t>;

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-audit-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    storage::LmdbOptions options;
    options.path = dir_;
    options.map_size = uint64_t{16} << 20;
    auto env = storage::LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    env_ = std::move(*env);
  }
  void TearDown() override {
    log_.reset();
    env_.reset();
    std::filesystem::remove_all(dir_);
  }

  void OpenLog(std::chrono::milliseconds retention = kDefaultAuditRetention) {
    auto log = AuditLog::Open(env_.get(), &clock_, retention);
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    log_ = std::move(*log);
  }
  void AppendN(int n) {
    for (int i = 0; i < n; ++i) {
      AuditRecord r;
      r.who = "cli@host";
      r.action = "deployment.scale";
      r.target = "chat-" + std::to_string(i);
      r.detail = R"({"replicas":2})";
      r.result = "ok";
      auto stored = log_->Append(r);
      ASSERT_TRUE(stored.ok()) << stored.status().ToString();
    }
  }
  // The stored bytes of record `seq`, for a test to rewrite as an intruder would.
  std::string Raw(uint64_t seq) {
    auto txn = env_->BeginRead();
    auto table = env_->OpenTable("audit");
    auto bytes = txn->Get(*table, SeqKey::Encode(seq));
    EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
    return bytes.ok() ? *bytes : "";
  }
  void Write(uint64_t seq, const std::optional<std::string>& bytes) {
    auto table = env_->OpenTable("audit");
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(txn.ok());
    if (bytes) {
      ASSERT_TRUE(txn->Put(*table, SeqKey::Encode(seq), *bytes).ok());
    } else {
      ASSERT_TRUE(txn->Delete(*table, SeqKey::Encode(seq)).ok());
    }
    ASSERT_TRUE(txn->Commit().ok());
  }
  AuditVerification Verify() {
    auto v = log_->Verify();
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    return v.ok() ? *v : AuditVerification{};
  }
  // Verify finds the chain broken at `position`; returns the problem it names.
  std::string ExpectBrokenAt(uint64_t position) {
    AuditVerification v = Verify();
    EXPECT_FALSE(v.ok);
    EXPECT_EQ(v.position, position) << v.problem;
    return v.problem;
  }

  std::string dir_;
  ManualClock clock_;
  std::unique_ptr<storage::LmdbEnv> env_;
  std::unique_ptr<AuditLog> log_;
};

TEST_F(AuditLogTest, AppendsLinkedRecordsThatVerifyAndSurviveReopening) {
  OpenLog();
  AppendN(3);
  auto records = log_->List();
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 3u);
  EXPECT_EQ((*records)[0].seq, 1u);
  EXPECT_EQ((*records)[0].prev_hash, kAuditGenesisHash);
  EXPECT_EQ((*records)[0].at_unix_ms, ManualClock::kStartUnixMs);
  EXPECT_EQ((*records)[1].prev_hash, (*records)[0].hash);
  EXPECT_EQ((*records)[2].prev_hash, (*records)[1].hash);
  EXPECT_EQ((*records)[2].hash, AuditHash((*records)[2]));
  AuditVerification v = Verify();
  EXPECT_TRUE(v.ok) << v.problem;
  EXPECT_EQ(v.records, 3u);
  EXPECT_EQ(v.tip.seq, 3u);

  // A reopened log (a restarted head) goes on from the stored tip.
  log_.reset();
  OpenLog();
  AppendN(1);
  records = log_->List();
  ASSERT_EQ(records->size(), 4u);
  EXPECT_EQ(records->back().seq, 4u);
  EXPECT_EQ(records->back().prev_hash, (*records)[2].hash);
  EXPECT_TRUE(Verify().ok);
}

TEST_F(AuditLogTest, ListsFromAGivenTime) {
  OpenLog();
  AppendN(2);
  clock_.Advance(10s);
  AppendN(1);
  auto records = log_->List(ManualClock::kStartUnixMs + 5000);
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ(records->front().seq, 3u);
}

TEST_F(AuditLogTest, AChangedRecordIsFoundByItsPosition) {
  OpenLog();
  AppendN(5);
  std::string bytes = Raw(3);
  const auto at = bytes.find("\"result\":\"ok\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 13, "\"result\":\"no\"");
  Write(3, bytes);
  EXPECT_EQ(ExpectBrokenAt(3), "record 3 changed: its contents do not match its hash");
}

TEST_F(AuditLogTest, AChangedRecordWithItsHashRecomputedBreaksTheLinkOfTheNext) {
  OpenLog();
  AppendN(4);
  auto record = DecodeAuditRecord(Raw(2));
  ASSERT_TRUE(record.ok());
  record->who = "someone-else";
  record->hash = AuditHash(*record);
  Write(2, EncodeAuditRecord(*record));
  const std::string problem = ExpectBrokenAt(3);
  EXPECT_NE(problem.find("does not link to record 2"), std::string::npos) << problem;
}

TEST_F(AuditLogTest, ARemovedRecordIsFoundInTheMiddleAndAtTheEnd) {
  OpenLog();
  AppendN(5);
  Write(5, std::nullopt);
  EXPECT_EQ(ExpectBrokenAt(5), "record 5 removed from the end (the log appended up to record 5)");
  Write(2, std::nullopt);
  EXPECT_EQ(ExpectBrokenAt(2), "record 2 removed (the next stored record is 3)");
}

TEST_F(AuditLogTest, SwappedRecordsAreFoundOutOfPlace) {
  OpenLog();
  AppendN(4);
  const std::string two = Raw(2), three = Raw(3);
  Write(2, three);
  Write(3, two);
  EXPECT_EQ(ExpectBrokenAt(2), "record 2 is out of place: it holds record 3 (records reordered or copied)");
}

TEST_F(AuditLogTest, BytesThatAreNoRecordAreAChangeAtTheirPosition) {
  OpenLog();
  AppendN(3);
  Write(2, std::string("garbage"));
  const std::string problem = ExpectBrokenAt(2);
  EXPECT_EQ(problem.rfind("record 2 changed: it is no longer a record", 0), 0u) << problem;
}

TEST_F(AuditLogTest, PruningRemovesOldRecordsFromTheFrontAndKeepsTheRestVerifiable) {
  OpenLog(24h);
  AppendN(3);               // at day 0
  clock_.Advance(20h);
  AppendN(2);               // at 20 h
  clock_.Advance(5h);       // the first three are 25 h old, the others 5 h
  auto pruned = log_->Prune();
  ASSERT_TRUE(pruned.ok()) << pruned.status().ToString();
  EXPECT_EQ(*pruned, 3u);
  auto records = log_->List();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ(records->front().seq, 4u);
  AuditVerification v = Verify();
  EXPECT_TRUE(v.ok) << v.problem;
  EXPECT_EQ(v.anchor.seq, 3u);
  EXPECT_EQ(v.records, 2u);
  EXPECT_EQ(*log_->Prune(), 0u);

  // The anchor is stored: a reopened log still verifies, appends go on from seq 6, and a
  // record removed after the anchor is still found.
  log_.reset();
  clock_.Advance(1h);
  OpenLog(24h);
  AppendN(1);
  EXPECT_EQ(log_->tip().seq, 6u);
  EXPECT_TRUE(Verify().ok);
  Write(4, std::nullopt);
  ExpectBrokenAt(4);
}

TEST_F(AuditLogTest, OpeningPrunesAndEverythingMayGo) {
  OpenLog(1h);
  AppendN(2);
  log_.reset();
  clock_.Advance(2h);
  OpenLog(1h);
  EXPECT_TRUE(log_->List()->empty());
  AuditVerification v = Verify();
  EXPECT_TRUE(v.ok) << v.problem;
  EXPECT_EQ(v.anchor.seq, 2u);
  AppendN(1);
  EXPECT_EQ(log_->List()->front().seq, 3u);
  EXPECT_TRUE(Verify().ok);
}

TEST_F(AuditLogTest, ConcurrentAppendsMakeOneChainThatAConcurrentReaderSeesWhole) {
  OpenLog();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([this] { AppendN(25); });
  // A reader meanwhile (no lock: one snapshot per check) always sees a whole chain.
  std::atomic<bool> done{false};
  std::thread reader([&] {
    while (!done.load()) {
      auto v = log_->Verify();
      ASSERT_TRUE(v.ok()) << v.status().ToString();
      EXPECT_TRUE(v->ok) << v->problem;
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  reader.join();
  AuditVerification v = Verify();
  EXPECT_TRUE(v.ok) << v.problem;
  EXPECT_EQ(v.records, 100u);
}

TEST(AuditFormat, FieldsCannotBleedIntoEachOther) {
  AuditRecord a, b;
  a.who = "ab";
  a.action = "c";
  b.who = "a";
  b.action = "bc";
  EXPECT_NE(AuditCanonicalBytes(a), AuditCanonicalBytes(b));
  EXPECT_NE(AuditHash(a), AuditHash(b));
  a.prev_hash = kAuditGenesisHash;
  EXPECT_EQ(AuditHash(a).size(), 64u);
  auto back = DecodeAuditRecord(EncodeAuditRecord(a));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(AuditCanonicalBytes(*back), AuditCanonicalBytes(a));
}

TEST(AuditFormat, AReplyCarriesTheNewestRecordsAndSaysHowManyItLeftOut) {
  std::vector<AuditRecord> records(kMaxAuditReplyRecords + 1);
  for (size_t i = 0; i < records.size(); ++i) records[i].seq = i + 1;
  auto j = nlohmann::json::parse(AuditReplyJson(records, nullptr));
  EXPECT_EQ(j["omitted"], 1);
  ASSERT_EQ(j["records"].size(), kMaxAuditReplyRecords);
  EXPECT_EQ(j["records"][0]["seq"], 2);
  EXPECT_TRUE(j["verification"].is_null());
  records.resize(3);
  AuditVerification v;
  v.ok = false;
  v.position = 2;
  v.problem = "record 2 changed";
  j = nlohmann::json::parse(AuditReplyJson(records, &v));
  EXPECT_EQ(j["omitted"], 0);
  EXPECT_EQ(j["verification"]["position"], 2);
  EXPECT_EQ(j["verification"]["problem"], "record 2 changed");
}

TEST(AuditFormat, OnlyChangingCommandsAreRecordedAndSpecsOnlyByDigest) {
  EXPECT_EQ(AuditedAction("deployment", "scale"), "deployment.scale");
  EXPECT_EQ(AuditedAction("job", "submit"), "job.submit");
  EXPECT_EQ(AuditedAction("deployment", "list"), std::nullopt);
  EXPECT_EQ(AuditedAction("job", "show"), std::nullopt);
  EXPECT_EQ(AuditDetail("scale", "3"), R"({"replicas":3})");
  const std::string detail = AuditDetail("deploy", R"({"env":{"HF_TOKEN":"secret"}})");
  EXPECT_EQ(detail.find("secret"), std::string::npos);
  EXPECT_EQ(detail.rfind(R"({"spec_sha256":")", 0), 0u);
  EXPECT_EQ(AuditDetail("delete", ""), "");
}

}  // namespace
}  // namespace troupe::cluster
