// CheckpointStore: the checkpoints of training jobs, as shard files on a file system plus one
// LMDB record per committed step (the commit point). Knows nothing of actors. docs/checkpoints.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "storage/lmdb_env.h"
#include "storage/table.h"

namespace troupe::storage {

/// One file of a rank's shard, as the manifest records it.
struct CheckpointFile {
  /// Relative to the rank's shard directory (`rank-<r>/`), '/'-separated, e.g. "optim/state.bin".
  std::string path;
  /// In bytes.
  uint64_t size = 0;
  /// SHA-256 of the contents, 64 lower-case hex digits.
  std::string sha256;
};

/// A committed checkpoint: one step of one job, every rank's shard.
struct CheckpointRecord {
  std::string job;
  /// The training step the script saved.
  uint64_t step = 0;
  /// The attempt (worker-group start, from 0) whose staging directory it was committed from.
  uint64_t attempt = 0;
  /// How many ranks saved it; rank_files has this many entries.
  uint32_t world_size = 0;
  /// The sum of every file's size, in bytes (manifest.json not counted).
  uint64_t total_bytes = 0;
  /// When it was committed, in milliseconds since the Unix epoch.
  int64_t unix_ms = 0;
  /// The committed directory, absolute: `<root>/step-<step>` ($TROUPE_RESUME_DIR).
  std::string dir;
  /// SHA-256 of `<dir>/manifest.json`, 64 lower-case hex digits.
  std::string manifest_sha256;
  /// rank_files[r]: the files of rank r's shard (`<dir>/rank-<r>/`), sorted by path.
  std::vector<std::vector<CheckpointFile>> rank_files;
};

/// The checkpoint store of every training job of a head. For the layout under a job's root
/// directory R and the two-phase commit see docs/checkpoints.md; in short: ranks write
/// `R/attempt-<A>/step-<S>/rank-<r>/...` and the marker `rank-<r>.done`, Commit() checksums the
/// shards, writes manifest.json, renames the step directory to `R/step-<S>` and then puts the
/// record in LMDB. Only the record makes a checkpoint exist: a kill -9 at any point leaves the
/// previous committed checkpoint intact, and a directory without a record is garbage that the
/// next Commit()/Retain() of the job removes (or, for the step being committed, completes).
///
/// Thread-safety: every method may be called from any thread. The calls for one job that touch
/// its files (CompleteSteps, Commit, NewestValid, Retain, DeleteJob) run one at a time (a lock per
/// job name), so an old supervisor's late commit and a resumed job's new supervisor, or a commit
/// and a delete, never interleave; calls for different jobs run at once. DeleteJob cancels a
/// running Commit or NewestValid of the job (it stops at its next 1 MiB read with Cancelled, and
/// records nothing) instead of waiting for it to read everything. Every call does blocking file
/// I/O (Commit() reads every byte of the shards): keep it off actor threads that must stay
/// responsive (actors/training/checkpoint_committer.h). Errors: InvalidArgument for a bad job name, root, world size or a shard
/// holding something other than regular files and directories; NotFound for a missing marker or
/// file; Internal with "data loss" for a size or checksum that does not match (troupe's status
/// codes have no DataLoss); Internal, Unavailable (EIO, ESTALE: a network file system may
/// recover) or ResourceExhausted (disk full) for I/O, naming the path and errno's text.
class CheckpointStore {
 public:
  /// The LMDB table of the records: key "<job>/<step, 20 zero-padded decimal digits>" (so keys
  /// sort by step), value the record as JSON.
  static constexpr const char* kTableName = "checkpoints";
  /// Commit() and the verifications (NewestValid(), a commit completing a renamed step) read and
  /// fsync the files of a checkpoint on min(this, hardware_concurrency, files) threads: SHA-256
  /// is CPU-bound (1.6 GB/s a core, `openssl speed -evp sha256` here), and several fsyncs in flight let
  /// the disk merge them (measured: bench/training, "Commit() ... vs dd").
  static constexpr size_t kMaxCommitThreads = 8;

  /// A store over `env` (not owned; it must outlive the store), opening (creating) the table.
  /// `clock` (not owned) stamps unix_ms; the default is the real clock.
  static StatusOr<CheckpointStore> Open(LmdbEnv* env, const Clock* clock = &SteadyClock::Instance());

  /// `<root>/attempt-<attempt>`: what the workers of that attempt see as $TROUPE_CHECKPOINT_DIR.
  static std::string StagingDir(const std::string& root, uint64_t attempt);
  /// `<root>/step-<step>`: where step `step` lives once committed ($TROUPE_RESUME_DIR).
  static std::string CommittedDir(const std::string& root, uint64_t step);

  /// The steps in the staging directory of `attempt` that every rank in [0, world_size) has
  /// marked done (`step-<S>/rank-<r>.done` exists), ascending, without those that `job` already
  /// has a record for. A missing staging directory has none (an empty list, not an error).
  StatusOr<std::vector<uint64_t>> CompleteSteps(const std::string& job, const std::string& root,
                                                uint64_t attempt, uint32_t world_size);

  /// Commits step `step` of `attempt`. Phase 1: checks every rank's marker (NotFound naming the
  /// first missing one), checksums and makes durable (fdatasync, after starting the writeback
  /// before reading, so the disk writes while the bytes are hashed) every regular file of every
  /// shard, in parallel (kMaxCommitThreads), then fsyncs every shard directory (a symlink, a
  /// device or a fifo in a shard is InvalidArgument, naming it), writes manifest.json atomically, renames the step
  /// directory to CommittedDir(root, step) and fsyncs both parents. Phase 2: puts the record in
  /// LMDB and commits; only then does the checkpoint exist. If the staging step directory is gone
  /// and the committed directory is there (a crash between rename and record), the committed
  /// directory is verified against its manifest and reused. AlreadyExists when `job` has a record
  /// for `step`. Afterwards removes committed-looking directories without a record of steps
  /// below `step` (garbage of earlier crashes). Cancelled (nothing recorded) when DeleteJob of the
  /// job began meanwhile.
  StatusOr<CheckpointRecord> Commit(const std::string& job, const std::string& root, uint64_t attempt,
                                    uint64_t step, uint32_t world_size);

  /// Every committed checkpoint of `job`, ascending by step (empty when none).
  StatusOr<std::vector<CheckpointRecord>> List(const std::string& job);
  /// The committed checkpoint of `job` with the highest step; nullopt when none. Checks no file.
  StatusOr<std::optional<CheckpointRecord>> Newest(const std::string& job);
  /// The newest committed checkpoint of `job` whose manifest.json and files all exist as regular
  /// files with the recorded sizes and SHA-256 (it reads every byte). Each newer one that fails is
  /// skipped, not deleted, and one sentence naming its step, the file and what is wrong is
  /// appended to `*fallbacks` (may be null). nullopt when none is valid or none exists. An error
  /// only when the records themselves cannot be read, or Cancelled when DeleteJob of the job
  /// began meanwhile.
  StatusOr<std::optional<CheckpointRecord>> NewestValid(const std::string& job, std::vector<std::string>* fallbacks);
  /// As NewestValid, but a checkpoint is intact when its manifest.json and every file its record
  /// lists exist as regular files of the recorded sizes (one lstat a file, no byte read: a
  /// restart's lookup costs the same for 1 KiB and 100 GiB; docs/checkpoints.md says what it
  /// gives up). Like every call of the job that touches its files it waits for the job's Commit in
  /// flight, so a supervisor resuming a stopped job sees the old one's last commit.
  StatusOr<std::optional<CheckpointRecord>> NewestIntact(const std::string& job, std::vector<std::string>* fallbacks);

  /// Keeps the newest `keep` (>= 1, else InvalidArgument) committed checkpoints of `job`: deletes
  /// the older records in one transaction, then their directories. Then removes, under `root`,
  /// the staging directory of every attempt below `committed_attempt` (the attempt the caller
  /// commits from: a complete step of an older attempt was committed before it, or never will be)
  /// and every `step-<S>` directory without a record whose S is below the newest committed step.
  /// The staging directories of `committed_attempt` and of later attempts stay: after a failure a
  /// restarted attempt's directory exists while the failed attempt's last complete steps still
  /// wait for their commit. Entries of other names are left alone.
  Status Retain(const std::string& job, const std::string& root, uint32_t keep, uint64_t committed_attempt);

  /// Deletes every record of `job` (one transaction), then the whole of `root`. A missing root
  /// is fine.
  Status DeleteJob(const std::string& job, const std::string& root);

 private:
  struct JobLock;
  struct Locks;
  CheckpointStore(LmdbEnv* env, Table<std::string, std::string> table, const Clock* clock);

  // The lock of `job`'s calls (made on first use and kept: a few bytes a job name).
  std::shared_ptr<JobLock> LockOf(const std::string& job);

  StatusOr<std::optional<CheckpointRecord>> Find(const std::string& job, uint64_t step);
  // The newest record of `job` that `check` passes, under the job's lock (NewestValid,
  // NewestIntact); each newer one's failure is a sentence in `*fallbacks`; Cancelled stops.
  StatusOr<std::optional<CheckpointRecord>> NewestPassing(
      const std::string& job, std::vector<std::string>* fallbacks,
      const std::function<Status(const CheckpointRecord&, JobLock&)>& check);
  // Removes `step-<S>` directories under `root` with S < `below` that `job` has no record for.
  Status RemoveUnrecordedSteps(const std::string& job, const std::string& root, uint64_t below);

  LmdbEnv* env_;
  Table<std::string, std::string> table_;
  const Clock* clock_;
  std::shared_ptr<Locks> locks_;  // shared: a moved-from store keeps none, the moved-to all
};

/// The manifest of the committed directory `dir` (`<dir>/manifest.json`, docs/checkpoints.md) as
/// a record, with `dir` and manifest_sha256 (of the file as read) set. It checks no shard file.
/// NotFound (the path) when there is no manifest; InvalidArgument when it is not a regular file or
/// is over 64 MiB; Internal naming the file when it is malformed.
StatusOr<CheckpointRecord> ReadManifest(const std::string& dir);

/// SHA-256 of `bytes`, 64 lower-case hex digits (as CheckpointFile::sha256).
std::string Sha256Hex(std::string_view bytes);

/// Whether `job` can name a job's checkpoints: 1 to 128 characters of [A-Za-z0-9._-], starting
/// with a letter or digit (so never "", "." or "..", and never a path). InvalidArgument if not.
Status ValidateCheckpointJobName(const std::string& job);

}  // namespace troupe::storage
