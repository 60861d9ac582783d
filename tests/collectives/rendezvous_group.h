// One rank of a group formed through a rendezvous store, as a worker forms it: shared by
// rendezvous_process_test.cc (rank 0, which also hosts the store) and rendezvous_peer.cc (the
// other ranks, each its own process).
//
//   1. name a worker actor on this node (kWorkerName);
//   2. Set "worker/<rank>" = "<node id> <address>" in the store; Get every rank's;
//   3. look the other ranks' worker actors up by name on their nodes (their refs);
//   4. make the communicator (Gloo through GlooRendezvousStore, or a blocking fake);
//   5. watch the other ranks' workers with a PeerWatch that aborts the communicator.
#pragma once

#include <caf/all.hpp>

#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/peer_watch.h"
#include "collectives/rendezvous.h"
#include "runtime/runtime.h"
#if defined(TROUPE_HAVE_GLOO)
#include "collectives/gloo_communicator.h"
#endif

namespace troupe::collectives::testing {

inline constexpr const char* kStoreName = "rendezvous-store";
inline constexpr const char* kWorkerName = "collective-worker";

/// A Communicator whose every op blocks until the communicator is aborted: what PeerWatch
/// must end (used where Gloo is not built, and by rendezvous_test's PeerWatch tests).
class BlockingCommunicator final : public Communicator {
 public:
  BlockingCommunicator(int rank, int world_size)
      : rank_(rank), world_size_(world_size), queue_([this](const Status&) {
          std::lock_guard<std::mutex> lock(mu_);
          aborted_ = true;
          cv_.notify_all();
        }) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string_view backend() const override { return "blocking"; }
  Work AllReduce(void*, size_t, DataType, ReduceOp, std::chrono::milliseconds timeout) override {
    return Block(timeout);
  }
  Work Broadcast(void*, size_t, DataType, int, std::chrono::milliseconds timeout) override { return Block(timeout); }
  Work AllGather(const void*, void*, size_t, DataType, std::chrono::milliseconds timeout) override {
    return Block(timeout);
  }
  Work ReduceScatter(const void*, void*, size_t, DataType, ReduceOp, std::chrono::milliseconds timeout) override {
    return Block(timeout);
  }
  Work Barrier(std::chrono::milliseconds timeout) override { return Block(timeout); }
  void Abort(const Status& reason) override { queue_.Abort(reason); }
  Status health() const override { return queue_.health(); }

 private:
  Work Block(std::chrono::milliseconds timeout) {
    return queue_.Submit(
        [this] {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [this] { return aborted_; });
          return CancelledError("unblocked by the abort");
        },
        timeout, "blocked");
  }
  const int rank_;
  const int world_size_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool aborted_ = false;
  OpQueue queue_;  // last: joined before the members its op uses
};

/// A worker actor that does nothing until it is told to exit.
inline caf::behavior IdleWorker() {
  return {[](caf::ok_atom) {}};
}

/// This rank's part of a formed group. Destroy the watch before the communicator (member order).
struct GroupMember {
  runtime::ActorRef worker;
  std::vector<PeerWatch::Peer> peers;
  std::unique_ptr<Communicator> communicator;
  std::unique_ptr<PeerWatch> watch;
  /// The watch's first loss (PeerWatch's on_lost).
  std::shared_ptr<std::promise<Status>> lost = std::make_shared<std::promise<Status>>();
  ~GroupMember() {
    watch.reset();
    communicator.reset();
    if (worker) caf::anon_send_exit(worker.handle(), caf::exit_reason::user_shutdown);
  }
};

/// Forms rank `rank` of `world_size` through `store` (steps 1-5 above). `gloo`: a
/// GlooCommunicator (where built), else a BlockingCommunicator.
inline StatusOr<std::unique_ptr<GroupMember>> FormGroup(runtime::Runtime& rt, const runtime::ActorRef& store,
                                                        int rank, int world_size, bool gloo,
                                                        std::chrono::milliseconds timeout) {
  auto member = std::make_unique<GroupMember>();
  member->worker = rt.Spawn(IdleWorker);
  RETURN_IF_ERROR(rt.RegisterName(kWorkerName, member->worker));
  RendezvousClient client(store);
  RETURN_IF_ERROR(
      client.Set("worker/" + std::to_string(rank), std::to_string(rt.node_id()) + " " + rt.address()));
  std::vector<std::string> keys;
  for (int r = 0; r < world_size; ++r) keys.push_back("worker/" + std::to_string(r));
  auto entries = client.Get(keys, timeout);
  if (!entries.ok()) return entries.status();
  for (int r = 0; r < world_size; ++r) {
    if (r == rank) continue;
    std::istringstream in((*entries)[r]);
    runtime::NodeId node = 0;
    std::string address;
    if (!(in >> node >> address)) return InternalError("bad worker entry '" + (*entries)[r] + "'");
    rt.AddNode(node, address);
    auto ref = rt.LookupName(node, kWorkerName, timeout);
    if (!ref.ok()) return ref.status();
    member->peers.push_back({r, *ref});
  }
  if (gloo) {
#if defined(TROUPE_HAVE_GLOO)
    auto comm = GlooCommunicator::Create(rank, world_size, std::make_shared<GlooRendezvousStore>(client.WithPrefix("gloo/"), timeout));
    if (!comm.ok()) return comm.status();
    member->communicator = std::move(*comm);
#else
    return FailedPreconditionError("GlooCommunicator is not built here (no libgloo-dev)");
#endif
  } else {
    member->communicator = std::make_unique<BlockingCommunicator>(rank, world_size);
  }
  member->watch = std::make_unique<PeerWatch>(rt, *member->communicator, member->peers,
                                              [lost = member->lost](const Status& s) { lost->set_value(s); });
  return member;
}

}  // namespace troupe::collectives::testing
