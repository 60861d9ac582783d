// Runtime.
#include "runtime/runtime.h"

#include <caf/all.hpp>
#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include <future>
#include <thread>

#include "runtime/directory.h"
#include "runtime/internal/lazy_clock.h"
#include "runtime/messages.capnp.h"
#include "runtime/node_identity.h"
#include "runtime/wire_types.h"

namespace troupe::runtime {

/// Node-local names, shared with the monitors that release them when their actor exits.
struct Runtime::Names {
  std::mutex mu;
  std::unordered_map<std::string, ActorRef> table;
};

Status ValidateRuntimeConfig(const RuntimeConfig& config) {
  if (config.node_name.empty()) return InvalidArgumentError("runtime config: node_name is empty");
  if (config.worker_threads == 0) return InvalidArgumentError("runtime config: worker_threads must be at least 1");
  if (config.heartbeat_interval.count() <= 0) {
    return InvalidArgumentError("runtime config: heartbeat_interval must be positive");
  }
  if (config.heartbeat_timeout <= config.heartbeat_interval) {
    return InvalidArgumentError("runtime config: heartbeat_timeout (" + std::to_string(config.heartbeat_timeout.count()) +
                                " ms) must be longer than heartbeat_interval (" +
                                std::to_string(config.heartbeat_interval.count()) + " ms)");
  }
  if (config.request_ttl.count() <= 0) return InvalidArgumentError("runtime config: request_ttl must be positive");
  if (config.max_pending_requests == 0) {
    return InvalidArgumentError("runtime config: max_pending_requests must be at least 1");
  }
  return OkStatus();
}

Runtime::Runtime(RuntimeConfig config, CodecRegistry codecs, const Clock& clock)
    : config_(std::move(config)), codecs_(std::move(codecs)), clock_(clock), names_(std::make_shared<Names>()) {}

StatusOr<std::unique_ptr<Runtime>> Runtime::Start(RuntimeConfig config, CodecRegistry codecs, const Clock& clock) {
  RETURN_IF_ERROR(ValidateRuntimeConfig(config));
  std::unique_ptr<Runtime> runtime(new Runtime(std::move(config), std::move(codecs), clock));
  RETURN_IF_ERROR(runtime->StartImpl());
  return runtime;
}

Status Runtime::StartImpl() {
  RETURN_IF_ERROR(codecs_.AddRuntimeTypes());
  node_id_ = config_.node_id != 0 ? config_.node_id : NodeIdFromName(config_.node_name);
  incarnation_ = NewIncarnation();

  caf_config_ = std::make_unique<caf::actor_system_config>();
  caf_config_->set("scheduler.policy", caf::atom("sharing"));
  caf_config_->set("scheduler.max-threads", static_cast<int64_t>(config_.worker_threads));
  // Request timeouts without a clock-thread wake-up per request (see LazyClock).
  internal::InstallLazyClock(*caf_config_);
  caf_config_->add_error_category(kStatusCategory, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string text(StatusCodeName(static_cast<StatusCode>(code)));
    if (ctx.size() == 1 && ctx.match_element<std::string>(0)) text += ": " + ctx.get_as<std::string>(0);
    return text;
  });
  system_ = std::make_unique<caf::actor_system>(*caf_config_);
  system_->await_actors_before_shutdown(false);

  transport::UcxTransportConfig tcfg = config_.transport;
  tcfg.node_id = node_id_;
  tcfg.node_name = config_.node_name;
  transport_ = std::make_unique<transport::UcxTransport>(std::move(tcfg));

  BridgeConfig gcfg;
  gcfg.request_ttl = config_.request_ttl;
  gcfg.max_pending_requests = config_.max_pending_requests;
  gcfg.heartbeat_timeout = config_.heartbeat_timeout;
  gcfg.run_actors_on_progress_thread = config_.run_actors_on_progress_thread;
  bridge_ = std::make_shared<Bridge>(*system_, *transport_, codecs_, gcfg, clock_, incarnation_);
  bridge_->Start();
  bridge_->set_control_handler(this);

  Status started = transport_->Start(bridge_->Handler());
  if (!started.ok()) {
    bridge_->Shutdown();
    return started;
  }
  ticker_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(ticker_mu_);
    while (!ticker_cv_.wait_for(lock, config_.heartbeat_interval, [this] { return stopping_; })) {
      lock.unlock();
      bridge_->Tick();
      lock.lock();
    }
  });
  spdlog::info("runtime: node {} ({}) up at {}, incarnation {}", node_id_, config_.node_name, address(),
               incarnation_);
  return OkStatus();
}

Runtime::~Runtime() { Stop(); }

void Runtime::Stop() {
  {
    std::lock_guard<std::mutex> lock(ticker_mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
  }
  ticker_cv_.notify_all();
  if (ticker_.joinable()) ticker_.join();
  if (bridge_) bridge_->Shutdown();
  if (transport_) transport_->Stop();
  {
    std::lock_guard<std::mutex> lock(names_->mu);
    names_->table.clear();
  }
}

bool Runtime::AwaitActors(std::chrono::milliseconds limit) {
  // CAF's registry counts running actors but offers only an unbounded wait for a count.
  auto& registry = system_->registry();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (registry.running() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) {
      spdlog::debug("runtime: {} actor(s) still running after {} ms", registry.running(), limit.count());
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

ActorRef Runtime::Ref(const caf::actor& actor) const {
  return bridge_->RefOf(caf::actor_cast<caf::strong_actor_ptr>(actor));
}
ActorRef Runtime::Ref(const caf::strong_actor_ptr& actor) const { return bridge_->RefOf(actor); }

void Runtime::AddNode(NodeId node, const std::string& address) { bridge_->AddNode(node, address); }

Status Runtime::RegisterName(const std::string& name, const ActorRef& ref) {
  if (name.empty()) return InvalidArgumentError("actor name is empty");
  if (!ref.valid()) return InvalidArgumentError("cannot name '" + name + "': the ref is empty");
  {
    std::lock_guard<std::mutex> lock(names_->mu);
    auto [it, inserted] = names_->table.emplace(name, ref);
    if (!inserted) {
      if (it->second == ref) return OkStatus();
      return AlreadyExistsError("name '" + name + "' on node " + std::to_string(node_id_) + " is held by " +
                                it->second.ToString());
    }
  }
  std::weak_ptr<Names> weak = names_;
  ref.Monitor([weak, name, ref](const Status&) {
    if (auto names = weak.lock()) {
      std::lock_guard<std::mutex> lock(names->mu);
      auto it = names->table.find(name);
      if (it != names->table.end() && it->second == ref) names->table.erase(it);
    }
  });
  return OkStatus();
}

void Runtime::UnregisterName(const std::string& name) {
  std::lock_guard<std::mutex> lock(names_->mu);
  names_->table.erase(name);
}

StatusOr<ActorRef> Runtime::LookupForPeer(const std::string& name) {
  std::lock_guard<std::mutex> lock(names_->mu);
  auto it = names_->table.find(name);
  if (it == names_->table.end()) {
    return NotFoundError("no actor named '" + name + "' on node " + std::to_string(node_id_) + " (" +
                         config_.node_name + ")");
  }
  return it->second;
}


StatusOr<ActorRef> Runtime::Await(std::chrono::milliseconds timeout,
                                  const std::function<void(Bridge::RefCallback)>& start) {
  auto promise = std::make_shared<std::promise<StatusOr<ActorRef>>>();
  auto future = promise->get_future();
  start([promise](StatusOr<ActorRef> result) { promise->set_value(std::move(result)); });
  // The bridge answers by the deadline (its sweep runs every heartbeat interval); this
  // bound only guards against a bug there.
  if (future.wait_for(timeout + 4 * config_.heartbeat_interval + std::chrono::seconds(1)) !=
      std::future_status::ready) {
    return InternalError("no answer from the bridge after the request deadline");
  }
  return future.get();
}

StatusOr<ActorRef> Runtime::LookupName(NodeId node, const std::string& name, std::chrono::milliseconds timeout) {
  if (node == node_id_) return LookupForPeer(name);
  Buffer payload = EncodeFlat<wire::NameLookup>([&](wire::NameLookup::Builder b) { b.setName(name); });
  return Await(timeout, [&](Bridge::RefCallback done) {
    bridge_->ControlRequest(node, kNameLookup, std::move(payload), timeout, std::move(done));
  });
}

StatusOr<ActorRef> Runtime::SpawnDirectory() {
  ActorRef ref = Ref(SpawnDirectoryActor(*system_));
  RETURN_IF_ERROR(RegisterName(kDirectoryName, ref));
  return ref;
}

Status Runtime::AddFactory(const std::string& type_name, ErasedFactory factory) {
  if (type_name.empty()) return InvalidArgumentError("actor type name is empty");
  std::lock_guard<std::mutex> lock(factories_mu_);
  if (!factories_.emplace(type_name, std::move(factory)).second) {
    return AlreadyExistsError("actor type '" + type_name + "' is already registered");
  }
  return OkStatus();
}

Status Runtime::RegisterActorType(const std::string& type_name, PlainFactory factory) {
  return AddFactory(type_name, [factory = std::move(factory)](caf::actor_system& sys,
                                                              const caf::message& args) -> StatusOr<caf::actor> {
    if (!args.empty()) return InvalidArgumentError("takes no arguments, got " + caf::to_string(args));
    return factory(sys);
  });
}

StatusOr<ActorRef> Runtime::SpawnLocal(const std::string& type_name, const caf::message& args) {
  ErasedFactory factory;
  {
    std::lock_guard<std::mutex> lock(factories_mu_);
    auto it = factories_.find(type_name);
    if (it == factories_.end()) {
      return NotFoundError("no actor type '" + type_name + "' on node " + std::to_string(node_id_) + " (" +
                           config_.node_name + ")");
    }
    factory = it->second;
  }
  auto actor = factory(*system_, args);
  if (!actor.ok()) {
    return Status(actor.status().code(), "spawning '" + type_name + "': " + actor.status().message());
  }
  if (!*actor) return InternalError("spawning '" + type_name + "': the factory returned no actor");
  return Ref(*actor);
}

StatusOr<ActorRef> Runtime::SpawnForPeer(const std::string& type_name, uint32_t args_type_id, const uint8_t* args,
                                         size_t args_size) {
  caf::message msg;
  if (args_type_id != 0) {
    auto decoded = codecs_.Decode(args_type_id, args, args_size, *bridge_);
    if (!decoded.ok()) {
      return InvalidArgumentError("spawning '" + type_name + "': arguments: " + decoded.status().message());
    }
    msg = std::move(decoded).value();
  }
  return SpawnLocal(type_name, msg);
}

StatusOr<ActorRef> Runtime::SpawnOnImpl(NodeId node, const std::string& type_name, caf::message args,
                                        std::chrono::milliseconds timeout) {
  if (node == node_id_) return SpawnLocal(type_name, args);
  uint32_t args_type_id = 0;
  Buffer args_bytes;
  if (!args.empty()) {
    auto encoded = codecs_.Encode(args, *bridge_);
    if (!encoded.ok()) {
      return InvalidArgumentError("spawning '" + type_name + "': arguments: " + encoded.status().message());
    }
    args_type_id = encoded->type_id;
    args_bytes = std::move(encoded->payload);
  }
  Buffer payload = EncodeFlat<wire::SpawnRequest>([&](wire::SpawnRequest::Builder b) {
    b.setTypeName(type_name);
    b.setArgsTypeId(args_type_id);
    b.setArgs(kj::arrayPtr(args_bytes.data(), args_bytes.size()));
  });
  return Await(timeout, [&](Bridge::RefCallback done) {
    bridge_->ControlRequest(node, kSpawnRequest, std::move(payload), timeout, std::move(done));
  });
}

RuntimeStats Runtime::stats() const { return RuntimeStats{bridge_->stats(), transport_->stats()}; }

}  // namespace troupe::runtime
