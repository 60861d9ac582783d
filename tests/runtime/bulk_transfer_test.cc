// The bulk path between two real processes: this test process (node A, the shard writer) and a
// bulk_peer child (node B, the node that holds the checkpoint store).
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "actors/training/shard_transfer.h"
#include "common/child_process.h"
#include "runtime/bulk.h"
#include "runtime/runtime.h"
#include "storage/checkpoint_store.h"
#include "storage/lmdb_env.h"
#include "tests/runtime/bulk_test_util.h"

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;
using runtime::BulkEndpoint;
using runtime::BulkSource;
using runtime::NodeId;
using training::ShardTarget;

constexpr const char* kToken = "bulk-test-token";
constexpr NodeId kWriter = 201, kStore = 202;

// Bytes from a seeded generator: they differ at every offset, so a shifted copy would not match.
Buffer Pattern(size_t size, uint64_t seed) {
  Buffer b = Buffer::Allocate(size);
  std::mt19937_64 gen(seed);
  for (size_t off = 0; off < size; off += sizeof(uint64_t)) {
    const uint64_t word = gen();
    std::memcpy(b.data() + off, &word, std::min(sizeof(word), size - off));
  }
  return b;
}

bool SameBytes(const std::string& path, const Buffer& expected) {
  auto mapped = BulkSource::MapFile(path);
  return mapped.ok() && mapped->size == expected.size() &&
         (expected.size() == 0 || std::memcmp(mapped->data, expected.data(), expected.size()) == 0);
}

class BulkTransfer : public ::testing::Test {
 protected:
  void StartStore(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {TROUPE_BULK_PEER_BIN, "--node-id", std::to_string(kStore), "--token", kToken,
                                     "--root", store_dir_.path()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto child = ChildProcess::Spawn(argv);
    ASSERT_TRUE(child.ok()) << child.status();
    auto ready = (*child)->ReadLineWithPrefix("READY ", 20s);
    ASSERT_TRUE(ready.ok()) << "bulk_peer did not start: " << ready.status();
    std::stringstream ss(*ready);
    NodeId id = 0;
    ss >> id >> store_address_;
    ASSERT_EQ(id, kStore);
    store_ = std::move(*child);

    runtime::RuntimeConfig config;
    config.node_name = "writer";
    config.node_id = kWriter;
    config.transport.cluster_token = kToken;
    auto rt = runtime::Runtime::Start(config);
    ASSERT_TRUE(rt.ok()) << rt.status();
    runtime_ = std::move(*rt);
    runtime_->AddNode(kStore, store_address_);
    auto endpoint = BulkEndpoint::Attach(*runtime_);
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = std::move(*endpoint);
  }

  void TearDown() override {
    endpoint_.reset();
    if (runtime_) {
      runtime_->Stop();
      runtime_->AwaitActors(5s);
    }
    if (store_ && !store_killed_) {
      store_->WriteLine("quit").IgnoreError();
      if (!store_->AwaitExit(10s).ok()) store_->Signal(SIGKILL);
    }
  }

  // The store node's CheckpointStore over an LMDB in local_dir_ (opened on first use), committing
  // in store_dir_ as the head's does; null (with a test failure) if it cannot be opened.
  storage::CheckpointStore* Checkpoints() {
    if (checkpoints_) return checkpoints_.get();
    storage::LmdbOptions options;
    options.path = local_dir_.path() + "/lmdb";
    auto env = storage::LmdbEnv::Open(options);
    EXPECT_TRUE(env.ok()) << env.status();
    if (!env.ok()) return nullptr;
    env_ = std::move(*env);
    auto store = storage::CheckpointStore::Open(env_.get());
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    checkpoints_ = std::make_unique<storage::CheckpointStore>(std::move(*store));
    return checkpoints_.get();
  }

  TempDir store_dir_;
  TempDir local_dir_;
  std::string store_address_;
  std::unique_ptr<ChildProcess> store_;
  bool store_killed_ = false;
  std::unique_ptr<runtime::Runtime> runtime_;
  std::unique_ptr<BulkEndpoint> endpoint_;
  std::unique_ptr<storage::LmdbEnv> env_;
  std::unique_ptr<storage::CheckpointStore> checkpoints_;  // before env_ goes
};

TEST_F(BulkTransfer, ShardLandsByteIdenticalAndCommits) {
  ASSERT_NO_FATAL_FAILURE(StartStore());
  // 64 MiB + 1 byte (not a multiple of the chunk), a small file in a subdirectory, an empty file.
  Buffer model = Pattern((64u << 20) + 1, 1);
  Buffer optim = Pattern(300 * 1024 + 3, 2);
  std::vector<training::ShardFile> files;
  files.push_back({"model.bin", BulkSource{model.data(), model.size(), nullptr}});
  files.push_back({"optim/state.bin", BulkSource{optim.data(), optim.size(), nullptr}});
  files.push_back({"empty", BulkSource{}});
  const ShardTarget target{"job1", 3, 40, 0};
  const auto start = std::chrono::steady_clock::now();
  Status written = training::WriteShard(*endpoint_, kStore, target, files, 60s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(written.ok()) << written;
  std::printf("64 MiB shard written to the other process's staging dir in %.3f s\n", seconds);

  const std::string root = store_dir_.path() + "/job1";
  EXPECT_TRUE(SameBytes(training::ShardFilePath(root, target, "model.bin"), model));
  EXPECT_TRUE(SameBytes(training::ShardFilePath(root, target, "optim/state.bin"), optim));
  EXPECT_TRUE(SameBytes(training::ShardFilePath(root, target, "empty"), Buffer()));
  EXPECT_TRUE(std::filesystem::exists(training::ShardMarkerPath(root, target)));
  auto stats = endpoint_->stats();
  EXPECT_EQ(stats.transfers_sent, 4u);  // three files and the marker
  EXPECT_EQ(stats.bytes_sent, model.size() + optim.size());

  // The store node's CheckpointStore commits what arrived, unchanged.
  storage::CheckpointStore* store = Checkpoints();
  ASSERT_NE(store, nullptr);
  auto record = store->Commit("job1", root, 3, 40, 1);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->total_bytes, model.size() + optim.size());
  ASSERT_EQ(record->rank_files.size(), 1u);
  EXPECT_EQ(record->rank_files[0].size(), 3u);
  EXPECT_TRUE(SameBytes(storage::CheckpointStore::CommittedDir(root, 40) + "/rank-0/model.bin", model));
}

TEST_F(BulkTransfer, AShardOfManyFilesStaysUnderTheReceiversTransferLimit) {
  ASSERT_NO_FATAL_FAILURE(StartStore({"--max-transfers", "8"}));
  std::vector<Buffer> contents;
  std::vector<training::ShardFile> files;
  for (int i = 0; i < 40; ++i) contents.push_back(Pattern(100 + i, 10 + i));
  for (int i = 0; i < 40; ++i) {
    files.push_back({"part/" + std::to_string(i), BulkSource{contents[i].data(), contents[i].size(), nullptr}});
  }
  const ShardTarget target{"job2", 0, 5, 1};
  Status written = training::WriteShard(*endpoint_, kStore, target, files, 60s);
  ASSERT_TRUE(written.ok()) << written;
  const std::string root = store_dir_.path() + "/job2";
  for (int i = 0; i < 40; ++i) {
    EXPECT_TRUE(SameBytes(training::ShardFilePath(root, target, "part/" + std::to_string(i)), contents[i])) << i;
  }
  EXPECT_TRUE(std::filesystem::exists(training::ShardMarkerPath(root, target)));
}

TEST_F(BulkTransfer, ToAKilledReceiverFailsUnavailableWithoutAHang) {
  ASSERT_NO_FATAL_FAILURE(StartStore());
  Buffer small = Pattern(1024, 3);
  ASSERT_TRUE(endpoint_
                  ->SendAndWait(kStore, training::ShardDescriptor({"job1", 0, 1, 0}, "warmup"),
                                BulkSource{small.data(), small.size(), nullptr}, 30s)
                  .ok());
  store_->Signal(SIGKILL);
  store_killed_ = true;
  ASSERT_TRUE(store_->AwaitExit(10s).ok());
  Buffer data = Pattern(16u << 20, 4);
  const auto start = std::chrono::steady_clock::now();
  Status s = endpoint_->SendAndWait(kStore, training::ShardDescriptor({"job1", 0, 1, 0}, "model.bin"),
                                    BulkSource{data.data(), data.size(), nullptr}, 60s);
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("node"), std::string::npos) << s;
  // Well inside the 60 s deadline: the transport or the heartbeats (1 s) found the loss.
  EXPECT_LT(waited, 15s);
}

TEST_F(BulkTransfer, ReceiverKilledMidTransferFailsUnavailable) {
  ASSERT_NO_FATAL_FAILURE(StartStore());
  Buffer data = Pattern(16u << 20, 7);
  runtime::BulkDescriptor d;
  d.kind = "stall";
  auto result = std::make_shared<std::promise<Status>>();
  auto future = result->get_future();
  endpoint_->Send(kStore, d, BulkSource{data.data(), data.size(), nullptr}, 60s,
                  [result](const Status& s) { result->set_value(s); });
  ASSERT_TRUE(store_->ReadLineWithPrefix("STALLED ", 20s).ok());  // the offer is being handled
  const auto start = std::chrono::steady_clock::now();
  store_->Signal(SIGKILL);
  store_killed_ = true;
  ASSERT_EQ(future.wait_for(15s), std::future_status::ready) << "the transfer outlived its receiver";
  Status s = future.get();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("node 202"), std::string::npos) << s;
  std::printf("the sender saw the loss after %.0f ms\n",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
}

TEST_F(BulkTransfer, OversizeOfferIsRefusedBeforeAnyBuffer) {
  ASSERT_NO_FATAL_FAILURE(StartStore({"--max-transfer-bytes", std::to_string(1u << 20)}));
  Buffer data = Pattern((1u << 20) + 1, 5);
  const ShardTarget target{"job1", 0, 7, 0};
  Status s = endpoint_->SendAndWait(kStore, training::ShardDescriptor(target, "big.bin"),
                                    BulkSource{data.data(), data.size(), nullptr}, 30s);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("max_transfer_bytes"), std::string::npos) << s;
  EXPECT_FALSE(std::filesystem::exists(training::ShardFilePath(store_dir_.path() + "/job1", target, "big.bin")));
  // A shard with an oversize file never gets its marker.
  std::vector<training::ShardFile> files = {{"big.bin", BulkSource{data.data(), data.size(), nullptr}}};
  EXPECT_EQ(training::WriteShard(*endpoint_, kStore, target, files, 30s).code(), StatusCode::kResourceExhausted);
  EXPECT_FALSE(std::filesystem::exists(training::ShardMarkerPath(store_dir_.path() + "/job1", target)));
  // An unknown kind is refused with NotFound; the endpoint keeps working.
  runtime::BulkDescriptor unknown;
  unknown.kind = "no-such-kind";
  EXPECT_EQ(endpoint_->SendAndWait(kStore, unknown, BulkSource{data.data(), 10, nullptr}, 30s).code(),
            StatusCode::kNotFound);
  Buffer ok = Pattern(1000, 6);
  EXPECT_TRUE(endpoint_
                  ->SendAndWait(kStore, training::ShardDescriptor(target, "small.bin"),
                                BulkSource{ok.data(), ok.size(), nullptr}, 30s)
                  .ok());
}

// A sender that stops mid-transfer (here this test speaks the protocol by hand: an offer and one
// 1 MiB chunk of 4 MiB, then nothing) fails on the receiver after its stall_timeout (300 ms) with
// DeadlineExceeded naming the transfer and the sender: the partial file is removed and the
// receiver holds no bytes for it any more before the sender hears.
TEST_F(BulkTransfer, AStalledSenderFailsOnTheReceiverWithDeadlineExceeded) {
  ASSERT_NO_FATAL_FAILURE(StartStore({"--stall-timeout-ms", "300"}));
  endpoint_.reset();  // its tap would take the receiver's answers: this test's own tap sees them
  struct Seen {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::pair<uint32_t, Status>> frames;  // (type, status)
  };
  auto seen = std::make_shared<Seen>();
  auto tap = std::make_shared<runtime::FrameTap>();
  tap->first_type = runtime::kBulkFirst;
  tap->last_type = runtime::kBulkLast;
  tap->allocate = [](const transport::FrameHeader&, size_t size) { return Buffer::Allocate(size); };
  tap->on_frame = [seen](NodeId, transport::Frame frame) {
    std::lock_guard<std::mutex> lock(seen->mu);
    seen->frames.emplace_back(frame.header.type_id, runtime::DecodeStatus(frame.payload.view()));
    seen->cv.notify_all();
  };
  runtime_->bridge().SetFrameTap(tap);
  auto await_frame = [&](uint32_t type, std::chrono::seconds within) -> std::optional<Status> {
    std::unique_lock<std::mutex> lock(seen->mu);
    std::optional<Status> found;
    seen->cv.wait_for(lock, within, [&] {
      for (const auto& [t, status] : seen->frames) {
        if (t == type) found = status;
      }
      return found.has_value();
    });
    return found;
  };
  constexpr uint64_t kId = 77;
  auto send = [&](uint32_t type, Buffer payload, uint64_t offset) {
    transport::FrameHeader h;
    h.dst_node = kStore;
    h.type_id = type;
    h.request_id = kId;
    h.span_id = offset;
    auto sent = std::make_shared<std::promise<Status>>();
    auto future = sent->get_future();
    Status s = runtime_->transport().Send(kStore, h, std::move(payload), [sent](const Status& st) { sent->set_value(st); });
    if (!s.ok()) return s;
    return future.wait_for(10s) == std::future_status::ready ? future.get() : DeadlineExceededError("send");
  };

  const ShardTarget target{"job1", 0, 9, 0};
  runtime::BulkDescriptor d = training::ShardDescriptor(target, "stalled.bin");
  d.transfer_id = kId;
  d.size = 4u << 20;
  ASSERT_TRUE(send(runtime::kBulkOffer, Buffer::CopyOf(runtime::EncodeDescriptor(d)), 0).ok());
  auto answer = await_frame(runtime::kBulkAnswer, 10s);
  ASSERT_TRUE(answer.has_value()) << "no answer to the offer";
  ASSERT_TRUE(answer->ok()) << *answer;
  const std::string partial = training::ShardFilePath(store_dir_.path() + "/job1", target, "stalled.bin");
  EXPECT_TRUE(std::filesystem::exists(partial));
  ASSERT_TRUE(send(runtime::kBulkData, Pattern(1u << 20, 8), 0).ok());
  const auto stalled_at = std::chrono::steady_clock::now();

  auto done = await_frame(runtime::kBulkDone, 10s);
  ASSERT_TRUE(done.has_value()) << "the receiver never failed the stalled transfer";
  const auto waited = std::chrono::steady_clock::now() - stalled_at;
  EXPECT_EQ(done->code(), StatusCode::kDeadlineExceeded) << *done;
  EXPECT_NE(done->message().find("bulk transfer 77"), std::string::npos) << *done;
  EXPECT_NE(done->message().find("from node 201"), std::string::npos) << *done;
  EXPECT_NE(done->message().find("1048576 of 4194304 bytes"), std::string::npos) << *done;
  EXPECT_NE(done->message().find("stall_timeout"), std::string::npos) << *done;
  EXPECT_GE(waited, 250ms);  // not before the timeout (less the chunk's own send)
  // Its file is gone and its buffer let go before the sender heard.
  EXPECT_FALSE(std::filesystem::exists(partial));
  ASSERT_TRUE(store_->WriteLine("stats").ok());
  auto stats = store_->ReadLineWithPrefix("STATS ", 10s);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(*stats, "1 0");  // one transfer failed, no bytes held
  runtime_->bridge().SetFrameTap(nullptr);
}

// The read side (a worker on a node without shared storage resuming): a committed shard on the
// store node comes back byte-identical into this process's buffers, checked against the manifest;
// the store node refuses what it does not hold and paths that leave the shard, and a file whose
// bytes changed after the commit is an error naming it, never wrong weights.
TEST_F(BulkTransfer, ACommittedShardIsReadBackVerifiedAgainstItsManifest) {
  ASSERT_NO_FATAL_FAILURE(StartStore());
  Buffer model = Pattern((32u << 20) + 7, 3);
  Buffer optim = Pattern(4096, 4);
  std::vector<training::ShardFile> files;
  files.push_back({"model.bin", BulkSource{model.data(), model.size(), nullptr}});
  files.push_back({"optim/state.bin", BulkSource{optim.data(), optim.size(), nullptr}});
  files.push_back({"empty", BulkSource{}});
  const auto write_start = std::chrono::steady_clock::now();
  ASSERT_TRUE(training::WriteShard(*endpoint_, kStore, ShardTarget{"job1", 1, 20, 0}, files, 60s).ok());
  const double write_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - write_start).count();
  const std::string root = store_dir_.path() + "/job1";
  storage::CheckpointStore* store = Checkpoints();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Commit("job1", root, 1, 20, 1).ok());

  auto reader = training::ShardReader::Attach(*endpoint_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(training::ShardReader::Attach(*endpoint_).status().code(), StatusCode::kAlreadyExists);
  const auto start = std::chrono::steady_clock::now();
  auto read = (*reader)->Read(kStore, "job1", 20, 0, "model.bin", 60s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), model.size());
  EXPECT_EQ(std::memcmp(read->data(), model.data(), model.size()), 0);
  // Beside the same shard's write in this run (into the store node's files, fdatasynced there).
  std::printf("32 MiB committed file read back from the other process in %.3f s; the shard's write to it took "
              "%.3f s (read/write time %.2f)\n",
              seconds, write_seconds, seconds / write_seconds);
  auto small = (*reader)->Read(kStore, "job1", 20, 0, "optim/state.bin", 60s);
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(*small, std::string(reinterpret_cast<const char*>(optim.data()), optim.size()));
  auto empty = (*reader)->Read(kStore, "job1", 20, 0, "empty", 60s);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());

  // What the store node does not hold: NotFound, naming what is missing.
  auto no_step = (*reader)->Read(kStore, "job1", 30, 0, "model.bin", 10s);
  EXPECT_EQ(no_step.status().code(), StatusCode::kNotFound) << no_step.status();
  EXPECT_NE(no_step.status().message().find("no committed step 30"), std::string::npos) << no_step.status();
  EXPECT_EQ((*reader)->Read(kStore, "job1", 20, 1, "model.bin", 10s).status().code(), StatusCode::kNotFound);
  EXPECT_EQ((*reader)->Read(kStore, "job1", 20, 0, "other.bin", 10s).status().code(), StatusCode::kNotFound);
  EXPECT_EQ((*reader)->Read(kStore, "job2", 20, 0, "model.bin", 10s).status().code(), StatusCode::kNotFound);
  // A path that leaves the shard is refused here, and by the store node when a request carries one.
  EXPECT_EQ((*reader)->Read(kStore, "job1", 20, 0, "../manifest.json", 10s).status().code(),
            StatusCode::kInvalidArgument);
  auto escape = training::ShardReadDescriptor({"job1", 20, 0, "model.bin", 1});
  escape.attrs["path"] = "../../../etc/passwd";
  EXPECT_EQ(endpoint_->SendAndWait(kStore, escape, BulkSource{}, 10s).code(), StatusCode::kInvalidArgument);
  escape.attrs["path"] = "model.bin";
  escape.attrs.erase("token");
  EXPECT_EQ(endpoint_->SendAndWait(kStore, escape, BulkSource{}, 10s).code(), StatusCode::kInvalidArgument);

  // The committed bytes changed (same size): the reader's SHA-256 catches it and names the file.
  const std::string committed = training::CommittedShardFilePath(root, 20, 0, "model.bin");
  {
    std::fstream f(committed, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(12345);
    f.put(static_cast<char>(model.data()[12345] ^ 0x5a));
  }
  auto corrupt = (*reader)->Read(kStore, "job1", 20, 0, "model.bin", 60s);
  EXPECT_EQ(corrupt.status().code(), StatusCode::kInternal) << corrupt.status();
  EXPECT_NE(corrupt.status().message().find("data loss: file model.bin of rank 0's shard of committed step 20"),
            std::string::npos)
      << corrupt.status();
  // Truncated: the store node refuses it before sending a byte.
  std::filesystem::resize_file(training::CommittedShardFilePath(root, 20, 0, "optim/state.bin"), 100);
  auto truncated = (*reader)->Read(kStore, "job1", 20, 0, "optim/state.bin", 60s);
  EXPECT_EQ(truncated.status().code(), StatusCode::kInternal) << truncated.status();
  EXPECT_NE(truncated.status().message().find("has 100 bytes, the manifest says 4096"), std::string::npos)
      << truncated.status();
}

}  // namespace
}  // namespace troupe::testing
