// LmdbEnv and Table: a real LMDB file in a fresh temporary directory per test.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "storage/lmdb_env.h"
#include "storage/table.h"

namespace troupe::storage {
namespace {

class Lmdb : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "troupe-lmdb-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    Reopen();
  }
  void TearDown() override {
    env_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    env_.reset();
    LmdbOptions options;
    options.path = dir_ + "/db";
    options.map_size = 64u << 20;
    auto env = LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
  }
  template <class K, class V>
  Table<K, V> Open(const std::string& name) {
    auto table = Table<K, V>::Open(*env_, name);
    EXPECT_TRUE(table.ok()) << table.status();
    return *table;
  }

  std::string dir_;
  std::unique_ptr<LmdbEnv> env_;
};

TEST_F(Lmdb, PutGetDeleteWithinAndAcrossTransactions) {
  auto nodes = Open<std::string, std::string>("nodes");
  {
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(txn.ok()) << txn.status();
    ASSERT_TRUE(nodes.Put(*txn, "a", "alive").ok());
    EXPECT_EQ(*nodes.Get(*txn, "a"), "alive");  // a transaction sees its own writes
    ASSERT_TRUE(txn->Commit().ok());
  }
  auto read = env_->BeginRead();
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*nodes.Get(*read, "a"), "alive");
  EXPECT_EQ(nodes.Get(*read, "b").status().code(), StatusCode::kNotFound);
  read->Abort();
  auto txn = env_->BeginWrite();
  ASSERT_TRUE(txn.ok());
  EXPECT_TRUE(nodes.Delete(*txn, "a").ok());
  EXPECT_EQ(nodes.Delete(*txn, "a").code(), StatusCode::kNotFound);
  ASSERT_TRUE(txn->Commit().ok());
}

TEST_F(Lmdb, AnUncommittedTransactionLeavesNoTrace) {
  auto table = Open<uint64_t, std::string>("t");
  {
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(table.Put(*txn, 1, "one").ok());
  }  // destroyed without Commit
  auto read = env_->BeginRead();
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*table.Count(*read), 0u);
}

TEST_F(Lmdb, CommittedDataSurvivesReopening) {
  {
    auto table = Open<uint64_t, uint64_t>("counters");
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(table.Put(*txn, 7, 4242).ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  Reopen();
  auto table = Open<uint64_t, uint64_t>("counters");
  auto read = env_->BeginRead();
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*table.Get(*read, 7), 4242u);
}

TEST_F(Lmdb, IntegerKeysIterateInNumericOrder) {
  auto table = Open<uint64_t, std::string>("ordered");
  auto txn = env_->BeginWrite();
  ASSERT_TRUE(txn.ok());
  for (uint64_t k : {256u, 2u, 1u, 65536u}) ASSERT_TRUE(table.Put(*txn, k, std::to_string(k)).ok());
  std::vector<uint64_t> keys;
  ASSERT_TRUE(table.ForEach(*txn, [&](const uint64_t& k, const std::string& v) {
    EXPECT_EQ(v, std::to_string(k));
    keys.push_back(k);
    return true;
  }).ok());
  EXPECT_EQ(keys, (std::vector<uint64_t>{1, 2, 256, 65536}));
}

TEST_F(Lmdb, AReadTransactionKeepsItsSnapshot) {
  auto table = Open<std::string, std::string>("snap");
  {
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(table.Put(*txn, "k", "old").ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  auto read = env_->BeginRead();
  ASSERT_TRUE(read.ok());
  {
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(table.Put(*txn, "k", "new").ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  EXPECT_EQ(*table.Get(*read, "k"), "old");
}

TEST_F(Lmdb, StoredBytesThatDoNotDecodeAreAnErrorNotACrash) {
  auto raw = Open<std::string, std::string>("mixed");
  {
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(raw.Put(*txn, "12345678", "abc").ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  auto typed = Open<uint64_t, uint64_t>("mixed");
  auto read = env_->BeginRead();
  ASSERT_TRUE(read.ok());
  Status scan = typed.ForEach(*read, [](const uint64_t&, const uint64_t&) { return true; });
  EXPECT_EQ(scan.code(), StatusCode::kInternal);
  EXPECT_NE(scan.message().find("mixed"), std::string::npos) << scan;
}

TEST_F(Lmdb, MisuseAndBadPathsGetClearErrors) {
  auto table = Open<std::string, std::string>("t");
  auto read = env_->BeginRead();
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(table.Put(*read, "k", "v").code(), StatusCode::kFailedPrecondition);
  read->Abort();
  auto txn = env_->BeginWrite();
  EXPECT_EQ(table.Put(*txn, "", "v").code(), StatusCode::kInvalidArgument);
  txn->Abort();

  LmdbOptions options;
  EXPECT_EQ(LmdbEnv::Open(options).status().code(), StatusCode::kInvalidArgument);
  options.path = dir_ + "/no/such/parent";
  auto missing = LmdbEnv::Open(options);
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(options.path), std::string::npos) << missing.status();
}

}  // namespace
}  // namespace troupe::storage
