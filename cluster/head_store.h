// HeadStore: the head's LMDB environment as its registries share it.
#pragma once

#include <functional>
#include <vector>

#include "common/status.h"
#include "storage/lmdb_env.h"

namespace troupe::cluster {

/// One write transaction at a time for all of the head's registries, and the rule for writes
/// that failed but were acknowledged anyway (a node record, a lease's removal): before every
/// later write, whatever registry makes it, each registry writes its unsaved changes again.
///
/// Owned by the head (one per LmdbEnv); used only on the controller actor's mailbox. A registry
/// with its own table registers its retry at construction (AddRetry): a new registry is one more
/// retry, not an edit of the others.
class HeadStore {
 public:
  explicit HeadStore(storage::LmdbEnv* env) : env_(env) {}

  storage::LmdbEnv& env() { return *env_; }
  /// Adds `retry`, which writes again (with Commit) what its registry acknowledged unstored and
  /// keeps what still fails; retries run in the order added.
  void AddRetry(std::function<void()> retry) { retries_.push_back(std::move(retry)); }
  /// One write transaction running `write`, after the retries.
  Status Write(const std::function<Status(storage::Txn&)>& write);
  /// One write transaction running `write`, without the retries (for the retries themselves).
  Status Commit(const std::function<Status(storage::Txn&)>& write);

 private:
  storage::LmdbEnv* env_;
  std::vector<std::function<void()>> retries_;
  bool retrying_ = false;
};

}  // namespace troupe::cluster
