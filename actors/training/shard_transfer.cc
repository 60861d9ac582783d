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
  auto job = d.attrs.find("job");
  if (job == d.attrs.end() || job->second.empty()) {
    return InvalidArgumentError("checkpoint shard descriptor: attr 'job' is missing");
  }
  t.job = job->second;
  ASSIGN_OR_RETURN(t.attempt, ParseNumber(d, "attempt"));
  ASSIGN_OR_RETURN(t.step, ParseNumber(d, "step"));
  ASSIGN_OR_RETURN(uint64_t rank, ParseNumber(d, "rank"));
  if (rank > UINT32_MAX) return InvalidArgumentError("checkpoint shard descriptor: rank above 2^32-1");
  t.rank = static_cast<uint32_t>(rank);
  path->clear();
  if (d.kind == kShardFileKind) {
    auto p = d.attrs.find("path");
    *path = p == d.attrs.end() ? "" : p->second;
    RETURN_IF_ERROR(ValidateShardPath(*path));
  }
  return t;
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

Status ServeCheckpointShards(runtime::BulkEndpoint& endpoint, CheckpointRootOf root_of) {
  RETURN_IF_ERROR(endpoint.RegisterSink(
      kShardFileKind, [root_of](runtime::NodeId, const runtime::BulkDescriptor& d) -> StatusOr<runtime::BulkSink> {
        std::string path;
        ASSIGN_OR_RETURN(ShardTarget t, ParseShardDescriptor(d, &path));
        ASSIGN_OR_RETURN(std::string root, root_of(t.job));
        return runtime::MakeFileSink(ShardFilePath(root, t, path), d.size);
      }));
  return endpoint.RegisterSink(
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

}  // namespace troupe::training
