// Table<K, V>: a typed view of one LMDB table, with key and value codecs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "storage/lmdb_env.h"

namespace troupe::storage {

/// How keys become bytes. Byte order is iteration order, so integers are big-endian.
template <class K>
struct KeyCodec;

template <>
struct KeyCodec<uint64_t> {
  static std::string Encode(uint64_t key) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(key >> (56 - 8 * i));
    return out;
  }
  static StatusOr<uint64_t> Decode(std::string_view bytes) {
    if (bytes.size() != 8) return InvalidArgumentError("a uint64 key has " + std::to_string(bytes.size()) + " bytes");
    uint64_t key = 0;
    for (unsigned char c : bytes) key = (key << 8) | c;
    return key;
  }
};

template <>
struct KeyCodec<std::string> {
  static std::string Encode(const std::string& key) { return key; }
  static StatusOr<std::string> Decode(std::string_view bytes) { return std::string(bytes); }
};

/// How values become bytes. Specialize it for a record type (a Cap'n Proto struct, say).
template <class V>
struct ValueCodec;

template <>
struct ValueCodec<std::string> {
  static std::string Encode(const std::string& value) { return value; }
  static StatusOr<std::string> Decode(std::string_view bytes) { return std::string(bytes); }
};

template <>
struct ValueCodec<uint64_t> {
  static std::string Encode(uint64_t value) { return KeyCodec<uint64_t>::Encode(value); }
  static StatusOr<uint64_t> Decode(std::string_view bytes) { return KeyCodec<uint64_t>::Decode(bytes); }
};

/// A table of K -> V. Cheap to copy; valid while its LmdbEnv lives. All access goes through a
/// transaction, so several tables change together or not at all.
template <class K, class V>
class Table {
 public:
  static StatusOr<Table> Open(LmdbEnv& env, const std::string& name) {
    auto id = env.OpenTable(name);
    if (!id.ok()) return id.status();
    return Table(*id);
  }

  Status Put(Txn& txn, const K& key, const V& value) const {
    return txn.Put(id_, KeyCodec<K>::Encode(key), ValueCodec<V>::Encode(value));
  }
  StatusOr<V> Get(const Txn& txn, const K& key) const {
    auto bytes = txn.Get(id_, KeyCodec<K>::Encode(key));
    if (!bytes.ok()) return bytes.status();
    return DecodeValue(*bytes);
  }
  Status Delete(Txn& txn, const K& key) const { return txn.Delete(id_, KeyCodec<K>::Encode(key)); }
  StatusOr<uint64_t> Count(const Txn& txn) const { return txn.Count(id_); }

  /// Every entry in key order until `fn` returns false. A key or value that does not decode
  /// stops the scan with Internal (the stored data is not what this table holds).
  Status ForEach(const Txn& txn, const std::function<bool(const K&, const V&)>& fn) const {
    Status failure;
    Status scan = txn.ForEach(id_, {}, [&](std::string_view k, std::string_view v) {
      auto key = KeyCodec<K>::Decode(k);
      if (!key.ok()) {
        failure = InternalError("table '" + id_.name + "': a key does not decode: " + key.status().message());
        return false;
      }
      auto value = DecodeValue(v);
      if (!value.ok()) {
        failure = value.status();
        return false;
      }
      return fn(*key, *value);
    });
    return failure.ok() ? scan : failure;
  }

  const TableId& id() const { return id_; }

 private:
  explicit Table(TableId id) : id_(std::move(id)) {}
  StatusOr<V> DecodeValue(std::string_view bytes) const {
    auto value = ValueCodec<V>::Decode(bytes);
    if (!value.ok()) {
      return InternalError("table '" + id_.name + "': a stored value does not decode: " + value.status().message());
    }
    return value;
  }
  TableId id_;
};

}  // namespace troupe::storage
