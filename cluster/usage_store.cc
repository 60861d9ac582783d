// UsageStore.
#include "cluster/usage_store.h"

#include <string_view>

#include "storage/table.h"

namespace troupe::cluster {

namespace {

using Codec = storage::KeyCodec<uint64_t>;

std::string RowKey(const api::UsageRow& row) {
  std::string key = Codec::Encode(static_cast<uint64_t>(row.hour_unix_s));
  key += row.series.key_id;
  key += '\0';
  key += row.series.tenant;
  key += '\0';
  key += row.series.model;
  return key;
}

std::string EncodeCounts(const api::UsageCounts& c) {
  return Codec::Encode(c.requests) + Codec::Encode(c.errors) + Codec::Encode(c.input_tokens) +
         Codec::Encode(c.output_tokens);
}

StatusOr<api::UsageCounts> DecodeCounts(std::string_view bytes) {
  if (bytes.size() != 32) return InternalError("api_usage: a row's counts have " + std::to_string(bytes.size()) + " bytes, not 32");
  api::UsageCounts c;
  uint64_t* fields[] = {&c.requests, &c.errors, &c.input_tokens, &c.output_tokens};
  for (size_t i = 0; i < 4; ++i) *fields[i] = *Codec::Decode(bytes.substr(i * 8, 8));
  return c;
}

StatusOr<api::UsageRow> DecodeRow(std::string_view key, std::string_view value) {
  if (key.size() < 10) return InternalError("api_usage: a row's key is too short");
  api::UsageRow row;
  row.hour_unix_s = static_cast<int64_t>(*Codec::Decode(key.substr(0, 8)));
  std::string_view rest = key.substr(8);
  const size_t a = rest.find('\0');
  const size_t b = a == std::string_view::npos ? a : rest.find('\0', a + 1);
  if (b == std::string_view::npos) return InternalError("api_usage: a row's key does not name key, tenant and model");
  row.series.key_id = std::string(rest.substr(0, a));
  row.series.tenant = std::string(rest.substr(a + 1, b - a - 1));
  row.series.model = std::string(rest.substr(b + 1));
  ASSIGN_OR_RETURN(row.counts, DecodeCounts(value));
  return row;
}

}  // namespace

Status UsageStore::Open() {
  ASSIGN_OR_RETURN(table_, store_->env().OpenTable("api_usage"));
  return OkStatus();
}

Status UsageStore::Add(const std::vector<api::UsageRow>& rows) {
  if (rows.empty()) return OkStatus();
  return store_->Commit([&](storage::Txn& txn) -> Status {
    for (const auto& row : rows) {
      const std::string key = RowKey(row);
      api::UsageCounts counts = row.counts;
      auto stored = txn.Get(table_, key);
      if (stored.ok()) {
        ASSIGN_OR_RETURN(auto before, DecodeCounts(*stored));
        counts += before;
      } else if (stored.status().code() != StatusCode::kNotFound) {
        return stored.status();
      }
      RETURN_IF_ERROR(txn.Put(table_, key, EncodeCounts(counts)));
    }
    return OkStatus();
  });
}

StatusOr<std::vector<api::UsageRow>> UsageStore::Query(const Filter& filter) const {
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  const int64_t since_hour = filter.since_unix_ms <= 0 ? 0 : api::UsageMeter::HourOf(filter.since_unix_ms);
  std::vector<api::UsageRow> out;
  Status failure;
  Status scan = txn.ForEach(table_, Codec::Encode(static_cast<uint64_t>(since_hour)),
                            [&](std::string_view key, std::string_view value) {
                              auto row = DecodeRow(key, value);
                              if (!row.ok()) {
                                failure = row.status();
                                return false;
                              }
                              const auto& s = row->series;
                              if ((filter.key_id.empty() || s.key_id == filter.key_id) &&
                                  (filter.tenant.empty() || s.tenant == filter.tenant) &&
                                  (filter.model.empty() || s.model == filter.model)) {
                                out.push_back(std::move(*row));
                              }
                              return true;
                            });
  if (!failure.ok()) return failure;
  RETURN_IF_ERROR(scan);
  return out;
}

}  // namespace troupe::cluster
