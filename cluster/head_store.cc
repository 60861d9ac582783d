// HeadStore.
#include "cluster/head_store.h"

namespace troupe::cluster {

Status HeadStore::Write(const std::function<Status(storage::Txn&)>& write) {
  if (!retrying_) {
    retrying_ = true;
    for (const auto& retry : retries_) retry();
    retrying_ = false;
  }
  return Commit(write);
}

Status HeadStore::Commit(const std::function<Status(storage::Txn&)>& write) {
  auto txn = env_->BeginWrite();
  Status s = txn.ok() ? write(*txn) : txn.status();
  if (s.ok()) s = txn->Commit();
  return s;
}

}  // namespace troupe::cluster
