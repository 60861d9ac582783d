// UsageMeter: an in-memory batch of usage deltas per key, tenant, model and UTC hour.
#include "actors/api/usage_meter.h"

#include <algorithm>
#include <functional>

namespace troupe::api {

size_t UsageMeter::BatchKeyHash::operator()(const BatchKey& k) const {
  // boost::hash_combine's mixing step.
  size_t h = std::hash<std::string>{}(k.series.key_id);
  auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
  mix(std::hash<std::string>{}(k.series.tenant));
  mix(std::hash<std::string>{}(k.series.model));
  mix(std::hash<int64_t>{}(k.hour_unix_s));
  return h;
}

UsageMeter::UsageMeter(const Clock& clock, UsageMeterConfig config)
    : clock_(clock), config_(config), last_flush_(clock.Now()) {}

int64_t UsageMeter::HourOf(int64_t unix_ms) {
  int64_t seconds = unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000;
  int64_t hour = seconds >= 0 ? seconds / 3600 : (seconds - 3599) / 3600;
  return hour * 3600;
}

bool UsageMeter::Record(std::string_view key_id, std::string_view tenant, std::string_view model,
                        uint64_t input_tokens, uint64_t output_tokens, bool error) {
  scratch_.series.key_id.assign(key_id.data(), key_id.size());
  scratch_.series.tenant.assign(tenant.data(), tenant.size());
  scratch_.series.model.assign(model.data(), model.size());
  scratch_.hour_unix_s = HourOf(clock_.UnixMs());
  auto it = batch_.find(scratch_);
  if (it == batch_.end()) it = batch_.emplace(scratch_, UsageCounts{}).first;
  UsageCounts& c = it->second;
  c.requests += 1;
  c.errors += error ? 1 : 0;
  c.input_tokens += input_tokens;
  c.output_tokens += output_tokens;
  return FlushDue();
}

bool UsageMeter::FlushDue() const {
  if (batch_.empty()) return false;
  return batch_.size() >= config_.max_batch_rows || clock_.Now() - last_flush_ >= config_.flush_interval;
}

UsageFlush UsageMeter::Flush() {
  UsageFlush out;
  out.deltas.reserve(batch_.size());
  for (auto& [key, counts] : batch_) out.deltas.push_back(UsageRow{key.series, key.hour_unix_s, counts});
  batch_.clear();
  last_flush_ = clock_.Now();
  std::sort(out.deltas.begin(), out.deltas.end(), [](const UsageRow& a, const UsageRow& b) {
    if (a.hour_unix_s != b.hour_unix_s) return a.hour_unix_s < b.hour_unix_s;
    return a.series < b.series;
  });
  std::map<UsageSeries, UsageCounts> touched;
  for (const UsageRow& row : out.deltas) {
    UsageCounts& total = totals_[row.series];
    total += row.counts;
    touched[row.series] = total;
  }
  out.totals.reserve(touched.size());
  for (auto& [series, counts] : touched) out.totals.push_back(UsageTotal{series, counts});
  return out;
}

}  // namespace troupe::api
