// Client: a program's connection to a troupe cluster (today: list nodes; more with the later
// issues: membership events, named actors, jobs).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "cluster/config.h"
#include "cluster/messages.h"
#include "runtime/runtime.h"

namespace troupe::cluster {

class Client {
 public:
  /// Connects to the head of `config`'s cluster (at `head_address` if given) with its token.
  /// Unavailable, naming the address, if the head cannot be reached within `timeout`.
  static StatusOr<std::unique_ptr<Client>> Connect(const ClusterConfig& config, const std::string& head_address,
                                                   std::chrono::milliseconds timeout);
  ~Client();

  StatusOr<NodeList> ListNodes(std::chrono::milliseconds timeout);
  /// Calls `on_event` (on an actor thread) for every membership change from now on: a node
  /// joined (state alive) or was lost (dead). Returns the nodes at subscription time.
  StatusOr<NodeList> SubscribeMembership(std::function<void(const NodeRecord&)> on_event,
                                         std::chrono::milliseconds timeout);
  /// Looks up a named actor on any node of the cluster.
  StatusOr<runtime::ActorRef> Lookup(runtime::NodeId node, const std::string& name, std::chrono::milliseconds timeout);
  runtime::Runtime& runtime() { return *runtime_; }
  const std::string& head_address() const { return head_address_; }

 private:
  Client() = default;
  std::unique_ptr<runtime::Runtime> runtime_;
  runtime::ActorRef head_;
  std::string head_address_;
};

}  // namespace troupe::cluster
