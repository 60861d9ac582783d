// WorkerLauncher.
#include "actors/training/worker_launcher.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "actors/slice_environment.h"
#include "actors/training/standby.h"
#include "common/child_process.h"
#include "common/free_port.h"
#include "common/rotating_log.h"

namespace troupe::training {

namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;

struct WorkerLauncher::Worker {
  StartWorker request;
  SpawnOptions options;  // how it was started: its standby starts the same way
  std::unique_ptr<ChildProcess> child;
  std::string log_path;
  std::string progress_path;
  std::atomic<bool> stop{false};
  std::thread watcher;
  // Set (under mu_) by Stop()/StopAll(), which then join the watcher; otherwise the watcher
  // detaches itself when it ends (it holds the last reference: a joinable std::thread must not be
  // destroyed).
  bool joined = false;
  bool from_standby = false;  // it runs in a standby interpreter
};

struct WorkerLauncher::Standby {
  std::string command;  // StandbyKey of the workers it can become
  std::unique_ptr<ChildProcess> child;
  bool ready = false;  // it printed kStandbyReadyLine: every module is imported
  std::string said;    // what else it printed (an import's warnings or error), the last lines

  // Reads what it printed so far (never waits); true once it is ready.
  bool CheckReady() {
    while (!ready) {
      auto line = child->ReadLine(std::chrono::milliseconds(0));
      if (!line.ok()) break;
      if (*line == kStandbyReadyLine) {
        ready = true;
      } else if (said.size() < 4096) {
        said += "\n  " + *line;
      }
    }
    return ready;
  }
};

namespace {

// The state letter of /proc/<pid>/stat ('T': stopped by a signal, 't': by a tracer); 0 if unknown.
char ProcessState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return 0;
  // "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return 0;
  return stat[close + 2];
}

// The modification time of `path` in nanoseconds, 0 if it does not exist.
int64_t ModifiedNs(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
}

// What a standby must share with a worker to become it: the interpreter and its options, the
// preloaded modules and the working directory.
std::string StandbyKey(const StartWorker& request) {
  auto python = ParsePythonCommand(request.argv);
  if (!python.ok()) return "";
  std::string key = python->interpreter;
  for (const auto& o : python->options) key += "\n" + o;
  key += "\n--";
  for (const auto& m : request.preload) key += "\n" + m;
  return key + "\n--\n" + request.working_dir;
}

std::string Joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "ended with wait status " + std::to_string(status);
}

}  // namespace

WorkerLauncher::WorkerLauncher(std::string log_root,
                               std::function<void(const StartWorker&, const WorkerExited&)> on_exit,
                               uint64_t max_log_bytes)
    : log_root_(std::move(log_root)), on_exit_(std::move(on_exit)), max_log_bytes_(max_log_bytes) {}

WorkerLauncher::~WorkerLauncher() { StopAll(); }

void WorkerLauncher::StopAll() {
  std::map<Key, std::shared_ptr<Worker>> all;
  std::map<std::string, std::vector<std::unique_ptr<Standby>>> standbys;  // killed as they go
  std::vector<std::thread> reapers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.swap(workers_);
    standbys.swap(standbys_);
    reapers.swap(reapers_);
    for (auto& [key, w] : all) {
      w->joined = true;
      w->stop = true;  // under the lock: AddStandby then keeps no standby for it
    }
  }
  for (auto& [key, w] : all) {
    if (w->watcher.joinable()) w->watcher.join();
  }
  for (auto& r : reapers) r.join();
}

std::string WorkerLauncher::LogPath(const std::string& job, uint64_t attempt, uint32_t rank) const {
  return log_root_ + "/" + job + "/attempt-" + std::to_string(attempt) + "/rank-" + std::to_string(rank) + ".log";
}

size_t WorkerLauncher::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return workers_.size();
}

StatusOr<WorkerStarted> WorkerLauncher::Start(const StartWorker& request, const std::vector<std::string>& slice_env) {
  if (request.argv.empty()) return InvalidArgumentError("worker of job '" + request.job + "': empty command");
  if (request.job.empty() || request.job.find('/') != std::string::npos || request.job[0] == '.') {
    return InvalidArgumentError("bad job name '" + request.job + "'");
  }
  const Key key{request.job, request.attempt, request.rank};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (workers_.count(key) != 0) {
      return AlreadyExistsError("job '" + request.job + "' attempt " + std::to_string(request.attempt) + " rank " +
                                std::to_string(request.rank) + " runs already");
    }
  }
  std::error_code ec;
  if (!request.working_dir.empty() && !fs::is_directory(request.working_dir, ec)) {
    return UnavailableError("cannot start the worker of job '" + request.job + "': working directory " +
                            request.working_dir + " does not exist on this node");
  }
  auto worker = std::make_shared<Worker>();
  worker->request = request;
  worker->log_path = LogPath(request.job, request.attempt, request.rank);
  worker->progress_path = fs::path(worker->log_path).replace_extension(".progress").string();
  fs::create_directories(fs::path(worker->log_path).parent_path(), ec);
  if (ec) return InternalError("cannot make the log directory of " + worker->log_path + ": " + ec.message());

  SpawnOptions options;
  options.env = request.env;
  options.env.insert(options.env.end(), slice_env.begin(), slice_env.end());
  options.env.push_back("TROUPE_PROGRESS_FILE=" + worker->progress_path);
  WorkerStarted started{request.rank, 0, 0, worker->log_path};
  if (request.pick_master_port) {
    std::string host = "127.0.0.1";
    for (const auto& e : request.env) {
      if (e.rfind("MASTER_ADDR=", 0) == 0) host = e.substr(12);
    }
    ASSIGN_OR_RETURN(started.master_port, PickFreePort(host));
    options.env.push_back("MASTER_PORT=" + std::to_string(started.master_port));
  }
  options.drop_env_prefixes = actors::SliceEnvironmentPrefixes();
  options.merge_stderr = true;
  options.group_dies_with_parent = true;
  options.working_dir = request.working_dir;
  if (auto standby = TakeStandby(request)) {
    auto python = ParsePythonCommand(request.argv);
    Status activated = python.ok() ? standby->WriteLine(ActivationLine(*python, ChildEnvironment(options),
                                                                        request.working_dir))
                                   : python.status();
    if (activated.ok()) {
      worker->child = std::move(standby);
      started.standby = true;
      worker->from_standby = true;
    } else {
      spdlog::warn("job '{}': the standby could not take rank {} ({}); starting it cold", request.job, request.rank,
                   activated.ToString());
    }
  }
  if (!worker->child) {
    ASSIGN_OR_RETURN(worker->child, ChildProcess::Spawn(request.argv, options));
  }
  worker->options = std::move(options);
  started.pid = worker->child->pid();
  // Logged before the watcher exists: the first use of spdlog's registry (a static local inside
  // uninstrumented libspdlog) then happens before the thread's.
  spdlog::info("job '{}' attempt {}: rank {} started (pid {}{}), log {}", request.job, request.attempt, request.rank,
               started.pid, started.standby ? ", in a standby" : "", worker->log_path);
  {
    // Under the lock: the watcher's last step (detaching itself) takes it too.
    std::lock_guard<std::mutex> lock(mu_);
    workers_[key] = worker;
    worker->watcher = std::thread([this, worker] { Watch(worker); });
  }
  return started;
}

void WorkerLauncher::Watch(std::shared_ptr<Worker> w) {
  RotatingLog log(w->log_path, max_log_bytes_, kLogFilesKept);
  const auto watchdog = std::chrono::milliseconds(w->request.watchdog_ms);
  auto last_progress = Steady::now();
  int64_t progress_mtime = ModifiedNs(w->progress_path);
  Steady::time_point stopped_since{};  // when it was first seen stopped (epoch: running)
  const auto start = Steady::now();
  bool standby_asked = w->request.preload.empty();
  // Both said in the worker's log (`troupe job logs` shows them; tests wait for them).
  if (w->from_standby) log.Write(kStartedInStandbyLogLine);
  bool standby_ready_said = w->request.preload.empty();
  auto standby_checked = start;
  auto check_standby = [&](Steady::time_point now) {
    if (!standby_asked || standby_ready_said || now - standby_checked < kPollInterval) return;
    standby_checked = now;
    if (HasReadyStandby(w->request)) {
      log.Write(kStandbyReadyLogLine);
      standby_ready_said = true;
    }
  };
  bool stopped = false;
  bool eof = false;
  bool hung = false;
  std::string hung_reason;
  while (!w->stop) {
    if (!eof) {
      auto line = w->child->ReadLine(kPollInterval);
      if (line.ok()) {
        log.Write(*line);
        last_progress = Steady::now();
        if (!standby_asked) {
          standby_asked = true;
          AddStandby(w);
        }
        check_standby(last_progress);
        continue;
      }
      if (line.status().code() == StatusCode::kUnavailable) eof = true;
    }
    if (w->child->AwaitExit(eof ? kPollInterval : std::chrono::milliseconds(0)).ok()) break;
    const auto now = Steady::now();
    if (!standby_asked && now - start >= kStandbyDelay) {
      standby_asked = true;
      AddStandby(w);
    }
    check_standby(now);
    if (int64_t m = ModifiedNs(w->progress_path); m != progress_mtime) {
      progress_mtime = m;
      last_progress = now;
    }
    const char state = ProcessState(w->child->pid());
    if (state == 'T' || state == 't') {
      if (!stopped) stopped_since = now;
      stopped = true;
      if (now - stopped_since >= kStoppedGrace) {
        hung = true;
        hung_reason = "stopped (SIGSTOP) for " + std::to_string(kStoppedGrace.count()) + " ms";
        break;
      }
    } else {
      stopped = false;
    }
    if (watchdog.count() > 0 && now - last_progress >= watchdog) {
      hung = true;
      hung_reason = "no progress (no output, no touch of $TROUPE_PROGRESS_FILE) for " +
                    std::to_string(watchdog.count()) + " ms";
      break;
    }
  }
  // Whatever ended the watch, nothing of the worker's group stays: the keeper kills the group.
  w->child->Signal(SIGKILL);
  auto status = w->child->Wait(std::chrono::seconds(30));
  // Lines the worker wrote before it ended.
  for (int i = 0; i < 1000 && !eof; ++i) {
    auto line = w->child->ReadLine(std::chrono::milliseconds(0));
    if (!line.ok()) break;
    log.Write(*line);
  }
  const bool stopped_by_request = w->stop.load() && !hung;
  if (!stopped_by_request) {
    WorkerExited exit{w->request.job, w->request.attempt, w->request.rank, -1, 0, hung, ""};
    if (hung) {
      exit.reason = "hung: " + hung_reason + "; killed";
      exit.signal = SIGKILL;
    } else if (status.ok()) {
      if (WIFEXITED(*status)) exit.exit_code = WEXITSTATUS(*status);
      if (WIFSIGNALED(*status)) exit.signal = WTERMSIG(*status);
      exit.reason = Describe(*status);
    } else {
      exit.reason = "could not be reaped: " + status.status().ToString();
    }
    spdlog::info("job '{}' attempt {}: rank {} {}", exit.job, exit.attempt, exit.rank, exit.reason);
    log.Write("[troupe] worker " + exit.reason);
    StartWorker request;
    {
      // Remembered for a supervisor that adopts the attempt later, and read with the supervisor
      // that Adopt() may have changed.
      std::lock_guard<std::mutex> lock(mu_);
      auto& [attempt, exits] = exits_[exit.job];
      if (attempt != exit.attempt) exits.clear();
      attempt = exit.attempt;
      exits.push_back(exit);
      request = w->request;
    }
    if (on_exit_) on_exit_(request, exit);
  }
  // The last step: the launcher may be destroyed once the worker is out of the map, unless a
  // stopper joins this thread (then it waits for it).
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(Key{w->request.job, w->request.attempt, w->request.rank});
  if (it != workers_.end() && it->second == w) workers_.erase(it);
  if (!w->joined) w->watcher.detach();
}

std::vector<RunningWorker> WorkerLauncher::List() const {
  std::vector<RunningWorker> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, w] : workers_) {
    out.push_back(RunningWorker{std::get<0>(key), std::get<1>(key), std::get<2>(key), w->child->pid(), w->log_path, {}});
  }
  for (const auto& [job, entry] : exits_) {
    for (const auto& e : entry.second) {
      if (workers_.count(Key{job, e.attempt, e.rank}) == 0) {
        out.push_back(RunningWorker{job, e.attempt, e.rank, 0, LogPath(job, e.attempt, e.rank), {}});
      }
    }
  }
  return out;
}

WorkersAdopted WorkerLauncher::Adopt(const std::string& job, uint64_t attempt, const runtime::ActorRef& supervisor) {
  WorkersAdopted out;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, w] : workers_) {
    if (std::get<0>(key) != job || std::get<1>(key) != attempt) continue;
    w->request.supervisor = supervisor;
    out.running.push_back(RunningWorker{job, attempt, std::get<2>(key), w->child->pid(), w->log_path, {}});
  }
  if (auto it = exits_.find(job); it != exits_.end() && it->second.first == attempt) {
    for (const auto& e : it->second.second) {
      if (workers_.count(Key{job, attempt, e.rank}) == 0) out.exited.push_back(e);
    }
  }
  return out;
}

uint32_t WorkerLauncher::Stop(const std::string& job, uint64_t up_to_attempt, bool final) {
  std::vector<std::shared_ptr<Worker>> stopping;
  std::vector<std::unique_ptr<Standby>> standbys;  // killed as they go, after the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, w] : workers_) {
      if (std::get<0>(key) == job && std::get<1>(key) <= up_to_attempt) {
        w->joined = true;
        w->stop = true;  // under the lock: AddStandby then keeps no standby for it
        stopping.push_back(w);
      }
    }
    if (auto it = standbys_.find(job); final && it != standbys_.end()) {
      standbys = std::move(it->second);
      standbys_.erase(it);
    }
    if (auto it = exits_.find(job); it != exits_.end() && it->second.first <= up_to_attempt) exits_.erase(it);
  }
  // The watcher kills the group within kPollInterval: only it touches the child (ChildProcess is
  // not thread-safe, and a signal after its reaping could reach a process that reused the pid).
  for (auto& w : stopping) {
    if (w->watcher.joinable() && w->watcher.get_id() != std::this_thread::get_id()) w->watcher.join();
  }
  if (!standbys.empty()) {
    // Killed now, reaped by a thread of their own: an interpreter that imported torch takes
    // 100-200 ms to go, and Stop() runs on the node agent's actor thread.
    for (auto& s : standbys) s->child->Signal(SIGKILL);
    std::vector<std::thread> done;  // earlier reapers, long finished as a rule: joined after the lock
    {
      std::lock_guard<std::mutex> lock(mu_);
      done.swap(reapers_);
      reapers_.emplace_back([gone = std::move(standbys)]() mutable { gone.clear(); });
    }
    for (auto& r : done) r.join();
  }
  return static_cast<uint32_t>(stopping.size());
}

void WorkerLauncher::ReapStandbys(const std::string& job, std::vector<std::unique_ptr<Standby>>& dead) {
  for (auto& s : dead) {
    // What it printed says why (an import that failed, for instance).
    auto status = s->child->Wait(std::chrono::seconds(5));
    spdlog::warn("job '{}': a standby interpreter had ended ({}); workers of the job start cold until another is ready{}",
                 job, status.ok() ? Describe(*status) : status.status().ToString(), s->said);
  }
  dead.clear();
}

bool WorkerLauncher::HasReadyStandby(const StartWorker& request) {
  const std::string command = StandbyKey(request);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = standbys_.find(request.job);
  if (it == standbys_.end()) return false;
  for (auto& s : it->second) {
    if (s->command == command && s->CheckReady()) return true;
  }
  return false;
}

size_t WorkerLauncher::ready_standbys(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = standbys_.find(job);
  if (it == standbys_.end()) return 0;
  size_t ready = 0;
  for (auto& s : it->second) ready += s->CheckReady() ? 1 : 0;
  return ready;
}

void WorkerLauncher::AddStandby(const std::shared_ptr<Worker>& w) {
  const StartWorker& request = w->request;
  auto python = ParsePythonCommand(request.argv);
  if (!python.ok()) return;
  const std::string command = StandbyKey(request);
  std::vector<std::unique_ptr<Standby>> dead;  // reaped after the lock
  // Under mu_: one live standby for this command per running worker of the job is enough.
  auto has_enough = [&] {
    if (w->stop.load()) return true;
    size_t running = 0;
    for (const auto& [key, other] : workers_) running += std::get<0>(key) == request.job ? 1 : 0;
    size_t alive = 0;
    auto it = standbys_.find(request.job);
    if (it == standbys_.end()) return running == 0;
    for (auto s = it->second.begin(); s != it->second.end();) {
      if ((*s)->child->AwaitExit(std::chrono::milliseconds(0)).ok()) {
        (*s)->CheckReady();  // what it printed, for the log
        dead.push_back(std::move(*s));
        s = it->second.erase(s);
        continue;
      }
      alive += (*s)->command == command ? 1 : 0;
      ++s;
    }
    return alive >= running;
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (has_enough()) return;
  }
  ReapStandbys(request.job, dead);
  auto child = ChildProcess::Spawn(StandbyArgv(*python, request.preload), w->options);
  if (!child.ok()) {
    spdlog::warn("job '{}': no standby: {}", request.job, child.status().ToString());
    return;
  }
  auto standby = std::make_unique<Standby>();
  standby->command = command;
  standby->child = std::move(*child);
  std::lock_guard<std::mutex> lock(mu_);
  // Checked again: the job may have been stopped (final) while the standby started.
  if (has_enough()) return;  // the standby is killed as it goes
  spdlog::info("job '{}': standby interpreter started (pid {}), importing {}", request.job, standby->child->pid(),
               Joined(request.preload));
  standbys_[request.job].push_back(std::move(standby));
}

std::unique_ptr<ChildProcess> WorkerLauncher::TakeStandby(const StartWorker& request) {
  if (request.preload.empty()) return nullptr;
  const std::string command = StandbyKey(request);
  std::vector<std::unique_ptr<Standby>> dead;  // killed and reaped after the lock
  std::unique_ptr<ChildProcess> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = standbys_.find(request.job);
    if (it == standbys_.end()) return nullptr;
    auto& list = it->second;
    for (auto s = list.begin(); s != list.end() && !out;) {
      const bool ready = (*s)->CheckReady();
      if ((*s)->command != command) {
        ++s;
      } else if ((*s)->child->AwaitExit(std::chrono::milliseconds(0)).ok()) {
        (*s)->CheckReady();  // the rest of what it printed
        dead.push_back(std::move(*s));
        s = list.erase(s);
      } else if (!ready) {
        ++s;  // still importing: the worker starts cold, the standby serves a later one
      } else {
        out = std::move((*s)->child);
        s = list.erase(s);
      }
    }
    if (list.empty()) standbys_.erase(it);
  }
  ReapStandbys(request.job, dead);
  return out;
}

StatusOr<WorkerLogChunk> WorkerLauncher::ReadLog(const ReadWorkerLog& request) const {
  if (request.job.empty() || request.job.find('/') != std::string::npos || request.job[0] == '.') {
    return InvalidArgumentError("bad job name '" + request.job + "'");
  }
  const std::string path = LogPath(request.job, request.attempt, request.rank);
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("no log " + path + " on this node");
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  WorkerLogChunk chunk;
  chunk.size = size;
  // A rotated file is shorter than the offset: start again from its beginning.
  const uint64_t offset = request.offset > size ? 0 : request.offset;
  const uint64_t n = std::min<uint64_t>(size - offset, std::min<uint32_t>(request.max_bytes, 1 << 20));
  chunk.data.resize(n);
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(chunk.data.data(), static_cast<std::streamsize>(n));
  chunk.next_offset = offset + n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    chunk.running = workers_.count(Key{request.job, request.attempt, request.rank}) != 0;
  }
  return chunk;
}

}  // namespace troupe::training
