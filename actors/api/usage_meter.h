// UsageMeter: the API gateway's token metering, counted off the request path into an in-memory
// batch and handed out as deltas per (key id, tenant, model, UTC hour) (docs/gateway.md "Metering").
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "common/clock.h"

namespace troupe::api {

/// What is counted. errors are a subset of requests (a request that ended in an error counts in
/// both); tokens are the usage the backend reported (prompt = input, completion = output).
struct UsageCounts {
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t input_tokens = 0;
  uint64_t output_tokens = 0;

  UsageCounts& operator+=(const UsageCounts& o) {
    requests += o.requests;
    errors += o.errors;
    input_tokens += o.input_tokens;
    output_tokens += o.output_tokens;
    return *this;
  }
  friend bool operator==(const UsageCounts& a, const UsageCounts& b) {
    return a.requests == b.requests && a.errors == b.errors && a.input_tokens == b.input_tokens &&
           a.output_tokens == b.output_tokens;
  }
};

/// One series: a key (by id, never the key), its tenant and the model (deployment) it called.
struct UsageSeries {
  std::string key_id;
  std::string tenant;
  std::string model;

  friend bool operator==(const UsageSeries& a, const UsageSeries& b) {
    return a.key_id == b.key_id && a.tenant == b.tenant && a.model == b.model;
  }
  friend bool operator<(const UsageSeries& a, const UsageSeries& b) {
    return std::tie(a.key_id, a.tenant, a.model) < std::tie(b.key_id, b.tenant, b.model);
  }
};

/// A delta to add to the store: the counts of one series in one UTC hour.
struct UsageRow {
  UsageSeries series;
  /// The hour's start, seconds since the Unix epoch (a multiple of 3600: UTC hours).
  int64_t hour_unix_s = 0;
  UsageCounts counts;
};

/// A series' running total since the meter started: a Prometheus counter's value.
struct UsageTotal {
  UsageSeries series;
  UsageCounts counts;
};

/// What Flush hands out.
struct UsageFlush {
  /// The batch since the last flush, one row per series and hour, sorted by hour then series:
  /// the rows the store adds (the LMDB writer is later work).
  std::vector<UsageRow> deltas;
  /// The running totals of the series in `deltas`, after adding them (what the exporter sets).
  std::vector<UsageTotal> totals;
};

struct UsageMeterConfig {
  /// A flush is due this long after the last one. A crash loses at most this much metering;
  /// one write per second keeps the store off the request path at any request rate.
  std::chrono::milliseconds flush_interval{1000};
  /// A flush is due once the batch holds this many rows (series x hours), whatever the time.
  size_t max_batch_rows = 4096;
};

/// Counts usage per (key id, tenant, model, hour) in memory and hands out the batch on Flush.
///
/// Record is O(1) expected (one hash-map update; no allocation once a series has been seen in
/// the batch) and never writes anywhere: the point is that metering writes on the
/// request path pushed LiteLLM's p99 to seconds. Hours come from the clock's wall time
/// (WallNow), floored to the UTC hour. Not thread-safe: one owner (a gateway thread or a meter
/// actor), like RateLimiter.
class UsageMeter {
 public:
  /// `clock` outlives the meter.
  explicit UsageMeter(const Clock& clock, UsageMeterConfig config = {});

  /// Counts one finished request. Returns FlushDue() after counting it.
  bool Record(std::string_view key_id, std::string_view tenant, std::string_view model, uint64_t input_tokens,
              uint64_t output_tokens, bool error);
  /// True if the batch is full or flush_interval has passed since the last flush (or since the
  /// meter was made) and the batch is not empty.
  bool FlushDue() const;
  /// Hands out the batch and empties it.
  UsageFlush Flush();

  /// Every series' running total (everything flushed so far), sorted by series.
  const std::map<UsageSeries, UsageCounts>& Totals() const { return totals_; }
  /// Rows in the batch.
  size_t pending_rows() const { return batch_.size(); }

  /// The UTC hour that holds `unix_ms`, as its start in seconds since the epoch.
  static int64_t HourOf(int64_t unix_ms);

 private:
  struct BatchKey {
    UsageSeries series;
    int64_t hour_unix_s = 0;
    friend bool operator==(const BatchKey& a, const BatchKey& b) {
      return a.hour_unix_s == b.hour_unix_s && a.series == b.series;
    }
  };
  struct BatchKeyHash {
    size_t operator()(const BatchKey& k) const;
  };

  const Clock& clock_;
  UsageMeterConfig config_;
  std::unordered_map<BatchKey, UsageCounts, BatchKeyHash> batch_;
  std::map<UsageSeries, UsageCounts> totals_;
  Clock::TimePoint last_flush_;
  // Reused by Record so that a hit allocates nothing.
  BatchKey scratch_;
};

}  // namespace troupe::api
