// Node identity: how troupe node ids and actor ids map onto CAF's node_id and actor_id.
#pragma once

#include <caf/actor_addr.hpp>
#include <caf/node_id.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "transport/frame.h"

namespace troupe::runtime {

using transport::NodeId;

/// The CAF node id under which proxies of a troupe node's actors live. It is a pure function
/// of the troupe node id, so the mapping needs no table and works in both directions.
caf::node_id ToCafNode(NodeId node);
/// The troupe node id of a CAF node made by ToCafNode; nullopt for any other CAF node
/// (such as the local actor system's own).
std::optional<NodeId> FromCafNode(const caf::node_id& node);

/// Wire actor ids: the CAF actor id in the low 40 bits, the node's incarnation (a random
/// number drawn at every start) above. A ref kept across a restart of its node does not
/// alias an unrelated actor of the new process: its incarnation no longer matches.
inline constexpr int kIncarnationShift = 40;
inline constexpr uint64_t kLocalIdMask = (uint64_t{1} << kIncarnationShift) - 1;

inline uint64_t MakeWireActorId(uint32_t incarnation, caf::actor_id local) {
  return (uint64_t{incarnation} << kIncarnationShift) | (local & kLocalIdMask);
}
inline uint32_t IncarnationOf(uint64_t wire_id) {
  return static_cast<uint32_t>(wire_id >> kIncarnationShift);
}
inline caf::actor_id LocalIdOf(uint64_t wire_id) { return wire_id & kLocalIdMask; }

/// A fresh nonzero incarnation number that fits in 24 bits.
uint32_t NewIncarnation();

/// The node id a node named `name` gets when its config does not set one: a stable hash,
/// so a restarted node comes back under the same id.
NodeId NodeIdFromName(const std::string& name);

/// "node 7 (worker-a)" style text for logs and error messages.
std::string DescribeNode(NodeId node);

}  // namespace troupe::runtime
