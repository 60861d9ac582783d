// storage_writer: commits forever to an LMDB environment, for the crash-consistency test.
// Each transaction appends row n and sets meta/count = n together; every 20 commits it prints
// "COMMITTED n". It is meant to be killed with SIGKILL.
#include <iostream>
#include <string>

#include "storage/lmdb_env.h"
#include "storage/table.h"

using namespace troupe;
using namespace troupe::storage;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: storage_writer DIR\n";
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
