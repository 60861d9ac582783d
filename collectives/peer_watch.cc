// PeerWatch: one actor monitoring the group's other ranks.
#include "collectives/peer_watch.h"

#include <caf/all.hpp>

#include <mutex>
#include <unordered_map>

#include "runtime/error.h"
#include "runtime/runtime.h"

namespace troupe::collectives {

struct PeerWatch::Shared {
  std::mutex mu;
  std::function<void(const Status&)> abort;  // empty once the watch is destroyed
  std::function<void(const Status&)> on_lost;
  Status lost;

  // The first loss aborts the communicator; later ones (and any after the destructor) do nothing.
  void Lose(const PeerWatch::Peer& peer, const Status& reason) {
    // Under the lock, so that the destructor cannot return while the abort or on_lost runs.
    std::lock_guard<std::mutex> lock(mu);
    if (!abort || !lost.ok()) return;
    const std::string why = reason.ok() ? std::string("the actor exited") : reason.ToString();
    lost = UnavailableError("rank " + std::to_string(peer.rank) + " (" + peer.ref.ToString() + ") lost: " + why);
    abort(lost);
    if (on_lost) on_lost(lost);
  }
};

namespace {

caf::behavior Watcher(caf::event_based_actor* self, std::shared_ptr<PeerWatch::Shared> shared,
                      std::vector<PeerWatch::Peer> peers) {
  // One entry per watched actor address; several ranks on one actor would be a caller's bug,
  // but each still gets its own entry by rank order.
  auto by_addr = std::make_shared<std::unordered_multimap<caf::actor_addr, PeerWatch::Peer>>();
  for (const auto& peer : peers) {
    if (!peer.ref.valid()) continue;  // lost already (the constructor)
    by_addr->emplace(peer.ref.handle().address(), peer);
    self->monitor(peer.ref.handle());
  }
  self->set_down_handler([shared, by_addr](caf::down_msg& msg) {
    auto range = by_addr->equal_range(msg.source);
    for (auto it = range.first; it != range.second; ++it) shared->Lose(it->second, runtime::ToStatus(msg.reason));
  });
  // A behavior keeps the watcher alive until the watch ends it.
  return {[](caf::ok_atom) {}};
}

}  // namespace

PeerWatch::PeerWatch(runtime::Runtime& runtime, Communicator& communicator, std::vector<Peer> peers,
                     std::function<void(const Status&)> on_lost)
    : PeerWatch(runtime, [&communicator](const Status& lost) { communicator.Abort(lost); }, std::move(peers),
                std::move(on_lost)) {}

PeerWatch::PeerWatch(runtime::Runtime& runtime, std::shared_ptr<AbortSignal> abort, std::vector<Peer> peers,
                     std::function<void(const Status&)> on_lost)
    : PeerWatch(runtime, [abort = std::move(abort)](const Status& lost) { abort->Abort(lost); }, std::move(peers),
                std::move(on_lost)) {}

PeerWatch::PeerWatch(runtime::Runtime& runtime, std::function<void(const Status&)> abort, std::vector<Peer> peers,
                     std::function<void(const Status&)> on_lost)
    : shared_(std::make_shared<Shared>()) {
  shared_->abort = std::move(abort);
  shared_->on_lost = std::move(on_lost);
  for (const auto& peer : peers) {
    if (!peer.ref.valid()) shared_->Lose(peer, NotFoundError("no actor to watch (empty ref)"));
  }
  watcher_ = runtime.system().spawn(Watcher, shared_, std::move(peers));
}

PeerWatch::~PeerWatch() {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->abort = nullptr;
  }
  caf::anon_send_exit(watcher_, caf::exit_reason::user_shutdown);
}

Status PeerWatch::lost() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->lost;
}

}  // namespace troupe::collectives
