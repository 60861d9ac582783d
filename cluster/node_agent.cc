// NodeAgent.
#include "cluster/node_agent.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "cluster/head.h"

namespace troupe::cluster {

using namespace std::chrono_literals;

StatusOr<std::unique_ptr<NodeAgent>> NodeAgent::Start(const ClusterConfig& config, const std::string& name,
                                                      const std::string& head_address) {
  std::unique_ptr<NodeAgent> agent(new NodeAgent());
  agent->config_ = config;
  agent->spec_ = agent->config_.FindNode(name);
  if (agent->spec_ == nullptr) {
    return InvalidArgumentError("no node named '" + name + "' in " + config.source);
  }
  agent->head_override_ = head_address;
  ASSIGN_OR_RETURN(agent->runtime_,
                   runtime::Runtime::Start(RuntimeConfigFor(config, name, NodeIdOf(config, name),
                                                            agent->spec_->listen_address),
                                           ClusterCodecs()));
  std::string host = agent->spec_->listen_address.substr(0, agent->spec_->listen_address.rfind(':'));
  ASSIGN_OR_RETURN(agent->metrics_, runtime::MetricsServer::Start(host, agent->spec_->metrics_port));
  agent->metrics_->AddSource(runtime::RuntimeMetrics(*agent->runtime_));
  // The agent actor is the node's identity at the head: the head monitors it.
  agent->agent_ = agent->runtime_->Spawn([]() -> caf::behavior { return {[](caf::ok_atom) {}}; });
  RETURN_IF_ERROR(agent->runtime_->RegisterName("troupe.node_agent", agent->agent_));
  return agent;
}

NodeAgent::~NodeAgent() {
  Stop();
  if (runtime_) runtime_->Stop();
}

void NodeAgent::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

bool NodeAgent::WaitStop(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, d, [this] { return stop_; });
}

StatusOr<runtime::ActorRef> NodeAgent::Join(const NodeRecord& record, runtime::NodeId head_id, JoinReply* reply) {
  ASSIGN_OR_RETURN(std::string address, ResolveHeadAddress(config_, head_override_));
  runtime_->AddNode(head_id, address);
  ASSIGN_OR_RETURN(runtime::ActorRef head, runtime_->LookupName(head_id, kHeadActorName, 2s));
  ASSIGN_OR_RETURN(*reply, head.Request<JoinReply>(JoinRequest{record, agent_}, 5s));
  return head;
}

void NodeAgent::Run(const std::function<void(const JoinReply&)>& on_joined) {
  NodeRecord record;
  record.name = spec_->name;
  record.node_id = runtime_->node_id();
  record.address = runtime_->address();
  record.cpus = spec_->cpus;
  record.memory_bytes = spec_->memory_bytes;
  for (const auto& gpu : spec_->simulated_gpus) record.gpus.push_back(GpuInfo{gpu.name, gpu.memory_bytes, true});
  record.slice_memory_bytes = spec_->slice_memory_bytes;
  record.pid = getpid();
  record.metrics_address = metrics_->address();
  const runtime::NodeId head_id = HeadNodeId(config_);
  auto backoff = 100ms;
  while (!WaitStop(0ms)) {
    JoinReply joined;
    auto head = Join(record, head_id, &joined);
    if (!head.ok()) {
      spdlog::warn("node {}: cannot join the head yet: {}; retrying in {} ms", spec_->name, head.status().ToString(),
                   backoff.count());
      if (WaitStop(backoff)) break;
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
      continue;
    }
    backoff = 100ms;
    on_joined(joined);
    {
      std::lock_guard<std::mutex> lock(mu_);
      head_lost_ = false;
    }
    head->Monitor([this](const Status& reason) {
      spdlog::warn("node {}: lost the head ({}); joining again", spec_->name, reason.ToString());
      {
        std::lock_guard<std::mutex> lock(mu_);
        head_lost_ = true;
      }
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return stop_ || head_lost_; });
  }
}

}  // namespace troupe::cluster
