// PeerWatch: aborts a communicator as soon as the runtime sees one of the group's other ranks
// lost, so that pending collectives fail within the failure-detection time (the runtime's
// heartbeat_timeout) instead of after NCCL's or Gloo's own 30-minute timeout.
// docs/collectives.md, "Forming a group through the runtime".
#pragma once

#include <caf/actor.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/abort_signal.h"
#include "collectives/communicator.h"
#include "common/status.h"
#include "runtime/actor_ref.h"

namespace troupe::runtime {
class Runtime;
}

namespace troupe::collectives {

/// Watches the actors of a group's other ranks (their worker actors, on any node) through the
/// runtime's monitors and calls `communicator.Abort(...)` (or raises an AbortSignal) at the first
/// one that goes down:
///   - its node lost (a killed, hung or SIGSTOPped process, a lost host): at the transport's
///     disconnect or at the latest after the runtime's heartbeat_timeout (RuntimeConfig; 1 s by
///     default). Measured with a 300 ms timeout over loopback: 295-334 ms after kill -9 or
///     SIGSTOP (rendezvous_process_test, RendezvousProcessWatchOnly; docs/collectives.md);
///   - the actor exiting, whatever the reason (a normal exit too: the group cannot go on
///     without it).
/// The reason is UnavailableError("rank R (actor 0x... on node N) lost: <the monitor's reason>").
/// A peer given as an empty ref counts as lost at once (NotFound).
///
/// Lifecycle: watches from construction until destruction. After the destructor returns,
/// neither the communicator nor `on_lost` is called any more; destroy the watch before the
/// communicator. One actor per watch (ended by the destructor).
///
/// Thread-safety: construct and destroy from any non-actor thread (or an actor's, as the
/// destructor only sends an exit); `on_lost` runs on an actor thread, once, after the abort,
/// and must not destroy the watch (the destructor waits for it).
class PeerWatch {
 public:
  struct Peer {
    int rank = -1;
    runtime::ActorRef ref;
  };

  /// Starts watching `peers` (this rank's own actor need not, and should not, be among them).
  /// `communicator` must outlive the watch. `on_lost` (optional) is told the same reason
  /// after the abort (the worker's supervisor logs it, reports it, ends the attempt).
  PeerWatch(runtime::Runtime& runtime, Communicator& communicator, std::vector<Peer> peers,
            std::function<void(const Status&)> on_lost = nullptr);
  /// The same, raising `abort` instead: for a group still forming, whose communicator does not
  /// exist yet (GlooOptions::abort fails the formation at once; once formed, the worker forwards
  /// the signal to its communicator's Abort). So a watch can start as soon as the peers are
  /// known, and a rank lost between its store set and its connects ends the others' formation
  /// within the failure-detection time instead of after the connect timeout (30 s).
  PeerWatch(runtime::Runtime& runtime, std::shared_ptr<AbortSignal> abort, std::vector<Peer> peers,
            std::function<void(const Status&)> on_lost = nullptr);
  /// Stops watching (see Lifecycle).
  ~PeerWatch();
  PeerWatch(const PeerWatch&) = delete;
  PeerWatch& operator=(const PeerWatch&) = delete;

  /// The first loss seen (OK while none was).
  Status lost() const;

  struct Shared;

 private:
  PeerWatch(runtime::Runtime& runtime, std::function<void(const Status&)> abort, std::vector<Peer> peers,
            std::function<void(const Status&)> on_lost);
  std::shared_ptr<Shared> shared_;
  caf::actor watcher_;
};

}  // namespace troupe::collectives
