// The directory actor.
#include "runtime/directory.h"

#include <caf/all.hpp>

#include <spdlog/spdlog.h>

#include <unordered_map>

#include "runtime/error.h"

namespace troupe::runtime {

namespace {

struct DirectoryState {
  std::unordered_map<std::string, ActorRef> entries;
};

caf::behavior DirectoryActor(caf::stateful_actor<DirectoryState>* self) {
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& entries = self->state.entries;
    for (auto it = entries.begin(); it != entries.end();) {
      if (it->second.handle() && it->second.handle().address() == msg.source) {
        it = entries.erase(it);
      } else {
        ++it;
      }
    }
  });
  return {
      [self](DirectoryRegister& reg) -> caf::result<DirectoryEntry> {
        spdlog::trace("directory: register '{}' -> {}", reg.name, reg.ref.ToString());
        if (reg.name.empty()) return ToCafError(InvalidArgumentError("directory: empty name"));
        if (!reg.ref.valid()) {
          return ToCafError(InvalidArgumentError("directory: '" + reg.name + "' registered with an empty ref"));
        }
        auto& entries = self->state.entries;
        auto it = entries.find(reg.name);
        if (it != entries.end() && it->second != reg.ref) {
          return ToCafError(AlreadyExistsError("directory: '" + reg.name + "' is already held by " +
                                               it->second.ToString()));
        }
        self->monitor(reg.ref.handle());
        entries[reg.name] = reg.ref;
        return DirectoryEntry{reg.name, reg.ref};
      },
      [self](DirectoryLookup& lookup) -> caf::result<DirectoryEntry> {
        auto it = self->state.entries.find(lookup.name);
        if (it == self->state.entries.end()) {
          return ToCafError(NotFoundError("directory: no actor named '" + lookup.name + "'"));
        }
        return DirectoryEntry{it->first, it->second};
      },
      [self](DirectoryUnregister& unreg) -> DirectoryEntry {
        DirectoryEntry out{unreg.name, {}};
        auto it = self->state.entries.find(unreg.name);
        if (it != self->state.entries.end()) {
          out.ref = it->second;
          self->state.entries.erase(it);
        }
        return out;
      },
  };
}

}  // namespace

caf::actor SpawnDirectoryActor(caf::actor_system& system) { return system.spawn(DirectoryActor); }

}  // namespace troupe::runtime
