// kill -9 of a process in the middle of LMDB writes leaves a consistent database: every
// reopened environment holds exactly the rows its counter says, with nothing torn. And kill -9
// of a process committing checkpoints leaves the newest committed one loadable.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "common/child_process.h"
#include "storage/checkpoint_store.h"
#include "storage/lmdb_env.h"
#include "storage/table.h"

namespace troupe::storage {
namespace {

using namespace std::chrono_literals;

TEST(StorageCrash, KillNineMidWriteLeavesAConsistentDatabase) {
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-crash-XXXXXX").string();
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  const std::string dir = templ + "/db";
  uint64_t last_count = 0;
  for (int round = 0; round < 5; ++round) {
    auto writer = ChildProcess::Spawn({TROUPE_STORAGE_WRITER_BIN, dir});
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->ReadLineWithPrefix("READY", 20s).ok());
    // Let it commit a varying amount, then kill it wherever it is.
    uint64_t reported = 0;
    for (int i = 0; i <= round; ++i) {
      auto line = (*writer)->ReadLineWithPrefix("COMMITTED ", 30s);
      ASSERT_TRUE(line.ok()) << "writer stopped committing: " << line.status();
      reported = std::stoull(*line);
    }
    (*writer)->Signal(SIGKILL);
    ASSERT_TRUE((*writer)->Wait(10s).ok());

    LmdbOptions options;
    options.path = dir;
    options.map_size = 256u << 20;
    auto env = LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << "reopening after kill -9: " << env.status();
    auto meta = Table<std::string, uint64_t>::Open(**env, "meta");
    auto rows = Table<uint64_t, std::string>::Open(**env, "rows");
    ASSERT_TRUE(meta.ok() && rows.ok());
    auto txn = (*env)->BeginRead();
    ASSERT_TRUE(txn.ok());
    auto count = meta->Get(*txn, "count");
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_GE(*count, reported) << "a commit the writer had reported was lost";
    EXPECT_GT(*count, last_count) << "round " << round << " committed nothing";
    EXPECT_EQ(*rows->Count(*txn), *count) << "rows and counter disagree";
    uint64_t expected = 1;
    Status scan = rows->ForEach(*txn, [&](const uint64_t& k, const std::string& v) {
      EXPECT_EQ(k, expected) << "a row is missing";
      EXPECT_EQ(v, std::string(2000 + k % 3000, static_cast<char>('a' + k % 26))) << "row " << k << " is torn";
      ++expected;
      return !HasFailure();
    });
    EXPECT_TRUE(scan.ok()) << scan;
    last_count = *count;
    std::printf("round %d: killed after >= %llu commits; %llu rows, consistent\n", round,
                static_cast<unsigned long long>(reported), static_cast<unsigned long long>(*count));
  }
  std::filesystem::remove_all(templ);
}

TEST(StorageCrash, KillNineMidCheckpointCommitLeavesTheNewestCheckpointLoadable) {
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-ckpt-crash-XXXXXX").string();
  ASSERT_NE(mkdtemp(templ.data()), nullptr);
  const std::shared_ptr<void> cleanup(nullptr, [&](void*) { std::filesystem::remove_all(templ); });
  std::mt19937 random(std::random_device{}());
  uint64_t last_step = 0;
  for (uint64_t attempt = 0; attempt < 6; ++attempt) {
    auto writer = ChildProcess::Spawn({TROUPE_STORAGE_WRITER_BIN, "--checkpoints", templ, std::to_string(attempt)});
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->ReadLineWithPrefix("READY", 20s).ok());
    uint64_t reported = 0;
    for (uint64_t i = 0; i <= attempt % 3; ++i) {
      auto line = (*writer)->ReadLineWithPrefix("COMMITTED ", 30s);
      ASSERT_TRUE(line.ok()) << "the writer stopped committing: " << line.status();
      reported = std::stoull(*line);
    }
    // Somewhere in the next save or commit: writing shards, checksumming, renaming, the record.
    std::this_thread::sleep_for(std::chrono::milliseconds(random() % 40));
    (*writer)->Signal(SIGKILL);
    ASSERT_TRUE((*writer)->Wait(10s).ok());

    LmdbOptions options;
    options.path = templ + "/db";
    options.map_size = 64u << 20;
    auto env = LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << "reopening after kill -9: " << env.status();
    auto store = CheckpointStore::Open(env->get());
    ASSERT_TRUE(store.ok()) << store.status();
    auto newest = store->Newest("crash");
    std::vector<std::string> fallbacks;
    auto valid = store->NewestValid("crash", &fallbacks);
    ASSERT_TRUE(newest.ok() && valid.ok()) << newest.status() << " " << valid.status();
    ASSERT_TRUE(newest->has_value() && valid->has_value()) << "no checkpoint after attempt " << attempt;
    EXPECT_TRUE(fallbacks.empty()) << fallbacks.front();
    EXPECT_EQ((*valid)->step, (*newest)->step) << "the newest committed checkpoint is not loadable";
    EXPECT_GE((*valid)->step, reported) << "a commit the writer had reported was lost";
    EXPECT_GT((*valid)->step, last_step) << "attempt " << attempt << " committed nothing";
    const uint64_t step = (*valid)->step;
    for (uint32_t rank = 0; rank < 2; ++rank) {
      std::ifstream in((*valid)->dir + "/rank-" + std::to_string(rank) + "/model.bin", std::ios::binary);
      EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}),
                std::string((256u << 10) + 1000 * (step % 7), static_cast<char>('a' + (step + rank) % 26)))
          << "step " << step << " rank " << rank << " holds what another step wrote";
    }
    last_step = step;
    std::printf("attempt %llu: killed after >= step %llu; newest step %llu loads\n",
                static_cast<unsigned long long>(attempt), static_cast<unsigned long long>(reported),
                static_cast<unsigned long long>(step));
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace troupe::storage
