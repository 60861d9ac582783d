// GlooCommunicator: the Communicator over Gloo's TCP transport, for training workers on CPUs.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "collectives/abort_signal.h"
#include "collectives/communicator.h"
#include "common/status.h"

namespace gloo {
class Context;
namespace rendezvous {
class Store;
}  // namespace rendezvous
namespace transport {
class Device;
}  // namespace transport
}  // namespace gloo

namespace troupe::collectives {

/// Where a GlooCommunicator listens and how long it waits for its peers.
struct GlooOptions {
  /// Address (or host name) of the interface Gloo's TCP device binds to; each pair listens on a
  /// port the kernel picks (port 0). Loopback by default: a one-machine group.
  std::string hostname = "127.0.0.1";
  /// Network interface name (e.g. "eth0"); when set it is used instead of `hostname`.
  std::string interface;
  /// How long Create() waits for every peer to publish its address in the store and to connect.
  std::chrono::milliseconds connect_timeout{30000};
  /// Aborts the formation (optional): raised before or while Create() runs, Create() returns at
  /// once with the signal's reason (an actor worker's stop, or a PeerWatch that saw a peer lost,
  /// so a rank that published its address and then died does not hold the others for
  /// connect_timeout). It reaches the pairs' connects at once. A wait for the peers' addresses in
  /// the store ends at once only when the store itself watches the same signal (troupe's
  /// GlooRendezvousStore over a RendezvousClient made WithAbort, collectives/rendezvous.h: the
  /// actor workers' factory does so); any other store's wait ends when the store answers or at
  /// connect_timeout, and Create() then returns the reason.
  std::shared_ptr<AbortSignal> abort;
};

/// One rank of a Gloo group: collectives on host memory over Gloo's TCP transport (Debian's
/// libgloo-dev). Made by Create(), which forms the full mesh of TCP connections through a
/// gloo::rendezvous::Store shared by the group (troupe's store over actors in a job; a HashStore
/// between threads in tests). Owned by the worker that made it.
///
/// Every operation runs on the communicator's OpQueue thread, one at a time, in order
/// (communicator.h). Gloo's own exceptions never leave this class: they become the op's Status
/// (IoException, a lost connection: Unavailable; anything else: Internal). Abort() and the op's
/// timeout make the Gloo call in flight return at once by failing every pair of the Gloo context
/// (its sockets are closed, so the peers' pending ops fail with Unavailable too).
///
/// Reductions: float32, float64, int32 and int64 use Gloo's own gloo::sum/min/max; float16 and
/// bfloat16 are reduced pairwise in float32 and rounded to nearest even (Gloo has no bfloat16,
/// and its half conversion is not RNE for every input). ReduceScatter is troupe's own ring over
/// Gloo's unbound buffers (this Gloo has no reduce-scatter function): (n-1)/n of `send` per rank.
///
/// States: working (health() OK) -> broken (health() the first failure) for good; a job forms a
/// new group with a new communicator. Thread-safety: every method may be called from any thread.
class GlooCommunicator final : public Communicator {
 public:
  /// Connects rank `rank` of `world_size` ranks: publishes this rank's addresses in `store`,
  /// waits for every peer's (up to options.connect_timeout) and connects the full mesh. Every
  /// rank of the group must call it with the same world size and a store holding the same keys
  /// (use a gloo::rendezvous::PrefixStore per group so two groups never share keys).
  /// Errors: InvalidArgument (rank not in [0, world_size), world_size < 1, null store, bad
  /// options), Unavailable (the device could not bind `hostname`/`interface`, or a peer never
  /// came or could not be reached within connect_timeout), with Gloo's message; the reason's
  /// code and text (prefixed "formation aborted") when options.abort was raised.
  static StatusOr<std::unique_ptr<GlooCommunicator>> Create(
      int rank, int world_size, std::shared_ptr<gloo::rendezvous::Store> store, GlooOptions options = {});

  /// Fails the op in flight and every queued one with Cancelled, closes the connections (the
  /// peers' pending ops then fail with Unavailable) and joins the op thread.
  ~GlooCommunicator() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string_view backend() const override { return "gloo"; }

  Work AllReduce(void* data, size_t count, DataType type, ReduceOp op,
                 std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work Broadcast(void* data, size_t count, DataType type, int root,
                 std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work AllGather(const void* send, void* recv, size_t count, DataType type,
                 std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work ReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                     std::chrono::milliseconds timeout = kDefaultTimeout) override;
  Work Barrier(std::chrono::milliseconds timeout = kDefaultTimeout) override;

  void Abort(const Status& reason) override;
  Status health() const override;

 private:
  class Context;  // gloo::rendezvous::Context that can fail all its pairs
  GlooCommunicator(int rank, int world_size, std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<Context> context);

  /// Runs `call` (Gloo calls) and turns any exception into a Status naming `what`.
  Status Guard(const std::string& what, const std::function<void()>& call);
  void RunAllReduce(void* data, size_t count, DataType type, ReduceOp op, std::chrono::milliseconds timeout);
  void RunReduceScatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op,
                        std::chrono::milliseconds timeout);
  uint32_t NextTag() { return next_tag_++; }

  const int rank_;
  const int world_size_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<Context> context_;
  uint32_t next_tag_ = 0;               // op thread only
  std::vector<uint8_t> scratch_;        // op thread only: ReduceScatter's working copy
  OpQueue queue_;                       // last: destroyed (joined) before the context it aborts
};

}  // namespace troupe::collectives
