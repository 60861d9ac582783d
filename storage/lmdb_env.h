// LmdbEnv: durable state on LMDB (an environment of named tables, read and write transactions),
// with LMDB's codes translated to troupe Status at this boundary. Knows nothing of actors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

struct MDB_env;
struct MDB_txn;

namespace troupe::storage {

struct LmdbOptions {
  /// The environment's directory (created if missing; its parent must exist).
  std::string path;
  /// The most the database may grow to (LMDB reserves the address space, not the disk).
  uint64_t map_size = uint64_t{1} << 30;
  /// How many named tables may exist.
  unsigned max_tables = 64;
  /// Skip fsync at commit (faster; a power loss may then lose the last commits, never
  /// consistency). Process crashes (kill -9) lose nothing either way.
  bool no_sync = false;
};

/// A named table inside the environment (an LMDB "dbi"). Valid while its LmdbEnv lives.
struct TableId {
  unsigned dbi = 0;
  std::string name;
};

class LmdbEnv;

/// A transaction. A read transaction sees one consistent snapshot; a write transaction's
/// changes become visible (and durable) all at once at Commit(), or not at all. Destroying an
/// uncommitted transaction aborts it. Not thread-safe: use a transaction on one thread at a
/// time (LMDB allows one write transaction at a time per environment; BeginWrite waits).
class Txn {
 public:
  Txn(Txn&& other) noexcept;
  Txn& operator=(Txn&& other) noexcept;
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  ~Txn();

  bool writable() const { return writable_; }

  /// The value under `key`; NotFound if there is none.
  StatusOr<std::string> Get(const TableId& table, std::string_view key) const;
  /// Calls `fn(key, value)` for every entry in key order (bytewise) starting at `from`, until
  /// it returns false.
  Status ForEach(const TableId& table, std::string_view from,
                 const std::function<bool(std::string_view key, std::string_view value)>& fn) const;
  /// How many entries the table has.
  StatusOr<uint64_t> Count(const TableId& table) const;

  /// Write transactions only (FailedPrecondition otherwise).
  Status Put(const TableId& table, std::string_view key, std::string_view value);
  /// NotFound if the key was not there.
  Status Delete(const TableId& table, std::string_view key);
  Status Commit();
  void Abort();

 private:
  friend class LmdbEnv;
  Txn(MDB_txn* txn, bool writable, std::string path) : txn_(txn), writable_(writable), path_(std::move(path)) {}
  MDB_txn* txn_ = nullptr;
  bool writable_ = false;
  std::string path_;  // for error messages
};

/// One LMDB environment (one directory). Thread-safe; open it once per process.
class LmdbEnv {
 public:
  /// Opens (creating if needed) the environment. Errors name the path and what to do.
  static StatusOr<std::unique_ptr<LmdbEnv>> Open(const LmdbOptions& options);
  ~LmdbEnv();
  LmdbEnv(const LmdbEnv&) = delete;
  LmdbEnv& operator=(const LmdbEnv&) = delete;

  /// The table called `name`, created if it does not exist.
  StatusOr<TableId> OpenTable(const std::string& name);
  StatusOr<Txn> BeginRead();
  StatusOr<Txn> BeginWrite();

  const std::string& path() const { return options_.path; }

 private:
  explicit LmdbEnv(LmdbOptions options) : options_(std::move(options)) {}
  LmdbOptions options_;
  MDB_env* env_ = nullptr;
};

/// The Status for an LMDB return code, saying what was being done and where.
Status LmdbStatus(int rc, const std::string& what);

}  // namespace troupe::storage
