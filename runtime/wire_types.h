// The runtime's reserved frame type ids and flags (application types start at 1000).
#pragma once

#include <cstdint>

namespace troupe::runtime {

/// Frame type ids of the runtime's own traffic. Part of the wire format: never renumber.
enum WireType : uint32_t {
  kHeartbeat = 1,       ///< no payload; any frame counts as a sign of life
  kErrorReply = 2,      ///< ErrorInfo: a request failed
  kEmptyReply = 3,      ///< no payload: a request's handler returned nothing
  kMonitorRequest = 4,  ///< no payload: tell me when dst_actor exits
  kDownNotice = 5,      ///< DownNotice: src_actor exited (or never existed)
  kSpawnRequest = 6,    ///< SpawnRequest to the node itself (dst_actor 0)
  kNameLookup = 7,      ///< NameLookup to the node itself (dst_actor 0)
  kRefReply = 8,        ///< RefReply: answer to spawn and lookup
  // Directory protocol (ordinary actor messages, codec-registered by the runtime).
  kDirectoryRegister = 100,
  kDirectoryLookup = 101,
  kDirectoryUnregister = 102,
  kDirectoryEntry = 103,
  kExitRequest = 104,      ///< ExitRequest: a caf::exit_msg for a remote actor
  kSupervisorEvent = 105,  ///< SupervisorEvent
};

/// Frame flags.
enum WireFlags : uint32_t {
  kFlagRequest = 1,   ///< the sender waits for a reply with this request id
  kFlagResponse = 2,  ///< a reply to request_id
};

}  // namespace troupe::runtime
