// LmdbEnv.
#include "storage/lmdb_env.h"

#include <lmdb.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace troupe::storage {

Status LmdbStatus(int rc, const std::string& what) {
  if (rc == MDB_SUCCESS) return OkStatus();
  std::string text = what + ": " + mdb_strerror(rc);
  switch (rc) {
    case MDB_NOTFOUND:
      return NotFoundError(text);
    case MDB_KEYEXIST:
      return AlreadyExistsError(text);
    case MDB_MAP_FULL:
      return ResourceExhaustedError(text + " (raise map_size)");
    case MDB_DBS_FULL:
      return ResourceExhaustedError(text + " (raise max_tables)");
    case MDB_READERS_FULL:
    case MDB_TXN_FULL:
      return ResourceExhaustedError(text);
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
      return FailedPreconditionError(text + " (not an LMDB environment of this version)");
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
      return InternalError(text + " (the database is corrupted)");
    case EACCES:
    case EPERM:
      return PermissionDeniedError(text);
    case ENOENT:
    case ENOTDIR:
      return InvalidArgumentError(text);
    case ENOSPC:
      return ResourceExhaustedError(text + " (disk full)");
    default:
      return InternalError(text);
  }
}

namespace {

MDB_val Val(std::string_view s) {
  MDB_val v;
  v.mv_size = s.size();
  v.mv_data = const_cast<char*>(s.data());
  return v;
}

std::string_view View(const MDB_val& v) { return {static_cast<const char*>(v.mv_data), v.mv_size}; }

}  // namespace

// ---- Txn ----

Txn::Txn(Txn&& other) noexcept { *this = std::move(other); }

Txn& Txn::operator=(Txn&& other) noexcept {
  if (this != &other) {
    Abort();
    txn_ = other.txn_;
    writable_ = other.writable_;
    path_ = std::move(other.path_);
    other.txn_ = nullptr;
  }
  return *this;
}

Txn::~Txn() { Abort(); }

void Txn::Abort() {
  if (txn_ != nullptr) mdb_txn_abort(txn_);
  txn_ = nullptr;
}

Status Txn::Commit() {
  if (txn_ == nullptr) return FailedPreconditionError("commit: the transaction has already ended");
  int rc = mdb_txn_commit(txn_);
  txn_ = nullptr;  // committed or aborted by LMDB either way
  return LmdbStatus(rc, "commit in " + path_);
}

StatusOr<std::string> Txn::Get(const TableId& table, std::string_view key) const {
  if (txn_ == nullptr) return FailedPreconditionError("get: the transaction has ended");
  MDB_val k = Val(key), v;
  int rc = mdb_get(txn_, table.dbi, &k, &v);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "get from table '" + table.name + "' in " + path_);
  return std::string(View(v));
}

Status Txn::ForEach(const TableId& table, std::string_view from,
                    const std::function<bool(std::string_view, std::string_view)>& fn) const {
  if (txn_ == nullptr) return FailedPreconditionError("scan: the transaction has ended");
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(txn_, table.dbi, &cursor);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "scan table '" + table.name + "' in " + path_);
  MDB_val k = Val(from), v;
  rc = from.empty() ? mdb_cursor_get(cursor, &k, &v, MDB_FIRST) : mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE);
  while (rc == MDB_SUCCESS) {
    if (!fn(View(k), View(v))) break;
    rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cursor);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return LmdbStatus(rc, "scan table '" + table.name + "' in " + path_);
  return OkStatus();
}

StatusOr<uint64_t> Txn::Count(const TableId& table) const {
  if (txn_ == nullptr) return FailedPreconditionError("count: the transaction has ended");
  MDB_stat stat;
  int rc = mdb_stat(txn_, table.dbi, &stat);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "count table '" + table.name + "' in " + path_);
  return static_cast<uint64_t>(stat.ms_entries);
}

Status Txn::Put(const TableId& table, std::string_view key, std::string_view value) {
  if (txn_ == nullptr || !writable_) return FailedPreconditionError("put: not in an open write transaction");
  if (key.empty()) return InvalidArgumentError("put into table '" + table.name + "': empty key");
  MDB_val k = Val(key), v = Val(value);
  return LmdbStatus(mdb_put(txn_, table.dbi, &k, &v, 0), "put into table '" + table.name + "' in " + path_);
}

Status Txn::Delete(const TableId& table, std::string_view key) {
  if (txn_ == nullptr || !writable_) return FailedPreconditionError("delete: not in an open write transaction");
  MDB_val k = Val(key);
  return LmdbStatus(mdb_del(txn_, table.dbi, &k, nullptr), "delete from table '" + table.name + "' in " + path_);
}

// ---- LmdbEnv ----

StatusOr<std::unique_ptr<LmdbEnv>> LmdbEnv::Open(const LmdbOptions& options) {
  if (options.path.empty()) return InvalidArgumentError("storage: the data directory path is empty");
  if (mkdir(options.path.c_str(), 0700) != 0 && errno != EEXIST) {
    return LmdbStatus(errno, "storage: cannot create data directory " + options.path);
  }
  struct stat st;
  if (stat(options.path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return InvalidArgumentError("storage: " + options.path + " is not a directory");
  }
  std::unique_ptr<LmdbEnv> env(new LmdbEnv(options));
  int rc = mdb_env_create(&env->env_);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "storage: creating the environment");
  if ((rc = mdb_env_set_mapsize(env->env_, options.map_size)) != MDB_SUCCESS ||
      (rc = mdb_env_set_maxdbs(env->env_, options.max_tables)) != MDB_SUCCESS) {
    return LmdbStatus(rc, "storage: configuring " + options.path);
  }
  unsigned flags = MDB_NOTLS;  // read transactions are not tied to a thread
  if (options.no_sync) flags |= MDB_NOSYNC;
  rc = mdb_env_open(env->env_, options.path.c_str(), flags, 0600);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "storage: opening " + options.path);
  return env;
}

LmdbEnv::~LmdbEnv() {
  if (env_ != nullptr) mdb_env_close(env_);
}

StatusOr<TableId> LmdbEnv::OpenTable(const std::string& name) {
  if (name.empty()) return InvalidArgumentError("storage: empty table name");
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "storage: opening table '" + name + "' in " + options_.path);
  MDB_dbi dbi = 0;
  rc = mdb_dbi_open(txn, name.c_str(), MDB_CREATE, &dbi);
  if (rc != MDB_SUCCESS) {
    mdb_txn_abort(txn);
    return LmdbStatus(rc, "storage: opening table '" + name + "' in " + options_.path);
  }
  rc = mdb_txn_commit(txn);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "storage: creating table '" + name + "' in " + options_.path);
  return TableId{dbi, name};
}

StatusOr<Txn> LmdbEnv::BeginRead() {
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "storage: read transaction in " + options_.path);
  return Txn(txn, false, options_.path);
}

StatusOr<Txn> LmdbEnv::BeginWrite() {
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
  if (rc != MDB_SUCCESS) return LmdbStatus(rc, "storage: write transaction in " + options_.path);
  return Txn(txn, true, options_.path);
}

}  // namespace troupe::storage
