// JobsRegistry.
#include "cluster/jobs_registry.h"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>

#include "actors/training/actor_worker.h"
#include "collectives/rendezvous.h"

namespace troupe::cluster {

using training::JobEvent;
using training::JobSpec;
using training::JobStatus;

struct JobsRegistry::Job {
  JobSpec spec;
  JobStatus status;
  caf::actor supervisor;
  uint64_t next_event = 0;
};

// The supervisors' JobHost: their calls become messages to the controller, which calls the
// registry on its mailbox.
class JobsRegistry::Host : public training::JobHost {
 public:
  explicit Host(caf::actor controller) : controller_(std::move(controller)) {}
  void RequestPlacement(const JobSpec& spec, uint64_t attempt, const caf::actor& supervisor) override {
    caf::anon_send(controller_, JobPlacementRequest{spec, attempt, supervisor});
  }
  void ReleasePlacement(uint64_t lease_id) override { caf::anon_send(controller_, JobLeaseRelease{lease_id}); }
  void Update(const caf::actor& supervisor, const JobStatus& status, const JobEvent& event) override {
    caf::anon_send(controller_, JobStatusUpdate{status, event, supervisor.address()});
  }

 private:
  caf::actor controller_;
};

namespace {

std::string EventKey(const std::string& job, uint64_t seq) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(seq));
  return job + "/" + buf;
}

std::string JobRecord(const JobSpec& spec, const JobStatus& status) {
  return nlohmann::json{{"spec", nlohmann::json::parse(training::JobSpecToJson(spec))},
                        {"status", nlohmann::json::parse(training::JobStatusToJson(status))}}
      .dump();
}

Status NoSuchJob(const std::string& name) {
  return NotFoundError("no job named '" + name + "' (troupe job list shows the jobs)");
}

}  // namespace

JobsRegistry::JobsRegistry(const ClusterConfig& config, HeadStore* store, LeaseRegistry* leases,
                           const NodeDirectory* nodes, ModelRegistry* models, runtime::Runtime* runtime,
                           const Clock* clock)
    : config_(config),
      store_(store),
      leases_(leases),
      nodes_(nodes),
      models_(models),
      runtime_(runtime),
      clock_(clock) {}

JobsRegistry::~JobsRegistry() {
  for (auto& [name, job] : jobs_) {
    if (job->supervisor) caf::anon_send_exit(job->supervisor, caf::exit_reason::user_shutdown);
  }
}

Status JobsRegistry::Recover(const caf::actor& controller) {
  host_ = std::make_unique<Host>(controller);
  ASSIGN_OR_RETURN(auto store, storage::CheckpointStore::Open(&store_->env(), clock_));
  checkpoints_ = std::make_unique<storage::CheckpointStore>(std::move(store));
  ASSIGN_OR_RETURN(jobs_table_, store_->env().OpenTable("jobs"));
  ASSIGN_OR_RETURN(events_table_, store_->env().OpenTable("job_events"));
  ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
  std::vector<std::pair<std::string, std::string>> rows;
  RETURN_IF_ERROR(txn.ForEach(jobs_table_, "", [&](std::string_view key, std::string_view value) {
    rows.emplace_back(std::string(key), std::string(value));
    return true;
  }));
  for (const auto& [name, value] : rows) {
    auto job = std::make_unique<Job>();
    try {
      auto json = nlohmann::json::parse(value);
      ASSIGN_OR_RETURN(job->spec, training::JobSpecFromJson(json.at("spec").dump()));
      ASSIGN_OR_RETURN(job->status, training::JobStatusFromJson(json.at("status").dump()));
    } catch (const std::exception& e) {
      spdlog::error("head: job record '{}' does not decode ({}); left out", name, e.what());
      continue;
    }
    std::string last_key;
    RETURN_IF_ERROR(txn.ForEach(events_table_, name + "/", [&](std::string_view key, std::string_view) {
      if (key.substr(0, name.size() + 1) != name + "/") return false;
      ++job->next_event;
      return true;
    }));
    jobs_[name] = std::move(job);
  }
  txn.Abort();
  for (auto& [name, job] : jobs_) {
    if (training::IsFinal(job->status.state)) continue;
    // Its supervisor went with the earlier head. A running job's workers keep training: the new
    // supervisor takes them back as their nodes rejoin (and the lease they hold, taken back by
    // the lease registry, becomes its own). Any other job is placed and started again from its
    // newest committed checkpoint; what may still run of it is stopped as its nodes rejoin.
    const bool take_back = job->status.state == training::kJobRunning && job->status.attempt > 0;
    if (!take_back) {
      job->status.reason = "the head restarted";
      if (job->status.attempt > 0) ++job->status.infra_failures;
    }
    Status started = StartSupervisor(*job, false, take_back);
    if (started.ok() && take_back && !leases_->AdoptRecovered(job->status.lease_id, runtime_->Ref(job->supervisor))) {
      spdlog::warn("head: job '{}': its lease {} is not among those to take back", name, job->status.lease_id);
    }
    if (!started.ok()) spdlog::error("head: job '{}' cannot be taken back: {}", name, started.ToString());
  }
  return OkStatus();
}

std::string JobsRegistry::CheckpointRoot(const JobSpec& spec) const {
  const std::string dir = spec.checkpoints.dir.empty() ? config_.head.data_dir + "/checkpoints" : spec.checkpoints.dir;
  return dir + "/" + spec.name;
}

LeaseRequest JobsRegistry::LeaseRequestOf(const JobSpec& spec, uint64_t attempt, const caf::actor& supervisor) const {
  LeaseRequest r;
  r.tenant = spec.tenant;
  r.count = spec.workers;
  // GPU memory per worker: `slices` slices of at least `slice_memory` each (one byte: a slice of
  // whatever size the GPU is cut into); none for a CPU-only worker.
  const auto& res = spec.resources;
  r.slice_memory_bytes = res.slices == 0 ? 0 : uint64_t{res.slices} * std::max<uint64_t>(res.slice_memory_bytes, 1);
  r.compute_percent = res.slices == 0 ? 0 : res.compute_percent;
  r.cpus = spec.resources.cpus;
  r.host_memory_bytes = spec.resources.host_memory_bytes;
  r.priority = spec.priority;
  r.policy = spec.placement;
  r.gang = true;
  r.owner = runtime_->Ref(supervisor);
  r.key = "job/" + spec.name + "/attempt-" + std::to_string(attempt);
  return r;
}

Status JobsRegistry::Store(const Job& job) {
  return store_->Write([&](storage::Txn& txn) { return txn.Put(jobs_table_, job.spec.name, JobRecord(job.spec, job.status)); });
}

Status JobsRegistry::StoreEvent(const std::string& name, const JobEvent& event) {
  auto it = jobs_.find(name);
  if (it == jobs_.end()) return NoSuchJob(name);
  Job& job = *it->second;
  const uint64_t seq = job.next_event++;
  return store_->Write([&](storage::Txn& txn) {
    RETURN_IF_ERROR(txn.Put(jobs_table_, name, JobRecord(job.spec, job.status)));
    RETURN_IF_ERROR(txn.Put(events_table_, EventKey(name, seq), training::JobEventToJson(event)));
    if (seq >= kMaxEventsPerJob) {
      Status gone = txn.Delete(events_table_, EventKey(name, seq - kMaxEventsPerJob));
      if (!gone.ok() && gone.code() != StatusCode::kNotFound) return gone;
    }
    return OkStatus();
  });
}

Status JobsRegistry::StartSupervisor(Job& job, bool first, bool take_back) {
  training::JobSupervisorInit init;
  init.spec = job.spec;
  init.status = job.status;
  init.checkpoint_root = CheckpointRoot(job.spec);
  shard_roots_->Set(job.spec.name, init.checkpoint_root);
  init.host = host_.get();
  init.checkpoints = checkpoints_.get();
  init.runtime = runtime_;
  init.clock = clock_;
  init.placement_requested = first;
  // Actor workers form their group through a rendezvous store per attempt, here on the head.
  init.spawn_rendezvous = [](caf::actor_system& system) { return collectives::SpawnRendezvousStore(system); };
  init.take_back = take_back;
  // The nodes rejoin within the failure timeout of the head's start (else they are dead).
  init.take_back_timeout = 2 * config_.failure_timeout + std::chrono::milliseconds(1000);
  job.supervisor = training::SpawnJobSupervisor(runtime_->system(), std::move(init));
  if (!first) return OkStatus();
  Status placed = Place(JobPlacementRequest{job.spec, job.status.attempt + 1, job.supervisor});
  if (!placed.ok()) {
    caf::anon_send_exit(job.supervisor, caf::exit_reason::user_shutdown);
    job.supervisor = nullptr;
  }
  return placed;
}

Status JobsRegistry::Place(const JobPlacementRequest& request) {
  const NodeDirectory* nodes = nodes_;
  const caf::actor supervisor = request.supervisor;
  const uint64_t attempt = request.attempt;
  auto answer = [nodes, supervisor, attempt](StatusOr<LeaseGrant> grant) {
    training::PlacementAnswer out;
    out.attempt = attempt;
    if (!grant.ok()) {
      out.status = grant.status();
    } else {
      out.placement.lease_id = grant->lease_id;
      for (const auto& w : grant->workers) {
        training::WorkerPlace place;
        place.node = w.node;
        const runtime::ActorRef* agent = nodes->AgentOf(w.node);
        const NodeRecord* record = nodes->FindNode(w.node);
        if (agent == nullptr || record == nullptr) {
          out.status = UnavailableError("node '" + w.node + "' has no agent at the head");
          break;
        }
        place.agent = *agent;
        place.host = record->address.substr(0, record->address.rfind(':'));
        place.gpu_index = w.gpu_index;
        place.gpu_id = w.gpu_id;
        place.memory_bytes = w.memory_bytes;
        place.compute_percent = w.compute_percent;
        place.simulated = w.simulated;
        out.placement.workers.push_back(std::move(place));
      }
    }
    caf::anon_send(supervisor, std::move(out));
  };
  auto now = leases_->Request(LeaseRequestOf(request.spec, attempt, supervisor), [&]() -> LeaseReply { return answer; });
  if (!now) return OkStatus();
  Status status = now->status();
  answer(std::move(*now));
  return status;
}

void JobsRegistry::Release(uint64_t lease_id) {
  auto released = leases_->Release(lease_id);
  if (!released.ok() && released.status().code() != StatusCode::kNotFound) {
    spdlog::warn("head: job lease {}: {}", lease_id, released.status().ToString());
  }
}

void JobsRegistry::Record(const JobStatusUpdate& update) {
  auto it = jobs_.find(update.status.name);
  if (it == jobs_.end()) return;  // deleted meanwhile
  Job& job = *it->second;
  if (job.supervisor && update.supervisor && job.supervisor.address() != update.supervisor) {
    // A stopped job's supervisor whose last commit ended after the job was resumed: the
    // checkpoint is committed (the new supervisor resumes from it), the status is not its own.
    if (update.event.message.empty()) return;
    Status stored = StoreEvent(update.status.name, update.event);
    if (!stored.ok()) spdlog::error("head: job '{}': event not stored: {}", update.status.name, stored.ToString());
    return;
  }
  const std::string model_version = job.status.model_version;
  job.status = update.status;
  job.status.model_version = model_version;  // the registry's, not the supervisor's
  Status stored = update.event.message.empty() ? Store(job) : StoreEvent(update.status.name, update.event);
  if (!stored.ok()) spdlog::error("head: job '{}': status not stored: {}", update.status.name, stored.ToString());
  if (job.status.state == training::kJobSucceeded && !job.spec.output_model.empty() && model_version.empty()) {
    RegisterOutputModel(job);
  }
}

void JobsRegistry::RegisterOutputModel(Job& job) {
  const std::string& model = job.spec.output_model;
  std::string message;
  auto newest = checkpoints_->Newest(job.spec.name);
  if (!newest.ok()) {
    message = "not registered as model '" + model + "': " + newest.status().ToString();
  } else if (!newest->has_value()) {
    message = "not registered as model '" + model + "': the job committed no checkpoint";
  } else {
    auto version = models_->Register(model, **newest);
    if (version.ok()) {
      job.status.model_version = model + ":" + std::to_string(version->version);
      message = "registered as model " + model + " version " + std::to_string(version->version) + " (step " +
                std::to_string(version->step) + ", " + std::to_string(version->total_bytes) + " bytes)";
    } else {
      message = "not registered as model '" + model + "': " + version.status().ToString();
    }
  }
  Status stored = StoreEvent(job.spec.name, JobEvent{clock_->UnixMs(), job.status.state, job.status.attempt, message});
  if (!stored.ok()) spdlog::error("head: job '{}': {}", job.spec.name, stored.ToString());
}

training::JobStatus JobsRegistry::WithQueueState(const Job& job) const {
  training::JobStatus st = job.status;
  if (st.state != training::kJobPending) return st;
  auto waiting = leases_->WaitingByKey("job/" + job.spec.name + "/attempt-" + std::to_string(st.attempt + 1));
  if (waiting) {
    st.reason = "waiting for " + std::to_string(job.spec.workers) + " workers (queue position " +
                std::to_string(waiting->second) + ", " + waiting->first.priority + "): " + waiting->first.reason;
  }
  return st;
}

void JobsRegistry::NodeJoined(const std::string& node, const runtime::ActorRef& agent,
                              const std::vector<training::RunningWorker>& workers) const {
  std::map<std::string, std::vector<training::RunningWorker>> by_job;
  for (const auto& w : workers) by_job[w.job].push_back(w);
  for (const auto& [name, reported] : by_job) {
    auto it = jobs_.find(name);
    const Job* job = it == jobs_.end() ? nullptr : it->second.get();
    const bool live = job != nullptr && !training::IsFinal(job->status.state) && job->supervisor;
    uint64_t stale = 0;  // the newest attempt to stop there (0: none)
    bool current = false;
    for (const auto& w : reported) {
      if (live && w.attempt == job->status.attempt) {
        current = true;
      } else if (training::Runs(w)) {
        stale = std::max(stale, w.attempt);
      }
    }
    if (!live) {
      // The job runs no more: its workers, exited or not, and its standbys there go.
      uint64_t newest = 0;
      for (const auto& w : reported) newest = std::max(newest, w.attempt);
      agent.Send(training::StopWorkers{name, newest, /*final=*/true});
    } else if (stale > 0) {
      agent.Send(training::StopWorkers{name, stale});
    }
    if (current) caf::anon_send(job->supervisor, training::WorkersFound{node, agent, reported});
  }
}

void JobsRegistry::SupervisorGone(const caf::actor_addr& who) {
  for (auto& [name, job] : jobs_) {
    if (job->supervisor && job->supervisor.address() == who) job->supervisor = nullptr;
  }
}

StatusOr<std::string> JobsRegistry::Submit(const std::string& body) {
  ASSIGN_OR_RETURN(JobSpec spec, training::JobSpecFromJson(body));
  RETURN_IF_ERROR(storage::ValidateCheckpointJobName(spec.name));
  if (spec.workers == 0 || spec.entry.command.empty() == spec.entry.actor.empty()) {
    return InvalidArgumentError("job '" + spec.name + "': needs workers >= 1 and either a command or an actor");
  }
  if (!spec.entry.actor.empty()) {
    // Every node runs this binary, so its worker types are the head's (actors/training/actor_worker.h).
    if (auto type = training::BuiltinWorkerTypes().Find(spec.entry.actor); !type.ok()) {
      return InvalidArgumentError("job '" + spec.name + "': entry.actor: " + type.status().message());
    }
  }
  if (spec.resources.slices > 1 && spec.resources.slice_memory_bytes == 0) {
    return InvalidArgumentError("job '" + spec.name + "': resources.slices " + std::to_string(spec.resources.slices) +
                                " needs resources.slice_memory (the size of each slice)");
  }
  if (auto it = jobs_.find(spec.name); it != jobs_.end()) {
    return AlreadyExistsError("a job named '" + spec.name + "' exists (" + it->second->status.state +
                              "); delete it first (troupe job delete " + spec.name + ") or choose another name");
  }
  auto job = std::make_unique<Job>();
  job->spec = spec;
  job->status.name = spec.name;
  job->status.state = training::kJobPending;
  job->status.reason = "waiting for " + std::to_string(spec.workers) + " workers' resources";
  job->status.submitted_unix_ms = clock_->UnixMs();
  Job& ref = *job;
  jobs_[spec.name] = std::move(job);
  // The first placement is asked for here, before anything is stored: a job that can never fit
  // the live nodes or its tenant's quota is refused at once (the scheduler says so), nothing kept.
  Status started = StartSupervisor(ref, true);
  if (started.ok()) {
    started = StoreEvent(spec.name, JobEvent{clock_->UnixMs(), training::kJobPending, 0, "submitted"});
    if (!started.ok()) caf::anon_send_exit(ref.supervisor, caf::exit_reason::user_shutdown);
  }
  if (!started.ok()) {
    jobs_.erase(spec.name);
    return started;
  }
  return training::JobStatusToJson(ref.status);
}

StatusOr<JobsRegistry::Job*> JobsRegistry::FinishedJob(const std::string& name, bool stopped_or_failed) {
  auto it = jobs_.find(name);
  if (it == jobs_.end()) return NoSuchJob(name);
  Job& job = *it->second;
  const std::string& state = job.status.state;
  if (stopped_or_failed && state != training::kJobStopped && state != training::kJobFailed) {
    return FailedPreconditionError("job '" + name + "' is " + state + "; only a stopped or failed job can be resumed");
  }
  if (!training::IsFinal(state)) {
    return FailedPreconditionError("job '" + name + "' is " + state + "; stop it first (troupe job stop " + name + ")");
  }
  return &job;
}

StatusOr<std::string> JobsRegistry::StartAgain(const std::string& name, bool from_scratch) {
  ASSIGN_OR_RETURN(Job * job, FinishedJob(name, /*stopped_or_failed=*/!from_scratch));
  const JobStatus before = job->status;
  // From scratch, its checkpoints go (attempts keep counting, so attempt directories never clash).
  if (from_scratch) RETURN_IF_ERROR(checkpoints_->DeleteJob(name, CheckpointRoot(job->spec)));
  JobStatus& st = job->status;
  st.state = training::kJobPending;
  st.reason = from_scratch ? "resubmitted" : "resumed";
  st.user_failures = 0;
  st.infra_failures = 0;
  st.finished_unix_ms = 0;
  if (from_scratch) {
    st.checkpoint_step = -1;
    st.model_version.clear();
    st.submitted_unix_ms = clock_->UnixMs();
  }
  // As at submit: placed (or refused) first, stored only then.
  Status started = StartSupervisor(*job, true);
  if (started.ok()) {
    started = StoreEvent(name, JobEvent{clock_->UnixMs(), training::kJobPending, st.attempt,
                                        from_scratch ? "resubmitted: starts from scratch, its checkpoints deleted"
                                                     : "resumed from its newest committed checkpoint"});
    if (!started.ok()) caf::anon_send_exit(job->supervisor, caf::exit_reason::user_shutdown);
  }
  if (!started.ok()) {
    job->status = before;
    return started;
  }
  return training::JobStatusToJson(st);
}

StatusOr<std::string> JobsRegistry::Delete(const std::string& name) {
  ASSIGN_OR_RETURN(Job * finished, FinishedJob(name, /*stopped_or_failed=*/false));
  Job& job = *finished;
  RETURN_IF_ERROR(checkpoints_->DeleteJob(name, CheckpointRoot(job.spec)));
  shard_roots_->Remove(name);
  RETURN_IF_ERROR(store_->Write([&](storage::Txn& txn) {
    RETURN_IF_ERROR(txn.Delete(jobs_table_, name));
    std::vector<std::string> keys;
    RETURN_IF_ERROR(txn.ForEach(events_table_, name + "/", [&](std::string_view key, std::string_view) {
      if (key.substr(0, name.size() + 1) != name + "/") return false;
      keys.emplace_back(key);
      return true;
    }));
    for (const auto& k : keys) RETURN_IF_ERROR(txn.Delete(events_table_, k));
    return OkStatus();
  }));
  std::string out = training::JobStatusToJson(job.status);
  jobs_.erase(name);
  return out;
}

StatusOr<std::string> JobsRegistry::Command(const training::JobCommand& command) {
  const std::string& op = command.op;
  if (op == "submit") return Submit(command.body);
  if (op == "list") {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& [name, job] : jobs_) {
      list.push_back({{"spec", nlohmann::json::parse(training::JobSpecToJson(job->spec))},
                      {"status", nlohmann::json::parse(training::JobStatusToJson(WithQueueState(*job)))}});
    }
    return list.dump();
  }
  if (op == "resume") return StartAgain(command.name, /*from_scratch=*/false);
  if (op == "resubmit") return StartAgain(command.name, /*from_scratch=*/true);
  if (op == "models") {
    ASSIGN_OR_RETURN(auto versions, models_->List(command.name));
    if (!command.name.empty() && versions.empty()) {
      return NotFoundError("no model named '" + command.name + "' (troupe model list shows the models)");
    }
    nlohmann::json list = nlohmann::json::array();
    for (const auto& v : versions) list.push_back(nlohmann::json::parse(ModelVersionToJson(v)));
    return list.dump();
  }
  if (op == "delete") return Delete(command.name);
  auto it = jobs_.find(command.name);
  if (it == jobs_.end()) {
    if (op == "show" || op == "events" || op == "stop") return NoSuchJob(command.name);
    return InvalidArgumentError("unknown job operation '" + op +
                                "' (expected submit, list, show, events, stop, resume, resubmit, delete or models)");
  }
  Job& job = *it->second;
  if (op == "show") return JobRecord(job.spec, WithQueueState(job));
  if (op == "events") {
    nlohmann::json events = nlohmann::json::array();
    ASSIGN_OR_RETURN(auto txn, store_->env().BeginRead());
    const std::string prefix = command.name + "/";
    RETURN_IF_ERROR(txn.ForEach(events_table_, prefix, [&](std::string_view key, std::string_view value) {
      if (key.substr(0, prefix.size()) != prefix) return false;
      events.push_back(nlohmann::json::parse(value, nullptr, false));
      return true;
    }));
    return events.dump();
  }
  if (op == "stop") {
    if (training::IsFinal(job.status.state)) return training::JobStatusToJson(job.status);
    if (job.supervisor) caf::anon_send(job.supervisor, training::StopJob{"stopped by request"});
    return training::JobStatusToJson(job.status);
  }
  return InvalidArgumentError("unknown job operation '" + op +
                              "' (expected submit, list, show, events, stop, resume, resubmit, delete or models)");
}

}  // namespace troupe::cluster
