// RoutingPolicy: which replica a router sends the next request to (round robin, random, weighted,
// least outstanding, power of two choices), as pure functions over the router's replica table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "actors/serving/messages.h"
#include "common/status.h"

namespace troupe::serving {

/// The routing policies of a deployment spec (`routing: <name>`).
enum class RoutingPolicyKind { kRoundRobin, kRandom, kWeighted, kLeastOutstanding, kPowerOfTwoChoices };

/// "round_robin", "random", "weighted", "least_outstanding", "power_of_two_choices".
const char* RoutingPolicyName(RoutingPolicyKind kind);
/// The policy called `name` (one of the names above); InvalidArgument naming the accepted names
/// otherwise.
StatusOr<RoutingPolicyKind> ParseRoutingPolicy(const std::string& name);

/// One replica of a router's table: as the deployment listed it, and the requests the router has
/// sent it that are not answered yet.
struct ReplicaSlot {
  ReplicaInfo info;
  uint32_t outstanding = 0;
};

/// True if the replica may take one more request (outstanding < max_ongoing_requests).
inline bool HasRoom(const ReplicaSlot& slot) { return slot.outstanding < slot.info.max_ongoing_requests; }

/// A routing policy: picks the index of a replica with room in a table, or none when every replica
/// is full (or the table is empty, or the only ones with room are `exclude`d). A pick reads the
/// table once or twice (O(n)) and allocates nothing; policies that keep per-replica state (weighted)
/// resize it only when the table's size changes.
///
/// Owned by one router and used on its mailbox only: not thread-safe. The table is the router's;
/// the policy never changes it (the router counts the pick as outstanding itself).
class RoutingPolicy {
 public:
  /// Means "exclude nothing".
  static constexpr size_t kNone = static_cast<size_t>(-1);

  virtual ~RoutingPolicy() = default;
  virtual RoutingPolicyKind kind() const = 0;
  /// The replica for the next request: an index into `replicas` of one with room, other than
  /// `exclude` (a retried request avoids the replica that refused it); nullopt if there is none.
  virtual std::optional<size_t> Pick(const std::vector<ReplicaSlot>& replicas, size_t exclude = kNone) = 0;
  /// The table was replaced (a new ReplicaSet): per-replica state starts over.
  virtual void Reset() {}
};

/// A new policy of `kind`. `seed` seeds the random engine of random and power_of_two_choices
/// (std::mt19937_64), so that a test, or a router with its own id as seed, picks reproducibly.
std::unique_ptr<RoutingPolicy> MakeRoutingPolicy(RoutingPolicyKind kind, uint64_t seed);

}  // namespace troupe::serving
