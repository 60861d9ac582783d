// CheckpointStore: shard checksums, manifest, rename, then the LMDB record (docs/checkpoints.md).
#include "storage/checkpoint_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace troupe::storage {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Reads of 1 MiB: the chunk is still in the core's cache when it is hashed (4 MiB measured slower).
constexpr size_t kChunkBytes = size_t{1} << 20;
constexpr size_t kMaxManifestBytes = size_t{64} << 20;
constexpr int kManifestFormat = 1;

// An I/O failure: what was being done, the path and errno's text, with a code a caller can act on.
Status IoError(const std::string& what, const std::string& path, int err) {
  std::string text = "cannot " + what + " " + path + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return NotFoundError(text);
    case ENOSPC:
    case EDQUOT:
      return ResourceExhaustedError(text);
    case EIO:
    case ESTALE:
    case ETIMEDOUT:
      return UnavailableError(text);
    default:
      return InternalError(text);
  }
}

// Incremental SHA-256 through OpenSSL's EVP interface.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    // Only allocation can fail here, and a process out of memory cannot checkpoint anyway.
    if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) std::abort();
  }
  void Update(const void* data, size_t size) { EVP_DigestUpdate(ctx_.get(), data, size); }
  std::string HexDigest() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    EVP_DigestFinal_ex(ctx_.get(), digest, &size);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex;
    for (unsigned int i = 0; i < size; ++i) {
      hex += kHex[digest[i] >> 4];
      hex += kHex[digest[i] & 0xf];
    }
    return hex;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

}  // namespace

std::string Sha256Hex(std::string_view bytes) {
  Sha256 sha;
  sha.Update(bytes.data(), bytes.size());
  return sha.HexDigest();
}

namespace {

// What ends a read early: another file of the same call failed, or the job's checkpoints are
// being deleted (DeleteJob waits for the call; it need not finish reading).
struct StopFlags {
  const std::atomic<bool>* failed = nullptr;
  const std::atomic<int>* deleting = nullptr;
  bool Deleting() const { return deleting != nullptr && deleting->load(std::memory_order_relaxed) > 0; }
  bool Set() const { return Deleting() || (failed != nullptr && failed->load(std::memory_order_relaxed)); }
};

// Reads the regular file at `path` (never through a symlink) in kChunkBytes chunks: its size
// and SHA-256. With `sync` it first starts the writeback of the file's dirty pages
// (sync_file_range, a hint whose failure is ignored) so that the disk writes while the bytes are
// hashed, and at the end waits for them with fdatasync: the contents and the size are durable
// then (fdatasync skips only metadata that reading the data does not need, such as mtime).
// `contents`, if given, receives the bytes (small files only). `stop` ends the read early with
// Cancelled.
Status HashFile(const std::string& path, bool sync, CheckpointFile* out, std::string* contents = nullptr,
                StopFlags stop = {}) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == ELOOP) {
    return InvalidArgumentError(path + " is a symlink (a checkpoint holds only regular files and directories)");
  }
  if (fd < 0) return IoError("open", path, errno);
  auto fail = [&](Status status) {
    ::close(fd);
    return status;
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(IoError("stat", path, errno));
  if (!S_ISREG(st.st_mode)) return fail(InvalidArgumentError(path + " is not a regular file"));
  if (sync) (void)::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  Sha256 sha;
  std::unique_ptr<char[]> buffer(new char[kChunkBytes]);
  uint64_t size = 0;
  for (;;) {
    if (stop.Set()) {
      return fail(CancelledError("reading " + path + " stopped: " +
                                 (stop.Deleting() ? "the job's checkpoints are being deleted"
                                                  : "another file of the checkpoint failed")));
    }
    const ssize_t n = ::read(fd, buffer.get(), kChunkBytes);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(IoError("read", path, errno));
    if (n == 0) break;
    sha.Update(buffer.get(), static_cast<size_t>(n));
    size += static_cast<uint64_t>(n);
    if (contents != nullptr) {
      if (contents->size() + static_cast<size_t>(n) > kMaxManifestBytes) {
        return fail(InvalidArgumentError(path + " is larger than " + std::to_string(kMaxManifestBytes) + " bytes"));
      }
      contents->append(buffer.get(), static_cast<size_t>(n));
    }
  }
  if (sync && ::fdatasync(fd) != 0) return fail(IoError("fsync", path, errno));
  ::close(fd);
  out->size = size;
  out->sha256 = sha.HexDigest();
  return OkStatus();
}

// Runs `work(i, stop)` for every i in [0, n) on a bounded pool: the calling thread and up to
// min(hardware_concurrency, kMaxCommitThreads, n) - 1 more, each taking the next index. Once a
// call fails or `*deleting` (may be null) is above 0, `stop` is set (calls in flight may end
// early; no new one starts) and the result is the failure of the lowest index that did not merely
// stop (Cancelled from `stop`), else that Cancelled; else OK.
// Shards are independent files: hashing several at once uses every core (SHA-256 is the CPU
// part of a commit) and keeps several fsyncs in flight for the disk to merge.
Status ForEachParallel(size_t n, const std::atomic<int>* deleting,
                       const std::function<Status(size_t, const StopFlags&)>& work) {
  const size_t hardware = std::max<unsigned>(1, std::thread::hardware_concurrency());
  const size_t threads = std::min({hardware, CheckpointStore::kMaxCommitThreads, n});
  std::vector<Status> results(n);
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  const StopFlags stop{&failed, deleting};
  auto run = [&] {
    for (size_t i; !stop.Set() && (i = next.fetch_add(1)) < n;) {
      results[i] = work(i, stop);
      if (!results[i].ok()) failed.store(true);
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(run);
  run();
  for (std::thread& t : pool) t.join();
  const Status* first_stopped = nullptr;
  for (const Status& status : results) {
    if (status.ok()) continue;
    if (status.code() != StatusCode::kCancelled) return status;
    if (first_stopped == nullptr) first_stopped = &status;
  }
  if (first_stopped != nullptr) return *first_stopped;
  if (stop.Deleting()) return CancelledError("stopped: the job's checkpoints are being deleted");
  return OkStatus();
}

Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("open the directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  return rc == 0 ? OkStatus() : IoError("fsync the directory", dir, err);
}

enum class Kind { kMissing, kDirectory, kRegular, kOther };

// What is at `path`, not following a symlink.
StatusOr<Kind> KindOf(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Kind::kMissing;
    return IoError("stat", path, errno);
  }
  if (S_ISDIR(st.st_mode)) return Kind::kDirectory;
  if (S_ISREG(st.st_mode)) return Kind::kRegular;
  return Kind::kOther;
}

// The entries of `dir` as (name, kind), not following symlinks. A missing `dir` has none.
StatusOr<std::vector<std::pair<std::string, Kind>>> ListDir(const std::string& dir) {
  std::vector<std::pair<std::string, Kind>> entries;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec == std::errc::no_such_file_or_directory) return entries;
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    Kind kind = Kind::kOther;
    if (fs::is_directory(st)) kind = Kind::kDirectory;
    if (fs::is_regular_file(st)) kind = Kind::kRegular;
    entries.emplace_back(it->path().filename().string(), kind);
  }
  if (ec) return IoError("list the directory", dir, ec.value());
  std::sort(entries.begin(), entries.end());
  return entries;
}

// N from "<prefix>N" where N is canonical decimal (no sign, no leading zero, fits 64 bits).
std::optional<uint64_t> ParseNumbered(const std::string& name, const std::string& prefix) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size());
  if (digits.size() > 20 || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  uint64_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (n > (UINT64_MAX - digit) / 10) return std::nullopt;
    n = n * 10 + digit;
  }
  return n;
}

std::string RankDir(const std::string& step_dir, uint32_t rank) { return step_dir + "/rank-" + std::to_string(rank); }
std::string Marker(const std::string& step_dir, uint32_t rank) { return RankDir(step_dir, rank) + ".done"; }

// A regular file of a shard being committed: where it is, whose it is, and (once read) what the
// manifest records of it.
struct ShardFile {
  std::string path;
  uint32_t rank = 0;
  CheckpointFile file;
};

// Adds every regular file under `dir` (rank `rank`'s; its path relative to the shard is `rel` +
// name) to `files`, and `dir` and every directory under it to `dirs`. Refuses anything else.
Status ListShard(const std::string& dir, const std::string& rel, uint32_t rank, std::vector<ShardFile>* files,
                 std::vector<std::string>* dirs) {
  ASSIGN_OR_RETURN(auto entries, ListDir(dir));
  dirs->push_back(dir);
  for (const auto& [name, kind] : entries) {
    const std::string path = dir + "/" + name;
    if (kind == Kind::kDirectory) {
      RETURN_IF_ERROR(ListShard(path, rel + name + "/", rank, files, dirs));
    } else if (kind == Kind::kRegular) {
      ShardFile file;
      file.path = path;
      file.rank = rank;
      file.file.path = rel + name;
      files->push_back(std::move(file));
    } else {
      return InvalidArgumentError(path + " is a symlink, device, fifo or socket: a checkpoint shard holds only " +
                                  "regular files and directories");
    }
  }
  return OkStatus();
}

// The manifest: the record without what only the store knows (dir, manifest_sha256).
json ManifestJson(const CheckpointRecord& record) {
  json ranks = json::array();
  for (size_t r = 0; r < record.rank_files.size(); ++r) {
    json files = json::array();
    for (const CheckpointFile& f : record.rank_files[r]) {
      files.push_back({{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}});
    }
    ranks.push_back({{"rank", r}, {"files", std::move(files)}});
  }
  return {{"format", kManifestFormat},
          {"job", record.job},
          {"step", record.step},
          {"attempt", record.attempt},
          {"world_size", record.world_size},
          {"total_bytes", record.total_bytes},
          {"unix_ms", record.unix_ms},
          {"ranks", std::move(ranks)}};
}

// JSON text; InvalidArgument when a file name is not UTF-8 (JSON cannot hold it).
StatusOr<std::string> Dump(const json& value, int indent) {
  try {
    return value.dump(indent);
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("a checkpoint file name is not valid UTF-8: ") + e.what());
  }
}

// A record from a manifest or a stored record (`what` names it in errors).
StatusOr<CheckpointRecord> RecordFromJson(std::string_view text, const std::string& what) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InternalError(what + " is not a JSON object");
  try {
    if (j.at("format").get<int>() != kManifestFormat) {
      return InternalError(what + " has format " + j.at("format").dump() + "; this troupe reads format " +
                           std::to_string(kManifestFormat));
    }
    CheckpointRecord record;
    record.job = j.at("job").get<std::string>();
    record.step = j.at("step").get<uint64_t>();
    record.attempt = j.at("attempt").get<uint64_t>();
    record.world_size = j.at("world_size").get<uint32_t>();
    record.total_bytes = j.at("total_bytes").get<uint64_t>();
    record.unix_ms = j.at("unix_ms").get<int64_t>();
    record.dir = j.value("dir", "");
    record.manifest_sha256 = j.value("manifest_sha256", "");
    const json& ranks = j.at("ranks");
    if (ranks.size() != record.world_size) {
      return InternalError(what + " lists " + std::to_string(ranks.size()) + " ranks for world_size " +
                           std::to_string(record.world_size));
    }
    for (const json& rank : ranks) {
      std::vector<CheckpointFile>& files = record.rank_files.emplace_back();
      for (const json& f : rank.at("files")) {
        files.push_back({f.at("path").get<std::string>(), f.at("size").get<uint64_t>(), f.at("sha256").get<std::string>()});
      }
    }
    return record;
  } catch (const json::exception& e) {
    return InternalError(what + " is malformed: " + e.what());
  }
}

// A file that a manifest names must stay inside its shard: no absolute path, no "..", no "."
// and no empty component.
bool IsContainedPath(const std::string& path) {
  if (path.empty() || path.front() == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

// OK when manifest.json and every file of `record` (under `dir`) are there as recorded; else
// the status says which file and what is wrong.
Status Verify(const CheckpointRecord& record, const std::string& dir, const std::atomic<int>* deleting = nullptr) {
  const std::string manifest_path = dir + "/manifest.json";
  CheckpointFile manifest;
  RETURN_IF_ERROR(HashFile(manifest_path, /*sync=*/false, &manifest));
  if (!record.manifest_sha256.empty() && manifest.sha256 != record.manifest_sha256) {
    return InternalError("data loss: " + manifest_path + " has SHA-256 " + manifest.sha256 + ", the record says " +
                         record.manifest_sha256);
  }
  std::vector<std::pair<uint32_t, const CheckpointFile*>> files;  // (rank, as the manifest lists it)
  for (size_t r = 0; r < record.rank_files.size(); ++r) {
    for (const CheckpointFile& expected : record.rank_files[r]) files.emplace_back(static_cast<uint32_t>(r), &expected);
  }
  return ForEachParallel(files.size(), deleting, [&](size_t i, const StopFlags& stop) {
    const CheckpointFile& expected = *files[i].second;
    const std::string path = RankDir(dir, files[i].first) + "/" + expected.path;
    if (!IsContainedPath(expected.path)) return InternalError("the manifest names " + path + ", outside its shard");
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) != expected.size) {
      return InternalError("data loss: " + path + " has " + std::to_string(st.st_size) + " bytes, the manifest says " +
                           std::to_string(expected.size));
    }
    CheckpointFile actual;
    RETURN_IF_ERROR(HashFile(path, /*sync=*/false, &actual, nullptr, stop));
    if (actual.size != expected.size || actual.sha256 != expected.sha256) {
      return InternalError("data loss: " + path + " has SHA-256 " + actual.sha256 + ", the manifest says " +
                           expected.sha256);
    }
    return OkStatus();
  });
}

Status RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  return ec ? IoError("remove", path, ec.value()) : OkStatus();
}

constexpr char kTrashPrefix[] = ".trash-";

// Removes the directory `path` so that no crash leaves half of it under its name: a half-deleted
// step or staging directory could still look committable (a manifest, all markers) with files
// missing. It is renamed to ".trash-<name>" beside itself first (durably), then removed.
Status Discard(const std::string& path) {
  const fs::path p(path);
  const std::string parent = p.parent_path().string();
  const std::string trash = parent + "/" + kTrashPrefix + p.filename().string();
  RETURN_IF_ERROR(RemoveTree(trash));  // left by an earlier crash
  if (std::rename(path.c_str(), trash.c_str()) != 0) {
    if (errno == ENOENT) return OkStatus();
    return IoError("rename " + path + " to", trash, errno);
  }
  RETURN_IF_ERROR(FsyncDir(parent));
  return RemoveTree(trash);
}

std::string Key(const std::string& job, uint64_t step) {
  char digits[24];
  std::snprintf(digits, sizeof digits, "%020" PRIu64, step);
  return job + "/" + digits;
}

// `root` made absolute and normal, without a trailing '/'. InvalidArgument for "" and "/".
StatusOr<std::string> NormalRoot(const std::string& root) {
  if (root.empty()) return InvalidArgumentError("a checkpoint root directory is empty");
  std::error_code ec;
  fs::path path = fs::absolute(root, ec);
  if (ec) return IoError("make absolute", root, ec.value());
  std::string normal = path.lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  if (normal == "/") return InvalidArgumentError("a checkpoint root directory cannot be '/'");
  return normal;
}

Status ValidateWorldSize(uint32_t world_size) {
  if (world_size == 0) return InvalidArgumentError("a checkpoint needs a world size of at least 1");
  return OkStatus();
}

// Phase 1 of a commit from staging: checks the markers, checksums and fsyncs every shard, writes
// manifest.json and renames the step directory into place. A committed directory without a
// record already there is garbage of another attempt or a crash; the staged one replaces it.
StatusOr<CheckpointRecord> CommitFiles(const std::string& job, const std::string& root, uint64_t attempt,
                                       uint64_t step, uint32_t world_size, int64_t unix_ms,
                                       const std::atomic<int>* deleting) {
  const std::string staging = CheckpointStore::StagingDir(root, attempt);
  const std::string staged = staging + "/step-" + std::to_string(step);
  const std::string committed = CheckpointStore::CommittedDir(root, step);
  for (uint32_t r = 0; r < world_size; ++r) {
    ASSIGN_OR_RETURN(Kind marker, KindOf(Marker(staged, r)));
    if (marker != Kind::kRegular) {
      return NotFoundError("rank " + std::to_string(r) + " has not marked step " + std::to_string(step) +
                           " done: " + Marker(staged, r) + " does not exist");
    }
  }
  CheckpointRecord record;
  record.job = job;
  record.step = step;
  record.attempt = attempt;
  record.world_size = world_size;
  record.unix_ms = unix_ms;
  record.dir = committed;
  std::vector<ShardFile> files;
  std::vector<std::string> dirs;
  for (uint32_t r = 0; r < world_size; ++r) {
    const std::string shard = RankDir(staged, r);
    ASSIGN_OR_RETURN(Kind kind, KindOf(shard));
    if (kind == Kind::kMissing && ::mkdir(shard.c_str(), 0755) != 0) return IoError("create", shard, errno);
    if (kind != Kind::kMissing && kind != Kind::kDirectory) {
      return InvalidArgumentError(shard + " is not a directory (a symlink?): a rank's shard must be one");
    }
    RETURN_IF_ERROR(ListShard(shard, "", r, &files, &dirs));
  }
  // Every file of every shard, checksummed and durable, then every directory holding them.
  RETURN_IF_ERROR(ForEachParallel(files.size(), deleting, [&](size_t i, const StopFlags& stop) {
    return HashFile(files[i].path, /*sync=*/true, &files[i].file, nullptr, stop);
  }));
  RETURN_IF_ERROR(ForEachParallel(dirs.size(), deleting, [&](size_t i, const StopFlags&) { return FsyncDir(dirs[i]); }));
  record.rank_files.resize(world_size);
  for (ShardFile& f : files) {
    record.total_bytes += f.file.size;
    record.rank_files[f.rank].push_back(std::move(f.file));
  }
  for (auto& rank_files : record.rank_files) {
    std::sort(rank_files.begin(), rank_files.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  }
  ASSIGN_OR_RETURN(std::string manifest, Dump(ManifestJson(record), 2));
  manifest += "\n";
  record.manifest_sha256 = Sha256Hex(manifest);
  RETURN_IF_ERROR(WriteFileAtomically(staged + "/manifest.json", manifest));
  RETURN_IF_ERROR(Discard(committed));
  if (std::rename(staged.c_str(), committed.c_str()) != 0) {
    return IoError("rename " + staged + " to", committed, errno);
  }
  RETURN_IF_ERROR(FsyncDir(root));
  RETURN_IF_ERROR(FsyncDir(staging));
  return record;
}

// Phase 1 after a crash between rename and record: the committed directory is complete if it is
// this commit's and matches its manifest.
StatusOr<CheckpointRecord> AdoptCommitted(const std::string& job, const std::string& root, uint64_t attempt,
                                          uint64_t step, uint32_t world_size, const std::atomic<int>* deleting) {
  const std::string committed = CheckpointStore::CommittedDir(root, step);
  ASSIGN_OR_RETURN(CheckpointRecord record, ReadManifest(committed));
  if (record.job != job || record.step != step || record.attempt != attempt || record.world_size != world_size) {
    return FailedPreconditionError(committed + " holds step " + std::to_string(record.step) + " of job '" +
                                   record.job + "', attempt " + std::to_string(record.attempt) + ", world size " +
                                   std::to_string(record.world_size) + "; this commit is step " +
                                   std::to_string(step) + " of '" + job + "', attempt " + std::to_string(attempt) +
                                   ", world size " + std::to_string(world_size));
  }
  RETURN_IF_ERROR(Verify(record, committed, deleting));
  return record;
}

}  // namespace

StatusOr<CheckpointRecord> ReadManifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  CheckpointFile manifest;
  std::string text;
  RETURN_IF_ERROR(HashFile(path, /*sync=*/false, &manifest, &text));
  ASSIGN_OR_RETURN(CheckpointRecord record, RecordFromJson(text, path));
  record.dir = dir;
  record.manifest_sha256 = manifest.sha256;
  return record;
}

Status ValidateCheckpointJobName(const std::string& job) {
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("checkpoint job name '" + job + "' " + why);
  };
  if (job.empty()) return bad("is empty");
  if (job.size() > 128) return bad("is longer than 128 characters");
  if (!std::isalnum(static_cast<unsigned char>(job[0]))) return bad("must start with a letter or digit");
  for (char c : job) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return bad("may hold only letters, digits, '.', '_' and '-'");
    }
  }
  return OkStatus();
}

// One job's calls, one at a time.
struct CheckpointStore::JobLock {
  std::mutex mutex;
  // DeleteJobs waiting for `mutex`: a Commit or verification holding it stops reading.
  std::atomic<int> deleting{0};
};

struct CheckpointStore::Locks {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<JobLock>> jobs;
};

CheckpointStore::CheckpointStore(LmdbEnv* env, Table<std::string, std::string> table, const Clock* clock)
    : env_(env), table_(std::move(table)), clock_(clock), locks_(std::make_shared<Locks>()) {}

std::shared_ptr<CheckpointStore::JobLock> CheckpointStore::LockOf(const std::string& job) {
  std::lock_guard<std::mutex> guard(locks_->mutex);
  std::shared_ptr<JobLock>& lock = locks_->jobs[job];
  if (!lock) lock = std::make_shared<JobLock>();
  return lock;
}

StatusOr<CheckpointStore> CheckpointStore::Open(LmdbEnv* env, const Clock* clock) {
  ASSIGN_OR_RETURN(auto table, (Table<std::string, std::string>::Open(*env, kTableName)));
  return CheckpointStore(env, std::move(table), clock);
}

std::string CheckpointStore::StagingDir(const std::string& root, uint64_t attempt) {
  return root + "/attempt-" + std::to_string(attempt);
}

std::string CheckpointStore::CommittedDir(const std::string& root, uint64_t step) {
  return root + "/step-" + std::to_string(step);
}

StatusOr<std::vector<uint64_t>> CheckpointStore::CompleteSteps(const std::string& job, const std::string& root,
                                                               uint64_t attempt, uint32_t world_size) {
  RETURN_IF_ERROR(ValidateCheckpointJobName(job));
  RETURN_IF_ERROR(ValidateWorldSize(world_size));
  ASSIGN_OR_RETURN(const std::string dir, NormalRoot(root));
  const std::shared_ptr<JobLock> lock = LockOf(job);
  std::lock_guard<std::mutex> guard(lock->mutex);
  ASSIGN_OR_RETURN(auto records, List(job));
  std::set<uint64_t> committed;
  for (const CheckpointRecord& record : records) committed.insert(record.step);
  std::set<uint64_t> steps;
  const std::string staging = StagingDir(dir, attempt);
  ASSIGN_OR_RETURN(auto staged, ListDir(staging));
  for (const auto& [name, kind] : staged) {
    const auto step = ParseNumbered(name, "step-");
    if (!step || kind != Kind::kDirectory || committed.count(*step) > 0) continue;
    bool done = true;
    for (uint32_t r = 0; r < world_size && done; ++r) {
      ASSIGN_OR_RETURN(Kind marker, KindOf(Marker(staging + "/" + name, r)));
      done = marker == Kind::kRegular;
    }
    if (done) steps.insert(*step);
  }
  // A step renamed into place whose record a crash prevented: Commit() completes it.
  ASSIGN_OR_RETURN(auto top, ListDir(dir));
  for (const auto& [name, kind] : top) {
    const auto step = ParseNumbered(name, "step-");
    if (!step || kind != Kind::kDirectory || committed.count(*step) > 0) continue;
    CheckpointFile ignored;
    std::string text;
    if (!HashFile(dir + "/" + name + "/manifest.json", /*sync=*/false, &ignored, &text).ok()) continue;
    auto manifest = RecordFromJson(text, "manifest");
    if (manifest.ok() && manifest->job == job && manifest->step == *step && manifest->attempt == attempt &&
        manifest->world_size == world_size) {
      steps.insert(*step);
    }
  }
  return std::vector<uint64_t>(steps.begin(), steps.end());
}

StatusOr<CheckpointRecord> CheckpointStore::Commit(const std::string& job, const std::string& root, uint64_t attempt,
                                                   uint64_t step, uint32_t world_size) {
  RETURN_IF_ERROR(ValidateCheckpointJobName(job));
  RETURN_IF_ERROR(ValidateWorldSize(world_size));
  ASSIGN_OR_RETURN(const std::string dir, NormalRoot(root));
  const std::shared_ptr<JobLock> lock = LockOf(job);
  std::lock_guard<std::mutex> guard(lock->mutex);
  ASSIGN_OR_RETURN(auto existing, Find(job, step));
  if (existing) {
    return AlreadyExistsError("step " + std::to_string(step) + " of job '" + job + "' is already committed in " +
                              existing->dir);
  }
  const std::string staging = StagingDir(dir, attempt);
  const std::string staged = staging + "/step-" + std::to_string(step);
  const std::string committed = CommittedDir(dir, step);
  ASSIGN_OR_RETURN(Kind staged_kind, KindOf(staged));
  ASSIGN_OR_RETURN(Kind committed_kind, KindOf(committed));
  if (staged_kind == Kind::kRegular || staged_kind == Kind::kOther) {
    return InvalidArgumentError(staged + " is not a directory (a symlink?): a staged step must be one");
  }
  StatusOr<CheckpointRecord> record = NotFoundError("step " + std::to_string(step) + " of job '" + job +
                                                    "' is neither staged in " + staged + " nor renamed to " + committed);
  if (staged_kind == Kind::kDirectory) {
    record = CommitFiles(job, dir, attempt, step, world_size, clock_->UnixMs(), &lock->deleting);
  } else if (committed_kind == Kind::kDirectory) {
    record = AdoptCommitted(job, dir, attempt, step, world_size, &lock->deleting);
  }
  if (lock->deleting.load() > 0) {
    return CancelledError("the commit of step " + std::to_string(step) + " of job '" + job +
                          "' was cancelled: the job's checkpoints are being deleted");
  }
  if (!record.ok()) return record.status();
  // Phase 2: the record is the commit point.
  json stored = ManifestJson(*record);
  stored["dir"] = record->dir;
  stored["manifest_sha256"] = record->manifest_sha256;
  ASSIGN_OR_RETURN(std::string value, Dump(stored, -1));
  ASSIGN_OR_RETURN(Txn txn, env_->BeginWrite());
  RETURN_IF_ERROR(table_.Put(txn, Key(job, step), value));
  RETURN_IF_ERROR(txn.Commit());
  // Best effort: the checkpoint is committed whether or not old garbage goes away now.
  RemoveUnrecordedSteps(job, dir, step).IgnoreError();
  return record;
}

StatusOr<std::vector<CheckpointRecord>> CheckpointStore::List(const std::string& job) {
  RETURN_IF_ERROR(ValidateCheckpointJobName(job));
  const std::string prefix = job + "/";
  ASSIGN_OR_RETURN(Txn txn, env_->BeginRead());
  std::vector<CheckpointRecord> records;
  Status failure;
  RETURN_IF_ERROR(txn.ForEach(table_.id(), prefix, [&](std::string_view key, std::string_view value) {
    if (key.substr(0, prefix.size()) != prefix) return false;
    auto record = RecordFromJson(value, "the checkpoint record '" + std::string(key) + "'");
    if (!record.ok()) {
      failure = record.status();
      return false;
    }
    records.push_back(std::move(*record));
    return true;
  }));
  RETURN_IF_ERROR(failure);
  return records;
}

StatusOr<std::optional<CheckpointRecord>> CheckpointStore::Newest(const std::string& job) {
  ASSIGN_OR_RETURN(auto records, List(job));
  if (records.empty()) return std::optional<CheckpointRecord>();
  return std::optional<CheckpointRecord>(std::move(records.back()));
}

StatusOr<std::optional<CheckpointRecord>> CheckpointStore::NewestValid(const std::string& job,
                                                                       std::vector<std::string>* fallbacks) {
  return NewestPassing(job, fallbacks, [](const CheckpointRecord& record, JobLock& lock) {
    return Verify(record, record.dir, &lock.deleting);
  });
}

StatusOr<std::optional<CheckpointRecord>> CheckpointStore::NewestPassing(
    const std::string& job, std::vector<std::string>* fallbacks,
    const std::function<Status(const CheckpointRecord&, JobLock&)>& check) {
  RETURN_IF_ERROR(ValidateCheckpointJobName(job));
  const std::shared_ptr<JobLock> lock = LockOf(job);
  std::lock_guard<std::mutex> guard(lock->mutex);
  ASSIGN_OR_RETURN(auto records, List(job));
  for (auto it = records.rbegin(); it != records.rend(); ++it) {
    const Status checked = check(*it, *lock);
    if (checked.code() == StatusCode::kCancelled) return checked;
    if (checked.ok()) return std::optional<CheckpointRecord>(std::move(*it));
    if (fallbacks != nullptr) {
      fallbacks->push_back("Skipped checkpoint step " + std::to_string(it->step) + " of job '" + job +
                           "': " + checked.message() + ".");
    }
  }
  return std::optional<CheckpointRecord>();
}

namespace {

// Why `path` is not a regular file of `size` bytes; empty when it is.
std::string NotIntact(const std::string& path, std::optional<uint64_t> size) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return path + " is missing";
  if (!S_ISREG(st.st_mode)) return path + " is not a regular file";
  if (size && static_cast<uint64_t>(st.st_size) != *size) {
    return path + " has " + std::to_string(st.st_size) + " bytes, the manifest says " + std::to_string(*size);
  }
  return "";
}

}  // namespace

StatusOr<std::optional<CheckpointRecord>> CheckpointStore::NewestIntact(const std::string& job,
                                                                        std::vector<std::string>* fallbacks) {
  return NewestPassing(job, fallbacks, [](const CheckpointRecord& record, JobLock&) {
    std::string wrong = NotIntact(record.dir + "/manifest.json", std::nullopt);
    for (size_t r = 0; r < record.rank_files.size() && wrong.empty(); ++r) {
      for (const CheckpointFile& file : record.rank_files[r]) {
        wrong = NotIntact(record.dir + "/rank-" + std::to_string(r) + "/" + file.path, file.size);
        if (!wrong.empty()) break;
      }
    }
    return wrong.empty() ? OkStatus() : InternalError(wrong);
  });
}

Status CheckpointStore::Retain(const std::string& job, const std::string& root, uint32_t keep,
                               uint64_t committed_attempt) {
  if (keep == 0) {
    return InvalidArgumentError("retain keep=0 would delete the checkpoint a restart resumes from; DeleteJob "
                                "deletes a job's checkpoints");
  }
  ASSIGN_OR_RETURN(const std::string dir, NormalRoot(root));
  RETURN_IF_ERROR(ValidateCheckpointJobName(job));
  const std::shared_ptr<JobLock> lock = LockOf(job);
  std::lock_guard<std::mutex> guard(lock->mutex);
  ASSIGN_OR_RETURN(auto records, List(job));
  Status result;
  if (records.size() > keep) {
    const size_t drop = records.size() - keep;
    ASSIGN_OR_RETURN(Txn txn, env_->BeginWrite());
    for (size_t i = 0; i < drop; ++i) RETURN_IF_ERROR(table_.Delete(txn, Key(job, records[i].step)));
    RETURN_IF_ERROR(txn.Commit());
    for (size_t i = 0; i < drop; ++i) {
      const Status removed = Discard(records[i].dir);
      if (result.ok()) result = removed;
    }
  }
  ASSIGN_OR_RETURN(auto top, ListDir(dir));
  for (const auto& [name, kind] : top) {
    const auto attempt = ParseNumbered(name, "attempt-");
    if (attempt && *attempt < committed_attempt) {
      const Status removed = Discard(dir + "/" + name);
      if (result.ok()) result = removed;
    }
  }
  if (!records.empty()) {
    const Status removed = RemoveUnrecordedSteps(job, dir, records.back().step);
    if (result.ok()) result = removed;
  }
  return result;
}

Status CheckpointStore::DeleteJob(const std::string& job, const std::string& root) {
  ASSIGN_OR_RETURN(const std::string dir, NormalRoot(root));
  RETURN_IF_ERROR(ValidateCheckpointJobName(job));
  const std::shared_ptr<JobLock> lock = LockOf(job);
  // A commit or verification of the job running now stops at its next chunk instead of finishing.
  lock->deleting.fetch_add(1);
  std::lock_guard<std::mutex> guard(lock->mutex);
  struct Done {
    JobLock* lock;
    ~Done() { lock->deleting.fetch_sub(1); }
  } done{lock.get()};
  ASSIGN_OR_RETURN(auto records, List(job));
  if (!records.empty()) {
    ASSIGN_OR_RETURN(Txn txn, env_->BeginWrite());
    for (const CheckpointRecord& record : records) RETURN_IF_ERROR(table_.Delete(txn, Key(job, record.step)));
    RETURN_IF_ERROR(txn.Commit());
  }
  return Discard(dir);
}

StatusOr<std::optional<CheckpointRecord>> CheckpointStore::Find(const std::string& job, uint64_t step) {
  ASSIGN_OR_RETURN(Txn txn, env_->BeginRead());
  auto value = table_.Get(txn, Key(job, step));
  if (value.status().code() == StatusCode::kNotFound) return std::optional<CheckpointRecord>();
  if (!value.ok()) return value.status();
  ASSIGN_OR_RETURN(auto record, RecordFromJson(*value, "the checkpoint record '" + Key(job, step) + "'"));
  return std::optional<CheckpointRecord>(std::move(record));
}

Status CheckpointStore::RemoveUnrecordedSteps(const std::string& job, const std::string& root, uint64_t below) {
  ASSIGN_OR_RETURN(auto records, List(job));
  std::set<uint64_t> recorded;
  for (const CheckpointRecord& record : records) recorded.insert(record.step);
  ASSIGN_OR_RETURN(auto top, ListDir(root));
  Status result;
  for (const auto& [name, kind] : top) {
    const auto step = ParseNumbered(name, "step-");
    Status removed;
    if (step && *step < below && recorded.count(*step) == 0) removed = Discard(root + "/" + name);
    if (name.rfind(kTrashPrefix, 0) == 0) removed = RemoveTree(root + "/" + name);
    if (result.ok()) result = removed;
  }
  return result;
}

}  // namespace troupe::storage
