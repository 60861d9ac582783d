// Mailbox depth of troupe's own actors (head controller, node agent, supervisors), sampled on
// each actor's own thread: CAF 0.17's mailbox can only be read by its consumer.
//
// The sample counts the messages CAF has already moved from the actor's inbox into its queues
// (read-only: `queue().total_task_size()`). `mailbox().size()` would be exact but fetches from
// the inbox, which mutates the queues CAF is iterating while the handler runs (UBSan caught
// that). CAF fetches the inbox before every round, so for a backlogged actor the sample misses
// at most the messages that arrived during the current round.
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <map>
#include <mutex>
#include <string>

namespace troupe::runtime {

/// Last sampled mailbox depth per named actor of one process (exported by RuntimeMetrics as
/// troupe_actor_mailbox_depth). Thread-safe.
class MailboxDepths {
 public:
  void Set(const std::string& actor, size_t depth) {
    std::lock_guard<std::mutex> lock(mu_);
    depths_[actor] = depth;
  }
  void Erase(const std::string& actor) {
    std::lock_guard<std::mutex> lock(mu_);
    depths_.erase(actor);
  }
  std::map<std::string, size_t> Snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return depths_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, size_t> depths_;
};

using mailbox_sample_atom = caf::atom_constant<caf::atom("mbx_sample")>;

/// Starts sampling `self`'s mailbox depth into `depths` under `name` every `period`. The actor's
/// behavior must include MailboxSampleHandler(...) (the sample is a high-priority message to
/// itself, so it is handled ahead of the backlog it measures). The entry is removed when the
/// actor exits.
template <class Self>
void StartMailboxSampling(Self* self, MailboxDepths* depths, const std::string& name) {
  self->template send<caf::message_priority::high>(caf::actor_cast<caf::actor>(self), mailbox_sample_atom::value);
  self->attach_functor([depths, name] { depths->Erase(name); });
}

/// The handler to put into the behavior of an actor that samples its mailbox depth.
template <class Self>
auto MailboxSampleHandler(Self* self, MailboxDepths* depths, std::string name,
                          std::chrono::milliseconds period = std::chrono::seconds(1)) {
  return [self, depths, name, period](mailbox_sample_atom) {
    depths->Set(name, static_cast<size_t>(self->mailbox().queue().total_task_size()));
    self->template delayed_send<caf::message_priority::high>(caf::actor_cast<caf::actor>(self), period,
                                                             mailbox_sample_atom::value);
  };
}

}  // namespace troupe::runtime
