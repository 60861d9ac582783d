// Actor workers: the checkpoint handle, the worker context, the type registry and the actor.
#include "actors/training/actor_worker.h"

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "actors/training/example_trainer.h"
#include "actors/training/shard_transfer.h"
#include "collectives/peer_watch.h"
#include "collectives/rendezvous.h"
#if defined(TROUPE_HAVE_GLOO)
#include "collectives/gloo_communicator.h"
#endif
#include "common/file_util.h"
#include "runtime/error.h"
#include "runtime/yaml_reader.h"

namespace troupe::training {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// CheckpointHandle

CheckpointHandle::CheckpointHandle(std::string staging_dir, uint32_t rank, std::string resume_dir,
                                   uint64_t resume_step)
    : staging_dir_(std::move(staging_dir)),
      rank_(rank),
      resume_dir_(std::move(resume_dir)),
      resume_step_(resume_step) {}

namespace {

// A shard path as docs/checkpoints.md allows it: relative, '/'-separated, no "." or "..".
Status CheckShardPath(const std::string& path) {
  if (path.empty() || path.front() == '/') {
    return InvalidArgumentError("checkpoint file '" + path + "': give a relative path inside the rank's shard");
  }
  std::stringstream parts(path);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part.empty() || part == "." || part == "..") {
      return InvalidArgumentError("checkpoint file '" + path + "': empty, '.' or '..' parts are not allowed");
    }
  }
  return OkStatus();
}

}  // namespace

void CheckpointHandle::SendShardsTo(std::shared_ptr<runtime::BulkEndpoint> endpoint, runtime::NodeId store_node,
                                    std::string job, uint64_t attempt, std::chrono::milliseconds timeout,
                                    std::shared_ptr<ShardReader> reader) {
  endpoint_ = std::move(endpoint);
  store_node_ = store_node;
  job_ = std::move(job);
  attempt_ = attempt;
  timeout_ = timeout;
  reader_ = std::move(reader);
}

Status CheckpointHandle::Save(uint64_t step, std::map<std::string, std::string> files) {
  if (endpoint_) {
    if (sent_steps_.count(step) != 0) {
      return AlreadyExistsError("rank " + std::to_string(rank_) + " has saved step " + std::to_string(step) +
                                " already; a shard is never touched after its marker");
    }
    // The sources own the files: WriteShard returns once every transfer has ended, but a transfer
    // that timed out may still have a chunk in the transport, which reads it until it releases it.
    auto owned = std::make_shared<const std::map<std::string, std::string>>(std::move(files));
    std::vector<ShardFile> shard;
    for (const auto& [path, bytes] : *owned) {
      RETURN_IF_ERROR(CheckShardPath(path));
      runtime::BulkSource source;
      source.data = reinterpret_cast<const uint8_t*>(bytes.data());
      source.size = bytes.size();
      source.keep = owned;
      shard.push_back({path, std::move(source)});
    }
    RETURN_IF_ERROR(WriteShard(*endpoint_, store_node_, ShardTarget{job_, attempt_, step, rank_}, shard, timeout_));
    sent_steps_.insert(step);
    return OkStatus();
  }
  const std::string step_dir = staging_dir_ + "/step-" + std::to_string(step);
  const std::string shard = step_dir + "/rank-" + std::to_string(rank_);
  const std::string marker = shard + ".done";
  std::error_code ec;
  if (fs::exists(marker, ec)) {
    return AlreadyExistsError("rank " + std::to_string(rank_) + " has saved step " + std::to_string(step) +
                              " already (" + marker + " exists); a shard is never touched after its marker");
  }
  for (const auto& [path, bytes] : files) RETURN_IF_ERROR(CheckShardPath(path));
  fs::create_directories(shard, ec);
  if (ec) return InternalError("cannot create checkpoint directory " + shard + ": " + ec.message());
  for (const auto& [path, bytes] : files) {
    const std::string file = shard + "/" + path;
    fs::create_directories(fs::path(file).parent_path(), ec);
    if (ec) return InternalError("cannot create checkpoint directory for " + file + ": " + ec.message());
    RETURN_IF_ERROR(WriteFileAtomically(file, bytes));
  }
  return WriteFileAtomically(marker, "");
}

std::optional<uint64_t> CheckpointHandle::resume_step() const {
  if (resume_dir_.empty()) return std::nullopt;
  return resume_step_;
}

StatusOr<std::string> CheckpointHandle::Read(const std::string& path) const {
  if (resume_dir_.empty()) {
    return FailedPreconditionError("no committed checkpoint to read '" + path + "' from: the job starts fresh");
  }
  RETURN_IF_ERROR(CheckShardPath(path));
  if (reader_) return reader_->Read(store_node_, job_, resume_step_, rank_, path, timeout_);
  const std::string file = resume_dir_ + "/rank-" + std::to_string(rank_) + "/" + path;
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError("checkpoint file " + file + " cannot be opened");
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return InternalError("cannot read checkpoint file " + file);
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// WorkerContext

namespace {

std::map<std::string, std::string> ConfigOf(const std::vector<std::string>& env) {
  std::map<std::string, std::string> out;
  for (const auto& kv : env) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    out[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return out;
}

std::string SliceName(const ActorWorkerStart& start) {
  return start.gpu_id.empty() ? "GPU " + std::to_string(start.gpu_index) : start.gpu_id;
}

}  // namespace

WorkerContext::WorkerContext(ActorWorkerStart start, std::unique_ptr<collectives::Communicator> communicator,
                             std::unique_ptr<actors::GpuMemoryDevice> device)
    : start_(std::move(start)),
      config_(ConfigOf(start_.env)),
      communicator_(std::move(communicator)),
      device_(std::move(device)),
      checkpoints_(start_.checkpoint_dir, start_.rank, start_.resume_dir, start_.resume_step) {
  if (device_) {
    allocator_ = std::make_unique<actors::CappedAllocator>(
        *device_, start_.memory_bytes,
        "slice of " + SliceName(start_) + " (rank " + std::to_string(start_.rank) + " of job '" + start_.job + "')");
  }
}

WorkerContext::~WorkerContext() {
  // The allocator frees what is left through the device: it goes first.
  allocator_.reset();
  device_.reset();
  if (log_ != nullptr) std::fclose(log_);
}

Status WorkerContext::OpenLog(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (file == nullptr) {
    return InternalError("cannot open the log " + path + " of rank " + std::to_string(start_.rank) + ": " +
                         std::strerror(errno));
  }
  std::lock_guard<std::mutex> lock(log_mu_);
  if (log_ != nullptr) std::fclose(log_);
  log_ = file;
  return OkStatus();
}

void WorkerContext::Log(const std::string& line) {
  std::lock_guard<std::mutex> lock(log_mu_);
  if (log_ == nullptr) return;
  if (std::fwrite(line.data(), 1, line.size(), log_) != line.size() || std::fputc('\n', log_) == EOF ||
      std::fflush(log_) != 0) {
    spdlog::warn("job '{}' attempt {}: rank {}'s log stops: {}", start_.job, start_.attempt, start_.rank,
                 std::strerror(errno));
    std::fclose(log_);
    log_ = nullptr;
  }
}

StatusOr<actors::CappedAllocator*> WorkerContext::allocator() {
  if (!allocator_) {
    return FailedPreconditionError("rank " + std::to_string(start_.rank) + " of job '" + start_.job +
                                   "' has no GPU slice (resources.slices: 0): nothing to allocate from");
  }
  return allocator_.get();
}

StatusOr<uint64_t> WorkerContext::ConfigNumber(const std::string& name, uint64_t fallback) const {
  auto it = config_.find(name);
  if (it == config_.end() || it->second.empty()) return fallback;
  const std::string& text = it->second;
  if (text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos) {
    return InvalidArgumentError("entry.env." + name + " of job '" + start_.job + "' is '" + text +
                                "': expected a whole number of at most 19 digits");
  }
  return std::stoull(text);
}

void WorkerContext::Stop(const std::string& reason) {
  stopping_.store(true);
  if (communicator_) communicator_->Abort(UnavailableError("rank " + std::to_string(start_.rank) + " stopped: " + reason));
}

void WorkerContext::StepDone(uint64_t step) {
  if (stepped_.exchange(true)) return;
  if (on_first_step_) on_first_step_(step);
}

Status RunWorkerMain(const WorkerMain& main, WorkerContext& context) {
  try {
    return main(context);
  } catch (const std::exception& e) {
    return InternalError("rank " + std::to_string(context.rank()) + " threw: " + e.what());
  } catch (...) {
    return InternalError("rank " + std::to_string(context.rank()) + " threw an exception that is not a std::exception");
  }
}

// ---------------------------------------------------------------------------------------------
// WorkerTypeRegistry

Status WorkerTypeRegistry::Register(const std::string& name, WorkerMain main) {
  if (!runtime::IsDnsLabel(name)) {
    return InvalidArgumentError("actor worker type '" + name + "' is not a name entry.actor can give ([a-z0-9-])");
  }
  if (!main) return InvalidArgumentError("actor worker type '" + name + "' has no body");
  std::lock_guard<std::mutex> lock(mu_);
  if (!types_.emplace(name, std::move(main)).second) {
    return AlreadyExistsError("actor worker type '" + name + "' is registered already");
  }
  return OkStatus();
}

StatusOr<WorkerMain> WorkerTypeRegistry::Find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = types_.find(name);
  if (it != types_.end()) return it->second;
  std::string known;
  for (const auto& [n, main] : types_) known += (known.empty() ? "" : ", ") + n;
  return NotFoundError("no actor worker type '" + name + "' (entry.actor) in this troupe; known: " +
                       (known.empty() ? "none" : known));
}

std::vector<std::string> WorkerTypeRegistry::Names() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [n, main] : types_) out.push_back(n);
  return out;
}

WorkerTypeRegistry& BuiltinWorkerTypes() {
  static WorkerTypeRegistry* registry = [] {
    auto* r = new WorkerTypeRegistry;
    r->Register(kExampleLinearType, ExampleLinearMain).IgnoreError();
    return r;
  }();
  return *registry;
}

CommunicatorFactory GlooCommunicatorFactory() {
#if defined(TROUPE_HAVE_GLOO)
  return [](runtime::Runtime& rt, const ActorWorkerStart& start,
            std::shared_ptr<collectives::AbortSignal> abort) -> StatusOr<std::unique_ptr<collectives::Communicator>> {
    const uint32_t rank = start.rank;
    const uint32_t world_size = start.world_size;
    const runtime::ActorRef& store = start.rendezvous;
    if (!store.valid()) {
      return FailedPreconditionError("rank " + std::to_string(rank) + " of " + std::to_string(world_size) +
                                     " got no rendezvous store from its supervisor");
    }
    // The abort ends a wait for the peers' addresses in the store too, not only the connects.
    auto gloo_store =
        std::make_shared<collectives::GlooRendezvousStore>(collectives::RendezvousClient(store).WithAbort(abort));
    collectives::GlooOptions options;
    const std::string address = rt.address();
    options.hostname = address.substr(0, address.rfind(':'));
    options.abort = std::move(abort);
    ASSIGN_OR_RETURN(auto communicator, collectives::GlooCommunicator::Create(static_cast<int>(rank),
                                                                             static_cast<int>(world_size),
                                                                             std::move(gloo_store), options));
    return std::unique_ptr<collectives::Communicator>(std::move(communicator));
  };
#else
  return nullptr;
#endif
}

// ---------------------------------------------------------------------------------------------
// ActorWorkerTable

namespace {

using worker_done_atom = caf::atom_constant<caf::atom("aw_done")>;
// Table -> worker: its supervisor in the table was replaced (Adopt): it watches that one now.
using adopted_atom = caf::atom_constant<caf::atom("aw_adopt")>;
// Table -> worker: its node joined a head: an orphan waits its full bound again from now.
using head_joined_atom = caf::atom_constant<caf::atom("aw_rejoin")>;
// Worker -> itself: the bound an orphan waits for an adopter passed (with the wait's number).
using orphan_atom = caf::atom_constant<caf::atom("aw_orphan")>;

}  // namespace

std::vector<RunningWorker> ActorWorkerTable::List() const {
  std::vector<RunningWorker> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, e] : workers_) {
    if (e.stopped) continue;
    out.push_back(RunningWorker{std::get<0>(key), std::get<1>(key), std::get<2>(key), 0, e.log_path,
                                e.actor ? e.ref : runtime::ActorRef{}});
  }
  return out;
}

WorkersAdopted ActorWorkerTable::Adopt(const std::string& job, uint64_t attempt, const runtime::ActorRef& supervisor) {
  WorkersAdopted out;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, e] : workers_) {
    if (std::get<0>(key) != job || std::get<1>(key) != attempt || e.stopped) continue;
    e.supervisor = supervisor;
    if (e.actor) caf::anon_send(e.actor, adopted_atom::value);
    if (e.exit) {
      out.exited.push_back(*e.exit);
    } else if (e.actor) {
      out.running.push_back(RunningWorker{job, attempt, std::get<2>(key), 0, e.log_path, e.ref});
    }
  }
  return out;
}

uint32_t ActorWorkerTable::Stop(const std::string& job, uint64_t up_to_attempt) {
  uint32_t running = 0;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = workers_.begin(); it != workers_.end();) {
    Entry& e = it->second;
    if (std::get<0>(it->first) != job || std::get<1>(it->first) > up_to_attempt) {
      ++it;
      continue;
    }
    if (!e.actor) {
      it = workers_.erase(it);
      continue;
    }
    e.stopped = true;
    caf::anon_send(e.actor, StopActorWorker{"its node was told to stop the job's workers of attempt " +
                                            std::to_string(up_to_attempt) + " and older"});
    if (!e.exit) ++running;
    ++it;
  }
  return running;
}

void ActorWorkerTable::HeadJoined() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, e] : workers_) {
    if (e.actor) caf::anon_send(e.actor, head_joined_atom::value);
  }
}

void ActorWorkerTable::StopAll() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, e] : workers_) {
    if (e.actor) caf::anon_send_exit(e.actor, caf::exit_reason::user_shutdown);
  }
}

void ActorWorkerTable::Add(const ActorWorkerStart& start, caf::actor worker, runtime::ActorRef ref,
                           std::string log_path) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = workers_.begin(); it != workers_.end();) {
    const bool older = std::get<0>(it->first) == start.job && std::get<1>(it->first) < start.attempt;
    it = older && !it->second.actor ? workers_.erase(it) : std::next(it);
  }
  Entry& e = workers_[Key{start.job, start.attempt, start.rank}];
  e = Entry{};
  e.actor = std::move(worker);
  e.ref = std::move(ref);
  e.supervisor = start.supervisor;
  e.log_path = std::move(log_path);
}

runtime::ActorRef ActorWorkerTable::Supervisor(const ActorWorkerStart& start) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(Key{start.job, start.attempt, start.rank});
  return it == workers_.end() ? runtime::ActorRef{} : it->second.supervisor;
}

runtime::ActorRef ActorWorkerTable::Exited(const ActorWorkerStart& start, const WorkerExited& exit) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(Key{start.job, start.attempt, start.rank});
  if (it == workers_.end()) return start.supervisor;
  if (!it->second.stopped) it->second.exit = exit;
  return it->second.supervisor;
}

void ActorWorkerTable::Ended(const ActorWorkerStart& start, const caf::actor_addr& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(Key{start.job, start.attempt, start.rank});
  if (it == workers_.end() || !it->second.actor || it->second.actor.address() != worker) return;
  // Only the newest attempt's exits are kept (Add forgets the older ones'): an older attempt's
  // rank that ends after the job's next attempt came here (it held its communicator, or its stop
  // came late) is not kept either. The keys are ordered by job, attempt, rank.
  const auto next = workers_.upper_bound(Key{start.job, start.attempt, std::numeric_limits<uint32_t>::max()});
  const bool newer_attempt = next != workers_.end() && std::get<0>(next->first) == start.job;
  if (!it->second.exit || it->second.stopped || newer_attempt) {
    workers_.erase(it);
    return;
  }
  it->second.actor = caf::actor{};
  it->second.ref = runtime::ActorRef{};
}

// ---------------------------------------------------------------------------------------------
// The worker actor

namespace {

// Host memory standing in for a simulated slice's GPU memory (capped by the same allocator).
class HostMemoryDevice : public actors::GpuMemoryDevice {
 public:
  StatusOr<void*> Allocate(uint64_t bytes) override {
    void* p = std::malloc(bytes == 0 ? 1 : bytes);
    if (p == nullptr) return ResourceExhaustedError("host memory: cannot allocate " + std::to_string(bytes) + " bytes");
    return p;
  }
  void Free(void* ptr) override { std::free(ptr); }
};

StatusOr<std::unique_ptr<actors::GpuMemoryDevice>> OpenDevice(const ActorWorkerDeps& deps, const ActorWorkerStart& start) {
  if (start.gpu_index == kNoGpu) return std::unique_ptr<actors::GpuMemoryDevice>();
  if (deps.devices) return deps.devices(start.gpu_index, start.simulated);
  if (start.simulated) return std::unique_ptr<actors::GpuMemoryDevice>(std::make_unique<HostMemoryDevice>());
  ASSIGN_OR_RETURN(auto device, actors::CudaDevice::Open(static_cast<int>(start.gpu_index)));
  return std::unique_ptr<actors::GpuMemoryDevice>(std::move(device));
}

// What the worker's thread shares with its actor: the context once made, and a stop asked for
// before it was.
struct WorkerShared {
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<WorkerContext> context;
  std::string stop_reason;  // non-empty: stop asked
  std::optional<std::vector<runtime::ActorRef>> peers;  // the group's actors, once the supervisor sent them
  // The rank failed on its own and its thread reported the WorkerExited (ReportExit) before its
  // communicator closed: the actor does not report it again.
  bool exit_reported = false;
  // Raised by a stop or by the peer watch: fails the communicator's formation at once
  // (CommunicatorFactory) and, once formed, aborts the communicator.
  std::shared_ptr<collectives::AbortSignal> abort = std::make_shared<collectives::AbortSignal>();

  // Asks the worker to stop (under mu): its loop at the next step, its communicator (formed or
  // forming) at once.
  void Stop(uint32_t rank, const std::string& reason) {
    stop_reason = reason;
    if (context) context->Stop(reason);
    abort->Abort(UnavailableError("rank " + std::to_string(rank) + " stopped: " + reason));
    cv.notify_all();
  }
};

// How long a worker whose communicator is formed waits for its peers' refs (sent by the
// supervisor once every rank is spawned, so in practice at once) before it trains unwatched: the
// supervisor's own monitors still stop the group.
constexpr std::chrono::seconds kPeersWait{10};

struct WorkerState {
  ActorWorkerStart start;
  std::shared_ptr<WorkerShared> shared = std::make_shared<WorkerShared>();
  std::thread thread;
  // Trained to the end and reported: the actor stays until the supervisor stops the group (or is
  // gone), so that its peers' watches do not see it exit while they finish their last step.
  bool finished = false;
  // Whom it reports to (ActorWorkerTable::Supervisor, switched by an Adopt) and watches.
  std::shared_ptr<ActorWorkerTable> table;
  runtime::ActorRef watched;
  // Its supervisor was lost (Unavailable): it waits for an adopter, for adopt_timeout from the
  // loss or the node's last join (each wait numbered, so that only the newest one's end counts).
  std::chrono::milliseconds adopt_timeout{0};
  bool orphaned = false;
  uint64_t orphan_wait = 0;
  // Watches the other ranks once the supervisor sent them (ActorWorkerPeers); raises shared->abort.
  std::unique_ptr<collectives::PeerWatch> watch;

  ~WorkerState() {
    if (!thread.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->Stop(start.rank, shared->stop_reason.empty() ? "the worker actor ended" : shared->stop_reason);
    }
    thread.join();
  }
};

using WorkerSelf = caf::stateful_actor<WorkerState>;

// The worker has no supervisor any more and no adopter came: it stops (an orphan of a head that
// went away is not left training); one that trained to the end exits.
void StopOrphan(WorkerSelf* self, const std::string& reason) {
  auto& st = self->state;
  if (st.finished) {
    self->quit();
    return;
  }
  std::lock_guard<std::mutex> lock(st.shared->mu);
  // Nobody stopped it: its log (`troupe job logs`) says why it stops.
  if (st.shared->context) st.shared->context->Log("troupe: rank " + std::to_string(st.start.rank) + " stops: " + reason);
  st.shared->Stop(st.start.rank, reason);
}

// Whether a rank's error is the loss of its group (a peer's node, a stop, an abort) rather than a
// failure of its own: not the job's fault, so an infrastructure fault.
bool GroupLoss(const Status& result) {
  return result.code() == StatusCode::kUnavailable || result.code() == StatusCode::kDeadlineExceeded ||
         result.code() == StatusCode::kCancelled;
}

// Reports the rank's end to its supervisor of now (ActorWorkerTable::Supervisor, switched by an
// adopter), which keeps the exit for an adopter too, should the supervisor be lost
// (ActorWorkerTable::Exited). Once a rank: from its thread for a failure of its own (RunWorker),
// from the actor otherwise.
void ReportExit(ActorWorkerTable& table, const ActorWorkerStart& start, const Status& result) {
  WorkerExited exit;
  exit.job = start.job;
  exit.attempt = start.attempt;
  exit.rank = start.rank;
  exit.exit_code = result.ok() ? 0 : 1;
  exit.reason = result.ok() ? "finished" : "failed: " + result.ToString();
  exit.infra = GroupLoss(result);
  if (!result.ok()) spdlog::warn("job '{}' attempt {}: actor worker rank {} {}", start.job, start.attempt, start.rank, exit.reason);
  const runtime::ActorRef supervisor = table.Exited(start, exit);
  supervisor.Send(std::move(exit));
}

// An orphan waits adopt_timeout (again) for an adopter.
void AwaitAdopter(WorkerSelf* self) {
  auto& st = self->state;
  self->delayed_send(self, st.adopt_timeout, orphan_atom::value, ++st.orphan_wait);
}

// The worker's thread: makes the communicator and the context, runs the type's main.
Status RunWorker(runtime::Runtime* rt, const ActorWorkerDeps& deps, const std::shared_ptr<ShardReader>& reader,
                 const ActorWorkerStart& start, const std::shared_ptr<WorkerShared>& shared) {
  ASSIGN_OR_RETURN(WorkerMain main, deps.types->Find(start.type));
  std::unique_ptr<collectives::Communicator> communicator;
  if (start.world_size > 1) {
    if (!deps.communicators) {
      return FailedPreconditionError("this troupe has no collectives backend for a group of " +
                                     std::to_string(start.world_size) +
                                     " actor workers (built without collectives/gloo); run one worker");
    }
    ASSIGN_OR_RETURN(communicator, deps.communicators(*rt, start, shared->abort));
  }
  ASSIGN_OR_RETURN(auto device, OpenDevice(deps, start));
  auto context = std::make_shared<WorkerContext>(start, std::move(communicator), std::move(device));
  if (deps.log_path) {
    Status opened = context->OpenLog(deps.log_path(start.job, start.attempt, start.rank));
    if (!opened.ok()) spdlog::warn("job '{}' attempt {}: {}", start.job, start.attempt, opened.ToString());
  }
  context->Log("troupe: rank " + std::to_string(start.rank) + " of " + std::to_string(start.world_size) +
               ", attempt " + std::to_string(start.attempt) + ": actor worker '" + start.type + "' started (backend " +
               (start.backend.empty() ? std::string("auto") : start.backend) + ")" +
               (context->checkpoints().resume_step()
                    ? ", resuming from step " + std::to_string(*context->checkpoints().resume_step())
                    : std::string()));
  if (deps.shard_bulk && start.checkpoint_node != 0 && start.checkpoint_node != rt->node_id()) {
    context->checkpoints().SendShardsTo(deps.shard_bulk, start.checkpoint_node, start.job, start.attempt,
                                        CheckpointHandle::kShardSendTimeout, reader);
  }
  {
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->context = context;
    if (!shared->stop_reason.empty()) context->Stop(shared->stop_reason);
  }
  // From now the abort (the peer watch's, a stop's) reaches the formed communicator. Declared
  // after the context, so removed before the context (and its communicator) can go.
  collectives::AbortSignal::Registration forwarded;
  if (collectives::Communicator* communicator = context->communicator()) {
    forwarded = shared->abort->OnAbort([communicator](const Status& reason) { communicator->Abort(reason); });
  }
  // The actor watches the other ranks once the supervisor sent them (ActorWorkerPeers), usually
  // while the group forms; the rank reports itself formed once they are watched.
  if (context->communicator() != nullptr) {
    std::unique_lock<std::mutex> lock(shared->mu);
    shared->cv.wait_for(lock, kPeersWait, [&] { return shared->peers.has_value() || !shared->stop_reason.empty(); });
    if (!shared->peers && shared->stop_reason.empty()) {
      spdlog::warn("job '{}' attempt {}: rank {} got no peers from its supervisor in {} s; training unwatched",
                   start.job, start.attempt, start.rank, kPeersWait.count());
    }
  }
  // The supervisor's recovery timeline (recovery.h): this rank trains from here. Reported to the
  // supervisor of now (a restarted head's, once it adopted the worker: ActorWorkerTable).
  deps.table->Supervisor(start).Send(ActorWorkerProgress{start.attempt, start.rank, ActorWorkerProgress::kFormed});
  context->OnFirstStep([start, table = deps.table](uint64_t) {
    table->Supervisor(start).Send(ActorWorkerProgress{start.attempt, start.rank, ActorWorkerProgress::kFirstStep});
  });
  Status result = RunWorkerMain(main, *context);
  context->Log("troupe: rank " + std::to_string(start.rank) + (result.ok() ? " finished" : " failed: " + result.ToString()));
  // A failure of its own is reported before the communicator closes, and the communicator stays
  // open until the supervisor stops the group (StopActorWorker; GroupFailed stops every rank at
  // once) or failed_rank_hold passes: the peers would otherwise see the closed connections first,
  // fail with Unavailable and report infrastructure faults, and whichever report reached the
  // supervisor first decided the failure's kind.
  if (!result.ok() && !GroupLoss(result)) {
    ReportExit(*deps.table, start, result);
    std::unique_lock<std::mutex> lock(shared->mu);
    shared->exit_reported = true;
    if (context->communicator() != nullptr) {
      shared->cv.wait_for(lock, deps.failed_rank_hold, [&] { return !shared->stop_reason.empty(); });
    }
  }
  forwarded.Reset();  // before the communicator it aborts
  std::lock_guard<std::mutex> lock(shared->mu);
  shared->context.reset();
  return result;
}

caf::behavior WorkerActor(WorkerSelf* self, runtime::Runtime* rt, ActorWorkerDeps deps,
                          std::shared_ptr<ShardReader> reader, ActorWorkerStart start) {
  self->state.start = start;
  auto shared = self->state.shared;
  caf::actor me = caf::actor_cast<caf::actor>(self);
  // The node's table: what its agent reports at a join and hands to an adopter.
  self->state.table = deps.table;
  self->state.adopt_timeout = deps.adopt_timeout;
  self->state.watched = start.supervisor;
  deps.table->Add(start, me, rt->Ref(me), deps.log_path ? deps.log_path(start.job, start.attempt, start.rank) : "");
  self->attach_functor([table = deps.table, start, addr = self->address()] { table->Ended(start, addr); });
  // Without its supervisor the worker has no one to report to. One that ended (the job stopped,
  // finished or failed) stops it; one that cannot be reached (its head was lost, kill -9
  // included) may come back as a restarted head's supervisor, which adopts the worker
  // (ActorWorkerTable::Adopt): it keeps training and waits for that, within adopt_timeout.
  self->monitor(start.supervisor.handle());
  self->set_down_handler([self](caf::down_msg& down) {
    auto& st = self->state;
    if (down.source != st.watched.handle().address()) return;
    const Status why = runtime::ToStatus(down.reason);
    if (why.code() != StatusCode::kUnavailable || st.adopt_timeout.count() <= 0) {
      StopOrphan(self, "its job supervisor is gone");
      return;
    }
    spdlog::warn("job '{}' attempt {}: actor worker rank {} lost its supervisor ({}); it {} and waits up to {} ms "
                 "for a restarted head to take it back",
                 st.start.job, st.start.attempt, st.start.rank, why.ToString(),
                 st.finished ? "has finished" : "keeps training", st.adopt_timeout.count());
    st.orphaned = true;
    AwaitAdopter(self);
  });
  self->state.thread = std::thread([rt, deps, reader, start, shared, me] {
    Status result = RunWorker(rt, deps, reader, start, shared);
    caf::anon_send(me, worker_done_atom::value, static_cast<uint8_t>(result.code()), result.message());
  });
  return {
      [self](worker_done_atom, uint8_t code, const std::string& message) {
        auto& st = self->state;
        if (st.thread.joinable()) st.thread.join();
        const Status result(static_cast<StatusCode>(code), message);
        bool reported = false;
        {
          std::lock_guard<std::mutex> lock(st.shared->mu);
          reported = st.shared->exit_reported;
        }
        if (!reported) ReportExit(*st.table, st.start, result);
        if (result.ok()) {
          st.finished = true;
          return;
        }
        self->quit(runtime::ToCafError(result));
      },
      [self](StopActorWorker& stop) {
        if (self->state.finished) {
          self->quit();
          return;
        }
        auto& shared = *self->state.shared;
        std::lock_guard<std::mutex> lock(shared.mu);
        shared.Stop(self->state.start.rank, stop.reason.empty() ? "stopped by the job supervisor" : stop.reason);
      },
      [self](adopted_atom) {
        // A restarted head's supervisor took the worker back: it reports to and watches that one.
        auto& st = self->state;
        const runtime::ActorRef supervisor = st.table->Supervisor(st.start);
        if (!supervisor.valid() || supervisor.handle() == st.watched.handle()) return;
        st.watched = supervisor;
        self->monitor(supervisor.handle());
        if (st.orphaned) {
          spdlog::info("job '{}' attempt {}: actor worker rank {} was taken back by a restarted head's supervisor",
                       st.start.job, st.start.attempt, st.start.rank);
        }
        st.orphaned = false;
        ++st.orphan_wait;
      },
      [self](head_joined_atom) {
        if (self->state.orphaned) AwaitAdopter(self);
      },
      [self](orphan_atom, uint64_t wait) {
        auto& st = self->state;
        if (!st.orphaned || wait != st.orphan_wait) return;
        StopOrphan(self, "its job supervisor was lost and no restarted head took it back within " +
                             std::to_string(st.adopt_timeout.count()) + " ms");
      },
      [self, rt](ActorWorkerPeers& peers) {
        auto& st = self->state;
        auto& shared = *st.shared;
        if (peers.attempt != st.start.attempt || peers.workers.size() != st.start.world_size || st.watch) return;
        // Watches the other ranks from now, whether the group is formed yet or not: the first one
        // lost fails this rank's formation or aborts its communicator (Unavailable naming it).
        std::vector<collectives::PeerWatch::Peer> watched;
        for (uint32_t r = 0; r < peers.workers.size(); ++r) {
          if (r != st.start.rank) watched.push_back({static_cast<int>(r), peers.workers[r]});
        }
        st.watch = std::make_unique<collectives::PeerWatch>(*rt, shared.abort, std::move(watched));
        std::lock_guard<std::mutex> lock(shared.mu);
        shared.peers = std::move(peers.workers);
        shared.cv.notify_all();
      },
  };
}

}  // namespace

Status RegisterActorWorkers(runtime::Runtime& runtime, ActorWorkerDeps deps) {
  if (deps.types == nullptr) return InvalidArgumentError("RegisterActorWorkers: no worker type registry");
  runtime::Runtime* rt = &runtime;
  if (!deps.table) deps.table = std::make_shared<ActorWorkerTable>();
  // The node's workers fetch the checkpoints they resume from through one reader.
  std::shared_ptr<ShardReader> reader;
  if (deps.shard_bulk) {
    ASSIGN_OR_RETURN(reader, ShardReader::Attach(*deps.shard_bulk));
  }
  return runtime.RegisterActorType<ActorWorkerStart>(
      kActorWorkerActorType,
      [rt, deps, reader](caf::actor_system& system, const ActorWorkerStart& start) -> StatusOr<caf::actor> {
        // An unknown type is refused at the spawn, so the supervisor sees it at once.
        RETURN_IF_ERROR(deps.types->Find(start.type).status());
        if (start.world_size == 0 || start.rank >= start.world_size) {
          return InvalidArgumentError("actor worker rank " + std::to_string(start.rank) + " of a world of " +
                                      std::to_string(start.world_size));
        }
        return system.spawn(WorkerActor, rt, deps, reader, start);
      });
}

}  // namespace troupe::training
