// Client.
#include "cluster/client.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "actors/serving/deployment.h"
#include "cluster/bootstrap.h"
#include "common/backoff.h"
#include "runtime/node_identity.h"

namespace troupe::cluster {

StatusOr<std::unique_ptr<Client>> Client::Connect(const ClusterConfig& config, const std::string& head_address,
                                                  std::chrono::milliseconds timeout) {
  std::unique_ptr<Client> client(new Client());
  ASSIGN_OR_RETURN(client->head_address_, ResolveHeadAddress(config, head_address));
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  std::string name = "client-" + std::to_string(getpid()) + "-" + std::to_string(now);
  ASSIGN_OR_RETURN(client->runtime_,
                   runtime::Runtime::Start(RuntimeConfigFor(config, name, runtime::NodeIdFromName(name), "127.0.0.1:0"),
                                           ClusterCodecs()));
  runtime::NodeId head_id = HeadNodeId(config);
  client->runtime_->AddNode(head_id, client->head_address_);
  auto head = client->runtime_->LookupName(head_id, kHeadActorName, timeout);
  if (!head.ok()) {
    return UnavailableError("cannot reach the head of cluster '" + config.name + "' at " + client->head_address_ +
                            ": " + head.status().message() + " (is the cluster up? `troupe up -c " + config.source + "`)");
  }
  client->head_ = *head;
  client->head_id_ = head_id;
  client->name_ = name;
  client->config_ = config;
  client->head_override_ = head_address;
  return client;
}

void Client::FollowHeadAddress() {
  if (head_override_.empty()) {
    if (auto address = ResolveHeadAddress(config_, ""); address.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      head_address_ = *address;
    }
  }
  runtime_->AddNode(head_id_, head_address());
}

runtime::ActorRef Client::head() const {
  std::lock_guard<std::mutex> lock(mu_);
  return head_;
}

template <class Reply, class Msg>
StatusOr<Reply> Client::AskHead(const Msg& msg, std::chrono::milliseconds timeout, bool resend_if_unavailable) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto left = [&] {
    return std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      deadline - std::chrono::steady_clock::now()));
  };
  runtime::ActorRef first = head();
  StatusOr<Reply> reply = first.Request<Reply>(msg, timeout);
  if (reply.ok() || (reply.status().code() != StatusCode::kUnavailable &&
                     reply.status().code() != StatusCode::kNotFound)) {
    return reply;
  }
  // The head may have restarted, on another port if head.port is 0 (head.address says where):
  // its name leads to the new one.
  FollowHeadAddress();
  auto again = runtime_->LookupName(head_id_, kHeadActorName, left());
  if (!again.ok() || again->id() == first.id()) return reply;
  const runtime::ActorRef fresh = *again;
  {
    std::lock_guard<std::mutex> lock(mu_);
    head_ = fresh;
  }
  // Unavailable may mean the old head got the message and died before answering: a message
  // that must not take effect twice is not sent again (the next call goes to the new head).
  if (!resend_if_unavailable && reply.status().code() == StatusCode::kUnavailable) return reply;
  return fresh.Request<Reply>(msg, left());
}

Client::~Client() {
  if (runtime_) runtime_->Stop();
}

StatusOr<NodeList> Client::ListNodes(std::chrono::milliseconds timeout) {
  return AskHead<NodeList>(cluster::ListNodes{}, timeout);
}

StatusOr<NodeList> Client::SubscribeMembership(std::function<void(const NodeRecord&)> on_event,
                                               std::chrono::milliseconds timeout) {
  auto listener = runtime_->Spawn([on_event = std::move(on_event)]() -> caf::behavior {
    return {[on_event](MembershipEvent& event) { on_event(event.node); }};
  });
  return head().Request<NodeList>(cluster::SubscribeMembership{listener}, timeout);
}

StatusOr<Client::Lease> Client::RequestSlices(LeaseRequest request, std::chrono::milliseconds timeout,
                                              std::function<void(const LeaseEnded&)> on_ended) {
  const bool own = !request.owner.valid();
  if (own) {
    request.owner = runtime_->Spawn([on_ended = std::move(on_ended)]() -> caf::behavior {
      return {
          [](caf::ok_atom) {},
          [on_ended](LeaseEnded& ended) {
            if (on_ended) {
              on_ended(ended);
            } else {
              spdlog::warn("client: lease {} ended: {}", ended.lease_id, ended.reason);
            }
          },
      };
    });
  }
  // Keyed, so that sending it again (to a head that restarted) cannot make a second lease.
  if (request.key.empty()) request.key = name_ + "/" + std::to_string(next_key_.fetch_add(1) + 1);
  auto grant = AskHead<LeaseGrant>(request, timeout);
  if (!grant.ok()) {
    // Withdraws a waiting request: the head drops requests whose owner is gone.
    if (own) caf::anon_send_exit(request.owner.handle(), caf::exit_reason::user_shutdown);
    return grant.status();
  }
  return Lease{std::move(*grant), request.owner};
}

Status Client::ReleaseSlices(const Lease& lease, std::chrono::milliseconds timeout) {
  auto released = AskHead<LeaseGrant>(ReleaseLease{lease.grant.lease_id}, timeout);
  return released.ok() ? OkStatus() : released.status();
}

StatusOr<SliceList> Client::ListSlices(std::chrono::milliseconds timeout) {
  return AskHead<SliceList>(cluster::ListSlices{}, timeout);
}

StatusOr<EventList> Client::SupervisionEvents(std::chrono::milliseconds timeout) {
  return AskHead<EventList>(ListEvents{}, timeout);
}

StatusOr<runtime::ActorRef> Client::Lookup(runtime::NodeId node, const std::string& name,
                                           std::chrono::milliseconds timeout) {
  return runtime_->LookupName(node, name, timeout);
}

StatusOr<training::JobStatus> Client::SubmitJob(const training::JobSpec& spec, std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(std::string reply, JobCommand("submit", spec.name, training::JobSpecToJson(spec), timeout));
  return training::JobStatusFromJson(reply);
}

StatusOr<std::string> Client::JobCommand(const std::string& op, const std::string& name, const std::string& body,
                                         std::chrono::milliseconds timeout) {
  // A submit sent again after a lost reply finds its own job (AlreadyExists): sent once only.
  const bool resend = op != "submit" && op != "resume" && op != "delete";
  ASSIGN_OR_RETURN(auto reply, (AskHead<training::JobCommandReply>(training::JobCommand{op, name, body, "cli@" + name_},
                                                                    timeout, resend)));
  return std::move(reply.body);
}

StatusOr<std::string> Client::Deploy(const serving::DeploymentSpec& spec, std::chrono::milliseconds timeout) {
  return DeploymentCommand("deploy", spec.name, serving::DeploymentSpecToJson(spec), timeout);
}

StatusOr<std::string> Client::Update(const serving::DeploymentSpec& spec, std::chrono::milliseconds timeout) {
  return DeploymentCommand("update", spec.name, serving::DeploymentSpecToJson(spec), timeout);
}

StatusOr<std::string> Client::DeploymentCommand(const std::string& op, const std::string& name,
                                                const std::string& body, std::chrono::milliseconds timeout) {
  // A deploy or delete sent again after a lost reply would find its own work done: sent once only.
  const bool resend = op != "deploy" && op != "delete";
  ASSIGN_OR_RETURN(auto reply,
                   (AskHead<serving::DeploymentCommandReply>(serving::DeploymentCommand{op, name, body, "cli@" + name_},
                                                                           timeout, resend)));
  return std::move(reply.body);
}

StatusOr<serving::InferenceResponse> Client::Infer(const std::string& deployment, const std::string& path,
                                                   const std::string& body, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto left = [&] {
    return std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      deadline - std::chrono::steady_clock::now()));
  };
  serving::InferenceRequest request;
  request.id = ++next_request_;
  request.deployment = deployment;
  request.path = path;
  request.body = body;
  request.deadline_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 (std::chrono::system_clock::now() + timeout).time_since_epoch())
                                 .count();
  // A head lost while it held the request (kill -9: the runtime's Unavailable, not a router's
  // answer) is waited for and the request sent again once it is back, within `timeout`, as the
  // gateway does (docs/gateway.md "A head restart"): jittered back-off 50 ms doubling to 500 ms.
  // Any answer of the router (its own errors, a replica's) is final.
  Backoff backoff(BackoffPolicy{std::chrono::milliseconds(50), 2.0, std::chrono::milliseconds(500), 0.5});
  bool head_lost = false;
  // Waits before the next attempt; false when the deadline comes first.
  auto wait_for_head = [&] {
    const auto delay = backoff.Next();
    if (std::chrono::steady_clock::now() + delay >= deadline) return false;
    std::this_thread::sleep_for(delay);  // a back-off between attempts, not a wait for a condition
    FollowHeadAddress();  // a restarted head may listen elsewhere (head.port 0)
    return true;
  };
  for (int attempt = 0;; ++attempt) {
    runtime::ActorRef router;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = routers_.find(deployment); it != routers_.end()) router = it->second;
    }
    const bool cached = router.valid();
    if (!cached) {
      auto found = runtime_->LookupName(head_id_, serving::RouterName(deployment), left());
      if (!found.ok()) {
        // While the head restarts: unreachable, then reading its deployments back (no router yet).
        if (found.status().code() == StatusCode::kUnavailable) head_lost = true;
        const bool restarting = head_lost && (found.status().code() == StatusCode::kUnavailable ||
                                              found.status().code() == StatusCode::kNotFound);
        if (restarting && wait_for_head()) continue;
        if (found.status().code() == StatusCode::kNotFound) {
          return NotFoundError("deployment '" + deployment + "' has no router on the head (" +
                               found.status().message() + "); is it deployed? (troupe serve list)");
        }
        return found.status();
      }
      router = *found;
      std::lock_guard<std::mutex> lock(mu_);
      routers_[deployment] = router;
    }
    auto reply = router.Request<serving::InferenceResponse>(request, left());
    const bool lost = !reply.ok() && reply.status().code() == StatusCode::kUnavailable &&
                      reply.status().message().find("died while serving") == std::string::npos;
    const bool stale = !reply.ok() && (reply.status().code() == StatusCode::kNotFound || lost);
    if (!stale) return reply;
    {
      // The router looked up before is gone (the deployment was deployed again, or the head
      // restarted): look it up again.
      std::lock_guard<std::mutex> lock(mu_);
      routers_.erase(deployment);
    }
    if (lost) {
      head_lost = true;
      if (!wait_for_head()) return reply;
      continue;
    }
    if (!cached || attempt > 0) return reply;
  }
}

StatusOr<runtime::ActorRef> Client::ApiActor(std::chrono::milliseconds timeout, bool refresh) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (api_.valid() && !refresh) return api_;
  }
  auto found = runtime_->LookupName(head_id_, api::kApiActorName, timeout);
  if (!found.ok()) {
    if (found.status().code() == StatusCode::kNotFound) {
      return NotFoundError("the head runs no api actor (" + found.status().message() +
                           "): is it older than this client?");
    }
    return found.status();
  }
  std::lock_guard<std::mutex> lock(mu_);
  api_ = *found;
  return api_;
}

StatusOr<std::string> Client::ApiCommand(const std::string& op, const std::string& name, const std::string& body,
                                         std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto left = [&] {
    return std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      deadline - std::chrono::steady_clock::now()));
  };
  const api::ApiCommand command{op, name, body, "", "cli@" + name_};
  // A change sent again after a lost reply could be made twice (a second key): sent once only.
  const bool resend = op == "key.list" || op == "tenant.list" || op == "usage";
  for (int attempt = 0;; ++attempt) {
    ASSIGN_OR_RETURN(runtime::ActorRef api, ApiActor(left(), attempt > 0));
    auto reply = api.Request<api::ApiCommandReply>(command, left());
    if (reply.ok()) return std::move(reply->json);
    // A ref to an api actor that is gone (the head restarted) is looked up again, once; NotFound
    // from the actor itself (no such key or tenant) is its answer.
    const Status& s = reply.status();
    const bool gone = s.code() == StatusCode::kUnavailable ||
                      (s.code() == StatusCode::kNotFound && (s.message().find("earlier run of") != std::string::npos ||
                                                             s.message().rfind("no actor ", 0) == 0));
    if (attempt > 0 || !gone || (s.code() == StatusCode::kUnavailable && !resend)) return s;
    FollowHeadAddress();
  }
}

StatusOr<std::string> Client::Audit(int64_t since_unix_ms, bool verify, std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(auto reply, AskHead<AuditReply>(AuditQuery{since_unix_ms, verify}, timeout));
  return std::move(reply.json);
}

StatusOr<GatewayRegistered> Client::RegisterGateway(const cluster::RegisterGateway& registration,
                                                    std::chrono::milliseconds timeout) {
  return AskHead<GatewayRegistered>(registration, timeout);
}

StatusOr<training::WorkerLogChunk> Client::ReadWorkerLog(const std::string& node,
                                                         const training::ReadWorkerLog& request,
                                                         std::chrono::milliseconds timeout) {
  NodeList nodes;
  ASSIGN_OR_RETURN(nodes, ListNodes(timeout));
  const NodeRecord* record = nullptr;
  for (const auto& n : nodes.nodes) {
    if (n.name == node) record = &n;
  }
  if (record == nullptr) return NotFoundError("no node '" + node + "' in the cluster");
  if (record->state == "dead") return UnavailableError("node '" + node + "' is dead: " + record->reason);
  runtime_->AddNode(record->node_id, record->address);
  ASSIGN_OR_RETURN(auto agent, runtime_->LookupName(record->node_id, "troupe.node_agent", timeout));
  return agent.Request<training::WorkerLogChunk>(request, timeout);
}

}  // namespace troupe::cluster
