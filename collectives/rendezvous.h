// Rendezvous over the runtime: a store actor (a key -> bytes map for one group) and the blocking
// client a rank uses to form its communicator through it (Gloo's pair addresses, NCCL's unique
// id), instead of a file system or a TCP store of its own (Ray's collective library forms its
// groups through a named actor the same way). Wire type ids 1600-1603 (collectives.capnp).
// docs/collectives.md, "Forming a group through the runtime".
//
//   job supervisor (head)                 worker of rank r (any node), on its own thread
//   store = SpawnRendezvousStore(...)     RendezvousClient client(store);
//   StartWorker{..., store} ------------> client.Set("nccl/id", id) / client.Get({"nccl/id"}, 30s)
//                                         GlooRendezvousStore(client) -> GlooCommunicator
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/allowed_unsafe_message_type.hpp>

#if defined(TROUPE_HAVE_GLOO)
#include <gloo/rendezvous/store.h>
#endif

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "collectives/abort_signal.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"

namespace troupe::collectives {

// ---- The store's protocol (remote-reachable: AddRendezvousCodecs) ----

/// Sets `key` to `value` (bytes), replacing an earlier value. Reply: RendezvousSetReply, or
/// InvalidArgument (empty or too long key) or ResourceExhausted (a limit of RendezvousLimits).
struct RendezvousSet {
  std::string key;
  std::string value;
};
struct RendezvousSetReply {
  uint32_t keys = 0;   ///< keys in the store after the set
  uint64_t bytes = 0;  ///< bytes of keys and values in the store after the set
  uint32_t waiting = 0;  ///< Gets waiting for keys after the set
};
/// Asks for `keys`; the store answers once every one is set, or after `timeout_ms` with
/// DeadlineExceeded naming the keys still missing. Reply: RendezvousValues (values in the order
/// of `keys`; none if `values` is false), InvalidArgument, or ResourceExhausted (too many keys
/// asked, or too many requests waiting).
struct RendezvousGet {
  std::vector<std::string> keys;
  uint32_t timeout_ms = 0;
  bool values = true;
};
struct RendezvousValues {
  std::vector<std::string> values;
};

enum RendezvousTypeId : uint32_t {
  kRendezvousSet = 1600,
  kRendezvousSetReply = 1601,
  kRendezvousGet = 1602,
  kRendezvousValues = 1603,
};

/// Registers the four messages above (type ids 1600-1603). Every runtime whose actors use a
/// store on another node registers them, the store's host included.
Status AddRendezvousCodecs(runtime::CodecRegistry& registry);

// ---- The store actor ----

/// What one store holds at most, so that a peer (a buggy or hostile rank) cannot make the store
/// grow without limit. Exceeding a limit is ResourceExhausted naming it; nothing is stored.
/// The defaults hold a Gloo full mesh of thousands of ranks (one key of ~100 bytes per peer and
/// rank) and an NCCL unique id (128 bytes) many times over; a Get of everything (max_total_bytes)
/// stays below the transport's 64 MiB frame limit (transport/ucx_options.h, max_frame_bytes).
struct RendezvousLimits {
  size_t max_keys = 65536;                  ///< distinct keys
  size_t max_key_bytes = 1024;              ///< bytes of one key (and keys in one Get: max_keys)
  size_t max_value_bytes = size_t{4} << 20; ///< bytes of one value
  size_t max_total_bytes = size_t{32} << 20;///< bytes of all keys and values together
  size_t max_waiting = 4096;                ///< Get requests waiting for keys at once
};

/// Spawns a store for one group (one attempt of one job): an event-based actor that answers
/// RendezvousSet and RendezvousGet. Ends when sent an exit (the job supervisor ends it with the
/// attempt); its waiting Gets then fail at once with Unavailable (Gets that come later: the
/// runtime's error for an actor that is gone). Usable from inside an
/// actor (pass self->system()) or through Runtime::Ref(SpawnRendezvousStore(rt.system())).
caf::actor SpawnRendezvousStore(caf::actor_system& system, RendezvousLimits limits = {});

// ---- The blocking client ----

/// A rank's handle on a store, for a non-actor thread (a worker's own thread, where its
/// communicator is set up): every call blocks until the store answers. Do not call it on an
/// actor's thread (it blocks the thread; ActorRef::Request's rule). Copyable; thread-safe.
///
/// Errors (Status): DeadlineExceeded naming the keys still missing after `timeout`;
/// Unavailable when the store's node is lost or cannot be reached (at once, not after the
/// timeout); NotFound when the store actor has ended; InvalidArgument / ResourceExhausted from
/// the store (RendezvousLimits); the abort's reason (WithAbort) once it is raised.
class RendezvousClient {
 public:
  /// How long a Set waits for the store's answer.
  static constexpr std::chrono::milliseconds kSetTimeout{30000};
  /// How much longer than the store's own wait the client waits for its answer, so that the
  /// store's DeadlineExceeded, which names the missing keys, arrives before the request's.
  static constexpr std::chrono::milliseconds kReplyGrace{2000};

  /// `store`: the ref of a SpawnRendezvousStore actor (local or on another node).
  explicit RendezvousClient(runtime::ActorRef store) : store_(std::move(store)) {}

  /// A client of the same store whose keys all start with this one's prefix, then `prefix`
  /// ("gloo/", "nccl/"), so that several users of one group's store (Gloo's context, whose keys
  /// are bare rank numbers; the NCCL id; the job's own keys) never share a key. As
  /// gloo::rendezvous::PrefixStore, but for every user of the client.
  RendezvousClient WithPrefix(const std::string& prefix) const {
    RendezvousClient out = *this;
    out.prefix_ = prefix_ + prefix;
    return out;
  }
  const std::string& prefix() const { return prefix_; }

  /// A client of the same store (and prefix) whose calls return `abort`'s reason (its code and
  /// text, the store named after it) as soon as the signal is raised, and at once when it was
  /// raised before, instead of waiting for the store's answer: a rank whose group formation is
  /// aborted (a stop, a lost peer: GlooOptions::abort, PeerWatch) stops waiting for its peers'
  /// keys. The request already sent is not withdrawn: the store keeps it among its waiting Gets
  /// (RendezvousLimits::max_waiting) until its keys are set, its timeout passes or the store ends.
  /// Null `abort`: calls wait for the store as without.
  RendezvousClient WithAbort(std::shared_ptr<AbortSignal> abort) const {
    RendezvousClient out = *this;
    out.abort_ = std::move(abort);
    return out;
  }

  /// Sets `key` (1 to RendezvousLimits::max_key_bytes bytes) to `value` (bytes).
  Status Set(const std::string& key, const std::string& value,
             std::chrono::milliseconds timeout = kSetTimeout) const;
  /// The values of `keys` (same order), waiting until every one is set, at most `timeout`.
  StatusOr<std::vector<std::string>> Get(const std::vector<std::string>& keys,
                                         std::chrono::milliseconds timeout) const;
  /// The value of one key, as Get.
  StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) const;
  /// Waits until every key of `keys` is set, at most `timeout` (no values are sent).
  Status Wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) const;

  const runtime::ActorRef& store() const { return store_; }

 private:
  StatusOr<RendezvousValues> Ask(const std::vector<std::string>& keys, std::chrono::milliseconds timeout,
                                 bool values) const;
  std::vector<std::string> Prefixed(const std::vector<std::string>& keys) const;
  runtime::ActorRef store_;
  std::string prefix_;
  std::shared_ptr<AbortSignal> abort_;  // WithAbort; null: none
};

#if defined(TROUPE_HAVE_GLOO)
/// gloo::rendezvous::Store over a RendezvousClient, so that a Gloo context (GlooCommunicator)
/// forms its full mesh through the runtime. Gloo calls it blocking and expects exceptions:
/// every error is thrown as gloo::IoException carrying the Status's text ("UNAVAILABLE: ...").
/// get() waits for its key as Gloo's own stores do, at most `timeout`; wait(keys) without a
/// timeout waits at most `timeout` too (never forever). With a client made WithAbort (the signal
/// given to GlooCommunicator::Create as GlooOptions::abort), a get() or wait() in flight throws
/// the abort's reason as soon as it is raised, so the formation returns at once.
///
/// wait(keys) fetches the keys' values in the same round trip and keeps them; a get() of such a
/// key is then answered from them once, without asking the store again. A full mesh of n ranks
/// so costs each rank two round trips to the store actor (its set, one wait for its n - 1
/// peers: GlooCommunicator::Create), not one or two for each peer in turn. Thread-safe.
class GlooRendezvousStore : public gloo::rendezvous::Store {
 public:
  /// `timeout`: Gloo's own default (30 s, gloo::rendezvous::Store::kDefaultTimeout).
  explicit GlooRendezvousStore(RendezvousClient client,
                               std::chrono::milliseconds timeout = gloo::rendezvous::Store::kDefaultTimeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  RendezvousClient client_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::unordered_map<std::string, std::string> fetched_;  // by wait(), each handed to one get()
};
#endif  // TROUPE_HAVE_GLOO (collectives/CMakeLists.txt: where Debian's libgloo-dev is found)

}  // namespace troupe::collectives

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::collectives::RendezvousSet)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::collectives::RendezvousSetReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::collectives::RendezvousGet)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::collectives::RendezvousValues)
