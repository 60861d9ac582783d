// NodeAgent.
#include "cluster/node_agent.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <filesystem>
#include <map>

#include "actors/gpu_slice.h"
#include "actors/training/actor_worker.h"
#include "actors/serving/replica.h"
#include "actors/slice_environment.h"
#include "actors/training/messages.h"
#include "actors/training/worker_communicators.h"
#include "cluster/bootstrap.h"
#include "common/backoff.h"

namespace troupe::cluster {

using namespace std::chrono_literals;

// The serving replicas this node runs (docs/serving.md, "Deployments"), kept by the agent actor
// and read by Join (another thread) for the head: under `mu`.
struct NodeReplicas {
  struct Entry {
    caf::actor actor;
    // The deployment actor that owns it; none while it is orphaned (its owner could not be reached:
    // the head was lost) until a restarted head's deployment actor takes it back.
    caf::actor_addr owner;
    serving::RunningReplica report;
  };
  std::mutex mu;
  std::map<std::string, Entry> by_name;
};

namespace {

// The environment of a child on a lease's slice (a training worker, a replica's server), from the
// slice fields that StartWorker and StartReplica share: actors/slice_environment.h.
template <typename Start>
std::vector<std::string> ChildEnvironment(const Start& start, bool no_gpu) {
  if (no_gpu) return actors::NoGpuEnvironment(start.lease_id);
  actors::SliceAssignment slice{start.gpu_index, start.simulated ? "" : start.gpu_id, start.memory_bytes,
                                start.compute_percent, start.simulated, start.lease_id};
  return actors::SliceEnvironment(slice, actors::FindMpsPipeDirectory());
}

// A replica of a deployment on this node's actor system: with the test backend, or with the
// process backend when StartReplica names a command: its server gets the slice's environment
// (after the version's env, so the slice's CUDA_VISIBLE_DEVICES and MPS limits win, and none of
// the node's own) and logs to <data_dir>/serving/<deployment>/<version>/replica-N.log.
caf::actor SpawnReplicaHere(caf::actor_system& system, const serving::StartReplica& start,
                            const std::string& data_dir) {
  serving::ReplicaConfig config;
  config.deployment = start.deployment;
  config.name = start.name;
  config.max_ongoing_requests = std::max<uint32_t>(start.max_ongoing_requests, 1);
  config.drain_timeout = std::chrono::milliseconds(std::max<int64_t>(start.drain_timeout_ms, 1));
  config.start_timeout = std::chrono::milliseconds(std::max<int64_t>(start.start_timeout_ms, 1));
  config.autoscaler = start.autoscaler;
  config.owner = start.owner;
  config.model.tokens_per_second = start.tokens_per_second;
  config.model.first_token_latency = std::chrono::microseconds(std::max<int64_t>(start.first_token_latency_us, 0));
  config.model.default_max_tokens = start.max_tokens;
  config.model.seed = start.seed;
  config.stall_after_requests = start.stall_after;
  config.startup_delay = std::chrono::milliseconds(std::max<int64_t>(start.startup_delay_ms, 0));
  config.fail_every_requests = start.fail_every;
  config.crash_after_requests = start.crash_after;
  if (!start.process_command.empty()) {
    serving::ProcessBackend spec;
    spec.command = start.process_command;
    for (const auto& entry : start.process_env) {
      auto eq = entry.find('=');
      if (eq == std::string::npos) continue;
      spec.env[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    spec.working_dir = start.process_working_dir;
    spec.port_env = start.process_port_env;
    spec.health_path = start.process_health_path;
    spec.ready_timeout = std::chrono::milliseconds(std::max<int64_t>(start.process_ready_timeout_ms, 1));
    serving::ProcessBackendConfig process = serving::ProcessBackendConfigFromSpec(spec);
    std::vector<std::string> slice_env = ChildEnvironment(start, start.gpu_index == serving::kNoReplicaGpu);
    process.env.insert(process.env.end(), slice_env.begin(), slice_env.end());
    process.drop_env_prefixes = actors::SliceEnvironmentPrefixes();
    // The replica's name is deployment/version/replica-N; its log sits in the same folders.
    process.log_path = data_dir + "/serving/" + start.name + ".log";
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(process.log_path).parent_path(), ec);
    if (ec) {
      spdlog::warn("node agent: replica {}: cannot create the folder of its log {}: {}", start.name,
                   process.log_path, ec.message());
    }
    config.process = std::move(process);
  }
  return serving::SpawnServingReplica(system, std::move(config));
}

}  // namespace

BackoffPolicy RejoinBackoff(std::chrono::milliseconds failure_timeout) {
  const auto cap = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(10), failure_timeout / 2);
  const auto max = std::min<std::chrono::milliseconds>(2000ms, cap);
  return BackoffPolicy{std::min<std::chrono::milliseconds>(100ms, max), 2.0, max, 0.0};
}

StatusOr<std::unique_ptr<NodeAgent>> NodeAgent::Start(const ClusterConfig& config, const std::string& name,
                                                      const std::string& head_address) {
  std::unique_ptr<NodeAgent> agent(new NodeAgent());
  agent->config_ = config;
  agent->spec_ = agent->config_.FindNode(name);
  if (agent->spec_ == nullptr) {
    return InvalidArgumentError("no node named '" + name + "' in " + config.source);
  }
  agent->head_override_ = head_address;
  // The GPUs and their slice counts are checked before anything starts: a node that cannot cut
  // its GPUs into slices opens no port and starts no actor system.
  RETURN_IF_ERROR(agent->DiscoverGpus());
  ASSIGN_OR_RETURN(agent->runtime_,
                   runtime::Runtime::Start(RuntimeConfigFor(config, name, NodeIdOf(config, name),
                                                            agent->spec_->listen_address),
                                           ClusterCodecs()));
  std::string host = agent->spec_->listen_address.substr(0, agent->spec_->listen_address.rfind(':'));
  ASSIGN_OR_RETURN(agent->metrics_, runtime::MetricsServer::Start(host, agent->spec_->metrics_port));
  agent->metrics_->AddSource(runtime::RuntimeMetrics(*agent->runtime_));
  RETURN_IF_ERROR(agent->SpawnSlices());
  RETURN_IF_ERROR(agent->runtime_->RegisterName("troupe.node_agent", agent->agent_));
  // Actor workers of training jobs (docs/jobs.md): spawned here by their job's supervisor.
  // Their groups' collectives: NCCL on real GPU slices where troupe has NCCL, Gloo otherwise or
  // when the job asks for it (entry.backend; actors/training/worker_communicators.h).
  training::ActorWorkerDeps worker_deps;
  worker_deps.types = &training::BuiltinWorkerTypes();
  worker_deps.communicators = training::WorkerCommunicatorFactory();
  // They report to the table the agent reports at a join, and keep training while the head is
  // down, for as long as a restarted head's supervisor waits for them (JobsRegistry: twice the
  // failure timeout plus a second), counted again from each join.
  worker_deps.table = agent->actor_workers_;
  worker_deps.adopt_timeout = 2 * config.failure_timeout + 1s;
  if (agent->spec_->checkpoints == "send") {
    // No shared storage with the head: the workers send their shards to it (docs/checkpoints.md).
    ASSIGN_OR_RETURN(auto bulk, runtime::BulkEndpoint::Attach(*agent->runtime_));
    agent->shard_bulk_ = std::move(bulk);
    worker_deps.shard_bulk = agent->shard_bulk_;
  }
  // Their logs where the process workers' go, so `troupe job logs` reads both alike.
  worker_deps.log_path = [workers = agent->workers_](const std::string& job, uint64_t attempt, uint32_t rank) {
    return workers->LogPath(job, attempt, rank);
  };
  RETURN_IF_ERROR(training::RegisterActorWorkers(*agent->runtime_, std::move(worker_deps)));
  return agent;
}

// The node's slices: the GpuSlice actors and which lease holds each (kept by the agent actor,
// updated by the slices' listeners when an owner goes away; read by the metrics thread).
struct NodeAgent::Slices {
  std::mutex mu;
  std::vector<std::vector<runtime::ActorRef>> actors;  // [gpu][slice]
  std::vector<std::vector<uint64_t>> lease;            // [gpu][slice], 0 = free
  std::vector<uint32_t> gpu_index;                     // [gpu] -> its device index
  std::map<uint64_t, AssignSlices> held;               // the leases held here, as assigned
};

Status NodeAgent::DiscoverGpus() {
  if (spec_->gpu_mode == "simulated") {
    for (uint32_t i = 0; i < spec_->simulated_gpus.size(); ++i) {
      const auto& gpu = spec_->simulated_gpus[i];
      gpus_.push_back(GpuInfo{gpu.name, gpu.memory_bytes, true, "", i});
    }
  } else if (spec_->gpu_mode == "auto") {
    auto nvml = actors::Nvml::Open();
    if (!nvml.ok()) {
      spdlog::warn("node {}: gpus: auto, but {}; this node offers no GPUs", spec_->name, nvml.status().message());
      return OkStatus();
    }
    nvml_ = std::move(*nvml);
    ASSIGN_OR_RETURN(auto devices, nvml_->Devices());
    for (const auto& d : devices) gpus_.push_back(GpuInfo{d.name, d.memory_total_bytes, false, d.uuid, d.index});
    spdlog::info("node {}: {} GPU(s) found through NVML", spec_->name, gpus_.size());
  }
  // GPUs found through NVML are seen only now: the same cap on slices per GPU as the config's
  // check of simulated GPUs.
  for (const auto& gpu : gpus_) {
    if (Status s = CheckSliceCount(gpu.name, gpu.memory_bytes, spec_->slice_memory_bytes); !s.ok()) {
      spdlog::error("node {}: slice_memory {}", spec_->name, s.message());
      return InvalidArgumentError("nodes[" + spec_->name + "].slice_memory: " + s.message());
    }
  }
  return OkStatus();
}

Status NodeAgent::SpawnSlices() {
  slices_ = std::make_shared<Slices>();
  auto slices = slices_;
  for (const auto& gpu : gpus_) {
    const uint64_t size = SliceSize(gpu.memory_bytes, spec_->slice_memory_bytes);
    const uint32_t count = SliceCount(gpu.memory_bytes, spec_->slice_memory_bytes);
    const size_t g = slices->actors.size();
    slices->actors.emplace_back();
    slices->lease.emplace_back(count, 0);
    slices->gpu_index.push_back(gpu.index);
    for (uint32_t i = 0; i < count; ++i) {
      actors::SliceInfo info{gpu.index, gpu.uuid.empty() ? gpu.name : gpu.uuid, i, size, 1.0 / count, gpu.simulated};
      actors::SliceListener listener = [slices, g](const actors::SliceInfo& s, uint64_t lease, const std::string& why) {
        std::lock_guard<std::mutex> lock(slices->mu);
        if (why.empty()) return;
        // Only if the agent has not handed the slice to a newer lease meanwhile.
        if (slices->lease[g][s.slice] == lease) slices->lease[g][s.slice] = 0;
        if (why != "released") spdlog::info("slice {}/{}: lease {} ended: {}", s.gpu_id, s.slice, lease, why);
      };
      slices->actors[g].push_back(runtime_->Spawn(actors::GpuSlice, info, listener));
    }
  }
  // The agent actor is the node's identity at the head (the head monitors it) and hands the
  // node's slices to the owners the head's scheduler chose.
  runtime::MailboxDepths* depths = &runtime_->mailbox_depths();
  const std::string data_dir = spec_->data_dir.empty()
                                   ? "/tmp/troupe-" + config_.name + "-" + spec_->name
                                   : spec_->data_dir;
  workers_ = std::make_shared<training::WorkerLauncher>(
      data_dir + "/jobs", [](const training::StartWorker& started, const training::WorkerExited& exit) {
        started.supervisor.Send(exit);
      });
  auto workers = workers_;
  actor_workers_ = std::make_shared<training::ActorWorkerTable>();
  auto actor_workers = actor_workers_;
  runtime::Runtime* rt = runtime_.get();
  replicas_ = std::make_shared<NodeReplicas>();
  auto replicas = replicas_;
  agent_ = runtime_->Spawn([slices, replicas, depths, workers, actor_workers, rt, data_dir](caf::event_based_actor* self)
                               -> caf::behavior {
    runtime::StartMailboxSampling(self, depths, "node.agent");
    // Serving replicas: each is monitored (an exited one leaves the table) and so is its owner,
    // the deployment actor on the head. The replicas of an owner that ended (its deployment was
    // deleted, its actor failed) are stopped, so no replica outlives its deployment. Those of an
    // owner that cannot be reached (Unavailable: the head was lost, kill -9 included) keep running
    // and serving, orphaned, and go with every join: a restarted head takes them back or stops
    // them (as a Kubernetes kubelet keeps its pods while the API server is down). They end with
    // the agent.
    self->attach_functor([replicas] {
      std::lock_guard<std::mutex> lock(replicas->mu);
      for (auto& [name, entry] : replicas->by_name) caf::anon_send_exit(entry.actor, caf::exit_reason::user_shutdown);
    });
    self->set_down_handler([self, replicas](caf::down_msg& down) {
      const Status why = runtime::ToStatus(down.reason);
      std::lock_guard<std::mutex> lock(replicas->mu);
      for (auto it = replicas->by_name.begin(); it != replicas->by_name.end();) {
        if (it->second.actor.address() == down.source) {
          it = replicas->by_name.erase(it);
        } else if (it->second.owner == down.source && why.code() == StatusCode::kUnavailable) {
          spdlog::warn("node agent: replica {} keeps running without its deployment actor, which cannot be "
                       "reached ({}); a restarted head takes it back",
                       it->first, why.ToString());
          it->second.owner = caf::actor_addr();
          ++it;
        } else if (it->second.owner == down.source) {
          spdlog::warn("node agent: replica {} stopped: its deployment actor is gone ({})", it->first, why.ToString());
          self->send_exit(it->second.actor, caf::exit_reason::user_shutdown);
          it = replicas->by_name.erase(it);
        } else {
          ++it;
        }
      }
    });
    return {
        [self, rt, replicas, data_dir](serving::StartReplica& start) -> caf::result<serving::ReplicaStarted> {
          if (start.name.empty() || !start.owner.valid()) {
            return runtime::ToCafError(InvalidArgumentError("StartReplica needs a replica name and an owner"));
          }
          std::lock_guard<std::mutex> lock(replicas->mu);
          if (auto it = replicas->by_name.find(start.name); it != replicas->by_name.end()) {
            // Sent again (a lost reply): the replica already running answers.
            return serving::ReplicaStarted{start.name, rt->Ref(it->second.actor)};
          }
          caf::actor replica = SpawnReplicaHere(self->home_system(), start, data_dir);
          self->monitor(replica);
          self->monitor(start.owner.handle());
          const runtime::ActorRef ref = rt->Ref(replica);
          replicas->by_name[start.name] = NodeReplicas::Entry{
              replica, start.owner.handle().address(), serving::RunningReplica{start.name, start.deployment,
                                                                                start.lease_id, ref}};
          spdlog::info("node agent: replica {} started (lease {})", start.name, start.lease_id);
          return serving::ReplicaStarted{start.name, ref};
        },
        [self, replicas](serving::StopReplica& stop) {
          std::lock_guard<std::mutex> lock(replicas->mu);
          auto it = replicas->by_name.find(stop.name);
          if (it == replicas->by_name.end()) return;
          self->send_exit(it->second.actor, caf::exit_reason::user_shutdown);
          replicas->by_name.erase(it);
        },
        [self, replicas](serving::AdoptReplica& adopt) -> caf::result<serving::ReplicaStatus> {
          if (!adopt.owner.valid()) {
            return runtime::ToCafError(InvalidArgumentError("AdoptReplica of '" + adopt.name + "' names no owner"));
          }
          std::lock_guard<std::mutex> lock(replicas->mu);
          auto it = replicas->by_name.find(adopt.name);
          if (it == replicas->by_name.end()) {
            return runtime::ToCafError(NotFoundError("node agent: no replica named '" + adopt.name +
                                                     "' runs here (it exited); start another one"));
          }
          if (it->second.owner != adopt.owner.handle().address()) {
            self->monitor(adopt.owner.handle());
            it->second.owner = adopt.owner.handle().address();
          }
          // The replica answers with its state now; later changes go to the new owner.
          self->delegate(it->second.actor, std::move(adopt));
          return caf::delegated<serving::ReplicaStatus>();
        },
        [workers](training::StartWorker& start) -> caf::result<training::WorkerStarted> {
          auto started = workers->Start(start, ChildEnvironment(start, start.gpu_index == training::kNoGpu));
          if (!started.ok()) return runtime::ToCafError(started.status());
          return std::move(*started);
        },
        [workers, actor_workers](training::AdoptWorkers& adopt) -> training::WorkersAdopted {
          training::WorkersAdopted adopted = workers->Adopt(adopt.job, adopt.attempt, adopt.supervisor);
          training::WorkersAdopted of_actors = actor_workers->Adopt(adopt.job, adopt.attempt, adopt.supervisor);
          adopted.running.insert(adopted.running.end(), of_actors.running.begin(), of_actors.running.end());
          adopted.exited.insert(adopted.exited.end(), of_actors.exited.begin(), of_actors.exited.end());
          return adopted;
        },
        [workers, actor_workers](training::StopWorkers& stop) -> training::WorkersStopped {
          return training::WorkersStopped{workers->Stop(stop.job, stop.attempt, stop.final) +
                                          actor_workers->Stop(stop.job, stop.attempt)};
        },
        [workers](training::ReadWorkerLog& read) -> caf::result<training::WorkerLogChunk> {
          auto chunk = workers->ReadLog(read);
          if (!chunk.ok()) return runtime::ToCafError(chunk.status());
          return std::move(*chunk);
        },
        runtime::MailboxSampleHandler(self, depths, "node.agent"),
        [slices](AssignSlices& assign) {
          std::lock_guard<std::mutex> lock(slices->mu);
          slices->held[assign.lease_id] = assign;
          for (const auto& w : assign.workers) {
            if (w.gpu_index == kNoGpuIndex) continue;
            for (size_t g = 0; g < slices->gpu_index.size(); ++g) {
              if (slices->gpu_index[g] != w.gpu_index) continue;
              uint32_t needed = w.slices;
              for (size_t i = 0; i < slices->lease[g].size() && needed > 0; ++i) {
                if (slices->lease[g][i] != 0) continue;
                slices->lease[g][i] = assign.lease_id;
                // The head watches the owner and sends ReleaseSlices when it goes: the node never
                // connects to owners' processes (one monitor per lease at the head, not one per
                // slice, and a node's death cannot disturb an owner's process).
                slices->actors[g][i].Send(actors::SliceLease{assign.lease_id, {}, false, assign.owner});
                --needed;
              }
              if (needed > 0) {
                spdlog::error("node agent: lease {} wants {} more slice(s) of GPU {} than are free here",
                              assign.lease_id, needed, w.gpu_index);
              }
            }
          }
        },
        [slices](ReleaseSlices& release) {
          std::lock_guard<std::mutex> lock(slices->mu);
          slices->held.erase(release.lease_id);
          for (size_t g = 0; g < slices->lease.size(); ++g) {
            for (size_t i = 0; i < slices->lease[g].size(); ++i) {
              if (slices->lease[g][i] != release.lease_id) continue;
              slices->lease[g][i] = 0;
              slices->actors[g][i].Send(actors::SliceRelease{release.lease_id});
            }
          }
        },
    };
  });
  metrics_->AddSource([slices, gpus = gpus_, node = spec_->name](std::vector<prometheus::MetricFamily>& out) {
    auto family = runtime::GaugeFamily("troupe_node_gpu_slices", "This node's GPU slices by state");
    std::lock_guard<std::mutex> lock(slices->mu);
    for (size_t g = 0; g < slices->lease.size(); ++g) {
      double leased = 0;
      for (uint64_t l : slices->lease[g]) leased += l != 0 ? 1 : 0;
      const std::string gpu = std::to_string(slices->gpu_index[g]);
      const std::string simulated = gpus[g].simulated ? "true" : "false";
      runtime::AddSample(family, leased, {{"node", node}, {"gpu", gpu}, {"simulated", simulated}, {"state", "leased"}});
      runtime::AddSample(family, static_cast<double>(slices->lease[g].size()) - leased,
                         {{"node", node}, {"gpu", gpu}, {"simulated", simulated}, {"state", "free"}});
    }
    out.push_back(std::move(family));
  });
  return OkStatus();
}

GpuReport NodeAgent::Report() {
  GpuReport report;
  report.node = spec_->name;
  if (!nvml_) return report;
  auto devices = nvml_->Devices();
  if (!devices.ok()) {
    spdlog::warn("node {}: NVML: {}", spec_->name, devices.status().ToString());
    return report;
  }
  for (const auto& d : *devices) report.gpus.push_back(GpuLoad{d.index, d.utilisation, d.memory_used_bytes});
  return report;
}

NodeAgent::~NodeAgent() {
  Stop();
  Shutdown();
}

void NodeAgent::Shutdown() {
  if (!runtime_) return;
  // The slice actors hold `slices_` (their listeners) and `slices_` holds them: they end only
  // by an exit. The agent actor holds `slices_` too.
  std::vector<runtime::ActorRef> actors;
  if (agent_.valid()) actors.push_back(agent_);
  if (slices_) {
    std::lock_guard<std::mutex> lock(slices_->mu);
    for (const auto& gpu : slices_->actors) actors.insert(actors.end(), gpu.begin(), gpu.end());
  }
  for (const auto& a : actors) {
    if (a.handle()) caf::anon_send_exit(a.handle(), caf::exit_reason::user_shutdown);
  }
  // The workers of training jobs go with their node (their supervisor sees the node lost).
  if (workers_) workers_->StopAll();
  if (actor_workers_) actor_workers_->StopAll();
  // A worker's shard in flight fails with Cancelled.
  if (shard_bulk_) shard_bulk_->Close();
  // Stopping the runtime kills its proxies, which ends the watchers of remote actors (the
  // head's, from Run) with a down message.
  runtime_->Stop();
  runtime_->AwaitActors(2s);
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
  JoinRequest join{record, agent_, {}, {}};
  {
    // What this node holds goes with every join: a restarted head takes it back from here.
    std::lock_guard<std::mutex> lock(slices_->mu);
    for (const auto& [id, assign] : slices_->held) join.held.push_back(assign);
  }
  join.workers = workers_->List();
  for (auto& w : actor_workers_->List()) join.workers.push_back(std::move(w));
  {
    std::lock_guard<std::mutex> lock(replicas_->mu);
    for (const auto& [name, entry] : replicas_->by_name) join.replicas.push_back(entry.report);
  }
  ASSIGN_OR_RETURN(*reply, head.Request<JoinReply>(join, 5s));
  return head;
}

void NodeAgent::Run(const std::function<void(const JoinReply&)>& on_joined) {
  NodeRecord record;
  record.name = spec_->name;
  record.node_id = runtime_->node_id();
  record.address = runtime_->address();
  record.cpus = spec_->cpus;
  record.memory_bytes = spec_->memory_bytes;
  record.gpus = gpus_;
  record.slice_memory_bytes = spec_->slice_memory_bytes;
  record.pid = getpid();
  record.metrics_address = metrics_->address();
  const runtime::NodeId head_id = HeadNodeId(config_);
  Backoff backoff(RejoinBackoff(config_.failure_timeout));
  while (!WaitStop(0ms)) {
    JoinReply joined;
    auto head = Join(record, head_id, &joined);
    if (!head.ok()) {
      const auto delay = backoff.Next();
      spdlog::warn("node {}: cannot join the head yet: {}; retrying in {} ms", spec_->name, head.status().ToString(),
                   delay.count());
      if (WaitStop(delay)) break;
      continue;
    }
    backoff.Reset();
    // Actor workers waiting for a restarted head's supervisor wait their full bound from now.
    actor_workers_->HeadJoined();
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
    // Until the head is lost: report what the GPUs do every few seconds (NVML only).
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::seconds(2), [this] { return stop_ || head_lost_; })) {
      if (!nvml_) continue;
      lock.unlock();
      head->Send(Report());
      lock.lock();
    }
  }
}

}  // namespace troupe::cluster
