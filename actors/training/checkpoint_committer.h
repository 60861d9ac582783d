// The checkpoint committer: the actor that does a job supervisor's checkpoint file I/O (commit,
// retention, finding the checkpoint to resume from) so that the supervisor's mailbox never waits
// behind it.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "storage/checkpoint_store.h"

namespace troupe::training {

/// Supervisor -> committer (a request): commit every step of `attempt` that all ranks have marked
/// done (CheckpointStore::CompleteSteps, then Commit of each, ascending, each followed by Retain).
/// Answered with a CommitPassDone once the pass has ended.
struct CommitSteps {
  uint64_t attempt = 0;
};

/// One step a pass tried: committed (`status` OK, `total_bytes` of its files) or not, and why.
struct StepCommit {
  uint64_t step = 0;
  Status status;
  uint64_t total_bytes = 0;
};

/// Committer -> supervisor: the end of a CommitSteps pass. `steps` in the order they were tried;
/// `lookup` is not OK when the complete steps could not be listed (nothing was tried then).
struct CommitPassDone {
  uint64_t attempt = 0;
  std::vector<StepCommit> steps;
  Status lookup;
};

/// Supervisor -> committer (a request): the checkpoint a new attempt resumes from. Answered with a
/// ResumePoint after every pass asked for before it, so a step committed just before a failure is
/// the one resumed from.
struct FindResume {
  uint64_t attempt = 0;  ///< the attempt it is for (echoed)
};

/// Committer -> supervisor: NewestIntact's answer.
struct ResumePoint {
  uint64_t attempt = 0;
  Status status;                                  ///< not OK: the records could not be read
  std::optional<storage::CheckpointRecord> record;  ///< none: start fresh
  std::vector<std::string> fallbacks;             ///< one sentence per newer checkpoint skipped
};

/// The newest committed checkpoint of `job` whose manifest.json and every file its record lists
/// exist as regular files of the recorded sizes, found from the records (LMDB) and one lstat a
/// file: no shard byte is read, so a restart's lookup costs the same for 1 KiB and 100 GiB.
/// (CheckpointStore::NewestValid hashes every byte, which put seconds a GiB on the recovery's
/// path; the contents were checksummed and fsynced by Commit, and a worker that reads a file
/// cut short or gone fails as a user error naming it.) Each newer one that fails is skipped with
/// one sentence in `*fallbacks` (may be null) naming its step and the file; nullopt when none is
/// intact or none exists. Errors: List()'s (the records cannot be read). CheckpointStore::
/// NewestIntact: it waits for the job's Commit in flight (the store's per-job lock), so a resumed
/// job sees its stopped supervisor's last commit (Jobs.AStopDoesNotWaitForACommitInFlight...).
StatusOr<std::optional<storage::CheckpointRecord>> NewestIntact(storage::CheckpointStore& store, const std::string& job,
                                                                std::vector<std::string>* fallbacks);

/// What a committer works on: one job's checkpoints.
struct CheckpointCommitterInit {
  std::string job;
  std::string root;  ///< `<checkpoints dir>/<job>`
  uint32_t world_size = 0;
  uint32_t keep = 1;  ///< Retain's `keep` after each commit (>= 1)
  storage::CheckpointStore* store = nullptr;  ///< not owned; outlives the committer
  /// The committer ends once this actor is down and the requests before its down message are
  /// answered (it monitors it).
  caf::actor supervisor;
};

/// Spawns a job supervisor's committer: a detached actor (its own thread: CheckpointStore blocks on
/// file I/O) that answers CommitSteps and FindResume in the order they arrive, one at a time. A
/// supervisor and its committer never overlap calls for the job; calls of another supervisor of
/// the same job (a resumed job while the old one's commit ends) wait in the store's per-job lock.
caf::actor SpawnCheckpointCommitter(caf::actor_system& system, CheckpointCommitterInit init);

}  // namespace troupe::training

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::CommitSteps)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::CommitPassDone)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::FindResume)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::training::ResumePoint)
