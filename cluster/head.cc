// The head: composes the registries (membership, leases, the event log, the scrape-targets file)
// in one controller actor, and the process around them (runtime, LMDB, metrics endpoint).
#include "cluster/head.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "cluster/api_registry.h"
#include "cluster/audit_log.h"
#include "cluster/bootstrap.h"
#include "cluster/deployments_registry.h"
#include "cluster/event_log.h"
#include "cluster/head_metrics.h"
#include "cluster/head_store.h"
#include "cluster/jobs_registry.h"
#include "cluster/lease_registry.h"
#include "cluster/membership.h"
#include "cluster/model_registry.h"
#include "cluster/messages.h"
#include "cluster/scrape_targets.h"
#include "common/clock.h"
#include "common/file_util.h"
#include "storage/table.h"

namespace troupe::cluster {

namespace {

// Sent by the controller to itself `failure_timeout` after it starts: nodes of the earlier head
// that have not rejoined by then are dead.
using rejoin_deadline_atom = caf::atom_constant<caf::atom("rejoin_dl")>;
// Sent by the controller to itself a while after a write of the targets file failed: it tries again.
using retry_targets_atom = caf::atom_constant<caf::atom("retry_tgts")>;
constexpr std::chrono::seconds kTargetsRetryInterval{1};
// Sent by the controller to itself once a day: audit records past their retention are pruned
// (also at every start, by AuditLog::Open).
using audit_prune_atom = caf::atom_constant<caf::atom("audit_prn")>;
constexpr std::chrono::hours kAuditPruneInterval{24};

// "1s", "1500 ms": a duration as the config would say it.
std::string DurationText(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + " ms";
}

// The controller actor's state: the registries, each owning one kind of state, composed here.
// They are plain classes, not actors of their own: the controller's mailbox serialises them, and
// what one change does across them (a node's death ends its leases, a join takes its leases back
// before anything else is placed) happens within one message, in the order it always did. A
// registry with its own mailbox would let other requests in between.
struct ControllerState {
  ClusterConfig config;
  runtime::Runtime* runtime = nullptr;
  std::shared_ptr<ClusterView> view;
  std::unique_ptr<HeadStore> store;
  std::unique_ptr<MembershipRegistry> membership;
  std::unique_ptr<LeaseRegistry> leases;
  std::unique_ptr<ModelRegistry> models;
  std::unique_ptr<JobsRegistry> jobs;
  std::unique_ptr<DeploymentsRegistry> deployments;
  EventLog events;
  std::shared_ptr<AuditLog> audit;  // shared with the head's api actor (it locks itself)
  std::string head_metrics_address;
  ScrapeTargetsWriter targets;  // made by the controller: its retries are messages to itself
  // The gateways listed in `targets`, by the actor each registered with (monitored: the entry
  // goes when the actor does). Not stored: a gateway registers again with a restarted head.
  std::map<caf::actor_addr, std::string> gateways;
  // How the lease registry has the controller monitor an owner (set once the actor runs).
  std::shared_ptr<std::function<void(const caf::actor&)>> monitor;

  // Copies the node table to the scrape thread and rewrites the Prometheus targets file.
  void UpdateNodeMetricsAndTargets() {
    {
      std::lock_guard<std::mutex> lock(view->mu);
      view->nodes = membership->nodes();
    }
    targets.Write(membership->nodes());
  }

  // Who sent the command being handled, for the audit log: the caller it names (the CLI says
  // "cli@<its node name>"), else the member node it came from, else the cluster token, which
  // every process that reaches the head holds.
  std::string CallerOf(const std::string& caller, const caf::strong_actor_ptr& sender) const {
    if (!caller.empty()) return caller;
    if (sender) {
      const runtime::NodeId node = runtime->Ref(sender).node();
      if (node == runtime->node_id()) return "head";
      for (const auto& [name, record] : membership->nodes()) {
        if (record.node_id == node) return "node@" + name;
      }
    }
    return "cluster-token";
  }
  // Records a client's command that changes something. The command has already taken effect:
  // a record that cannot be written is an error in the head's log, not a refusal.
  void Audit(const std::string& who, const std::string& kind, const std::string& op, const std::string& target,
             const std::string& body, const Status& result) {
    if (Status s = AuditCommand(*audit, who, kind, op, target, body, result); !s.ok()) {
      spdlog::error("head: the audit record of {} {} '{}' by {} was not written: {}", kind, op, target, who,
                    s.ToString());
    }
  }

  // `failure_timeout` after the head started: a node of the earlier head that has not rejoined
  // is dead like any other (its process was lost while the head was down), and so are the leases
  // of the earlier head on it, or on a node the head has no record of.
  void DeclareUnrejoinedDead() {
    const std::string after =
        "did not rejoin within " + DurationText(config.failure_timeout) + " after the head restarted";
    std::set<std::string> gone;
    for (const auto& record : membership->DeclareUnknownDead(after)) {
      // Shown by `troupe slices` as dead, like a node lost under this head; it takes no work.
      leases->AddDeadNodeToScheduler(record);
      gone.insert(record.name);
    }
    for (const auto& name : leases->NodesUnheardOf()) gone.insert(name);
    if (gone.empty()) return;
    UpdateNodeMetricsAndTargets();
    for (const auto& name : gone) leases->LoseLeasesOn(name, "node '" + name + "' " + after);
    leases->RunScheduler();
  }
};

caf::behavior Controller(caf::stateful_actor<ControllerState>* self, ControllerState init) {
  self->state = std::move(init);
  auto& state = self->state;
  *state.monitor = [self](const caf::actor& owner) { self->monitor(owner); };
  state.targets = ScrapeTargetsWriter(state.config.head.data_dir + "/prometheus-targets.json", state.config.name,
                                      state.head_metrics_address, [self] {
                                        self->delayed_send(self, kTargetsRetryInterval, retry_targets_atom::value);
                                      });
  state.UpdateNodeMetricsAndTargets();
  // Nodes and leases of an earlier head wait for their nodes to rejoin, for failure_timeout.
  if (state.leases->HasRecovered() || state.membership->AwaitingRejoins()) {
    self->delayed_send(self, state.config.failure_timeout, rejoin_deadline_atom::value);
  }
  // Jobs of an earlier head get their supervisors again; they talk to the registry through
  // messages to this actor.
  if (Status recovered = state.jobs->Recover(caf::actor_cast<caf::actor>(self)); !recovered.ok()) {
    spdlog::error("head: the jobs table cannot be read: {}", recovered.ToString());
  }
  // Deployments of an earlier head get their deployment actors again, which take back the
  // replicas still running on the nodes as the nodes rejoin.
  if (Status recovered = state.deployments->Recover(caf::actor_cast<caf::actor>(self)); !recovered.ok()) {
    spdlog::error("head: the deployments table cannot be read: {}", recovered.ToString());
  }
  self->delayed_send(self, kAuditPruneInterval, audit_prune_atom::value);
  runtime::MailboxDepths* depths = &state.runtime->mailbox_depths();
  runtime::StartMailboxSampling(self, depths, "head.controller");
  self->set_down_handler([self](caf::down_msg& msg) {
    auto& st = self->state;
    st.leases->EndLeasesOwnedBy(msg.source,
                                CancelledError("lease owner gone: " + runtime::ToStatus(msg.reason).ToString()));
    st.membership->Unsubscribe(msg.source);
    st.jobs->SupervisorGone(msg.source);
    st.deployments->ActorGone(msg.source);
    if (auto gw = st.gateways.find(msg.source); gw != st.gateways.end()) {
      spdlog::info("head: gateway '{}' gone ({}); no longer scraped", gw->second,
                   runtime::ToStatus(msg.reason).ToString());
      st.targets.RemoveGateway(gw->second);
      st.gateways.erase(gw);
      st.UpdateNodeMetricsAndTargets();
    }
    if (auto name = st.membership->NodeOfAgent(msg.source)) {
      NodeRecord record = st.membership->MarkDead(*name, runtime::ToStatus(msg.reason).ToString());
      st.UpdateNodeMetricsAndTargets();
      st.membership->Notify(record);
      st.leases->LoseLeasesOn(*name);
      st.leases->RunScheduler();
    }
  });
  return {
      runtime::MailboxSampleHandler(self, depths, "head.controller"),
      [self](rejoin_deadline_atom) { self->state.DeclareUnrejoinedDead(); },
      [self](audit_prune_atom) {
        auto pruned = self->state.audit->Prune();
        if (!pruned.ok()) spdlog::error("head: audit records past their retention were not pruned: {}",
                                        pruned.status().ToString());
        self->delayed_send(self, kAuditPruneInterval, audit_prune_atom::value);
      },
      [self](retry_targets_atom) {
        if (self->state.targets.RetryDue()) self->state.UpdateNodeMetricsAndTargets();
      },
      [self](JoinRequest& join) -> caf::result<JoinReply> {
        auto& st = self->state;
        auto joined = st.membership->Join(join.node);
        if (!joined.ok()) return runtime::ToCafError(joined.status());
        const NodeRecord& record = *joined;
        if (const runtime::ActorRef* old = st.membership->AgentOf(record.name)) {
          self->demonitor(old->handle());
          // A new process under a known name (restarted before its loss was noticed): what the old
          // one held is gone with it. The same agent joining again (it lost the head) keeps it.
          if (old->id() != join.agent.id()) {
            spdlog::warn("head: node '{}' rejoined as a new process; its earlier process is gone", record.name);
            st.leases->LoseLeasesOn(record.name);
          }
        }
        st.membership->AttachAgent(record.name, join.agent);
        self->monitor(join.agent.handle());
        st.membership->Store(record);
        st.UpdateNodeMetricsAndTargets();
        st.membership->Notify(record);
        st.leases->AddNodeToScheduler(record);
        st.leases->TakeBack(record.name, join.held, join.agent);
        st.jobs->NodeJoined(record.name, join.agent, join.workers);
        st.deployments->NodeJoined(record.name, join.agent, join.replicas);
        st.leases->RunScheduler();
        spdlog::info("head: node '{}' ({}) joined from {} (join #{})", record.name, record.node_id, record.address,
                     record.joins);
        return JoinReply{st.config.name, record.node_id};
      },
      [self](SubscribeMembership& sub) -> caf::result<NodeList> {
        if (!sub.subscriber.valid()) return runtime::ToCafError(InvalidArgumentError("subscribe: empty subscriber"));
        self->monitor(sub.subscriber.handle());
        return self->state.membership->Subscribe(sub.subscriber);
      },
      [self](LeaseRequest& req) -> caf::result<LeaseGrant> {
        if (!req.owner.valid()) return runtime::ToCafError(InvalidArgumentError("lease request without an owner"));
        // The promise is made only for a request that waits: a promise answers the request, and a
        // value returned after making one would be dropped.
        caf::typed_response_promise<LeaseGrant> promise;
        auto now = self->state.leases->Request(req, [&]() -> LeaseReply {
          promise = self->make_response_promise<LeaseGrant>();
          return [promise](StatusOr<LeaseGrant> answer) mutable {
            if (answer.ok()) {
              promise.deliver(std::move(*answer));
            } else {
              promise.deliver(runtime::ToCafError(answer.status()));
            }
          };
        });
        if (!now) return promise;
        if (!now->ok()) return runtime::ToCafError(now->status());
        return std::move(**now);
      },
      [self](ReleaseLease& release) -> caf::result<LeaseGrant> {
        auto released = self->state.leases->Release(release.lease_id);
        if (!released.ok()) return runtime::ToCafError(released.status());
        return std::move(*released);
      },
      [self](GpuReport& report) { self->state.leases->ReportLoad(report); },
      [self](ListSlices&) -> SliceList { return self->state.leases->ListSlices(); },
      [self](runtime::SupervisorEvent& event) { self->state.events.Add(std::move(event)); },
      [self](ListEvents&) -> EventList { return EventList{self->state.events.List()}; },
      [self](training::JobCommand& command) -> caf::result<training::JobCommandReply> {
        auto reply = self->state.jobs->Command(command);
        self->state.Audit(self->state.CallerOf(command.caller, self->current_sender()), "job", command.op,
                          command.name, command.body, reply.status());
        if (!reply.ok()) return runtime::ToCafError(reply.status());
        return training::JobCommandReply{std::move(*reply)};
      },
      [self](JobPlacementRequest& request) { (void)self->state.jobs->Place(request); },
      [self](JobLeaseRelease& release) { self->state.jobs->Release(release.lease_id); },
      [self](JobStatusUpdate& update) { self->state.jobs->Record(update); },
      [self](serving::DeploymentCommand& command) -> caf::result<serving::DeploymentCommandReply> {
        auto reply = self->state.deployments->Command(command);
        self->state.Audit(self->state.CallerOf(command.caller, self->current_sender()), "deployment", command.op,
                          command.name, command.body, reply.status());
        if (!reply.ok()) return runtime::ToCafError(reply.status());
        return serving::DeploymentCommandReply{std::move(*reply)};
      },
      [self](ReplicaPlacementRequest& request) { self->state.deployments->Place(request); },
      [self](ReplicaLeaseRelease& release) { self->state.deployments->Release(release.lease_id); },
      [self](ReplicaPlacementWithdraw& withdraw) { self->state.deployments->Withdraw(withdraw); },
      [self](DeploymentStatusUpdate& update) { self->state.deployments->Record(update); },
      [self](AuditQuery& query) -> caf::result<AuditReply> {
        AuditLog& audit = *self->state.audit;
        auto records = audit.List(query.since_unix_ms);
        if (!records.ok()) return runtime::ToCafError(records.status());
        if (!query.verify) return AuditReply{AuditReplyJson(std::move(*records), nullptr)};
        auto verified = audit.Verify();
        if (!verified.ok()) return runtime::ToCafError(verified.status());
        return AuditReply{AuditReplyJson(std::move(*records), &*verified)};
      },
      [self](RegisterGateway& reg) -> caf::result<GatewayRegistered> {
        auto& st = self->state;
        if (reg.name.empty() || reg.metrics_address.empty() || !reg.gateway.valid()) {
          return runtime::ToCafError(InvalidArgumentError(
              "register gateway: name, metrics address and actor are required (got name '" + reg.name +
              "', address '" + reg.metrics_address + "')"));
        }
        // The same gateway again (it lost this head's answer, or the head it knew): one entry.
        for (auto it = st.gateways.begin(); it != st.gateways.end();) {
          if (it->second == reg.name && it->first != reg.gateway.handle().address()) {
            self->demonitor(it->first);
            it = st.gateways.erase(it);
          } else {
            ++it;
          }
        }
        st.gateways[reg.gateway.handle().address()] = reg.name;
        self->monitor(reg.gateway.handle());
        st.targets.AddGateway(reg.name, reg.metrics_address);
        st.UpdateNodeMetricsAndTargets();
        spdlog::info("head: gateway '{}' scraped at {}", reg.name, reg.metrics_address);
        return GatewayRegistered{st.config.name};
      },
      [self](ListNodes&) -> NodeList {
        runtime::Runtime* rt = self->state.runtime;
        return self->state.membership->List([rt](uint64_t node_id) { return rt->bridge().Silence(node_id); });
      },
  };
}

}  // namespace

StatusOr<std::unique_ptr<Head>> Head::Start(const ClusterConfig& config) {
  if (config.head.data_dir.empty()) {
    return InvalidArgumentError(config.source + ": head.data_dir is required (the head keeps its state there)");
  }
  std::error_code ec;
  std::filesystem::create_directories(config.head.data_dir, ec);
  if (ec) return InvalidArgumentError("head.data_dir: cannot create " + config.head.data_dir + ": " + ec.message());
  std::unique_ptr<Head> head(new Head());
  storage::LmdbOptions options;
  options.path = config.head.data_dir;
  options.map_size = uint64_t{256} << 20;
  ASSIGN_OR_RETURN(head->env_, storage::LmdbEnv::Open(options));
  ASSIGN_OR_RETURN(auto node_table, (storage::Table<std::string, NodeRecord>::Open(*head->env_, "nodes")));
  ASSIGN_OR_RETURN(auto lease_table, (storage::Table<uint64_t, std::string>::Open(*head->env_, "leases")));
  // The audit log: shared by the controller and the api actor (Head::audit_log); opening it
  // prunes the records past gateway.audit_retention.
  ASSIGN_OR_RETURN(std::unique_ptr<AuditLog> audit,
                   AuditLog::Open(head->env_.get(), &SteadyClock::Instance(), config.gateway.audit_retention));
  head->audit_ = std::move(audit);

  const Clock* clock = &SteadyClock::Instance();
  ControllerState init;
  init.config = config;
  init.audit = head->audit_;
  init.view = std::make_shared<ClusterView>();
  init.monitor = std::make_shared<std::function<void(const caf::actor&)>>();
  init.store = std::make_unique<HeadStore>(head->env_.get());
  init.membership = std::make_unique<MembershipRegistry>(config, init.store.get(), node_table, clock);
  RETURN_IF_ERROR(init.membership->Recover());

  std::string listen = config.head.address + ":" + std::to_string(config.head.port);
  ASSIGN_OR_RETURN(head->runtime_,
                   runtime::Runtime::Start(RuntimeConfigFor(config, "head", HeadNodeId(config), listen), ClusterCodecs()));
  init.runtime = head->runtime_.get();
  // Granted leases of an earlier head: the nodes still hold them; they come back as the nodes
  // rejoin (LeaseRegistry::TakeBack). The owners' addresses need the runtime's bridge.
  auto view = init.view;
  auto monitor = init.monitor;
  init.leases = std::make_unique<LeaseRegistry>(
      config, init.store.get(), lease_table, init.membership.get(), &head->runtime_->bridge(), clock,
      [monitor](const runtime::ActorRef& owner) {
        if (*monitor) (*monitor)(owner.handle());
      },
      [view](const LeaseCounts& counts) {
        std::lock_guard<std::mutex> lock(view->mu);
        view->leases = counts;
      });
  RETURN_IF_ERROR(init.leases->Recover());
  init.models = std::make_unique<ModelRegistry>(init.store.get(), config.head.data_dir + "/models", clock);
  RETURN_IF_ERROR(init.models->Open());
  init.jobs = std::make_unique<JobsRegistry>(config, init.store.get(), init.leases.get(), init.membership.get(),
                                             init.models.get(), head->runtime_.get(), clock);
  // Nodes without shared storage (`checkpoints: send`) send their actor workers' shards here.
  ASSIGN_OR_RETURN(head->shard_bulk_, runtime::BulkEndpoint::Attach(*head->runtime_));
  RETURN_IF_ERROR(training::ServeCheckpointShards(*head->shard_bulk_, init.jobs->ShardRoots()));
  init.deployments = std::make_unique<DeploymentsRegistry>(config, init.store.get(), init.leases.get(),
                                                           init.membership.get(), head->runtime_.get(), clock);
  ASSIGN_OR_RETURN(head->metrics_, runtime::MetricsServer::Start(config.head.address, config.head.metrics_port));
  head->metrics_->AddSource(runtime::RuntimeMetrics(*head->runtime_));
  init.head_metrics_address = head->metrics_->address();
  runtime::Runtime* rt = head->runtime_.get();
  head->metrics_->AddSource(ClusterMetrics(
      view, [rt](transport::NodeId node) { return rt->bridge().Silence(node); }, config.failure_timeout, config.name));
  for (auto& source : init.deployments->MetricsSources()) head->metrics_->AddSource(std::move(source));
  // The API gateways' keys, tenants, limits and usage: the api actor (cluster/api_registry.h).
  ApiRegistry::Options api_options;
  api_options.global = api::Limits{config.gateway.requests_per_minute, config.gateway.tokens_per_minute,
                                   config.gateway.max_concurrent};
  api_options.meter.flush_interval = config.gateway.usage_flush_interval;
  // A reservation outlives its request's deadline only if its Settle was lost: twice the deadline, at least a minute.
  api_options.reservation_ttl = 2 * config.gateway.request_timeout;
  if (api_options.reservation_ttl < std::chrono::minutes(1)) api_options.reservation_ttl = std::chrono::minutes(1);
  ASSIGN_OR_RETURN(auto api_registry,
                   ApiRegistry::Open(init.store.get(), config.head.data_dir, api_options, head->runtime_->clock()));
  head->metrics_->AddSource(api_registry->MetricsSource());
  // Key and tenant changes, and refused commands, go to the audit log as they are answered.
  api_registry->SetAuditHook([audit = head->audit_](const ApiAdminAction& a) {
    AuditRecord record;
    record.who = a.who;
    record.action = a.action;
    record.target = a.target;
    record.detail = a.detail;
    record.result = a.result;
    if (auto appended = audit->Append(std::move(record)); !appended.ok()) {
      spdlog::error("head: the audit record of {} '{}' by {} was not written: {}", a.action, a.target, a.who,
                    appended.status().ToString());
    }
  });
  // Detached: it writes LMDB (fsync) and must not hold the transport's progress thread.
  head->controller_ = head->runtime_->system().spawn<caf::detached>(Controller, std::move(init));
  RETURN_IF_ERROR(head->runtime_->RegisterName(kHeadActorName, head->runtime_->Ref(head->controller_)));
  ASSIGN_OR_RETURN(head->api_,
                   StartApiActor(*head->runtime_, std::move(api_registry), config.gateway.usage_flush_interval));
  // A detached actor initializes on its own thread: the head is ready (and says READY) only once
  // the controller has written the scrape list and taken back the jobs of an earlier head, which
  // its first answer proves (READY used to come first, and a test reading the list right after
  // READY found none under ASan).
  auto serving = head->runtime_->Ref(head->controller_).Request<NodeList>(ListNodes{}, std::chrono::seconds(60));
  if (!serving.ok()) return UnavailableError("the head's controller did not start: " + serving.status().ToString());
  head->address_ = head->runtime_->address();
  head->address_file_ = config.head.data_dir + "/head.address";
  RETURN_IF_ERROR(WriteFileAtomically(head->address_file_, head->address_ + "\n"));
  return head;
}

Head::~Head() { Stop(); }

void Head::Stop() {
  if (!runtime_) return;
  if (api_) {
    // What was metered since the last flush is written before the head goes.
    auto flushed = runtime_->Ref(api_).Request<ApiFlushed>(ApiFlush{}, std::chrono::seconds(5));
    if (!flushed.ok() || !flushed->error.empty()) {
      spdlog::error("head: the last usage batch was not written: {}",
                    flushed.ok() ? flushed->error : flushed.status().ToString());
    }
    caf::anon_send_exit(api_, caf::exit_reason::user_shutdown);
    // Stop runs again from the destructor: the api actor is gone by then, and asking it to
    // flush again only logged a failed flush after every good one.
    api_ = caf::actor();
  }
  if (controller_) caf::anon_send_exit(controller_, caf::exit_reason::user_shutdown);
  controller_ = caf::actor();
  if (shard_bulk_) shard_bulk_->Close();
  runtime_->Stop();
  std::remove(address_file_.c_str());
}

}  // namespace troupe::cluster
