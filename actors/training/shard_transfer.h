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
#include "storage/checkpoint_store.h"

namespace troupe::training {

/// Bulk kinds of the sinks ServeCheckpointShards registers: a file of a shard being saved, its
/// marker, and a reader's request for a file of a committed shard (no bytes: the descriptor is
/// the request).
inline constexpr char kShardFileKind[] = "checkpoint-file";
inline constexpr char kShardMarkerKind[] = "checkpoint-done";
inline constexpr char kShardReadKind[] = "checkpoint-read";
/// Bulk kind of the sink a ShardReader registers: the bytes of a committed file it asked for.
inline constexpr char kCommittedFileKind[] = "checkpoint-committed-file";

/// How long the store node gives one committed file's transfer to a reader, and a ShardReader's
/// default wait for one: as CheckpointHandle::kShardSendTimeout (a 1.75 GiB file at 100 MB/s
/// takes 18 s).
inline constexpr std::chrono::milliseconds kShardReadTimeout{120000};

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

/// A reader's request for one file of a committed shard: file `path` of rank `rank`'s shard of
/// committed step `step` of job `job`; `token` names the reader's wait, and the store node's
/// answer (a kCommittedFileKind transfer) carries it back.
struct ShardRead {
  std::string job;
  uint64_t step = 0;
  uint32_t rank = 0;
  std::string path;
  uint64_t token = 0;
};

/// The request's descriptor (kShardReadKind, no bytes) and its inverse; the parse is
/// InvalidArgument naming the attr that is missing or malformed, or the bad path.
runtime::BulkDescriptor ShardReadDescriptor(const ShardRead& read);
StatusOr<ShardRead> ParseShardReadDescriptor(const runtime::BulkDescriptor& descriptor);

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
/// with its directory before the sender hears OK), kShardMarkerKind (fsyncs every directory of
/// the rank's shard and the step directory, then writes and fsyncs the marker) and kShardReadKind
/// (a reader's request: FindCommittedFile under root_of(job), whose error refuses the request and
/// reaches the reader; once accepted the file is sent back to the requesting node as a
/// kCommittedFileKind transfer from a read-only mmap, or, when that transfer fails, a
/// kCommittedFileKind offer of no bytes carrying the error) on `endpoint`, which must outlive its
/// transfers. AlreadyExists if they are registered already.
Status ServeCheckpointShards(runtime::BulkEndpoint& endpoint, CheckpointRootOf root_of);

/// `<root>/step-<S>/rank-<r>/<path>`: a file of a committed shard (docs/checkpoints.md).
std::string CommittedShardFilePath(const std::string& root, uint64_t step, uint32_t rank, const std::string& path);

/// The store node's check of a read of committed step `step`, rank `rank`, file `path` under the
/// job's root `root` (no file byte is read). Returns the file as the committed manifest lists it
/// (its path, size in bytes and SHA-256). Errors: InvalidArgument for a `path` ValidateShardPath
/// refuses; NotFound when the root has no committed step `step` (no `step-<S>/manifest.json`:
/// the manifest is written before the rename that commits the directory), when the step has no
/// rank `rank`, or when the rank's shard lists no `path`; InvalidArgument when the file resolves
/// outside `root` (a symlink) or is not a regular file; Internal with "data loss" when its size is
/// not the manifest's.
StatusOr<storage::CheckpointFile> FindCommittedFile(const std::string& root, uint64_t step, uint32_t rank,
                                                    const std::string& path);

/// The reader's side: fetches files of committed shards from the store node over the bulk path,
/// each into a buffer this side allocates when the store node offers it (never through a
/// mailbox), and checks each against the committed manifest's size and SHA-256 that the offer
/// carries. Owned by whoever owns the endpoint's node (a node agent's actor workers share one);
/// thread-safe: several reads may wait at once, each on its own caller's thread.
class ShardReader {
 public:
  /// Registers the kCommittedFileKind sink on `endpoint` (which must outlive the reader's reads).
  /// AlreadyExists when the endpoint has a reader already.
  static StatusOr<std::shared_ptr<ShardReader>> Attach(runtime::BulkEndpoint& endpoint);

  /// File `path` of rank `rank`'s shard of committed step `step` of `job`, from `store_node`
  /// (which serves ServeCheckpointShards). Blocks (call it from a thread that may wait) until the
  /// bytes are here and verified, at most `timeout` (DeadlineExceeded naming the file). Errors:
  /// InvalidArgument for a bad path; the store node's refusal (NotFound for a job, step, rank or
  /// file it does not hold, FindCommittedFile's others); Unavailable when the store node is lost;
  /// Internal with "data loss" naming the file when the bytes that arrived are not the manifest's
  /// size and SHA-256; Cancelled when the endpoint closed.
  StatusOr<std::string> Read(runtime::NodeId store_node, const std::string& job, uint64_t step, uint32_t rank,
                             const std::string& path, std::chrono::milliseconds timeout = kShardReadTimeout);

 private:
  struct Pending;
  explicit ShardReader(runtime::BulkEndpoint& endpoint) : endpoint_(endpoint) {}
  StatusOr<runtime::BulkSink> SinkFor(runtime::NodeId from, const runtime::BulkDescriptor& descriptor);

  runtime::BulkEndpoint& endpoint_;
  std::mutex mu_;
  uint64_t next_token_ = 1;
  std::map<uint64_t, std::shared_ptr<Pending>> pending_;  // by token; guarded by mu_
};

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
