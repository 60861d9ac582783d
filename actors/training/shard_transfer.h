// Shard transfer: writes one rank's checkpoint shard into the staging layout of a checkpoint store
// on another node, over the runtime's bulk path (runtime/bulk.h: descriptors, then the bytes by
// rendezvous straight into an mmap of the destination file). The store node's
// CheckpointStore::Commit then commits it unchanged. docs/transport.md, "Bulk data".
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/bulk.h"

namespace troupe::training {

/// Bulk kinds of the two sinks ServeCheckpointShards registers.
inline constexpr char kShardFileKind[] = "checkpoint-file";
inline constexpr char kShardMarkerKind[] = "checkpoint-done";

/// Which shard: rank `rank` of `step`, saved by attempt `attempt` of job `job`.
struct ShardTarget {
  std::string job;
  uint64_t attempt = 0;
  uint64_t step = 0;
  uint32_t rank = 0;
};

/// One file of a shard: `path` relative to the rank's shard directory ('/'-separated, e.g.
/// "optim/state.bin"), the bytes in `data`.
struct ShardFile {
  std::string path;
  runtime::BulkSource data;
};

/// OK, or InvalidArgument naming the path when it is empty, absolute, has an empty, "." or ".."
/// component, a backslash or a NUL, or names the marker's place.
Status ValidateShardPath(const std::string& path);

/// `<root>/attempt-<A>/step-<S>/rank-<r>/<path>` (docs/checkpoints.md).
std::string ShardFilePath(const std::string& root, const ShardTarget& target, const std::string& path);
/// `<root>/attempt-<A>/step-<S>/rank-<r>.done`.
std::string ShardMarkerPath(const std::string& root, const ShardTarget& target);

/// The descriptor of one file (`path` empty: the marker) and its inverse; the parse is
/// InvalidArgument naming the attr that is missing or malformed, or the bad path.
runtime::BulkDescriptor ShardDescriptor(const ShardTarget& target, const std::string& path);
StatusOr<ShardTarget> ParseShardDescriptor(const runtime::BulkDescriptor& descriptor, std::string* path);

/// The store node's side: where `job`'s checkpoints live (its root R), or an error that refuses
/// the transfer (e.g. NotFound for a job this node does not store).
using CheckpointRootOf = std::function<StatusOr<std::string>(const std::string& job)>;

/// The store node's table of the jobs whose shards it takes and their roots R: the head's jobs
/// registry sets a job's when it starts the job's supervisor. Thread-safe.
class CheckpointRoots {
 public:
  void Set(const std::string& job, std::string root);
  void Remove(const std::string& job);
  /// NotFound naming the job when this node holds no checkpoints of it.
  StatusOr<std::string> Find(const std::string& job) const;
  /// Find of `roots` as a CheckpointRootOf (it keeps `roots`).
  static CheckpointRootOf Of(std::shared_ptr<const CheckpointRoots> roots);

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::string> roots_;
};

/// Registers the sinks of kShardFileKind (each file lands by mmap in ShardFilePath, fdatasynced
/// with its directory before the sender hears OK) and kShardMarkerKind (fsyncs every directory
/// of the rank's shard and the step directory, then writes and fsyncs the marker) on `endpoint`.
/// AlreadyExists if they are registered already.
Status ServeCheckpointShards(runtime::BulkEndpoint& endpoint, CheckpointRootOf root_of);

/// The writer's side: sends every file of `files` to `store_node` (8 at a time, each by the bulk
/// path: a receiver refuses transfers beyond its max_transfers_accepted), and once every one is
/// durable there, the marker. `files` (and what their sources point to) must stay valid until it
/// returns. Returns OK when the marker is
/// durable, else the first error (Unavailable: the store node was lost; ResourceExhausted: it
/// refused the size; DeadlineExceeded: not done within `timeout`, counted per transfer), and
/// writes no marker then. Blocks: call it from a thread that may wait (a detached actor).
Status WriteShard(runtime::BulkEndpoint& endpoint, runtime::NodeId store_node, const ShardTarget& target,
                  const std::vector<ShardFile>& files, std::chrono::milliseconds timeout);

/// Every regular file under the local directory `dir` (recursively) as a ShardFile, mmapped;
/// InvalidArgument for anything else in it (symlink, device), NotFound if `dir` is missing.
StatusOr<std::vector<ShardFile>> ShardFilesFromDir(const std::string& dir);

}  // namespace troupe::training
