// CodecRegistry: maps Cap'n Proto payload structs to C++ message types by type id, for the
// messages that cross nodes. Local sends never touch it.
#pragma once

#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/debug.h>
#include <caf/message.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <typeindex>
#include <unordered_map>

#include "common/buffer.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/messages.capnp.h"

namespace troupe::runtime {

/// The flat (unpacked, word-aligned) serialization of `builder`, without a copy.
Buffer SerializeToBuffer(capnp::MessageBuilder& builder);

/// A flat message of `Schema` built by `fill(builder)`.
template <class Schema, class Fill>
Buffer EncodeFlat(Fill&& fill) {
  capnp::MallocMessageBuilder builder(32);
  fill(builder.initRoot<Schema>());
  return SerializeToBuffer(builder);
}

/// Opens the flat message in `data` (copied only if it is not word-aligned) and calls
/// `read(reader)`. Bytes that do not decode, from a peer or a disk, give InvalidArgument
/// "cannot decode <what>: ...", never a crash.
Status ReadFlatMessage(const uint8_t* data, size_t size, const std::string& what,
                       const std::function<Status(capnp::MessageReader&)>& read);

/// ReadFlatMessage with the root read as `Schema`.
template <class Schema, class Read>
Status ReadFlat(const uint8_t* data, size_t size, const std::string& what, Read&& read) {
  return ReadFlatMessage(data, size, what,
                         [&](capnp::MessageReader& reader) { return read(reader.getRoot<Schema>()); });
}

/// `list` (a list of structs read from a peer's or a disk's message), checked to hold no more
/// elements than its bytes can: an honest encoder writes each element at its schema's full size
/// (data and pointer words), so a list of N elements takes at least N times that many words. A
/// hostile one could send zero-sized or shrunken elements and have a small payload decode into
/// millions of records (1 MiB of `cluster.NodeList` decoded into 525,304 records and a 487 MB
/// peak before this check). Throws kj::Exception otherwise, which ReadFlatMessage and the
/// registry's Decode turn into InvalidArgument, like any other malformed message.
template <class ListReader>
ListReader CheckedList(ListReader list) {
  using Element = typename decltype(list[0])::Reads;
  const auto proto = capnp::Schema::from<Element>().getProto().getStruct();
  const uint64_t words_each = std::max<uint64_t>(1, proto.getDataWordCount() + proto.getPointerCount());
  const uint64_t words = list.totalSize().wordCount;
  KJ_REQUIRE(uint64_t{list.size()} * words_each <= words, "list of more elements than its size allows",
             list.size(), words_each, words);
  return list;
}

/// An error as ErrorInfo (a normal exit, code 0, leaves it empty), and back.
void FillErrorInfo(wire::ErrorInfo::Builder out, const caf::error& error);
caf::error ReadErrorInfo(wire::ErrorInfo::Reader in);

/// Type ids below this are the runtime's own (runtime/wire_types.h).
inline constexpr uint32_t kFirstUserTypeId = 1000;

/// How codecs put ActorRefs into payloads and get them back. The bridge implements it:
/// encoding a local actor makes it reachable from other nodes; decoding a remote one makes
/// (or reuses) its proxy.
class RefCodec {
 public:
  virtual ~RefCodec() = default;
  virtual void EncodeRef(const ActorRef& ref, wire::ActorAddress::Builder out) = 0;
  virtual ActorRef DecodeRef(wire::ActorAddress::Reader in) = 0;
};

/// An encoded message: its type id and the Cap'n Proto bytes (one flat, unpacked segment
/// array, word-aligned).
struct EncodedMessage {
  uint32_t type_id = 0;
  Buffer payload;
};

/// The set of message types that can cross nodes. Build it before the runtime starts; it is
/// read-only (and so thread-safe) afterwards.
///
/// A message type T is a C++ struct (marked with CAF_ALLOW_UNSAFE_MESSAGE_TYPE, since CAF
/// never serializes it) and a Cap'n Proto struct S, tied together by two functions:
///   registry.Add<T, S>(1001, "Increment",
///       [](const T& m, S::Builder b, RefCodec&) { b.setBy(m.by); },
///       [](S::Reader r, RefCodec&) -> StatusOr<T> { return T{r.getBy()}; });
/// A message with one element of type T travels as S. Anything else has no codec and is
/// refused with InvalidArgument (for a request, as its error reply).
class CodecRegistry {
 public:
  template <class T, class Schema>
  using Encoder = std::function<void(const T&, typename Schema::Builder, RefCodec&)>;
  template <class T, class Schema>
  using Decoder = std::function<StatusOr<T>(typename Schema::Reader, RefCodec&)>;

  /// Registers T <-> Schema under `type_id` (>= kFirstUserTypeId). AlreadyExists if the id or
  /// the type is taken.
  template <class T, class Schema>
  Status Add(uint32_t type_id, std::string name, Encoder<T, Schema> encode,
             Decoder<T, Schema> decode) {
    return AddImpl<T, Schema>(type_id, std::move(name), std::move(encode), std::move(decode),
                              /*reserved_ok=*/false);
  }

  /// Encodes a one-element message of a registered type. InvalidArgument if there is no
  /// codec for it.
  StatusOr<EncodedMessage> Encode(const caf::message& msg, RefCodec& refs) const;
  /// Decodes a payload of `type_id`. InvalidArgument for an unknown type id or bytes that
  /// do not decode (never a crash: the bytes come from another process). `refs` is asked to
  /// decode the message's actor references only once the whole message has decoded (with the
  /// references as plain values): a message that fails changes nothing.
  StatusOr<caf::message> Decode(uint32_t type_id, const Buffer& payload, RefCodec& refs) const;
  StatusOr<caf::message> Decode(uint32_t type_id, const uint8_t* data, size_t size,
                                RefCodec& refs) const;

  /// The registered name of a type id ("type id 1234" if unknown).
  std::string NameOf(uint32_t type_id) const;
  bool Has(uint32_t type_id) const { return by_id_.count(type_id) != 0; }

  /// Registers the runtime's own message types (directory protocol, remote exit, supervision
  /// events). Called by the runtime.
  Status AddRuntimeTypes();

 private:
  struct Entry {
    uint32_t type_id;
    std::string name;
    std::function<void(const caf::message&, capnp::MessageBuilder&, RefCodec&)> encode;
    std::function<StatusOr<caf::message>(capnp::MessageReader&, RefCodec&)> decode;
  };

  template <class T, class Schema>
  Status AddImpl(uint32_t type_id, std::string name, Encoder<T, Schema> encode,
                 Decoder<T, Schema> decode, bool reserved_ok) {
    auto entry = std::make_shared<Entry>();
    entry->type_id = type_id;
    entry->name = name;
    entry->encode = [encode = std::move(encode)](const caf::message& msg,
                                                 capnp::MessageBuilder& builder, RefCodec& refs) {
      encode(msg.get_as<T>(0), builder.initRoot<Schema>(), refs);
    };
    entry->decode = [decode = std::move(decode)](capnp::MessageReader& reader,
                                                 RefCodec& refs) -> StatusOr<caf::message> {
      StatusOr<T> value = decode(reader.getRoot<Schema>(), refs);
      if (!value.ok()) return value.status();
      return caf::make_message(std::move(value).value());
    };
    return Insert(std::move(entry), typeid(T), reserved_ok);
  }

  Status Insert(std::shared_ptr<Entry> entry, const std::type_info& type, bool reserved_ok);

  std::unordered_map<uint32_t, std::shared_ptr<const Entry>> by_id_;
  std::unordered_map<std::type_index, std::shared_ptr<const Entry>> by_type_;
  std::unordered_map<const std::type_info*, std::shared_ptr<const Entry>> by_type_info_;
};

}  // namespace troupe::runtime
