// CodecRegistry.
#include "runtime/codec.h"

#include <caf/system_messages.hpp>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "runtime/directory.h"
#include "runtime/supervisor.h"
#include "runtime/wire_types.h"

namespace troupe::runtime {

namespace {

// ReadFlatMessage, with the message named by `what()` only when an error needs the name:
// building it costs more than decoding a small message.
template <class What, class Read>
Status ReadFlatMessageNamed(const uint8_t* data, size_t size, What&& what, Read&& read) {
  if (size % sizeof(capnp::word) != 0 || size == 0) {
    return InvalidArgumentError("cannot decode " + what() + ": " + std::to_string(size) +
                                " bytes is not a whole number of words");
  }
  // Cap'n Proto reads words in place; copy only if the bytes are not word-aligned.
  kj::Array<capnp::word> aligned;
  const capnp::word* words = reinterpret_cast<const capnp::word*>(data);
  if (reinterpret_cast<uintptr_t>(data) % alignof(capnp::word) != 0) {
    aligned = kj::heapArray<capnp::word>(size / sizeof(capnp::word));
    std::memcpy(aligned.begin(), data, size);
    words = aligned.begin();
  }
  try {
    capnp::ReaderOptions options;
    // What a decoder may read: each word of the message about twice (a decoder may read a
    // list for its size and then its elements), and a little for the envelope of an empty one.
    // Zero-sized list elements count one word each here; CheckedList refuses shrunken ones.
    options.traversalLimitInWords = size / sizeof(capnp::word) * 2 + 64;
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(words, size / sizeof(capnp::word)), options);
    return read(reader);
  } catch (const kj::Exception& e) {
    return InvalidArgumentError("cannot decode " + what() + ": " + e.getDescription().cStr());
  }
}

// A MessageBuilder whose first segment is memory the caller provides (and keeps: unlike
// MallocMessageBuilder, it does not zero that segment again when it is destroyed, so the
// message can be built right where it is sent from). Further segments come from the heap,
// each at least as large as all before it.
class InPlaceMessageBuilder final : public capnp::MessageBuilder {
 public:
  explicit InPlaceMessageBuilder(kj::ArrayPtr<capnp::word> first) : first_(first) {}

  kj::ArrayPtr<capnp::word> allocateSegment(unsigned int minimum_size) override {
    if (!first_used_) {
      first_used_ = true;
      if (minimum_size <= first_.size()) {
        std::memset(static_cast<void*>(first_.begin()), 0, first_.size() * sizeof(capnp::word));
        allocated_ = first_.size();
        return first_;
      }
    }
    size_t size = std::max<size_t>(minimum_size, std::max<size_t>(allocated_, 64));
    auto segment = kj::heapArray<capnp::word>(size);
    std::memset(static_cast<void*>(segment.begin()), 0, size * sizeof(capnp::word));
    allocated_ += size;
    kj::ArrayPtr<capnp::word> out = segment;
    more_.push_back(std::move(segment));
    return out;
  }

 private:
  kj::ArrayPtr<capnp::word> first_;
  bool first_used_ = false;
  size_t allocated_ = 0;
  std::vector<kj::Array<capnp::word>> more_;
};

}  // namespace

Buffer SerializeToBuffer(capnp::MessageBuilder& builder) {
  // The standard flat layout, written straight into one (word-aligned) buffer: a segment
  // table of little-endian uint32 (count - 1, then each size in words, padded to a word),
  // then the segments.
  auto segments = builder.getSegmentsForOutput();
  size_t table_words = (segments.size() + 2) / 2;
  size_t words = table_words;
  for (const auto& segment : segments) words += segment.size();
  Buffer out = Buffer::Allocate(words * sizeof(capnp::word));
  uint8_t* p = out.data();
  auto put32 = [&p](uint32_t v) {
    for (int i = 0; i < 4; ++i) *p++ = static_cast<uint8_t>(v >> (8 * i));
  };
  put32(static_cast<uint32_t>(segments.size() - 1));
  for (const auto& segment : segments) put32(static_cast<uint32_t>(segment.size()));
  if (segments.size() % 2 == 0) put32(0);
  for (const auto& segment : segments) {
    std::memcpy(p, segment.begin(), segment.size() * sizeof(capnp::word));
    p += segment.size() * sizeof(capnp::word);
  }
  return out;
}

Status CodecRegistry::Insert(std::shared_ptr<Entry> entry, const std::type_info& type_info, bool reserved_ok) {
  std::type_index type(type_info);
  if (entry->type_id == 0 || (!reserved_ok && entry->type_id < kFirstUserTypeId)) {
    return InvalidArgumentError("codec '" + entry->name + "': type id " + std::to_string(entry->type_id) +
                                " is reserved (application types start at " +
                                std::to_string(kFirstUserTypeId) + ")");
  }
  if (auto it = by_id_.find(entry->type_id); it != by_id_.end()) {
    return AlreadyExistsError("codec '" + entry->name + "': type id " + std::to_string(entry->type_id) +
                              " is already taken by '" + it->second->name + "'");
  }
  if (auto it = by_type_.find(type); it != by_type_.end()) {
    return AlreadyExistsError("codec '" + entry->name + "': its C++ type is already registered as '" +
                              it->second->name + "'");
  }
  std::shared_ptr<const Entry> shared = std::move(entry);
  by_id_.emplace(shared->type_id, shared);
  by_type_.emplace(type, shared);
  by_type_info_.emplace(&type_info, shared);
  return OkStatus();
}

StatusOr<EncodedMessage> CodecRegistry::Encode(const caf::message& msg, RefCodec& refs) const {
  if (msg.size() != 1) {
    return InvalidArgumentError("message " + caf::to_string(msg) +
                                " cannot cross nodes: only one-element messages of a registered type can");
  }
  const std::type_info* info = msg.type(0).second;
  // CAF's built-in types carry a type number instead of RTTI; exit_msg is the one with a codec.
  if (info == nullptr && msg.match_element<caf::exit_msg>(0)) info = &typeid(caf::exit_msg);
  const Entry* found = nullptr;
  if (info != nullptr) {
    // type_info objects are normally unique per type: try the pointer before hashing the name.
    if (auto fast = by_type_info_.find(info); fast != by_type_info_.end()) {
      found = fast->second.get();
    } else if (auto slow = by_type_.find(std::type_index(*info)); slow != by_type_.end()) {
      found = slow->second.get();
    }
  }
  if (found == nullptr) {
    return InvalidArgumentError("message " + caf::to_string(msg) +
                                " has no codec: register its type with CodecRegistry::Add");
  }
  const Entry& entry = *found;
  try {
    // Built in place: the output buffer's first segment (zeroed, as Cap'n Proto requires) comes
    // right after a one-word segment table. A message that fits it (most do) then needs no
    // other allocation and no copy; a larger one spills into more segments and is copied out.
    constexpr size_t kInPlaceWords = 32;
    Buffer out = Buffer::Allocate((kInPlaceWords + 1) * sizeof(capnp::word));
    auto* words = reinterpret_cast<capnp::word*>(out.data());
    InPlaceMessageBuilder builder(kj::arrayPtr(words + 1, kInPlaceWords));
    entry.encode(msg, builder, refs);
    auto segments = builder.getSegmentsForOutput();
    if (segments.size() != 1 || segments[0].begin() != words + 1) {
      return EncodedMessage{entry.type_id, SerializeToBuffer(builder)};
    }
    // The standard segment table for one segment: (count - 1) = 0, then its size in words.
    const auto size = static_cast<uint32_t>(segments[0].size());
    uint8_t* table = out.data();
    for (int i = 0; i < 4; ++i) table[i] = 0;
    for (int i = 0; i < 4; ++i) table[4 + i] = static_cast<uint8_t>(size >> (8 * i));
    out.Truncate((size + 1) * sizeof(capnp::word));
    return EncodedMessage{entry.type_id, std::move(out)};
  } catch (const kj::Exception& e) {
    return InvalidArgumentError("cannot encode '" + entry.name + "': " + e.getDescription().cStr());
  }
}

StatusOr<caf::message> CodecRegistry::Decode(uint32_t type_id, const Buffer& payload,
                                             RefCodec& refs) const {
  return Decode(type_id, payload.data(), payload.size(), refs);
}

namespace {

// Decodes actor references as plain values (node, actor id; the address is read, so a bad one
// fails here as it would later) and changes nothing: no address is recorded, no proxy made.
class PlainRefs final : public RefCodec {
 public:
  void EncodeRef(const ActorRef&, wire::ActorAddress::Builder) override {}
  ActorRef DecodeRef(wire::ActorAddress::Reader in) override {
    ++met;
    if (in.hasAddress()) (void)in.getAddress();
    return in.getNode() == 0 ? ActorRef() : ActorRef::Dangling(in.getNode(), in.getActor());
  }
  int met = 0;
};

}  // namespace

StatusOr<caf::message> CodecRegistry::Decode(uint32_t type_id, const uint8_t* data, size_t size,
                                             RefCodec& refs) const {
  auto it = by_id_.find(type_id);
  if (it == by_id_.end()) {
    return InvalidArgumentError("unknown message type id " + std::to_string(type_id) +
                                " (no codec registered on this node)");
  }
  const Entry& entry = *it->second;
  auto what = [&] { return "'" + entry.name + "' (type id " + std::to_string(type_id) + ")"; };
  // Decoding never changes state: the message is first decoded whole with its references as
  // plain values. Only one that decodes is decoded again with `refs`, which records the
  // addresses inside and makes proxies (a proxy sends a monitor request to its node). A message
  // without references is decoded once.
  PlainRefs plain;
  StatusOr<caf::message> out = InternalError("not decoded");
  RETURN_IF_ERROR(ReadFlatMessageNamed(data, size, what, [&](capnp::MessageReader& reader) {
    out = entry.decode(reader, plain);
    return out.status();
  }));
  if (plain.met == 0) return out;
  // A fresh reader: each pass has the whole traversal limit.
  RETURN_IF_ERROR(ReadFlatMessageNamed(data, size, what, [&](capnp::MessageReader& reader) {
    out = entry.decode(reader, refs);
    return out.status();
  }));
  return out;
}

Status ReadFlatMessage(const uint8_t* data, size_t size, const std::string& what,
                       const std::function<Status(capnp::MessageReader&)>& read) {
  return ReadFlatMessageNamed(data, size, [&what] { return what; }, read);
}

void FillErrorInfo(wire::ErrorInfo::Builder out, const caf::error& error) {
  if (!error) return;  // code 0: no error (a normal exit); CAF's accessors need a non-empty error
  out.setCategory(static_cast<uint64_t>(error.category()));
  out.setCode(error.code());
  const auto& ctx = error.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0)) {
    out.setText(ctx.get_as<std::string>(0));
  } else if (!ctx.empty()) {
    out.setText(caf::to_string(ctx));
  }
}

caf::error ReadErrorInfo(wire::ErrorInfo::Reader in) {
  if (in.getCode() == 0) return caf::error{};
  return caf::error(in.getCode(), static_cast<caf::atom_value>(in.getCategory()),
                    caf::make_message(std::string(in.getText())));
}

std::string CodecRegistry::NameOf(uint32_t type_id) const {
  auto it = by_id_.find(type_id);
  return it == by_id_.end() ? "type id " + std::to_string(type_id) : it->second->name;
}

Status CodecRegistry::AddRuntimeTypes() {

  RETURN_IF_ERROR((AddImpl<DirectoryRegister, wire::DirectoryRegister>(
      kDirectoryRegister, "DirectoryRegister",
      [](const DirectoryRegister& m, wire::DirectoryRegister::Builder b, RefCodec& refs) {
        b.setName(m.name);
        refs.EncodeRef(m.ref, b.initRef());
      },
      [](wire::DirectoryRegister::Reader r, RefCodec& refs) -> StatusOr<DirectoryRegister> {
        return DirectoryRegister{r.getName(), refs.DecodeRef(r.getRef())};
      },
      true)));
  RETURN_IF_ERROR((AddImpl<DirectoryLookup, wire::DirectoryLookup>(
      kDirectoryLookup, "DirectoryLookup",
      [](const DirectoryLookup& m, wire::DirectoryLookup::Builder b, RefCodec&) { b.setName(m.name); },
      [](wire::DirectoryLookup::Reader r, RefCodec&) -> StatusOr<DirectoryLookup> {
        return DirectoryLookup{r.getName()};
      },
      true)));
  RETURN_IF_ERROR((AddImpl<DirectoryUnregister, wire::DirectoryUnregister>(
      kDirectoryUnregister, "DirectoryUnregister",
      [](const DirectoryUnregister& m, wire::DirectoryUnregister::Builder b, RefCodec&) { b.setName(m.name); },
      [](wire::DirectoryUnregister::Reader r, RefCodec&) -> StatusOr<DirectoryUnregister> {
        return DirectoryUnregister{r.getName()};
      },
      true)));
  // An exit message for a remote actor: the receiving node delivers it as a caf::exit_msg
  // (without a source), so a supervisor can stop children on other nodes.
  RETURN_IF_ERROR((AddImpl<caf::exit_msg, wire::ExitRequest>(
      kExitRequest, "ExitRequest",
      [](const caf::exit_msg& m, wire::ExitRequest::Builder b, RefCodec&) { FillErrorInfo(b.initReason(), m.reason); },
      [](wire::ExitRequest::Reader r, RefCodec&) -> StatusOr<caf::exit_msg> {
        caf::error reason = ReadErrorInfo(r.getReason());
        if (!reason) return InvalidArgumentError("exit request without a reason");
        return caf::exit_msg{caf::actor_addr{}, std::move(reason)};
      },
      true)));
  RETURN_IF_ERROR((AddImpl<SupervisorEvent, wire::SupervisorEvent>(
      kSupervisorEvent, "SupervisorEvent",
      [](const SupervisorEvent& m, wire::SupervisorEvent::Builder b, RefCodec&) {
        b.setSupervisor(m.supervisor);
        b.setChild(m.child);
        b.setKind(m.kind);
        b.setReason(m.reason);
        b.setNode(m.node);
        b.setUnixMs(m.unix_ms);
        b.setRestarts(m.restarts);
      },
      [](wire::SupervisorEvent::Reader r, RefCodec&) -> StatusOr<SupervisorEvent> {
        return SupervisorEvent{r.getSupervisor(), r.getChild(), r.getKind(), r.getReason(),
                               r.getNode(),       r.getUnixMs(), r.getRestarts()};
      },
      true)));
  return AddImpl<DirectoryEntry, wire::DirectoryEntry>(
      kDirectoryEntry, "DirectoryEntry",
      [](const DirectoryEntry& m, wire::DirectoryEntry::Builder b, RefCodec& refs) {
        b.setName(m.name);
        refs.EncodeRef(m.ref, b.initRef());
      },
      [](wire::DirectoryEntry::Reader r, RefCodec& refs) -> StatusOr<DirectoryEntry> {
        return DirectoryEntry{r.getName(), refs.DecodeRef(r.getRef())};
      },
      true);
}

}  // namespace troupe::runtime
