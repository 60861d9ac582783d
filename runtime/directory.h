// The directory: a name -> ActorRef table that any node can host and every node can query.
// (The head will host it once the cluster exists; until then any node may.)
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/actor_system.hpp>

#include <string>

#include "runtime/actor_ref.h"

namespace troupe::runtime {

/// The name under which a node registers the directory it hosts (Runtime::LookupName).
inline constexpr const char* kDirectoryName = "troupe.directory";

/// Register `name` -> `ref`. Reply: DirectoryEntry, or AlreadyExists if the name is held by
/// another live actor. The entry goes away when the actor exits or its node is lost.
struct DirectoryRegister {
  std::string name;
  ActorRef ref;
};
/// Look `name` up. Reply: DirectoryEntry, or NotFound.
struct DirectoryLookup {
  std::string name;
};
/// Remove `name`. Reply: DirectoryEntry (with an empty ref if the name was not there).
struct DirectoryUnregister {
  std::string name;
};
struct DirectoryEntry {
  std::string name;
  ActorRef ref;
};

/// Spawns a directory actor in `system` (Runtime::SpawnDirectory also registers its name).
caf::actor SpawnDirectoryActor(caf::actor_system& system);

}  // namespace troupe::runtime

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::runtime::DirectoryRegister)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::runtime::DirectoryLookup)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::runtime::DirectoryUnregister)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::runtime::DirectoryEntry)
