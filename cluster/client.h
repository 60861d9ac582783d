// Client: a program's connection to a troupe cluster (today: list nodes; more with the later
// issues: membership events, named actors, jobs).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <string>

#include "actors/api/messages.h"
#include "actors/serving/deployment_spec.h"
#include "actors/serving/messages.h"
#include "actors/training/job_spec.h"
#include "actors/training/job_status.h"
#include "actors/training/messages.h"
#include "cluster/config.h"
#include "cluster/messages.h"
#include "runtime/runtime.h"

namespace troupe::cluster {

class Client {
 public:
  /// Connects to the head of `config`'s cluster (at `head_address` if given) with its token.
  /// Unavailable, naming the address, if the head cannot be reached within `timeout`.
  /// A request that finds the head gone (Unavailable or NotFound: it restarted) looks the head
  /// up again (at the address head.address gives now, when head.port is 0 and no address was
  /// given) and is sent once more within its timeout. Lease requests carry a key
  /// (LeaseRequest::key, made here if empty), so one sent again gets the lease the old head may
  /// have granted, never a second one. Leases granted before survive a head restart
  /// (docs/scheduling.md). Membership subscriptions do not: subscribe again.
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
  /// A granted slice lease and the actor that owns it (the lease ends when the owner exits).
  struct Lease {
    LeaseGrant grant;
    runtime::ActorRef owner;
  };
  /// Asks the head's scheduler for slices and waits up to `timeout` for the grant (requests
  /// wait in the head's queue while capacity is short). Without `request.owner`, the lease is
  /// owned by an actor of this client, so it ends when this process does. On timeout the
  /// request is withdrawn. Errors: InvalidArgument (bad request), ResourceExhausted (can never
  /// fit the cluster or the tenant's quota), DeadlineExceeded.
  /// A lease can end without its owner asking (a node it uses is lost): the head then sends the
  /// owner a LeaseEnded. An owner of your own should handle it; this client's own owner calls
  /// `on_ended` (on an actor thread), or logs a warning without one.
  StatusOr<Lease> RequestSlices(LeaseRequest request, std::chrono::milliseconds timeout,
                                std::function<void(const LeaseEnded&)> on_ended = nullptr);
  /// Ends a lease: its slices return to the scheduler.
  Status ReleaseSlices(const Lease& lease, std::chrono::milliseconds timeout);
  /// Every GPU's slices, owners and free capacity, and the waiting requests.
  StatusOr<SliceList> ListSlices(std::chrono::milliseconds timeout);
  /// The supervision events the head was sent (newest last).
  StatusOr<EventList> SupervisionEvents(std::chrono::milliseconds timeout);
  /// Submits a training job (docs/jobs.md); its status once stored (pending). InvalidArgument,
  /// AlreadyExists (a job of that name), ResourceExhausted (it can never fit the cluster).
  StatusOr<training::JobStatus> SubmitJob(const training::JobSpec& spec, std::chrono::milliseconds timeout);
  /// A job operation (`op`: list, show, events, stop, resume, delete, submit) with its JSON reply.
  StatusOr<std::string> JobCommand(const std::string& op, const std::string& name, const std::string& body,
                                   std::chrono::milliseconds timeout);
  /// Deploys a serving deployment (docs/serving.md, "Deployments"); the head's JSON record
  /// ({"spec", "status"}) once stored. InvalidArgument (bad spec), AlreadyExists (a deployment of
  /// that name), ResourceExhausted (a replica of a version can never fit the cluster).
  StatusOr<std::string> Deploy(const serving::DeploymentSpec& spec, std::chrono::milliseconds timeout);
  /// Replaces the running deployment `spec.name`'s spec (docs/serving.md, "Updates and
  /// rollbacks"): the head's JSON record once the update is stored; NotFound (no such
  /// deployment), InvalidArgument (a bad spec), ResourceExhausted (a version's replica can never
  /// fit). `troupe serve rollback` is DeploymentCommand("rollback", name, "", timeout).
  StatusOr<std::string> Update(const serving::DeploymentSpec& spec, std::chrono::milliseconds timeout);
  /// A deployment operation (`op`: deploy, list, show, events, scale, delete) with its JSON reply;
  /// `body` is the spec's JSON for deploy and the replica count for scale.
  StatusOr<std::string> DeploymentCommand(const std::string& op, const std::string& name, const std::string& body,
                                          std::chrono::milliseconds timeout);
  /// Sends one inference request (`path`: "/v1/chat/completions" or "/v1/completions", `body`:
  /// the OpenAI JSON body) to the router of `deployment` (named serving::RouterName on the head)
  /// and waits up to `timeout` (also the request's deadline) for the response. Errors: NotFound
  /// (no such deployment's router), the router's and replicas' errors (messages.h: Unavailable,
  /// ResourceExhausted, DeadlineExceeded, InvalidArgument, ...). The router is looked up once
  /// and again after a NotFound (a deployment deployed again). A head lost while it held the
  /// request (kill -9; the runtime's Unavailable, not the router's "died while serving") is
  /// waited for and the request sent again once it is back, until `timeout` (jittered back-off
  /// from 50 ms to 500 ms; the gateway's rule, docs/gateway.md "A head restart"): a head restart
  /// costs the caller its downtime, not the request. The replica may have run it already.
  StatusOr<serving::InferenceResponse> Infer(const std::string& deployment, const std::string& path,
                                             const std::string& body, std::chrono::milliseconds timeout);
  /// The head's api actor (api::kApiActorName: keys, tenants, limits, usage; docs/gateway.md),
  /// as last looked up; looked up again when `refresh` (after it answered Unavailable or NotFound:
  /// the head restarted). NotFound if the head runs none.
  StatusOr<runtime::ActorRef> ApiActor(std::chrono::milliseconds timeout, bool refresh = false);
  /// An api operation (`op`: key.create, key.list, key.revoke, tenant.create, tenant.list, usage;
  /// api::ApiCommand) as the cluster's admin (this client holds the cluster token; the audit log
  /// names it "cli@<this client's node name>"), with its JSON reply. Errors as the api actor gives
  /// them (InvalidArgument, NotFound, AlreadyExists, Unavailable). Sent again to a restarted head
  /// only if it changes nothing (list, usage).
  StatusOr<std::string> ApiCommand(const std::string& op, const std::string& name, const std::string& body,
                                   std::chrono::milliseconds timeout);
  /// The head's audit log (docs/gateway.md, "Audit log"): the records from `since_unix_ms` on,
  /// and with `verify` the whole chain checked; AuditReply's JSON (cluster/messages.h). The
  /// deployment and job commands of this client are recorded as "cli@<this client's node name>".
  StatusOr<std::string> Audit(int64_t since_unix_ms, bool verify, std::chrono::milliseconds timeout);
  /// Lists a gateway's Prometheus endpoint in the head's scrape targets while `registration.gateway`
  /// lives (RegisterGateway, cluster/messages.h); sent again to a restarted head (registering twice
  /// makes one entry). Errors: InvalidArgument (an empty field), Unavailable, DeadlineExceeded.
  StatusOr<GatewayRegistered> RegisterGateway(const cluster::RegisterGateway& registration,
                                              std::chrono::milliseconds timeout);
  /// A chunk of a worker's log, read by the agent of the node it ran on.
  StatusOr<training::WorkerLogChunk> ReadWorkerLog(const std::string& node, const training::ReadWorkerLog& request,
                                                   std::chrono::milliseconds timeout);
  /// The head's controller (e.g. as a supervisor's event sink), as last looked up.
  runtime::ActorRef head() const;
  runtime::Runtime& runtime() { return *runtime_; }
  std::string head_address() const {
    std::lock_guard<std::mutex> lock(mu_);
    return head_address_;
  }

 private:
  Client() = default;
  // `msg` to the head; once more to a head looked up again if the first one is gone.
  template <class Reply, class Msg>
  StatusOr<Reply> AskHead(const Msg& msg, std::chrono::milliseconds timeout, bool resend_if_unavailable = true);
  // The head's address again (a restarted head listens elsewhere when head.port is 0; the cluster
  // file's head.address says where), unless Connect was given one; the runtime then uses it.
  void FollowHeadAddress();

  std::unique_ptr<runtime::Runtime> runtime_;
  runtime::NodeId head_id_ = 0;
  ClusterConfig config_;
  std::string head_override_;            // the head address given to Connect (empty: from the config)
  std::string name_;                     // this client's node name, the prefix of its lease keys
  std::atomic<uint64_t> next_key_{0};
  mutable std::mutex mu_;
  runtime::ActorRef head_;
  std::string head_address_;
  std::map<std::string, runtime::ActorRef> routers_;  // by deployment, as last looked up (under mu_)
  runtime::ActorRef api_;                             // the head's api actor, as last looked up (under mu_)
  std::atomic<uint64_t> next_request_{0};
};

}  // namespace troupe::cluster
