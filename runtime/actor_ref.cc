// ActorRef.
#include "runtime/actor_ref.h"

#include <caf/all.hpp>

#include <cstdio>

namespace troupe::runtime {

std::string ActorRef::ToString() const {
  char id[32];
  std::snprintf(id, sizeof id, "%#llx", static_cast<unsigned long long>(id_));
  return std::string("actor ") + id + " on node " + std::to_string(node_);
}

void ActorRef::Monitor(std::function<void(const Status& reason)> on_down) const {
  if (!handle_) {
    on_down(NotFoundError(ToString() + " does not exist"));
    return;
  }
  auto target = handle_;
  handle_->home_system().spawn(
      [target, on_down = std::move(on_down)](caf::event_based_actor* self) -> caf::behavior {
        self->monitor(target);
        // Nobody else holds the watcher, and CAF ends actors nobody holds: it holds itself
        // until the down message comes.
        auto keep_alive = std::make_shared<caf::actor>(caf::actor_cast<caf::actor>(self));
        self->set_down_handler([self, on_down, keep_alive](caf::down_msg& msg) {
          on_down(ToStatus(msg.reason));
          *keep_alive = nullptr;
          self->quit();
        });
        // A behavior keeps the watcher alive until the down message comes.
        return {[](caf::ok_atom) {}};
      });
}

}  // namespace troupe::runtime
