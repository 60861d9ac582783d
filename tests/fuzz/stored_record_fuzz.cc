// Fuzz target: the values the head keeps in LMDB (node records, granted leases) and the
// tables' integer keys, decoded from arbitrary bytes as after a corrupted or foreign file.
// The first input byte chooses which decoder.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "cluster/messages.h"
#include "storage/table.h"
#include "tests/fakes/fake_ref_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static troupe::testing::FakeRefCodec refs;
  if (size < 1) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0: {
      auto record = troupe::cluster::DecodeNodeRecord(bytes);
      if (record.ok()) {
        auto again = troupe::cluster::DecodeNodeRecord(troupe::cluster::EncodeNodeRecord(*record));
        if (!again.ok() || again->name != record->name || again->gpus.size() != record->gpus.size()) __builtin_trap();
      }
      break;
    }
    case 1: {
      auto lease = troupe::cluster::DecodeStoredLease(bytes, refs);
      if (lease.ok()) {
        auto again = troupe::cluster::DecodeStoredLease(
            troupe::cluster::EncodeStoredLease(lease->first, lease->second, refs), refs);
        if (!again.ok() || again->second.lease_id != lease->second.lease_id) __builtin_trap();
      }
      break;
    }
    default: {
      auto key = troupe::storage::KeyCodec<uint64_t>::Decode(bytes);
      if (key.ok() && troupe::storage::KeyCodec<uint64_t>::Encode(*key) != bytes) __builtin_trap();
      break;
    }
  }
  return 0;
}
