// GpuSlice: the actor that holds one slice of one GPU on a node, and its lease. A slice is
// leased to one owner (a worker or replica actor, on any node); the lease ends when the owner
// exits or its node or process is lost (the slice watches the owner, or is told by whoever
// does), so the slice always comes back. Runs on the node agent's process; its messages never
// cross nodes.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <functional>
#include <string>

#include "runtime/actor_ref.h"

namespace troupe::actors {

struct SliceInfo {
  uint32_t gpu_index = 0;
  std::string gpu_id;  ///< UUID, or the simulated GPU's name
  uint32_t slice = 0;  ///< index of the slice on its GPU
  uint64_t memory_bytes = 0;
  double compute_share = 1.0;
  bool simulated = false;
};

/// Lease the slice to `owner` (reply: true, or false if it is leased to another lease). With
/// `watch_owner`, the slice monitors the owner itself and ends the lease when it goes; without,
/// whoever granted the lease watches the owner and sends SliceRelease (the node agent does this:
/// the head watches owners, so nodes never connect to owners' processes).
struct SliceLease {
  uint64_t lease_id = 0;
  runtime::ActorRef owner;
  bool watch_owner = true;
  std::string owner_name;  ///< shown for the owner (its ref's ToString() when empty)
};
/// End lease `lease_id` (reply: true if it held that lease).
struct SliceRelease {
  uint64_t lease_id = 0;
};
struct SliceQuery {};
/// The slice now (reply to SliceQuery).
struct SliceStatus {
  SliceInfo info;
  uint64_t lease_id = 0;  ///< 0 = free
  std::string owner;      ///< the owner's ref, printed
};

/// Called on the slice's thread whenever its lease changes: (slice, lease id, why). `why` is
/// empty when the lease starts, and says why it ended otherwise ("released", "owner gone: ...").
using SliceListener = std::function<void(const SliceInfo&, uint64_t lease_id, const std::string& why)>;

struct GpuSliceState {
  SliceStatus status;
  caf::actor_addr owner;
};

caf::behavior GpuSlice(caf::stateful_actor<GpuSliceState>* self, SliceInfo info, SliceListener listener);

}  // namespace troupe::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::SliceLease)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::SliceRelease)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::SliceQuery)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::SliceStatus)
