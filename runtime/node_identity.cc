// Node identity mapping.
#include "runtime/node_identity.h"

#include <random>

namespace troupe::runtime {

namespace {

// Host ids of proxy nodes start with this tag; the troupe node id follows, big-endian.
constexpr uint8_t kTag[4] = {'t', 'r', 'p', 'e'};
constexpr uint32_t kProxyProcessId = 1;

}  // namespace

caf::node_id ToCafNode(NodeId node) {
  caf::node_id::default_data::host_id_type host{};
  for (size_t i = 0; i < 4; ++i) host[i] = kTag[i];
  for (size_t i = 0; i < 8; ++i) host[4 + i] = static_cast<uint8_t>(node >> (56 - 8 * i));
  return caf::make_node_id(kProxyProcessId, host);
}

std::optional<NodeId> FromCafNode(const caf::node_id& node) {
  if (!node || node->implementation_id() != caf::node_id::default_data::class_id) return std::nullopt;
  const auto& data = static_cast<const caf::node_id::default_data&>(*node);
  if (data.process_id() != kProxyProcessId) return std::nullopt;
  auto host = data.host_id();
  for (size_t i = 0; i < 4; ++i) {
    if (host[i] != kTag[i]) return std::nullopt;
  }
  for (size_t i = 12; i < host.size(); ++i) {
    if (host[i] != 0) return std::nullopt;
  }
  NodeId id = 0;
  for (size_t i = 0; i < 8; ++i) id = (id << 8) | host[4 + i];
  return id;
}

uint32_t NewIncarnation() {
  std::random_device rd;
  uint32_t value = 0;
  while (value == 0) value = rd() & 0xFFFFFFu;
  return value;
}

NodeId NodeIdFromName(const std::string& name) {
  // FNV-1a, 64 bit: stable across builds and platforms.
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : name) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash == 0 ? 1 : hash;
}

std::string DescribeNode(NodeId node) { return "node " + std::to_string(node); }

}  // namespace troupe::runtime
