#include "actors/training/shard_transfer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "storage/checkpoint_store.h"

namespace troupe::training {

namespace fs = std::filesystem;

namespace {

Status FsyncDir(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return InternalError("cannot open directory " + path + ": " + std::strerror(errno));
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return InternalError("cannot fsync directory " + path + ": " + std::strerror(err));
  return OkStatus();
}

StatusOr<uint64_t> ParseNumber(const runtime::BulkDescriptor& d, const char* key) {
  auto it = d.attrs.find(key);
  if (it == d.attrs.end() || it->second.empty() || it->second.size() > 20 ||
      !std::all_of(it->second.begin(), it->second.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return InvalidArgumentError(std::string("checkpoint shard descriptor: attr '") + key +
                                "' is missing or not a decimal number");
  }
  return std::stoull(it->second);
}

StatusOr<uint32_t> ParseRank(const runtime::BulkDescriptor& d) {
  ASSIGN_OR_RETURN(uint64_t rank, ParseNumber(d, "rank"));
  if (rank > UINT32_MAX) return InvalidArgumentError("checkpoint shard descriptor: rank above 2^32-1");
  return static_cast<uint32_t>(rank);
}

StatusOr<std::string> ParseJob(const runtime::BulkDescriptor& d) {
  auto job = d.attrs.find("job");
  if (job == d.attrs.end() || job->second.empty()) {
    return InvalidArgumentError("checkpoint shard descriptor: attr 'job' is missing");
  }
  return job->second;
}

std::string StepDir(const std::string& root, const ShardTarget& t) {
  return storage::CheckpointStore::StagingDir(root, t.attempt) + "/step-" + std::to_string(t.step);
}

}  // namespace

Status ValidateShardPath(const std::string& path) {
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("shard file path '" + path + "' " + why +
                                "; give a '/'-separated path relative to the rank's shard directory");
  };
  if (path.empty()) return bad("is empty");
  if (path.front() == '/') return bad("is absolute");
  if (path.find('\\') != std::string::npos || path.find('\0') != std::string::npos) {
    return bad("holds a backslash or a NUL");
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return bad("has an empty, '.' or '..' component");
    start = end + 1;
  }
  return OkStatus();
}

std::string ShardFilePath(const std::string& root, const ShardTarget& target, const std::string& path) {
  return StepDir(root, target) + "/rank-" + std::to_string(target.rank) + "/" + path;
}

std::string ShardMarkerPath(const std::string& root, const ShardTarget& target) {
  return StepDir(root, target) + "/rank-" + std::to_string(target.rank) + ".done";
}

runtime::BulkDescriptor ShardDescriptor(const ShardTarget& target, const std::string& path) {
  runtime::BulkDescriptor d;
  d.kind = path.empty() ? kShardMarkerKind : kShardFileKind;
  d.attrs = {{"job", target.job},
             {"attempt", std::to_string(target.attempt)},
             {"step", std::to_string(target.step)},
             {"rank", std::to_string(target.rank)}};
  if (!path.empty()) d.attrs["path"] = path;
  return d;
}

StatusOr<ShardTarget> ParseShardDescriptor(const runtime::BulkDescriptor& d, std::string* path) {
  ShardTarget t;
  ASSIGN_OR_RETURN(t.job, ParseJob(d));
  ASSIGN_OR_RETURN(t.attempt, ParseNumber(d, "attempt"));
  ASSIGN_OR_RETURN(t.step, ParseNumber(d, "step"));
  ASSIGN_OR_RETURN(t.rank, ParseRank(d));
  path->clear();
  if (d.kind == kShardFileKind) {
    auto p = d.attrs.find("path");
    *path = p == d.attrs.end() ? "" : p->second;
    RETURN_IF_ERROR(ValidateShardPath(*path));
  }
  return t;
}

runtime::BulkDescriptor ShardReadDescriptor(const ShardRead& read) {
  runtime::BulkDescriptor d;
  d.kind = kShardReadKind;
  d.attrs = {{"job", read.job},
             {"step", std::to_string(read.step)},
             {"rank", std::to_string(read.rank)},
             {"path", read.path},
             {"token", std::to_string(read.token)}};
  return d;
}

StatusOr<ShardRead> ParseShardReadDescriptor(const runtime::BulkDescriptor& d) {
  ShardRead read;
  ASSIGN_OR_RETURN(read.job, ParseJob(d));
  ASSIGN_OR_RETURN(read.step, ParseNumber(d, "step"));
  ASSIGN_OR_RETURN(read.rank, ParseRank(d));
  ASSIGN_OR_RETURN(read.token, ParseNumber(d, "token"));
  auto path = d.attrs.find("path");
  read.path = path == d.attrs.end() ? "" : path->second;
  RETURN_IF_ERROR(ValidateShardPath(read.path));
  return read;
}

std::string CommittedShardFilePath(const std::string& root, uint64_t step, uint32_t rank, const std::string& path) {
  return storage::CheckpointStore::CommittedDir(root, step) + "/rank-" + std::to_string(rank) + "/" + path;
}

StatusOr<storage::CheckpointFile> FindCommittedFile(const std::string& root, uint64_t step, uint32_t rank,
                                                    const std::string& path) {
  RETURN_IF_ERROR(ValidateShardPath(path));
  const std::string dir = storage::CheckpointStore::CommittedDir(root, step);
  auto manifest = storage::ReadManifest(dir);
  if (!manifest.ok()) {
    if (manifest.status().code() != StatusCode::kNotFound) return manifest.status();
    return NotFoundError("no committed step " + std::to_string(step) + " under " + root + " (" +
                         manifest.status().message() + ")");
  }
  if (rank >= manifest->rank_files.size()) {
    return NotFoundError("committed step " + std::to_string(step) + " under " + root + " has " +
                         std::to_string(manifest->rank_files.size()) + " ranks, not rank " + std::to_string(rank));
  }
  const auto& files = manifest->rank_files[rank];
  auto it = std::find_if(files.begin(), files.end(), [&](const storage::CheckpointFile& f) { return f.path == path; });
  const std::string file = CommittedShardFilePath(root, step, rank, path);
  if (it == files.end()) return NotFoundError("the manifest of " + dir + " lists no " + file);
  // The manifest's paths are relative and checked; a symlink on the way could still lead out.
  std::error_code ec;
  const fs::path real = fs::canonical(file, ec);
  if (ec) return NotFoundError("cannot resolve " + file + ": " + ec.message());
  const fs::path real_root = fs::canonical(root, ec);
  if (ec) return NotFoundError("cannot resolve the checkpoint root " + root + ": " + ec.message());
  if (real.string().rfind(real_root.string() + "/", 0) != 0) {
    return InvalidArgumentError(file + " resolves to " + real.string() + ", outside the checkpoint root " + root);
  }
  const auto status = fs::status(real, ec);
  if (ec || !fs::is_regular_file(status)) return InvalidArgumentError(file + " is not a regular file");
  const uint64_t size = fs::file_size(real, ec);
  if (ec) return InternalError("cannot stat " + file + ": " + ec.message());
  if (size != it->size) {
    return InternalError("data loss: " + file + " has " + std::to_string(size) + " bytes, the manifest says " +
                         std::to_string(it->size));
  }
  return *it;
}

void CheckpointRoots::Set(const std::string& job, std::string root) {
  std::lock_guard<std::mutex> lock(mu_);
  roots_[job] = std::move(root);
}

void CheckpointRoots::Remove(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  roots_.erase(job);
}

StatusOr<std::string> CheckpointRoots::Find(const std::string& job) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = roots_.find(job);
  if (it == roots_.end()) {
    return NotFoundError("this node stores no checkpoints of job '" + job +
                         "': send its shards to the node that runs its supervisor (the head)");
  }
  return it->second;
}

CheckpointRootOf CheckpointRoots::Of(std::shared_ptr<const CheckpointRoots> roots) {
  return [roots = std::move(roots)](const std::string& job) { return roots->Find(job); };
}

namespace {

// The store node's answer to a read it accepted: the file's bytes (kCommittedFileKind) with the
// manifest's size and SHA-256, or, when that transfer fails, an offer of no bytes with the error.
void SendCommittedFile(runtime::BulkEndpoint* endpoint, runtime::NodeId reader, const ShardRead& read,
                       const storage::CheckpointFile& file, runtime::BulkSource source) {
  runtime::BulkDescriptor d = ShardReadDescriptor(read);
  d.kind = kCommittedFileKind;
  d.attrs["size"] = std::to_string(file.size);
  d.attrs["sha256"] = file.sha256;
  endpoint->Send(reader, std::move(d), std::move(source), kShardReadTimeout, [endpoint, reader, read](const Status& sent) {
    if (sent.ok()) return;
    runtime::BulkDescriptor failed = ShardReadDescriptor(read);
    failed.kind = kCommittedFileKind;
    failed.attrs["error"] = runtime::EncodeStatus(sent);
    endpoint->Send(reader, std::move(failed), runtime::BulkSource{}, kShardReadTimeout, [](const Status&) {});
  });
}

}  // namespace

Status ServeCheckpointShards(runtime::BulkEndpoint& endpoint, CheckpointRootOf root_of) {
  RETURN_IF_ERROR(endpoint.RegisterSink(
      kShardFileKind, [root_of](runtime::NodeId, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
        std::string path;
        ASSIGN_OR_RETURN(ShardTarget t, ParseShardDescriptor(d, &path));
        ASSIGN_OR_RETURN(std::string root, root_of(t.job));
        return runtime::MakeFileSink(ShardFilePath(root, t, path), d.size);
      }));
  RETURN_IF_ERROR(endpoint.RegisterSink(
      kShardMarkerKind, [root_of](runtime::NodeId, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
        std::string unused;
        ASSIGN_OR_RETURN(ShardTarget t, ParseShardDescriptor(d, &unused));
        if (d.size != 0) return InvalidArgumentError("a checkpoint marker carries no bytes");
        ASSIGN_OR_RETURN(std::string root, root_of(t.job));
        runtime::BulkSink sink;
        sink.finish = [root, t](const Status& received) -> Status {
          if (!received.ok()) return OkStatus();
          // The files are durable (each was fdatasynced with its directory); make every directory
          // of the shard durable too, deepest first, then the marker and the step directory.
          const std::string step_dir = StepDir(root, t);
          const std::string rank_dir = step_dir + "/rank-" + std::to_string(t.rank);
          std::error_code ec;
          fs::create_directories(rank_dir, ec);  // an empty shard is a shard
          if (ec) return InternalError("cannot create " + rank_dir + ": " + ec.message());
          std::vector<std::string> dirs;
          for (auto it = fs::recursive_directory_iterator(rank_dir, ec); !ec && it != fs::recursive_directory_iterator();
               it.increment(ec)) {
            if (it->is_directory()) dirs.push_back(it->path().string());
          }
          if (ec) return InternalError("cannot list " + rank_dir + ": " + ec.message());
          std::sort(dirs.rbegin(), dirs.rend());
          for (const auto& dir : dirs) RETURN_IF_ERROR(FsyncDir(dir));
          RETURN_IF_ERROR(FsyncDir(rank_dir));
          const std::string marker = ShardMarkerPath(root, t);
          int fd = open(marker.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
          if (fd < 0) return InternalError("cannot create " + marker + ": " + std::strerror(errno));
          int rc = fsync(fd);
          int err = errno;
          close(fd);
          if (rc != 0) return InternalError("cannot fsync " + marker + ": " + std::strerror(err));
          RETURN_IF_ERROR(FsyncDir(step_dir));
          RETURN_IF_ERROR(FsyncDir(storage::CheckpointStore::StagingDir(root, t.attempt)));
          return FsyncDir(root);
        };
        return sink;
      }));
  runtime::BulkEndpoint* self = &endpoint;
  return endpoint.RegisterSink(
      kShardReadKind, [self, root_of](runtime::NodeId from, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
        if (d.size != 0) return InvalidArgumentError("a checkpoint read request carries no bytes");
        ASSIGN_OR_RETURN(ShardRead read, ParseShardReadDescriptor(d));
        ASSIGN_OR_RETURN(std::string root, root_of(read.job));
        ASSIGN_OR_RETURN(storage::CheckpointFile file, FindCommittedFile(root, read.step, read.rank, read.path));
        ASSIGN_OR_RETURN(runtime::BulkSource source,
                         runtime::BulkSource::MapFile(CommittedShardFilePath(root, read.step, read.rank, read.path)));
        runtime::BulkSink sink;
        sink.finish = [self, from, read, file, source](const Status& received) -> Status {
          if (received.ok()) SendCommittedFile(self, from, read, file, source);
          return OkStatus();
        };
        return sink;
      });
}

Status WriteShard(runtime::BulkEndpoint& endpoint, runtime::NodeId store_node, const ShardTarget& target,
                  const std::vector<ShardFile>& files, std::chrono::milliseconds timeout) {
  for (const auto& f : files) RETURN_IF_ERROR(ValidateShardPath(f.path));
  // At most kFilesInFlight files at once: a receiver refuses transfers beyond its
  // max_transfers_accepted (256 by default), and a shard may hold more files than that.
  constexpr size_t kFilesInFlight = 8;
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    size_t next = 0;  // the next file to send
    size_t left = 0;  // files not finished
    Status first;
  };
  auto wait = std::make_shared<Wait>();
  wait->left = files.size();
  // Sends the next file, if any and no file has failed; runs again from each completion. It
  // touches `files` only for a file not finished yet, so never after WriteShard has returned.
  const size_t count = files.size();
  auto send_next_ptr = std::make_shared<std::function<void()>>();
  *send_next_ptr = [&endpoint, store_node, &target, &files, count, timeout, wait,
                    weak = std::weak_ptr<std::function<void()>>(send_next_ptr)] {
    size_t index;
    {
      std::lock_guard<std::mutex> lock(wait->mu);
      if (wait->next >= count) return;
      if (!wait->first.ok()) {  // the shard has failed already: skip every file not sent
        wait->left -= count - wait->next;
        wait->next = count;
        if (wait->left == 0) wait->cv.notify_all();
        return;
      }
      index = wait->next++;
    }
    endpoint.Send(store_node, ShardDescriptor(target, files[index].path), files[index].data, timeout,
                  [wait, weak](const Status& s) {
                    auto again = weak.lock();
                    {
                      std::lock_guard<std::mutex> lock(wait->mu);
                      if (!s.ok() && wait->first.ok()) wait->first = s;
                      if (--wait->left == 0) wait->cv.notify_all();
                    }
                    if (again) (*again)();
                  });
  };
  for (size_t i = 0; i < std::min(kFilesInFlight, files.size()); ++i) (*send_next_ptr)();
  {
    // Bounded: every Send completes by its deadline at the latest.
    std::unique_lock<std::mutex> lock(wait->mu);
    wait->cv.wait(lock, [&] { return wait->left == 0; });
    if (!wait->first.ok()) return wait->first;
  }
  return endpoint.SendAndWait(store_node, ShardDescriptor(target, ""), runtime::BulkSource{}, timeout);
}

StatusOr<std::vector<ShardFile>> ShardFilesFromDir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFoundError("shard directory " + dir + " does not exist");
  std::vector<ShardFile> files;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    auto status = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(status)) continue;
    if (!fs::is_regular_file(status)) {
      return InvalidArgumentError(it->path().string() + " in shard directory " + dir +
                                  " is not a regular file or directory");
    }
    ASSIGN_OR_RETURN(runtime::BulkSource data, runtime::BulkSource::MapFile(it->path().string()));
    files.push_back({fs::relative(it->path(), dir).generic_string(), std::move(data)});
  }
  if (ec) return InternalError("cannot list " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end(), [](const ShardFile& a, const ShardFile& b) { return a.path < b.path; });
  return files;
}

// One read waiting for its file: the buffer the store node's transfer lands in, and its end.
struct ShardReader::Pending {
  runtime::NodeId store_node = 0;
  std::string what;  // "file P of rank r's shard of committed step S of job 'J'"
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;    // guarded by mu
  Status status;        // guarded by mu
  std::string bytes;    // written by the transfer until done, then the reader's

  void Complete(const Status& result) {
    std::lock_guard<std::mutex> lock(mu);
    if (done) return;
    done = true;
    status = result;
    cv.notify_all();
  }
};

StatusOr<std::shared_ptr<ShardReader>> ShardReader::Attach(runtime::BulkEndpoint& endpoint) {
  std::shared_ptr<ShardReader> reader(new ShardReader(endpoint));
  std::weak_ptr<ShardReader> weak = reader;
  RETURN_IF_ERROR(endpoint.RegisterSink(
      kCommittedFileKind, [weak](runtime::NodeId from, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
        auto self = weak.lock();
        if (!self) return CancelledError("this node reads no checkpoint files any more");
        return self->SinkFor(from, d);
      }));
  return reader;
}

StatusOr<runtime::BulkSink> ShardReader::SinkFor(runtime::NodeId from, const runtime::BulkDescriptor& d) {
  ASSIGN_OR_RETURN(uint64_t token, ParseNumber(d, "token"));
  std::shared_ptr<Pending> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(token);
    if (it != pending_.end() && it->second->store_node == from) pending = it->second;
  }
  if (!pending) {
    return NotFoundError("no checkpoint read of this node waits for token " + std::to_string(token) + " from node " +
                         std::to_string(from) + " (it gave up, or never asked)");
  }
  if (auto error = d.attrs.find("error"); error != d.attrs.end()) {
    Status failed = runtime::DecodeStatus(error->second);
    if (failed.ok()) failed = InternalError("the store node failed to send it, without saying why");
    pending->Complete(Status(failed.code(), pending->what + ": " + failed.message()));
    return failed;
  }
  auto expected_size = ParseNumber(d, "size");
  auto sha256 = d.attrs.find("sha256");
  if (!expected_size.ok() || sha256 == d.attrs.end()) {
    Status bad = InvalidArgumentError(pending->what + ": the store node's offer carries no manifest size and SHA-256");
    pending->Complete(bad);
    return bad;
  }
  if (d.size != *expected_size) {
    Status short_offer = InternalError("data loss: " + pending->what + " is offered with " + std::to_string(d.size) +
                                       " bytes, the manifest says " + std::to_string(*expected_size));
    pending->Complete(short_offer);
    return short_offer;
  }
  pending->bytes.resize(d.size);
  runtime::BulkSink sink;
  sink.data = d.size == 0 ? nullptr : reinterpret_cast<uint8_t*>(pending->bytes.data());
  sink.keep = pending;
  sink.finish = [pending, expected = sha256->second](const Status& received) -> Status {
    if (!received.ok()) {
      pending->Complete(Status(received.code(), pending->what + ": " + received.message()));
      return OkStatus();
    }
    const std::string actual = storage::Sha256Hex(pending->bytes);
    Status result = actual == expected ? OkStatus()
                                       : InternalError("data loss: " + pending->what + " arrived with SHA-256 " +
                                                       actual + ", the manifest says " + expected);
    pending->Complete(result);
    return result;
  };
  return sink;
}

StatusOr<std::string> ShardReader::Read(runtime::NodeId store_node, const std::string& job, uint64_t step,
                                        uint32_t rank, const std::string& path, std::chrono::milliseconds timeout) {
  RETURN_IF_ERROR(ValidateShardPath(path));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pending = std::make_shared<Pending>();
  pending->store_node = store_node;
  pending->what = "file " + path + " of rank " + std::to_string(rank) + "'s shard of committed step " +
                  std::to_string(step) + " of job '" + job + "'";
  uint64_t token;
  {
    std::lock_guard<std::mutex> lock(mu_);
    token = next_token_++;
    pending_[token] = pending;
  }
  auto forget = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.erase(token);
  };
  // The request: the store node refuses it with its error, or accepts it and sends the file.
  Status asked = endpoint_.SendAndWait(store_node, ShardReadDescriptor({job, step, rank, path, token}),
                                       runtime::BulkSource{}, timeout);
  if (!asked.ok()) {
    forget();
    return Status(asked.code(), "cannot read " + pending->what + " from node " + std::to_string(store_node) + ": " +
                                    asked.message());
  }
  {
    std::unique_lock<std::mutex> lock(pending->mu);
    if (!pending->cv.wait_until(lock, deadline, [&] { return pending->done; })) {
      lock.unlock();
      forget();
      return DeadlineExceededError(pending->what + " did not arrive from node " + std::to_string(store_node) +
                                   " within " + std::to_string(timeout.count()) + " ms");
    }
  }
  forget();
  if (!pending->status.ok()) return pending->status;
  return std::move(pending->bytes);
}

}  // namespace troupe::training
