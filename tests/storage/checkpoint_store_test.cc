// CheckpointStore: real shard files in a fresh temporary directory and a real LMDB env per test.
#include "storage/checkpoint_store.h"

#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace troupe::storage {
namespace {

namespace fs = std::filesystem;

// SHA-256 of "hello" (sha256sum).
constexpr char kHelloSha256[] = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& contents) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << contents;
}

class CheckpointStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (fs::temp_directory_path() / "troupe-ckpt-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    root_ = dir_ + "/checkpoints/job1";
    LmdbOptions options;
    options.path = dir_ + "/db";
    options.map_size = 64u << 20;
    options.no_sync = true;
    auto env = LmdbEnv::Open(options);
    ASSERT_TRUE(env.ok()) << env.status();
    env_ = std::move(*env);
    auto store = CheckpointStore::Open(env_.get(), &clock_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<CheckpointStore>(std::move(*store));
  }
  void TearDown() override {
    store_.reset();
    env_.reset();
    fs::remove_all(dir_);
  }

  std::string StagedStep(uint64_t attempt, uint64_t step) {
    return CheckpointStore::StagingDir(root_, attempt) + "/step-" + std::to_string(step);
  }
  // What a training script of rank `rank` does: its files, then (with `done`) its marker.
  void Save(uint64_t attempt, uint64_t step, uint32_t rank, const std::map<std::string, std::string>& files,
            bool done = true) {
    const std::string shard = StagedStep(attempt, step) + "/rank-" + std::to_string(rank);
    fs::create_directories(shard);
    for (const auto& [path, contents] : files) WriteAll(shard + "/" + path, contents);
    if (done) WriteAll(shard + ".done", "");
  }
  // Both ranks of a two-rank job save `step` and it is committed.
  CheckpointRecord SaveAndCommit(uint64_t step, uint64_t attempt = 0) {
    Save(attempt, step, 0, {{"model.bin", "weights of step " + std::to_string(step)}});
    Save(attempt, step, 1, {{"model.bin", "more weights " + std::to_string(step)}});
    auto record = store_->Commit("job1", root_, attempt, step, 2);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? *record : CheckpointRecord{};
  }
  std::vector<uint64_t> ListedSteps() {
    auto records = store_->List("job1");
    EXPECT_TRUE(records.ok()) << records.status();
    std::vector<uint64_t> steps;
    if (records.ok()) {
      for (const auto& r : *records) steps.push_back(r.step);
    }
    return steps;
  }
  // NewestValid's step (nullopt when none is valid), appending its sentences to `fallbacks`.
  std::optional<uint64_t> NewestValidStep(std::vector<std::string>* fallbacks) {
    auto valid = store_->NewestValid("job1", fallbacks);
    EXPECT_TRUE(valid.ok()) << valid.status();
    if (!valid.ok() || !*valid) return std::nullopt;
    return (*valid)->step;
  }
  // What a crash between the rename and the LMDB put leaves: step `step`'s record is gone.
  void DropRecord(uint64_t step) {
    auto table = Table<std::string, std::string>::Open(*env_, CheckpointStore::kTableName);
    ASSERT_TRUE(table.ok());
    auto txn = env_->BeginWrite();
    ASSERT_TRUE(txn.ok());
    char key[32];
    std::snprintf(key, sizeof key, "job1/%020llu", static_cast<unsigned long long>(step));
    ASSERT_TRUE(table->Delete(*txn, key).ok()) << key;
    ASSERT_TRUE(txn->Commit().ok());
  }
  std::optional<uint64_t> NewestStep() {
    auto newest = store_->Newest("job1");
    EXPECT_TRUE(newest.ok()) << newest.status();
    if (!newest.ok() || !*newest) return std::nullopt;
    return (*newest)->step;
  }

  std::string dir_;
  std::string root_;
  ManualClock clock_;
  std::unique_ptr<LmdbEnv> env_;
  std::unique_ptr<CheckpointStore> store_;
};

TEST_F(CheckpointStoreTest, CommitOfTwoRanksMovesTheShardsAndWritesTheManifest) {
  Save(3, 100, 0, {{"model.bin", "hello"}, {"optim/state.bin", "0123456789"}});
  Save(3, 100, 1, {{"model.bin", "hello"}});
  auto record = store_->Commit("job1", root_, 3, 100, 2);
  ASSERT_TRUE(record.ok()) << record.status();

  EXPECT_EQ(record->job, "job1");
  EXPECT_EQ(record->step, 100u);
  EXPECT_EQ(record->attempt, 3u);
  EXPECT_EQ(record->world_size, 2u);
  EXPECT_EQ(record->total_bytes, 20u);
  EXPECT_EQ(record->unix_ms, ManualClock::kStartUnixMs);
  EXPECT_EQ(record->dir, root_ + "/step-100");
  EXPECT_EQ(record->manifest_sha256.size(), 64u);
  ASSERT_EQ(record->rank_files.size(), 2u);
  ASSERT_EQ(record->rank_files[0].size(), 2u);
  EXPECT_EQ(record->rank_files[0][0].path, "model.bin");
  EXPECT_EQ(record->rank_files[0][0].sha256, kHelloSha256);
  EXPECT_EQ(record->rank_files[0][1].path, "optim/state.bin");
  EXPECT_EQ(record->rank_files[0][1].size, 10u);

  // The step directory moved out of staging, shards and markers with it.
  EXPECT_FALSE(fs::exists(StagedStep(3, 100)));
  EXPECT_EQ(ReadAll(root_ + "/step-100/rank-0/optim/state.bin"), "0123456789");
  EXPECT_TRUE(fs::exists(root_ + "/step-100/rank-1.done"));

  const auto manifest = nlohmann::json::parse(ReadAll(root_ + "/step-100/manifest.json"), nullptr, false);
  ASSERT_TRUE(manifest.is_object());
  EXPECT_EQ(manifest["job"], "job1");
  EXPECT_EQ(manifest["step"], 100);
  EXPECT_EQ(manifest["attempt"], 3);
  EXPECT_EQ(manifest["world_size"], 2);
  EXPECT_EQ(manifest["total_bytes"], 20);
  EXPECT_EQ(manifest["unix_ms"], ManualClock::kStartUnixMs);
  ASSERT_EQ(manifest["ranks"].size(), 2u);
  EXPECT_EQ(manifest["ranks"][1]["rank"], 1);
  EXPECT_EQ(manifest["ranks"][1]["files"][0]["path"], "model.bin");
  EXPECT_EQ(manifest["ranks"][1]["files"][0]["size"], 5);
  EXPECT_EQ(manifest["ranks"][1]["files"][0]["sha256"], kHelloSha256);

  // The record is stored as returned, and committing the step again is refused.
  auto listed = store_->List("job1");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].manifest_sha256, record->manifest_sha256);
  EXPECT_EQ((*listed)[0].rank_files[0][1].sha256, record->rank_files[0][1].sha256);
  EXPECT_EQ(store_->Commit("job1", root_, 3, 100, 2).status().code(), StatusCode::kAlreadyExists);
}

TEST_F(CheckpointStoreTest, CompleteStepsIgnoresAStepMissingARanksMarker) {
  Save(0, 1, 0, {{"a", "x"}});
  Save(0, 1, 1, {{"a", "x"}});
  Save(0, 2, 0, {{"a", "x"}});
  Save(0, 2, 1, {{"a", "x"}}, /*done=*/false);  // rank 1 is still writing
  Save(0, 3, 0, {{"a", "x"}});
  Save(0, 3, 1, {{"a", "x"}});
  fs::create_directories(CheckpointStore::StagingDir(root_, 0) + "/step-007");  // not a canonical step name
  auto steps = store_->CompleteSteps("job1", root_, 0, 2);
  ASSERT_TRUE(steps.ok()) << steps.status();
  EXPECT_EQ(*steps, (std::vector<uint64_t>{1, 3}));

  ASSERT_TRUE(store_->Commit("job1", root_, 0, 1, 2).ok());
  steps = store_->CompleteSteps("job1", root_, 0, 2);
  ASSERT_TRUE(steps.ok()) << steps.status();
  EXPECT_EQ(*steps, (std::vector<uint64_t>{3}));

  auto commit = store_->Commit("job1", root_, 0, 2, 2);
  EXPECT_EQ(commit.status().code(), StatusCode::kNotFound) << commit.status();
  EXPECT_NE(commit.status().message().find("rank-1.done"), std::string::npos) << commit.status();

  auto none = store_->CompleteSteps("job1", root_, 9, 2);  // an attempt that staged nothing
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST_F(CheckpointStoreTest, NewestIsTheHighestOfThreeCommits) {
  EXPECT_EQ(NewestStep(), std::nullopt);
  SaveAndCommit(10);
  SaveAndCommit(20);
  SaveAndCommit(30);
  EXPECT_EQ(NewestStep(), 30u);
  EXPECT_EQ(ListedSteps(), (std::vector<uint64_t>{10, 20, 30}));
  // Another job's records do not mix in, even one whose name starts alike.
  Save(0, 99, 0, {{"a", "x"}});
  ASSERT_TRUE(store_->Commit("job1-b", root_, 0, 99, 1).ok());
  EXPECT_EQ(NewestStep(), 30u);
}

TEST_F(CheckpointStoreTest, RetainKeepTwoDeletesTheOldestRecordAndDirectory) {
  SaveAndCommit(10, 0);
  SaveAndCommit(20, 1);
  SaveAndCommit(30, 1);
  Save(0, 40, 0, {{"a", "x"}});                 // staged by an old attempt
  Save(1, 50, 0, {{"a", "x"}}, /*done=*/false);  // being written by the newest attempt
  fs::create_directories(root_ + "/step-25");   // renamed, never recorded (a crash)
  fs::create_directories(root_ + "/notes");     // not the store's

  ASSERT_TRUE(store_->Retain("job1", root_, 2, /*committed_attempt=*/1).ok());
  EXPECT_EQ(ListedSteps(), (std::vector<uint64_t>{20, 30}));
  EXPECT_FALSE(fs::exists(root_ + "/step-10"));
  EXPECT_TRUE(fs::exists(root_ + "/step-20/rank-1/model.bin"));
  EXPECT_TRUE(fs::exists(root_ + "/step-30/rank-1/model.bin"));
  EXPECT_FALSE(fs::exists(root_ + "/step-25"));
  EXPECT_FALSE(fs::exists(CheckpointStore::StagingDir(root_, 0)));
  EXPECT_TRUE(fs::exists(StagedStep(1, 50) + "/rank-0/a"));
  EXPECT_TRUE(fs::exists(root_ + "/notes"));
  EXPECT_EQ(store_->Retain("job1", root_, 0, 1).code(), StatusCode::kInvalidArgument);
}

// After a failure the supervisor starts the next attempt (its staging directory exists) while the
// failed attempt's last complete steps still wait for their commit: retention after a commit of
// the failed attempt must not remove that attempt's staging directory, or the job resumes from an
// older checkpoint than it completed.
TEST_F(CheckpointStoreTest, RetainKeepsTheStagingOfTheAttemptBeingCommittedWhenALaterOneHasStarted) {
  Save(1, 10, 0, {{"a", "x"}});
  Save(1, 20, 0, {{"a", "y"}});  // complete, not committed yet when attempt 2 starts
  Save(2, 30, 0, {{"a", "z"}}, /*done=*/false);
  ASSERT_TRUE(store_->Commit("job1", root_, 1, 10, 1).ok());
  ASSERT_TRUE(store_->Retain("job1", root_, 3, /*committed_attempt=*/1).ok());
  EXPECT_TRUE(fs::exists(StagedStep(1, 20) + "/rank-0/a"));
  auto steps = store_->CompleteSteps("job1", root_, 1, 1);
  ASSERT_TRUE(steps.ok()) << steps.status();
  EXPECT_EQ(*steps, (std::vector<uint64_t>{20}));
  ASSERT_TRUE(store_->Commit("job1", root_, 1, 20, 1).ok());
  EXPECT_EQ(NewestStep(), 20u);
  // Once a commit of the later attempt runs, the failed attempt's staging directory goes.
  Save(2, 40, 0, {{"a", "w"}});
  ASSERT_TRUE(store_->Commit("job1", root_, 2, 40, 1).ok());
  ASSERT_TRUE(store_->Retain("job1", root_, 3, /*committed_attempt=*/2).ok());
  EXPECT_FALSE(fs::exists(CheckpointStore::StagingDir(root_, 1)));
  EXPECT_TRUE(fs::exists(CheckpointStore::StagingDir(root_, 2)));
}

TEST_F(CheckpointStoreTest, NewestValidFallsBackPastACorruptedShardAndADeletedFile) {
  SaveAndCommit(10);
  SaveAndCommit(20);
  const CheckpointRecord newest = SaveAndCommit(30);
  // Flip one byte of rank 1's shard of step 30 (the size stays).
  const std::string corrupted = newest.dir + "/rank-1/model.bin";
  std::string bytes = ReadAll(corrupted);
  bytes[3] ^= 0x01;
  WriteAll(corrupted, bytes);

  std::vector<std::string> fallbacks;
  EXPECT_EQ(NewestValidStep(&fallbacks), 20u);
  ASSERT_EQ(fallbacks.size(), 1u);
  EXPECT_NE(fallbacks[0].find("step 30"), std::string::npos) << fallbacks[0];
  EXPECT_NE(fallbacks[0].find(corrupted), std::string::npos) << fallbacks[0];
  EXPECT_NE(fallbacks[0].find("SHA-256"), std::string::npos) << fallbacks[0];

  const std::string deleted = root_ + "/step-20/rank-0/model.bin";
  fs::remove(deleted);
  fallbacks.clear();
  EXPECT_EQ(NewestValidStep(&fallbacks), 10u);
  ASSERT_EQ(fallbacks.size(), 2u);
  EXPECT_NE(fallbacks[1].find("step 20"), std::string::npos) << fallbacks[1];
  EXPECT_NE(fallbacks[1].find(deleted), std::string::npos) << fallbacks[1];
  EXPECT_NE(fallbacks[1].find("No such file"), std::string::npos) << fallbacks[1];
  // Skipped, not deleted.
  EXPECT_EQ(ListedSteps(), (std::vector<uint64_t>{10, 20, 30}));
  EXPECT_EQ(NewestStep(), 30u);

  fs::remove(root_ + "/step-10/manifest.json");
  EXPECT_EQ(NewestValidStep(nullptr), std::nullopt);
}

TEST_F(CheckpointStoreTest, AStepRenamedBeforeItsRecordIsCompletedByTheNextCommit) {
  const CheckpointRecord first = SaveAndCommit(10, 2);
  // The state a crash between rename and LMDB put leaves: the directory, its manifest, no record.
  DropRecord(10);
  EXPECT_EQ(NewestStep(), std::nullopt);
  auto steps = store_->CompleteSteps("job1", root_, 2, 2);
  ASSERT_TRUE(steps.ok()) << steps.status();
  EXPECT_EQ(*steps, (std::vector<uint64_t>{10}));
  // Another attempt does not own it.
  EXPECT_EQ(store_->Commit("job1", root_, 3, 10, 2).status().code(), StatusCode::kFailedPrecondition);

  auto again = store_->Commit("job1", root_, 2, 10, 2);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->manifest_sha256, first.manifest_sha256);
  EXPECT_EQ(again->total_bytes, first.total_bytes);
  EXPECT_EQ(again->dir, first.dir);
  EXPECT_EQ(NewestStep(), 10u);
}

TEST_F(CheckpointStoreTest, ARenamedDirectoryWithoutRecordLeavesNewestAtThePreviousStep) {
  SaveAndCommit(10);
  Save(0, 20, 0, {{"model.bin", "a"}});
  Save(0, 20, 1, {{"model.bin", "b"}});
  fs::rename(StagedStep(0, 20), root_ + "/step-20");  // the rename happened, the record did not
  EXPECT_EQ(NewestStep(), 10u);
  std::vector<std::string> fallbacks;
  EXPECT_EQ(NewestValidStep(&fallbacks), 10u);
  EXPECT_TRUE(fallbacks.empty());
  // It has no manifest, so it is nothing to complete; the next newer commit removes it.
  EXPECT_TRUE(store_->CompleteSteps("job1", root_, 0, 2)->empty());
  SaveAndCommit(30);
  EXPECT_FALSE(fs::exists(root_ + "/step-20"));
  EXPECT_EQ(ListedSteps(), (std::vector<uint64_t>{10, 30}));
}

TEST_F(CheckpointStoreTest, ASymlinkInAShardIsRefused) {
  WriteAll(dir_ + "/outside", "secret");
  Save(0, 5, 0, {{"model.bin", "hello"}});
  Save(0, 5, 1, {{"model.bin", "hello"}});
  fs::create_symlink(dir_ + "/outside", StagedStep(0, 5) + "/rank-1/link.bin");
  auto commit = store_->Commit("job1", root_, 0, 5, 2);
  EXPECT_EQ(commit.status().code(), StatusCode::kInvalidArgument) << commit.status();
  EXPECT_NE(commit.status().message().find("link.bin"), std::string::npos) << commit.status();
  EXPECT_TRUE(fs::exists(StagedStep(0, 5)));
  EXPECT_EQ(NewestStep(), std::nullopt);

  // A shard that is itself a symlink is refused too.
  Save(0, 6, 0, {{"model.bin", "hello"}});
  fs::create_directories(dir_ + "/elsewhere");
  fs::create_directory_symlink(dir_ + "/elsewhere", StagedStep(0, 6) + "/rank-1");
  WriteAll(StagedStep(0, 6) + "/rank-1.done", "");
  EXPECT_EQ(store_->Commit("job1", root_, 0, 6, 2).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(CheckpointStoreTest, ManyShardsCommitInParallelAndOneCorruptedFileAmongThemIsNamed) {
  // More files than kMaxCommitThreads, one of several read chunks (1 MiB each), checked when
  // verified and when a renamed step is completed after a crash.
  constexpr uint32_t kRanks = 12;
  const std::string big(5u << 19, 'w');  // 2.5 MiB
  SaveAndCommit(1);
  auto save_all = [&](uint64_t step) {
    for (uint32_t r = 0; r < kRanks; ++r) {
      Save(0, step, r,
           {{"model.bin", r == 7 ? big : "weights of rank " + std::to_string(r)},
            {"optim/state.bin", "state " + std::to_string(r)},
            {"meta.json", r == 9 ? "hello" : "{}"}});
    }
  };
  save_all(2);
  auto record = store_->Commit("job1", root_, 0, 2, kRanks);
  ASSERT_TRUE(record.ok()) << record.status();
  ASSERT_EQ(record->rank_files.size(), kRanks);
  uint64_t total = 0;
  for (uint32_t r = 0; r < kRanks; ++r) {
    const auto& files = record->rank_files[r];
    ASSERT_EQ(files.size(), 3u) << "rank " << r;
    EXPECT_EQ(files[0].path, "meta.json");
    EXPECT_EQ(files[1].path, "model.bin");
    EXPECT_EQ(files[2].path, "optim/state.bin");
    EXPECT_EQ(files[2].size, ("state " + std::to_string(r)).size());
    for (const auto& f : files) total += f.size;
  }
  EXPECT_EQ(record->total_bytes, total);
  EXPECT_EQ(record->rank_files[7][1].size, big.size());
  EXPECT_EQ(record->rank_files[9][0].sha256, kHelloSha256);
  std::vector<std::string> fallbacks;
  EXPECT_EQ(NewestValidStep(&fallbacks), 2u);
  EXPECT_TRUE(fallbacks.empty());

  // One byte flipped in the third chunk of rank 7's model: step 2 is skipped, naming the file.
  const std::string corrupted = record->dir + "/rank-7/model.bin";
  std::string bytes = ReadAll(corrupted);
  bytes[(2u << 20) + 5] ^= 0x01;
  WriteAll(corrupted, bytes);
  EXPECT_EQ(NewestValidStep(&fallbacks), 1u);
  ASSERT_EQ(fallbacks.size(), 1u);
  EXPECT_NE(fallbacks[0].find("step 2"), std::string::npos) << fallbacks[0];
  EXPECT_NE(fallbacks[0].find(corrupted), std::string::npos) << fallbacks[0];
  EXPECT_NE(fallbacks[0].find("SHA-256"), std::string::npos) << fallbacks[0];

  // A renamed step without a record (a crash before it) with the same corruption is not
  // completed: the commit names the file and records nothing.
  save_all(3);
  ASSERT_TRUE(store_->Commit("job1", root_, 0, 3, kRanks).ok());
  DropRecord(3);
  const std::string corrupted3 = root_ + "/step-3/rank-7/model.bin";
  WriteAll(corrupted3, bytes);
  auto adopted = store_->Commit("job1", root_, 0, 3, kRanks);
  EXPECT_EQ(adopted.status().code(), StatusCode::kInternal) << adopted.status();
  EXPECT_NE(adopted.status().message().find("data loss: " + corrupted3), std::string::npos) << adopted.status();
  EXPECT_EQ(ListedSteps(), (std::vector<uint64_t>{1, 2}));

  // A symlink in one shard of many refuses the whole step, naming it.
  save_all(4);
  fs::create_symlink(dir_ + "/nowhere", StagedStep(0, 4) + "/rank-10/optim/link.bin");
  auto refused = store_->Commit("job1", root_, 0, 4, kRanks);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("rank-10/optim/link.bin"), std::string::npos) << refused.status();
  EXPECT_EQ(ListedSteps(), (std::vector<uint64_t>{1, 2}));
}

TEST_F(CheckpointStoreTest, DeleteJobDuringACommitLeavesNoRecordAndNoFiles) {
  // Whichever call takes the job's lock first, they do not interleave: a commit running when the
  // delete begins is cancelled (or had finished), one starting after it finds nothing staged.
  SaveAndCommit(1);
  const std::string big(16u << 20, 'x');
  Save(0, 2, 0, {{"model.bin", big}});
  Save(0, 2, 1, {{"model.bin", big}});
  StatusOr<CheckpointRecord> commit = InternalError("the commit did not run");
  std::thread committer([&] { commit = store_->Commit("job1", root_, 0, 2, 2); });
  const Status deleted = store_->DeleteJob("job1", root_);
  committer.join();
  EXPECT_TRUE(deleted.ok()) << deleted;
  const StatusCode code = commit.status().code();
  EXPECT_TRUE(code == StatusCode::kOk || code == StatusCode::kCancelled || code == StatusCode::kNotFound)
      << commit.status();
  if (code == StatusCode::kCancelled) {
    EXPECT_NE(commit.status().message().find("being deleted"), std::string::npos) << commit.status();
  }
  EXPECT_TRUE(ListedSteps().empty());
  EXPECT_FALSE(fs::exists(root_));
}

TEST_F(CheckpointStoreTest, BadJobNamesAreRefused) {
  for (const std::string& job : std::vector<std::string>{"../x", "", "a/b", ".hidden", std::string(129, 'j')}) {
    EXPECT_EQ(store_->Commit(job, root_, 0, 1, 1).status().code(), StatusCode::kInvalidArgument) << job;
    EXPECT_EQ(store_->CompleteSteps(job, root_, 0, 1).status().code(), StatusCode::kInvalidArgument) << job;
    EXPECT_EQ(store_->List(job).status().code(), StatusCode::kInvalidArgument) << job;
    EXPECT_EQ(store_->Retain(job, root_, 1, 0).code(), StatusCode::kInvalidArgument) << job;
    EXPECT_EQ(store_->DeleteJob(job, root_).code(), StatusCode::kInvalidArgument) << job;
  }
  EXPECT_EQ(store_->Commit("job1", "", 0, 1, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->DeleteJob("job1", "/").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Commit("job1", root_, 0, 1, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateCheckpointJobName("llama-7b.v2_run").ok());
}

TEST_F(CheckpointStoreTest, DeleteJobRemovesEveryRecordAndTheRoot) {
  SaveAndCommit(10);
  SaveAndCommit(20);
  const std::string other_root = dir_ + "/checkpoints/job2";
  Save(0, 1, 0, {{"a", "x"}});
  fs::rename(StagedStep(0, 1), other_root + "-staged");
  fs::create_directories(other_root + "/attempt-0");
  fs::rename(other_root + "-staged", other_root + "/attempt-0/step-1");
  ASSERT_TRUE(store_->Commit("job2", other_root, 0, 1, 1).ok());

  ASSERT_TRUE(store_->DeleteJob("job1", root_).ok());
  EXPECT_TRUE(ListedSteps().empty());
  EXPECT_FALSE(fs::exists(root_));
  auto other = store_->List("job2");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->size(), 1u);
  EXPECT_TRUE(store_->DeleteJob("job1", root_).ok());  // nothing left: still fine
}

}  // namespace
}  // namespace troupe::storage
