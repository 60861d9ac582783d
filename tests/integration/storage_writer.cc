// storage_writer: commits forever to an LMDB environment, for the crash-consistency tests.
// `storage_writer DIR`: each transaction appends row n and sets meta/count = n together; every 20
// commits it prints "COMMITTED n". `storage_writer --checkpoints DIR ATTEMPT`: first completes what
// attempt ATTEMPT-1 left committable, then, as two ranks of job "crash" would, saves step after
// step under DIR/root (each file: 256 KiB + 1000 * (step % 7) bytes, all 'a' + (step + rank) % 26),
// commits each with CheckpointStore (LMDB in DIR/db), keeps 2 and prints "COMMITTED step".
// Either is meant to be killed with SIGKILL.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "storage/checkpoint_store.h"
#include "storage/lmdb_env.h"
#include "storage/table.h"

using namespace troupe;
using namespace troupe::storage;

namespace {

int Fail(const Status& status) {
  std::cerr << "storage_writer: " << status << "\n";
  return 1;
}

constexpr char kCheckpointJob[] = "crash";

int WriteCheckpoints(const std::string& dir, uint64_t attempt) {
  LmdbOptions options;
  options.path = dir + "/db";
  options.map_size = 64u << 20;
  auto env = LmdbEnv::Open(options);
  if (!env.ok()) return Fail(env.status());
  auto store = CheckpointStore::Open(env->get());
  if (!store.ok()) return Fail(store.status());
  const std::string root = dir + "/root";
  constexpr uint32_t kRanks = 2;
  // What a job supervisor does after a restart: commit what the last attempt completed.
  if (attempt > 0) {
    auto pending = store->CompleteSteps(kCheckpointJob, root, attempt - 1, kRanks);
    if (!pending.ok()) return Fail(pending.status());
    for (uint64_t step : *pending) {
      if (auto record = store->Commit(kCheckpointJob, root, attempt - 1, step, kRanks); !record.ok()) {
        return Fail(record.status());
      }
    }
  }
  auto newest = store->Newest(kCheckpointJob);
  if (!newest.ok()) return Fail(newest.status());
  uint64_t step = *newest ? (*newest)->step + 1 : 1;
  std::cout << "READY" << std::endl;
  for (;; ++step) {
    const std::string staged = CheckpointStore::StagingDir(root, attempt) + "/step-" + std::to_string(step);
    for (uint32_t rank = 0; rank < kRanks; ++rank) {
      const std::string shard = staged + "/rank-" + std::to_string(rank);
      std::error_code ec;
      std::filesystem::create_directories(shard + "/optim", ec);
      for (const char* name : {"model.bin", "optim/state.bin"}) {
        std::ofstream(shard + "/" + name, std::ios::binary)
            << std::string((256u << 10) + 1000 * (step % 7), static_cast<char>('a' + (step + rank) % 26));
      }
      std::ofstream(shard + ".done").close();
    }
    auto record = store->Commit(kCheckpointJob, root, attempt, step, kRanks);
    if (!record.ok()) return Fail(record.status());
    if (Status kept = store->Retain(kCheckpointJob, root, 2, attempt); !kept.ok()) return Fail(kept);
    std::cout << "COMMITTED " << step << std::endl;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--checkpoints") return WriteCheckpoints(argv[2], std::stoull(argv[3]));
  if (argc != 2) {
    std::cerr << "usage: storage_writer DIR | storage_writer --checkpoints DIR ATTEMPT\n";
    return 2;
  }
  LmdbOptions options;
  options.path = argv[1];
  options.map_size = 256u << 20;
  auto env = LmdbEnv::Open(options);
  if (!env.ok()) {
    std::cerr << "storage_writer: " << env.status() << "\n";
    return 1;
  }
  auto meta = Table<std::string, uint64_t>::Open(**env, "meta");
  auto rows = Table<uint64_t, std::string>::Open(**env, "rows");
  if (!meta.ok() || !rows.ok()) return 1;
  std::cout << "READY" << std::endl;
  for (;;) {
    auto txn = (*env)->BeginWrite();
    if (!txn.ok()) return 1;
    auto count = meta->Get(*txn, "count");
    uint64_t n = count.ok() ? *count + 1 : 1;
    // A few kilobytes per row, so a kill often lands in the middle of page writes.
    Status s = rows->Put(*txn, n, std::string(2000 + n % 3000, static_cast<char>('a' + n % 26)));
    if (s.ok()) s = meta->Put(*txn, "count", n);
    if (s.ok()) s = txn->Commit();
    if (!s.ok()) {
      std::cerr << "storage_writer: " << s << "\n";
      return 1;
    }
    if (n % 20 == 0) std::cout << "COMMITTED " << n << std::endl;
  }
}
