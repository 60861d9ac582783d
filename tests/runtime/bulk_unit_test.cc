// The bulk path's pure parts: descriptors and statuses on the wire, the receiver's limits, the
// file sink and mapped sources, and the checkpoint-shard layout. No actor system.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "actors/training/shard_transfer.h"
#include "runtime/bulk.h"
#include "tests/runtime/bulk_test_util.h"

namespace troupe::runtime {
namespace {

TEST(BulkDescriptor, RoundTrips) {
  BulkDescriptor d;
  d.transfer_id = (uint64_t{7} << 32) | 5;
  d.size = uint64_t{1} << 40;
  d.kind = "checkpoint-file";
  d.attrs = {{"job", "llama"}, {"path", "optim/state.bin"}};
  auto back = DecodeDescriptor(EncodeDescriptor(d));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->transfer_id, d.transfer_id);
  EXPECT_EQ(back->size, d.size);
  EXPECT_EQ(back->kind, d.kind);
  EXPECT_EQ(back->attrs, d.attrs);
}

TEST(BulkDescriptor, RefusesMalformedAndOversized) {
  EXPECT_EQ(DecodeDescriptor("not json").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeDescriptor(R"({"id":1,"size":-4,"kind":"x"})").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeDescriptor(R"({"id":1,"size":4})").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeDescriptor(R"({"id":1,"size":4,"kind":"x","attrs":{"a":1}})").status().code(),
            StatusCode::kInvalidArgument);
  std::string huge = R"({"id":1,"size":4,"kind":")" + std::string(kMaxDescriptorBytes, 'k') + R"("})";
  auto big = DecodeDescriptor(huge);
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("exceeds"), std::string::npos) << big.status();
}

TEST(BulkStatus, RoundTrips) {
  EXPECT_TRUE(DecodeStatus(EncodeStatus(OkStatus())).ok());
  Status s = DecodeStatus(EncodeStatus(ResourceExhaustedError("disk full at /x")));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "disk full at /x");
  EXPECT_EQ(DecodeStatus(R"({"code":99,"message":"?"})").code(), StatusCode::kInternal);
  EXPECT_EQ(DecodeStatus("").code(), StatusCode::kInternal);
}

TEST(BulkLimits, OfferCheckedBeforeAnyBuffer) {
  BulkLimits limits;
  limits.max_transfer_bytes = 100;
  limits.max_bytes_accepted = 150;
  limits.max_transfers_accepted = 2;
  EXPECT_TRUE(CheckOffer(limits, 100, 0, 0, 7).ok());
  Status too_big = CheckOffer(limits, 101, 0, 0, 7);
  EXPECT_EQ(too_big.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.message().find("max_transfer_bytes 100"), std::string::npos) << too_big;
  EXPECT_EQ(CheckOffer(limits, 60, 100, 1, 7).code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(CheckOffer(limits, 50, 100, 1, 7).ok());
  EXPECT_EQ(CheckOffer(limits, 1, 0, 2, 7).code(), StatusCode::kResourceExhausted);
}

TEST(BulkFileSink, BytesLandInTheFileAndAFailureRemovesIt) {
  testing::TempDir dir;
  for (FileSinkMode mode : {FileSinkMode::kWrite, FileSinkMode::kMmap}) {
    const std::string path = dir.path() + "/a/b/file" + std::to_string(static_cast<int>(mode));
    auto sink = MakeFileSink(path, 4096, mode);
    ASSERT_TRUE(sink.ok()) << sink.status();
    for (int i = 0; i < 4096; ++i) sink->data[i] = static_cast<uint8_t>(i * 7);
    // As the endpoint does: each chunk's `landed` in order, then finish.
    if (sink->landed) {
      ASSERT_TRUE(sink->landed(0, 1000).ok());
      ASSERT_TRUE(sink->landed(1000, 3096).ok());
    }
    ASSERT_TRUE(sink->finish(OkStatus()).ok());
    sink->keep.reset();
    auto source = BulkSource::MapFile(path);
    ASSERT_TRUE(source.ok()) << source.status();
    ASSERT_EQ(source->size, 4096u);
    for (int i = 0; i < 4096; ++i) ASSERT_EQ(source->data[i], static_cast<uint8_t>(i * 7)) << i;
  }

  const std::string failed = dir.path() + "/failed.bin";
  auto sink2 = MakeFileSink(failed, 10);
  ASSERT_TRUE(sink2.ok());
  EXPECT_TRUE(std::filesystem::exists(failed));
  ASSERT_TRUE(sink2->finish(UnavailableError("peer lost")).ok());
  EXPECT_FALSE(std::filesystem::exists(failed));

  auto empty = MakeFileSink(dir.path() + "/empty", 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->data, nullptr);
  EXPECT_TRUE(empty->finish(OkStatus()).ok());
  EXPECT_EQ(BulkSource::MapFile(dir.path() + "/missing").status().code(), StatusCode::kNotFound);
}

TEST(BulkFileSink, AWriteSinkPutsEachChunkInTheFileAsItLands) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/chunks.bin";
  auto sink = MakeFileSink(path, 8192, FileSinkMode::kWrite);
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE(sink->landed) << "a kWrite sink writes while receiving";
  std::memset(sink->data, 0xAB, 4096);
  ASSERT_TRUE(sink->landed(0, 4096).ok());
  // The first chunk is in the file before the second has landed and before finish.
  std::ifstream in(path, std::ios::binary);
  std::string first(4096, '\0');
  ASSERT_TRUE(in.read(first.data(), first.size()));
  EXPECT_EQ(first, std::string(4096, '\xAB'));
  std::memset(sink->data + 4096, 0xCD, 4096);
  ASSERT_TRUE(sink->landed(4096, 4096).ok());
  ASSERT_TRUE(sink->finish(OkStatus()).ok());
  in.seekg(4095);
  EXPECT_EQ(in.get(), 0xAB);
  EXPECT_EQ(in.get(), 0xCD);
  // A mapped sink needs no writes: the bytes land in the file's pages.
  auto mapped = MakeFileSink(dir.path() + "/mapped.bin", 10, FileSinkMode::kMmap);
  ASSERT_TRUE(mapped.ok());
  EXPECT_FALSE(mapped->landed);
  EXPECT_TRUE(mapped->finish(UnavailableError("peer lost")).ok());
}

TEST(BulkStall, ATransferFailsAStallTimeoutAfterItsLastProgress) {
  using std::chrono::milliseconds;
  using TimePoint = std::chrono::steady_clock::time_point;
  const TimePoint t0 = TimePoint() + std::chrono::hours(5);
  EXPECT_EQ(StallDeadline(t0, milliseconds(60000)), t0 + milliseconds(60000));
  EXPECT_EQ(StallDeadline(t0 + milliseconds(250), milliseconds(300)), t0 + milliseconds(550));
  // 0 (or less): never.
  EXPECT_EQ(StallDeadline(t0, milliseconds(0)), TimePoint::max());
  EXPECT_EQ(StallDeadline(t0, milliseconds(-5)), TimePoint::max());
  // No overflow near the end of time.
  EXPECT_EQ(StallDeadline(TimePoint::max() - milliseconds(1), milliseconds(60000)), TimePoint::max());
  // The default is a minute (the docstring's rule).
  EXPECT_EQ(BulkConfig{}.stall_timeout, milliseconds(60000));
}

}  // namespace
}  // namespace troupe::runtime

namespace troupe::training {
namespace {

TEST(ShardTransfer, ValidatesPaths) {
  EXPECT_TRUE(ValidateShardPath("model.pt").ok());
  EXPECT_TRUE(ValidateShardPath("optim/state.bin").ok());
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../b", "a//b", "a/", "./a", "a\\b"}) {
    EXPECT_EQ(ValidateShardPath(bad).code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ShardTransfer, LayoutIsTheCheckpointStoresStaging) {
  ShardTarget t{"llama", 2, 300, 5};
  EXPECT_EQ(ShardFilePath("/ckpt/llama", t, "optim/s.bin"), "/ckpt/llama/attempt-2/step-300/rank-5/optim/s.bin");
  EXPECT_EQ(ShardMarkerPath("/ckpt/llama", t), "/ckpt/llama/attempt-2/step-300/rank-5.done");
}

TEST(ShardTransfer, DescriptorRoundTripsAndRefusesBadAttrs) {
  ShardTarget t{"llama", 2, 300, 5};
  std::string path;
  auto back = ParseShardDescriptor(ShardDescriptor(t, "m.pt"), &path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->job, "llama");
  EXPECT_EQ(back->attempt, 2u);
  EXPECT_EQ(back->step, 300u);
  EXPECT_EQ(back->rank, 5u);
  EXPECT_EQ(path, "m.pt");
  auto marker = ShardDescriptor(t, "");
  EXPECT_EQ(marker.kind, kShardMarkerKind);
  ASSERT_TRUE(ParseShardDescriptor(marker, &path).ok());
  EXPECT_EQ(path, "");

  auto bad = ShardDescriptor(t, "m.pt");
  bad.attrs["step"] = "3x";
  EXPECT_EQ(ParseShardDescriptor(bad, &path).status().code(), StatusCode::kInvalidArgument);
  bad = ShardDescriptor(t, "m.pt");
  bad.attrs["path"] = "../../etc/cron.d/x";
  EXPECT_EQ(ParseShardDescriptor(bad, &path).status().code(), StatusCode::kInvalidArgument);
  bad = ShardDescriptor(t, "m.pt");
  bad.attrs.erase("job");
  EXPECT_EQ(ParseShardDescriptor(bad, &path).status().code(), StatusCode::kInvalidArgument);
}

TEST(ShardTransfer, FilesFromDirAreRelativeAndSorted) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.path() + "/optim");
  std::ofstream(dir.path() + "/model.pt") << "weights";
  std::ofstream(dir.path() + "/optim/state.bin") << "adam";
  auto files = ShardFilesFromDir(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].path, "model.pt");
  EXPECT_EQ((*files)[1].path, "optim/state.bin");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*files)[1].data.data), (*files)[1].data.size), "adam");
  std::filesystem::create_symlink("model.pt", dir.path() + "/link");
  EXPECT_EQ(ShardFilesFromDir(dir.path()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ShardFilesFromDir(dir.path() + "/none").status().code(), StatusCode::kNotFound);
}

TEST(ShardTransfer, ReadDescriptorRoundTripsAndRefusesBadAttrs) {
  auto back = ParseShardReadDescriptor(ShardReadDescriptor({"llama", 300, 5, "optim/s.bin", 77}));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->job, "llama");
  EXPECT_EQ(back->step, 300u);
  EXPECT_EQ(back->rank, 5u);
  EXPECT_EQ(back->path, "optim/s.bin");
  EXPECT_EQ(back->token, 77u);
  EXPECT_EQ(ShardReadDescriptor({"llama", 300, 5, "m.pt", 1}).kind, kShardReadKind);
  for (const auto& [attr, value] : std::vector<std::pair<std::string, std::string>>{
           {"token", ""}, {"token", "-1"}, {"step", "3x"}, {"rank", "4294967296"}, {"job", ""}, {"path", ""},
           {"path", "/etc/passwd"}, {"path", "a/../../b"}}) {
    auto bad = ShardReadDescriptor({"llama", 300, 5, "m.pt", 1});
    bad.attrs[attr] = value;
    auto parsed = ParseShardReadDescriptor(bad);
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << attr << "=" << value;
  }
}

// The store node's rules for a read of a committed shard: the manifest decides what exists, and
// nothing outside the job's root is ever served.
TEST(ShardTransfer, FindCommittedFileServesOnlyWhatTheManifestListsUnderTheRoot) {
  testing::TempDir dir;
  const std::string root = dir.path() + "/llama";
  const std::string step_dir = root + "/step-20";
  std::filesystem::create_directories(step_dir + "/rank-0/optim");
  std::filesystem::create_directories(step_dir + "/rank-1");
  std::ofstream(step_dir + "/rank-0/weights.bin") << "0123456789";
  std::ofstream(step_dir + "/rank-0/optim/state.bin") << "adam";
  std::ofstream(dir.path() + "/outside.bin") << "secret";
  std::filesystem::create_symlink(dir.path() + "/outside.bin", step_dir + "/rank-1/link.bin");
  std::ofstream(step_dir + "/manifest.json")
      << R"({"format": 1, "job": "llama", "step": 20, "attempt": 1, "world_size": 2, "total_bytes": 20,)"
      << R"( "unix_ms": 1, "ranks": [{"rank": 0, "files": [)"
      << R"({"path": "optim/state.bin", "size": 4, "sha256": ")" << storage::Sha256Hex("adam") << R"("},)"
      << R"({"path": "weights.bin", "size": 11, "sha256": "x"}]},)"
      << R"({"rank": 1, "files": [{"path": "link.bin", "size": 6, "sha256": "y"}]}]})";

  auto found = FindCommittedFile(root, 20, 0, "optim/state.bin");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->size, 4u);
  EXPECT_EQ(found->sha256, storage::Sha256Hex("adam"));
  EXPECT_EQ(CommittedShardFilePath(root, 20, 0, "optim/state.bin"), step_dir + "/rank-0/optim/state.bin");

  auto code = [&](uint64_t step, uint32_t rank, const std::string& path) {
    return FindCommittedFile(root, step, rank, path).status();
  };
  for (const char* bad : {"", "/etc/passwd", "../manifest.json", "optim/../../step-20/manifest.json", "a//b"}) {
    EXPECT_EQ(code(20, 0, bad).code(), StatusCode::kInvalidArgument) << bad;
  }
  Status no_step = code(30, 0, "weights.bin");
  EXPECT_EQ(no_step.code(), StatusCode::kNotFound) << no_step;
  EXPECT_NE(no_step.message().find("no committed step 30 under " + root), std::string::npos) << no_step;
  Status no_rank = code(20, 2, "weights.bin");
  EXPECT_EQ(no_rank.code(), StatusCode::kNotFound) << no_rank;
  EXPECT_NE(no_rank.message().find("has 2 ranks, not rank 2"), std::string::npos) << no_rank;
  // On disk but not in the manifest: not part of the checkpoint.
  std::ofstream(step_dir + "/rank-0/stray.bin") << "x";
  EXPECT_EQ(code(20, 0, "stray.bin").code(), StatusCode::kNotFound);
  EXPECT_EQ(code(20, 0, "manifest.json").code(), StatusCode::kNotFound);
  // A symlink that leads out of the root is refused, naming where it leads.
  Status escape = code(20, 1, "link.bin");
  EXPECT_EQ(escape.code(), StatusCode::kInvalidArgument) << escape;
  EXPECT_NE(escape.message().find("outside the checkpoint root"), std::string::npos) << escape;
  // A size that is not the manifest's is data loss, named.
  Status short_file = code(20, 0, "weights.bin");
  EXPECT_EQ(short_file.code(), StatusCode::kInternal) << short_file;
  EXPECT_NE(short_file.message().find("data loss: " + step_dir + "/rank-0/weights.bin has 10 bytes, the manifest says 11"),
            std::string::npos)
      << short_file;
  // A manifest that is not one.
  std::ofstream(step_dir + "/manifest.json", std::ios::trunc) << "{";
  EXPECT_EQ(code(20, 0, "optim/state.bin").code(), StatusCode::kInternal);
}

TEST(ShardTransfer, CheckpointRootsTakeOnlyTheJobsTheHeadStores) {
  auto roots = std::make_shared<CheckpointRoots>();
  CheckpointRootOf root_of = CheckpointRoots::Of(roots);
  auto none = root_of("llama");
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("job 'llama'"), std::string::npos) << none.status();
  roots->Set("llama", "/data/checkpoints/llama");
  auto found = root_of("llama");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, "/data/checkpoints/llama");
  roots->Remove("llama");
  EXPECT_EQ(root_of("llama").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace troupe::training
