// Runtime: one per process. It owns the CAF actor system, the transport and the bridge
// between them, and gives the process its node identity, named actors and remote spawn.
#pragma once

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "common/clock.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"
#include "runtime/bridge.h"
#include "runtime/mailbox_depth.h"
#include "runtime/supervisor.h"
#include "transport/ucx_options.h"
#include "transport/ucx_transport.h"

namespace troupe::runtime {

/// Everything a runtime is configured from (troupe's own config; CAF's INI files are never
/// read). The cluster config (YAML) fills it in.
struct RuntimeConfig {
  /// This node's name (logs, errors) and id. Id 0 means "derive it from the name", which
  /// keeps it stable when the node restarts.
  std::string node_name = "node";
  NodeId node_id = 0;
  /// Listener, token, UCX settings. Its node_id and node_name are set from the fields above.
  transport::UcxTransportConfig transport;
  /// CAF scheduler threads (policy "sharing": one shared queue, which measured faster than
  /// work stealing for message hand-offs on few cores).
  size_t worker_threads = 2;
  /// Every interval the runtime sends a heartbeat to each connected node; a node that sent
  /// nothing for heartbeat_timeout is disconnected and counts as lost (UCX alone does not
  /// see hung processes).
  std::chrono::milliseconds heartbeat_interval{100};
  std::chrono::milliseconds heartbeat_timeout{1000};
  /// See BridgeConfig.
  std::chrono::milliseconds request_ttl{60000};
  size_t max_pending_requests = size_t{1} << 20;
  /// See BridgeConfig::run_actors_on_progress_thread.
  bool run_actors_on_progress_thread = true;
};

/// InvalidArgument naming the field if `config` cannot work.
Status ValidateRuntimeConfig(const RuntimeConfig& config);

/// Counters of the runtime and its transport.
struct RuntimeStats {
  BridgeStats bridge;
  transport::TransportStats transport;
};

/// The actor runtime of one process.
///
/// Lifecycle: Start() -> running -> Stop() (also in the destructor). Stop kills every proxy
/// (monitors fire with Cancelled), fails pending remote requests, closes the transport and
/// shuts CAF down without waiting for actors that never quit.
///
/// Thread-safety: every method may be called from any thread except where noted.
class Runtime : private ControlHandler {
 public:
  /// A factory for remote spawn: makes an actor from the (decoded) arguments.
  template <class Args>
  using Factory = std::function<StatusOr<caf::actor>(caf::actor_system&, const Args&)>;
  using PlainFactory = std::function<StatusOr<caf::actor>(caf::actor_system&)>;

  /// Starts CAF, the transport (listening) and the bridge. `codecs` lists the message types
  /// that may cross nodes; the runtime adds its own.
  static StatusOr<std::unique_ptr<Runtime>> Start(RuntimeConfig config, CodecRegistry codecs = {},
                                                  const Clock& clock = SteadyClock::Instance());
  ~Runtime() override;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  /// Stops the heartbeats, the bridge (killing every proxy, so watchers of remote actors get
  /// their down message) and the transport. Local actors are not ended: see AwaitActors.
  void Stop();
  /// Waits until no actor of this process runs, at most `limit`; false if some still do. The
  /// actor system does not wait for actors when it goes, and an actor alive then is never
  /// freed: a program ends what it spawned, calls Stop(), then this before it exits.
  bool AwaitActors(std::chrono::milliseconds limit);

  caf::actor_system& system() { return *system_; }
  NodeId node_id() const { return node_id_; }
  const std::string& node_name() const { return config_.node_name; }
  /// Where peers reach this node ("host:port").
  std::string address() const { return transport_->listen_address(); }
  uint32_t incarnation() const { return incarnation_; }
  const CodecRegistry& codecs() const { return codecs_; }
  /// The clock given to Start() (heartbeats, request deadlines, event timestamps).
  const Clock& clock() const { return clock_; }

  /// Spawns a local actor (as caf::actor_system::spawn) and returns its ref.
  template <class... Ts>
  ActorRef Spawn(Ts&&... xs) {
    return Ref(system_->spawn(std::forward<Ts>(xs)...));
  }
  /// The ref of an actor handle of this process (local actor or proxy).
  ActorRef Ref(const caf::actor& actor) const;
  ActorRef Ref(const caf::strong_actor_ptr& actor) const;
  /// Records where `node` accepts connections (refs received in messages carry this too).
  void AddNode(NodeId node, const std::string& address);

  /// Names `ref` on this node. AlreadyExists if the name is taken; the name is released when
  /// the actor exits.
  Status RegisterName(const std::string& name, const ActorRef& ref);
  void UnregisterName(const std::string& name);
  /// Looks `name` up on `node` (this node or another). NotFound if it has no such name.
  StatusOr<ActorRef> LookupName(NodeId node, const std::string& name, std::chrono::milliseconds timeout);

  /// Hosts a directory here and names it kDirectoryName (see runtime/directory.h).
  StatusOr<ActorRef> SpawnDirectory();

  /// Makes actor type `type_name` spawnable by other nodes, with arguments of type Args
  /// (a codec-registered type).
  template <class Args>
  Status RegisterActorType(const std::string& type_name, Factory<Args> factory) {
    return AddFactory(type_name, [factory = std::move(factory)](caf::actor_system& sys,
                                                                const caf::message& args) -> StatusOr<caf::actor> {
      if (args.size() != 1 || !args.match_element<Args>(0)) {
        return InvalidArgumentError("wrong argument type " + caf::to_string(args));
      }
      return factory(sys, args.get_as<Args>(0));
    });
  }
  Status RegisterActorType(const std::string& type_name, PlainFactory factory);

  /// Spawns `type_name` on `node` with `args` and returns the new actor's ref.
  /// NotFound if the node has no such type; Unavailable if the node cannot be reached.
  template <class Args>
  StatusOr<ActorRef> SpawnOn(NodeId node, const std::string& type_name, const Args& args,
                             std::chrono::milliseconds timeout) {
    return SpawnOnImpl(node, type_name, caf::make_message(args), timeout);
  }
  StatusOr<ActorRef> SpawnOn(NodeId node, const std::string& type_name, std::chrono::milliseconds timeout) {
    return SpawnOnImpl(node, type_name, caf::message(), timeout);
  }

  RuntimeStats stats() const;
  /// Counts of the supervision events of this process's supervisors (runtime/supervisor.h).
  SupervisionCounters& supervision() { return *supervision_; }
  /// Mailbox depths sampled by troupe's own actors (runtime/mailbox_depth.h).
  MailboxDepths& mailbox_depths() { return *mailbox_depths_; }
  transport::UcxTransport& transport() { return *transport_; }
  Bridge& bridge() { return *bridge_; }

 private:
  using ErasedFactory = std::function<StatusOr<caf::actor>(caf::actor_system&, const caf::message&)>;
  struct Names;

  Runtime(RuntimeConfig config, CodecRegistry codecs, const Clock& clock);
  Status StartImpl();
  Status AddFactory(const std::string& type_name, ErasedFactory factory);
  StatusOr<ActorRef> SpawnOnImpl(NodeId node, const std::string& type_name, caf::message args,
                                 std::chrono::milliseconds timeout);
  StatusOr<ActorRef> Await(std::chrono::milliseconds timeout,
                           const std::function<void(Bridge::RefCallback)>& start);
  StatusOr<ActorRef> SpawnForPeer(const std::string& type_name, uint32_t args_type_id, const uint8_t* args,
                                  size_t args_size) override;
  StatusOr<ActorRef> LookupForPeer(const std::string& name) override;
  StatusOr<ActorRef> SpawnLocal(const std::string& type_name, const caf::message& args);

  RuntimeConfig config_;
  CodecRegistry codecs_;
  const Clock& clock_;
  NodeId node_id_ = 0;
  uint32_t incarnation_ = 0;

  // Actors hold plain pointers to these two: they must outlive the actor system (members are
  // destroyed in reverse order, and actors run until system_ is gone).
  std::unique_ptr<SupervisionCounters> supervision_ = std::make_unique<SupervisionCounters>();
  std::unique_ptr<MailboxDepths> mailbox_depths_ = std::make_unique<MailboxDepths>();
  std::unique_ptr<caf::actor_system_config> caf_config_;
  std::unique_ptr<caf::actor_system> system_;
  std::unique_ptr<transport::UcxTransport> transport_;
  std::shared_ptr<Bridge> bridge_;
  std::shared_ptr<Names> names_;

  std::mutex factories_mu_;
  std::unordered_map<std::string, ErasedFactory> factories_;

  std::mutex ticker_mu_;
  std::condition_variable ticker_cv_;
  bool stopping_ = false;
  bool stopped_ = false;
  std::thread ticker_;
};

}  // namespace troupe::runtime
