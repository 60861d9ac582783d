// UsageStore: the API gateway's metered usage, durable in the head's LMDB table `api_usage`: one
// row per (UTC hour, key id, tenant, model) with its requests, errors, input and output tokens
// (docs/gateway.md, "Metering").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "actors/api/usage_meter.h"
#include "cluster/head_store.h"
#include "common/status.h"

namespace troupe::cluster {

/// The usage rows of the head. Used by the head's api actor only (its mailbox): Open before the
/// actor runs (LMDB tables are opened before concurrent transactions), then Add and Query on
/// the actor's thread. It writes through HeadStore::Commit (one write transaction, no retries
/// of other registries: those run on the controller's mailbox).
///
/// A row's key is the hour (8 bytes, big-endian seconds since the epoch) then key id, tenant and
/// model separated by NUL, so rows are in time order and `since` is a range scan; its value is
/// the four counts, 8 bytes each, big-endian.
class UsageStore {
 public:
  explicit UsageStore(HeadStore* store) : store_(store) {}

  /// Opens (creates) the table.
  Status Open();
  /// Adds `rows` (api::UsageFlush::deltas) to the stored rows in one write transaction: durable
  /// when it returns OK; on an error nothing was added (a kill -9 loses at most the batch, and
  /// no row is ever added twice).
  Status Add(const std::vector<api::UsageRow>& rows);

  struct Filter {
    /// Empty: any.
    std::string key_id, tenant, model;
    /// Rows of hours that end after this (an hour that holds it is included); 0: all.
    int64_t since_unix_ms = 0;
  };
  /// The stored rows that match, in hour then series order. Internal if a stored row does not
  /// decode (the table holds something else).
  StatusOr<std::vector<api::UsageRow>> Query(const Filter& filter) const;

 private:
  HeadStore* store_;
  storage::TableId table_;
};

}  // namespace troupe::cluster
