// training_bench: examples/training/train.py with 2 gloo workers, under troupe (a local 2-node CPU
// cluster started with `troupe up`) and under torchrun, measured in the same run:
//   1. recovery: kill -9 of rank 1 until rank 0 prints its next completed step after the restart
//      (troupe vs torchrun --nproc_per_node 2 --max_restarts 3 resuming from --checkpoint-file;
//      both with their default restart settings), and how much of it one `import torch` is; then
//      again with standby workers (entry.preload: [torch]), whose restarted workers do not import;
//   2. hang detection: SIGSTOP of rank 1 until the job's attempt counter increments (troupe's
//      default watchdog: a worker stopped for 1 s is hung; torchrun, full mode only, never looks
//      at stopped workers: its group restarts when the gloo timeout (60 s in train.py) fails rank 0);
//   3. checkpoint commit: CheckpointStore::Commit of a 2-rank checkpoint of N MiB per rank vs
//      `dd bs=1M count=2N conv=fsync` to the same disk (only Commit() is timed, not the ranks'
//      writes).
// Targets (reported, not asserted): troupe's recovery at most half of torchrun's (a quarter with
// standby workers, the stretch); commit at least 80% of dd. Without torch for the python (apt-get install python3-torch) only part 3 runs and
// the exit status is 77 (ctest: skipped); `--commit-only` runs only part 3 (a few seconds).
#include <nlohmann/json.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "actors/training/job_status.h"
#include "cluster/client.h"
#include "cluster/config.h"
#include "common/child_process.h"
#include "common/logging.h"
#include "storage/checkpoint_store.h"
#include "storage/lmdb_env.h"
#include "bench/common/report.h"

namespace troupe::bench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kTrainPy = TROUPE_SOURCE_DIR "/examples/training/train.py";
constexpr const char* kTorchrunShim = TROUPE_SOURCE_DIR "/bench/training/torchrun_shim.py";
// Steps far beyond what a round needs (each round ends its run); a short sleep per step keeps
// the two ranks from taking both cores of a small machine, and comes after the step's line.
const std::vector<std::string> kTrainArgs = {"--steps", "1000000", "--sleep-per-step", "0.05", "--checkpoint-every",
                                             "20"};
// Both runs resume from a checkpoint: the rounds wait for one at step 20.
constexpr int kCheckpointStep = 20;
// With standby workers the kill comes at least 80 steps (4 s at 20 steps/s, the most the sleep
// allows) later: longer than a standby's `import torch` here (about 1.4 s).
constexpr int kStandbyCheckpointStep = 100;

double Ms(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Row {
  Row(std::string metric_, std::string unit_, double troupe_, std::string baseline_name_ = "", double baseline_ = NAN,
      std::string target_ = "")
      : metric(std::move(metric_)),
        unit(std::move(unit_)),
        troupe(troupe_),
        baseline_name(std::move(baseline_name_)),
        baseline(baseline_),
        target(std::move(target_)) {}
  std::string metric, unit;
  double troupe = NAN;
  std::string baseline_name;  // what the baseline is ("" for a row without one)
  double baseline = NAN;
  std::string target;         // "" for information only
  std::optional<bool> met;
  std::vector<double> samples, baseline_samples;
  double ratio() const { return std::isnan(troupe) || std::isnan(baseline) || baseline == 0 ? NAN : troupe / baseline; }
};

// "step 123 loss 4.5678" (rank 0's line for a completed step): the step, or -1.
int64_t LossStep(const std::string& line) {
  long long step = -1;
  char loss[8];
  if (std::sscanf(line.c_str(), "step %lld %7s", &step, loss) == 2 && std::strcmp(loss, "loss") == 0) return step;
  return -1;
}

bool IsResumedLine(const std::string& line) { return line.rfind("resumed from step ", 0) == 0; }

// ---- troupe ----

// A local 2-node CPU cluster from `troupe up` (as tests/support/local_cluster.h, without gtest).
class Cluster {
 public:
  static StatusOr<std::unique_ptr<Cluster>> Start(const std::string& dir) {
    std::unique_ptr<Cluster> c(new Cluster());
    c->dir_ = dir;
    const std::string config_path = dir + "/cluster.yaml";
    std::ofstream(config_path) << "cluster:\n  name: trainbench\n  token: training-bench-token\n  log_level: warn\n"
                                  "head:\n  address: 127.0.0.1\n  port: 0\n  data_dir: head\n"
                                  "nodes:\n"
                                  "  - name: a\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-a\n"
                                  "  - name: b\n    cpus: 2\n    memory: 4GiB\n    data_dir: node-b\n";
    ASSIGN_OR_RETURN(c->up_, ChildProcess::Spawn({TROUPE_BIN, "up", "-c", config_path}));
    RETURN_IF_ERROR(c->up_->ReadLineWithPrefix("cluster trainbench up", 120s).status());
    ASSIGN_OR_RETURN(auto config, cluster::LoadClusterConfig(config_path));
    ASSIGN_OR_RETURN(c->client_, cluster::Client::Connect(config, "", 5s));
    return c;
  }
  ~Cluster() {
    client_.reset();
    if (up_) {
      up_->Signal(SIGTERM);
      (void)up_->Wait(30s);
    }
  }

  cluster::Client& client() { return *client_; }

  // A job of 2 CPU workers, one per node, running train.py with troupe's defaults otherwise
  // (restart backoff 1 s, step_watchdog 5 min, stopped workers hung after 1 s).
  // With `standby`, entry.preload: [torch] (standby interpreters that imported torch already).
  training::JobSpec TrainerSpec(const std::string& name, const std::string& python, bool standby) const {
    training::JobSpec spec;
    spec.name = name;
    spec.workers = 2;
    spec.resources.cpus = 1;
    spec.placement = "spread";
    spec.entry.command = {python, kTrainPy};
    spec.entry.command.insert(spec.entry.command.end(), kTrainArgs.begin(), kTrainArgs.end());
    spec.entry.working_dir = dir_;
    if (standby) spec.entry.preload = {"torch"};
    return spec;
  }

  StatusOr<training::JobStatus> Show(const std::string& name) {
    ASSIGN_OR_RETURN(std::string body, client_->JobCommand("show", name, "", 5s));
    auto json = nlohmann::json::parse(body, nullptr, false);
    if (json.is_discarded() || !json.contains("status")) return InternalError("show " + name + ": " + body);
    return training::JobStatusFromJson(json["status"].dump());
  }

  // Polls the job every 10 ms until `done` holds; DeadlineExceeded with its last state.
  StatusOr<training::JobStatus> Await(const std::string& name, std::chrono::milliseconds timeout,
                                      const std::function<bool(const training::JobStatus&)>& done) {
    const auto deadline = Clock::now() + timeout;
    std::string last = "(no answer)";
    while (Clock::now() < deadline) {
      auto st = Show(name);
      if (st.ok()) {
        if (done(*st)) return *st;
        last = st->state + ": " + st->reason;
      }
      std::this_thread::sleep_for(10ms);
    }
    return DeadlineExceededError("job " + name + " still " + last);
  }

  // Submits the trainer and waits until both workers run and step 20 is committed.
  // With `standby`, it waits for a later checkpoint (kStandbyCheckpointStep): a standby starts
  // after its worker's first line and imports torch meanwhile, and a failure that comes later
  // than that finds it ready.
  StatusOr<training::JobStatus> StartTrainer(const std::string& name, const std::string& python,
                                             bool standby = false) {
    RETURN_IF_ERROR(client_->SubmitJob(TrainerSpec(name, python, standby), 10s).status());
    const int64_t step = standby ? kStandbyCheckpointStep : kCheckpointStep;
    return Await(name, 180s, [step](const training::JobStatus& s) {
      return s.state == training::kJobRunning && s.workers.size() == 2 && s.checkpoint_step >= step;
    });
  }

  // Stops and deletes the job, and waits for its workers to be gone.
  void Remove(const std::string& name) {
    (void)client_->JobCommand("stop", name, "", 10s);
    (void)Await(name, 60s, [](const training::JobStatus& s) { return training::IsFinal(s.state); });
    (void)client_->JobCommand("delete", name, "", 10s);
    std::this_thread::sleep_for(200ms);  // the node agents' keepers kill the workers' groups
  }

 private:
  Cluster() = default;
  std::string dir_;
  std::unique_ptr<ChildProcess> up_;
  std::unique_ptr<cluster::Client> client_;
};

int64_t PidOfRank(const training::JobStatus& s, uint32_t rank) {
  for (const auto& w : s.workers) {
    if (w.rank == rank) return w.pid;
  }
  return 0;
}

std::string LogOfRank(const training::JobStatus& s, uint32_t rank) {
  for (const auto& w : s.workers) {
    if (w.rank == rank) return w.log_path;
  }
  return "";
}

// Times of one recovery round, in ms after the kill (NaN: not seen).
struct Recovery {
  double detected = NAN;   // troupe: the job is restarting
  double restarted = NAN;  // troupe: the attempt counter moved (the new group is placed)
  double running = NAN;    // troupe: every worker of the new group started
  double resumed = NAN;    // rank 0's "resumed from step" line
  double step = NAN;       // rank 0's first completed step after the restart
};

StatusOr<Recovery> TroupeRecoveryRound(Cluster& cluster, const std::string& name, const std::string& python,
                                       bool standby = false) {
  ASSIGN_OR_RETURN(training::JobStatus before, cluster.StartTrainer(name, python, standby));
  const int64_t victim = PidOfRank(before, 1);
  const std::string old_log = LogOfRank(before, 0);
  if (victim <= 0) return InternalError("job " + name + " shows no pid for rank 1");
  Recovery r;
  const auto killed = Clock::now();
  if (kill(static_cast<pid_t>(victim), SIGKILL) != 0) return InternalError("kill -9 of rank 1 failed");
  std::string log;
  const auto deadline = killed + 180s;
  while (Clock::now() < deadline && std::isnan(r.step)) {
    if (log.empty()) {
      auto st = cluster.Show(name);
      if (st.ok()) {
        if (std::isnan(r.detected) && (st->state == training::kJobRestarting || st->attempt > before.attempt)) {
          r.detected = Ms(killed, Clock::now());
        }
        if (st->attempt > before.attempt) {
          if (std::isnan(r.restarted)) r.restarted = Ms(killed, Clock::now());
          if (std::isnan(r.running) && st->state == training::kJobRunning) r.running = Ms(killed, Clock::now());
          std::string path = LogOfRank(*st, 0);
          if (!path.empty() && path != old_log) log = path;
        }
      }
    } else {
      if (std::isnan(r.running)) {
        auto st = cluster.Show(name);
        if (st.ok() && st->attempt > before.attempt && st->state == training::kJobRunning) {
          r.running = Ms(killed, Clock::now());
        }
      }
      std::ifstream in(log);
      for (std::string line; std::getline(in, line);) {
        if (std::isnan(r.resumed) && IsResumedLine(line)) r.resumed = Ms(killed, Clock::now());
        if (LossStep(line) >= 0) {
          r.step = Ms(killed, Clock::now());
          break;
        }
      }
    }
    if (std::isnan(r.step)) std::this_thread::sleep_for(log.empty() ? 10ms : 5ms);
  }
  cluster.Remove(name);
  if (std::isnan(r.step)) return DeadlineExceededError("job " + name + ": no step after the restart in 180 s");
  return r;
}

// Times of one hang round, in ms after the SIGSTOP.
struct Hang {
  double detected = NAN;   // the job is restarting (the stopped worker is hung)
  double restarted = NAN;  // the attempt counter moved
};

StatusOr<Hang> TroupeHangRound(Cluster& cluster, const std::string& name, const std::string& python) {
  ASSIGN_OR_RETURN(training::JobStatus before, cluster.StartTrainer(name, python));
  const int64_t victim = PidOfRank(before, 1);
  if (victim <= 0) return InternalError("job " + name + " shows no pid for rank 1");
  Hang h;
  const auto stopped = Clock::now();
  if (kill(static_cast<pid_t>(victim), SIGSTOP) != 0) return InternalError("SIGSTOP of rank 1 failed");
  const auto deadline = stopped + 120s;
  while (Clock::now() < deadline && std::isnan(h.restarted)) {
    auto st = cluster.Show(name);
    if (st.ok()) {
      if (std::isnan(h.detected) && (st->state == training::kJobRestarting || st->attempt > before.attempt)) {
        h.detected = Ms(stopped, Clock::now());
      }
      if (st->attempt > before.attempt) h.restarted = Ms(stopped, Clock::now());
    }
    if (std::isnan(h.restarted)) std::this_thread::sleep_for(10ms);
  }
  cluster.Remove(name);
  if (kill(static_cast<pid_t>(victim), 0) == 0) {
    std::cerr << "training_bench: the stopped worker " << victim << " outlived its job; killing it\n";
    kill(static_cast<pid_t>(victim), SIGKILL);
  }
  if (std::isnan(h.restarted)) return DeadlineExceededError("job " + name + ": attempt unchanged 120 s after SIGSTOP");
  return h;
}

// ---- torchrun ----

// The children of `parent` whose environment has RANK=<rank> (torchrun's workers are its
// direct children, started with subprocess.Popen).
std::vector<pid_t> ChildrenWithRank(pid_t parent, int rank) {
  std::vector<pid_t> found;
  const std::string want = "RANK=" + std::to_string(rank);
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return found;
  while (dirent* e = readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    std::ifstream stat("/proc/" + std::string(e->d_name) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    auto paren = text.rfind(')');
    if (paren == std::string::npos) continue;
    char state = 0;
    long ppid = 0;
    if (std::sscanf(text.c_str() + paren + 1, " %c %ld", &state, &ppid) != 2 || ppid != parent) continue;
    std::ifstream env("/proc/" + std::string(e->d_name) + "/environ");
    for (std::string var; std::getline(env, var, '\0');) {
      if (var == want) {
        found.push_back(static_cast<pid_t>(pid));
        break;
      }
    }
  }
  closedir(proc);
  return found;
}

// One torchrun run of train.py (2 workers, --max_restarts 3, its own --checkpoint-file), read
// line by line. Destroying it kills torchrun and its workers (one process group).
class Torchrun {
 public:
  static StatusOr<std::unique_ptr<Torchrun>> Start(const std::string& python, const std::string& checkpoint_file) {
    std::unique_ptr<Torchrun> t(new Torchrun());
    std::vector<std::string> argv = {python, kTorchrunShim, "--standalone", "--nproc_per_node", "2",
                                     "--max_restarts", "3", kTrainPy};
    argv.insert(argv.end(), kTrainArgs.begin(), kTrainArgs.end());
    argv.push_back("--checkpoint-file");
    argv.push_back(checkpoint_file);
    SpawnOptions options;
    options.merge_stderr = true;
    options.group_dies_with_parent = true;
    options.drop_env_prefixes = {"TROUPE_"};
    ASSIGN_OR_RETURN(t->child_, ChildProcess::Spawn(argv, options));
    return t;
  }
  ~Torchrun() {
    if (child_) {
      child_->Signal(SIGTERM);
      (void)child_->Wait(15s);
    }
  }

  pid_t pid() const { return child_->pid(); }

  // Reads lines (keeping the pipe drained) until `done` holds for one (true) or `until` passes
  // (false). An `idle` check runs between lines; when it returns true, so does this.
  StatusOr<bool> ReadUntil(Clock::time_point until, const std::function<bool(const std::string&)>& done,
                           const std::function<bool()>& idle = nullptr) {
    while (Clock::now() < until) {
      auto line = child_->ReadLine(20ms);
      if (line.ok()) {
        if (std::getenv("TRAINING_BENCH_VERBOSE")) std::cerr << "torchrun| " << *line << "\n";
        tail_.push_back(*line);
        if (tail_.size() > 20) tail_.erase(tail_.begin());
        if (done(*line)) return true;
      } else if (line.status().code() != StatusCode::kDeadlineExceeded) {
        return UnavailableError("torchrun ended; its last lines:\n" + Tail());
      }
      if (idle && idle()) return true;
    }
    return false;
  }

  std::string Tail() const {
    std::string s;
    for (const auto& l : tail_) s += "  " + l + "\n";
    return s;
  }

 private:
  Torchrun() = default;
  std::unique_ptr<ChildProcess> child_;
  std::vector<std::string> tail_;
};

// Starts torchrun and waits until rank 0 is past step 20 (its checkpoint file is written).
StatusOr<std::unique_ptr<Torchrun>> StartTorchrun(const std::string& python, const std::string& checkpoint_file) {
  std::filesystem::remove(checkpoint_file);
  ASSIGN_OR_RETURN(auto run, Torchrun::Start(python, checkpoint_file));
  ASSIGN_OR_RETURN(bool ready, run->ReadUntil(Clock::now() + 180s, [](const std::string& line) {
                     return LossStep(line) > kCheckpointStep + 2;
                   }));
  if (!ready) return DeadlineExceededError("torchrun did not reach step 22 in 180 s; its last lines:\n" + run->Tail());
  return run;
}

StatusOr<Recovery> TorchrunRecoveryRound(const std::string& python, const std::string& checkpoint_file) {
  ASSIGN_OR_RETURN(auto run, StartTorchrun(python, checkpoint_file));
  auto victims = ChildrenWithRank(run->pid(), 1);
  if (victims.size() != 1) return InternalError("torchrun: found " + std::to_string(victims.size()) + " rank-1 workers");
  Recovery r;
  const auto killed = Clock::now();
  if (kill(victims[0], SIGKILL) != 0) return InternalError("kill -9 of torchrun's rank 1 failed");
  ASSIGN_OR_RETURN(bool seen, run->ReadUntil(killed + 180s, [&](const std::string& line) {
                     if (IsResumedLine(line) && std::isnan(r.resumed)) r.resumed = Ms(killed, Clock::now());
                     // Lines of steps that finished before the kill may still be in the pipe.
                     if (!std::isnan(r.resumed) && LossStep(line) >= 0) r.step = Ms(killed, Clock::now());
                     return !std::isnan(r.step);
                   }));
  if (!seen) return DeadlineExceededError("torchrun: no step after the restart in 180 s; its last lines:\n" + run->Tail());
  return r;
}

// SIGSTOP of torchrun's rank 1 until torchrun starts a new rank 1 (its worker group restarts).
StatusOr<double> TorchrunHangRound(const std::string& python, const std::string& checkpoint_file) {
  ASSIGN_OR_RETURN(auto run, StartTorchrun(python, checkpoint_file));
  auto victims = ChildrenWithRank(run->pid(), 1);
  if (victims.size() != 1) return InternalError("torchrun: found " + std::to_string(victims.size()) + " rank-1 workers");
  const pid_t victim = victims[0];
  const auto stopped = Clock::now();
  if (kill(victim, SIGSTOP) != 0) return InternalError("SIGSTOP of torchrun's rank 1 failed");
  double restarted = NAN;
  auto next_scan = Clock::now();
  auto result = run->ReadUntil(
      stopped + 240s, [](const std::string&) { return false; },
      [&]() {
        if (Clock::now() < next_scan) return false;
        next_scan = Clock::now() + 50ms;
        for (pid_t p : ChildrenWithRank(run->pid(), 1)) {
          if (p != victim) {
            restarted = Ms(stopped, Clock::now());
            return true;
          }
        }
        return false;
      });
  kill(victim, SIGKILL);  // in case torchrun left it
  if (!result.ok()) return result.status();
  if (std::isnan(restarted)) return DeadlineExceededError("torchrun did not restart its group in 240 s");
  return restarted;
}

// ---- checkpoints ----

Status WriteFile(const std::string& path, const std::vector<char>& chunk, uint64_t mib, bool sync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return InternalError("open " + path + ": " + std::strerror(errno));
  std::vector<char> buf = chunk;
  for (uint64_t i = 0; i < mib; ++i) {
    std::memcpy(buf.data(), &i, sizeof(i));  // every MiB differs
    if (::write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) {
      ::close(fd);
      return InternalError("write " + path + ": " + std::strerror(errno));
    }
  }
  if (sync && ::fsync(fd) != 0) {
    ::close(fd);
    return InternalError("fsync " + path + ": " + std::strerror(errno));
  }
  ::close(fd);
  return OkStatus();
}

void FsyncDir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

struct CommitResult {
  std::vector<double> synced_mbps, dirty_mbps, dd_mbps;
};

StatusOr<double> TimedCommand(const std::vector<std::string>& argv) {
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(auto child, ChildProcess::Spawn(argv));
  ASSIGN_OR_RETURN(int status, child->Wait(300s));
  const double ms = Ms(t0, Clock::now());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return InternalError(argv[0] + " failed");
  return ms;
}

StatusOr<CommitResult> CheckpointCommits(const std::string& dir, uint64_t mib, int rounds) {
  std::filesystem::create_directories(dir);
  storage::LmdbOptions options;
  options.path = dir + "/db";  // sync on, as the head's
  ASSIGN_OR_RETURN(auto env, storage::LmdbEnv::Open(options));
  ASSIGN_OR_RETURN(auto store, storage::CheckpointStore::Open(env.get()));
  const std::string root = dir + "/checkpoints/bench";
  const double megabytes = 2.0 * mib * (1 << 20) / 1e6;
  std::vector<char> chunk(1 << 20);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= chunk.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(chunk.data() + i, &v, 8);
  }
  CommitResult result;
  uint64_t step = 0;
  for (int round = 0; round < rounds; ++round) {
    // The ranks' writes, untimed: fsynced as train.py does ("synced"), or left to the commit's
    // fsync, as docs/checkpoints.md allows ("dirty").
    for (bool sync : {true, false}) {
      ++step;
      const std::string staging = storage::CheckpointStore::StagingDir(root, 0) + "/step-" + std::to_string(step);
      for (int rank = 0; rank < 2; ++rank) {
        const std::string shard = staging + "/rank-" + std::to_string(rank);
        std::filesystem::create_directories(shard);
        RETURN_IF_ERROR(WriteFile(shard + "/state.bin", chunk, mib, sync));
        if (sync) FsyncDir(shard);
        RETURN_IF_ERROR(WriteFile(staging + "/rank-" + std::to_string(rank) + ".done", chunk, 0, sync));
      }
      if (sync) FsyncDir(staging);
      const auto t0 = Clock::now();
      auto record = store.Commit("bench", root, 0, step, 2);
      const double ms = Ms(t0, Clock::now());
      RETURN_IF_ERROR(record.status());
      (sync ? result.synced_mbps : result.dirty_mbps).push_back(megabytes / (ms / 1000));
      std::filesystem::remove_all(record->dir);
    }
    const std::string dd_file = dir + "/dd.bin";
    ASSIGN_OR_RETURN(double dd_ms, TimedCommand({"dd", "if=/dev/zero", "of=" + dd_file, "bs=1M",
                                                 "count=" + std::to_string(2 * mib), "conv=fsync", "status=none"}));
    result.dd_mbps.push_back(megabytes / (dd_ms / 1000));
    std::filesystem::remove(dd_file);
  }
  return result;
}

// ---- the report ----

std::string Fmt(double v) {
  if (std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

void Print(const std::vector<Row>& rows) {
  std::printf("\n%-64s %-5s %9s  %-44s %9s %7s  %-14s %s\n", "metric", "unit", "troupe", "baseline", "value", "ratio",
              "target", "met");
  for (const auto& r : rows) {
    char ratio[32] = "-";
    if (!std::isnan(r.ratio())) std::snprintf(ratio, sizeof ratio, "%.2f", r.ratio());
    std::printf("%-64s %-5s %9s  %-44s %9s %7s  %-14s %s\n", r.metric.c_str(), r.unit.c_str(), Fmt(r.troupe).c_str(),
                r.baseline_name.empty() ? "(none)" : r.baseline_name.c_str(), Fmt(r.baseline).c_str(), ratio,
                r.target.empty() ? "(info)" : r.target.c_str(), r.met ? (*r.met ? "yes" : "no") : "");
  }
}

nlohmann::ordered_json Num(double v) { return std::isnan(v) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); }

bool WriteJson(const std::string& path, bool quick, const std::vector<Row>& rows, const std::vector<std::string>& notes) {
  nlohmann::ordered_json report = {{"benchmark", "training"}, {"quick", quick}, {"rows", nlohmann::ordered_json::array()}};
  for (const auto& r : rows) {
    nlohmann::ordered_json samples = nlohmann::ordered_json::array(), baseline_samples = nlohmann::ordered_json::array();
    for (double s : r.samples) samples.push_back(Num(s));
    for (double s : r.baseline_samples) baseline_samples.push_back(Num(s));
    report["rows"].push_back({{"metric", r.metric},
                              {"unit", r.unit},
                              {"troupe", Num(r.troupe)},
                              {"baseline", r.baseline_name},
                              {"baseline_value", Num(r.baseline)},
                              {"ratio", Num(r.ratio())},
                              {"target", r.target},
                              {"met", r.met ? nlohmann::ordered_json(*r.met) : nlohmann::ordered_json(nullptr)},
                              {"samples", samples},
                              {"baseline_samples", baseline_samples}});
  }
  report["notes"] = notes;
  return WriteJsonFile(path, report, "training_bench");
}

std::vector<double> Field(const std::vector<Recovery>& v, double Recovery::*f) {
  std::vector<double> out;
  for (const auto& r : v) out.push_back(r.*f);
  return out;
}

int Run(bool quick, bool commit_only, const std::string& json, const std::string& python) {
  std::string templ = (std::filesystem::temp_directory_path() / "troupe-tbench-XXXXXX").string();
  if (mkdtemp(templ.data()) == nullptr) {
    std::cerr << "training_bench: mkdtemp failed\n";
    return 1;
  }
  const std::string dir = templ;
  const int rounds = quick ? 1 : 3;
  std::vector<Row> rows;
  std::vector<std::string> notes;
  int exit_code = 0;
  auto fail = [&](const std::string& what, const Status& status) {
    std::cerr << "training_bench: " << what << ": " << status << "\n";
    notes.push_back(what + ": " + status.ToString());
    exit_code = 1;
  };

  // 0. import torch, once.
  double import_ms = NAN;
  if (!commit_only) {
    auto t = TimedCommand({python, "-c", "import torch"});
    if (t.ok()) import_ms = *t;
  }
  const bool have_torch = !std::isnan(import_ms);
  if (!have_torch && !commit_only) {
    notes.push_back("skipped the training rows: " + python +
                    " cannot import torch (apt-get install python3-torch, or --python PATH); they run where it can");
    std::cerr << "training_bench: " << notes.back() << "\n";
  }

  if (have_torch) {
    // 1 and 2 under troupe.
    std::vector<Recovery> troupe_recovery;
    std::vector<Recovery> standby_recovery;
    std::vector<Hang> troupe_hang;
    {
      auto cluster = Cluster::Start(dir);
      if (!cluster.ok()) {
        fail("the 2-node cluster did not come up", cluster.status());
      } else {
        for (int i = 0; i < rounds && exit_code == 0; ++i) {
          auto r = TroupeRecoveryRound(**cluster, "recovery-" + std::to_string(i), python);
          if (!r.ok()) fail("troupe recovery round " + std::to_string(i), r.status());
          else troupe_recovery.push_back(*r);
          std::fprintf(stderr, "troupe kill -9 round %d: %.0f ms\n", i, r.ok() ? r->step : NAN);
        }
        for (int i = 0; i < rounds && exit_code == 0; ++i) {
          auto r = TroupeRecoveryRound(**cluster, "standby-" + std::to_string(i), python, /*standby=*/true);
          if (!r.ok()) fail("troupe recovery round with standby workers " + std::to_string(i), r.status());
          else standby_recovery.push_back(*r);
          std::fprintf(stderr, "troupe kill -9 round %d, standby workers: %.0f ms\n", i, r.ok() ? r->step : NAN);
        }
        for (int i = 0; i < rounds && exit_code == 0; ++i) {
          auto h = TroupeHangRound(**cluster, "hang-" + std::to_string(i), python);
          if (!h.ok()) fail("troupe hang round " + std::to_string(i), h.status());
          else troupe_hang.push_back(*h);
          std::fprintf(stderr, "troupe SIGSTOP round %d: %.0f ms\n", i, h.ok() ? h->restarted : NAN);
        }
      }
    }
    // 1 and 2 under torchrun (no cluster running meanwhile).
    std::vector<Recovery> torchrun_recovery;
    std::vector<double> torchrun_hang;
    for (int i = 0; i < rounds && exit_code == 0; ++i) {
      auto r = TorchrunRecoveryRound(python, dir + "/torchrun-" + std::to_string(i) + ".pt");
      if (!r.ok()) fail("torchrun recovery round " + std::to_string(i), r.status());
      else torchrun_recovery.push_back(*r);
      std::fprintf(stderr, "torchrun kill -9 round %d: %.0f ms\n", i, r.ok() ? r->step : NAN);
    }
    if (!quick && exit_code == 0) {
      auto h = TorchrunHangRound(python, dir + "/torchrun-hang.pt");
      if (!h.ok()) fail("torchrun hang round", h.status());
      else torchrun_hang.push_back(*h);
      std::fprintf(stderr, "torchrun SIGSTOP round: %.0f ms\n", h.ok() ? *h : NAN);
    }

    const std::string n = " (median of " + std::to_string(rounds) + ")";
    Row recovery{"kill -9 of rank 1 -> next step printed by rank 0" + n, "ms", Median(Field(troupe_recovery, &Recovery::step)),
                 "torchrun --max_restarts 3 (monitor_interval 5 s)", Median(Field(torchrun_recovery, &Recovery::step)),
                 "<= 0.5x"};
    recovery.samples = Field(troupe_recovery, &Recovery::step);
    recovery.baseline_samples = Field(torchrun_recovery, &Recovery::step);
    if (!std::isnan(recovery.ratio())) recovery.met = recovery.ratio() <= 0.5;
    rows.push_back(recovery);
    Row detect{"  of which: kill -9 -> job restarting (troupe detects)", "ms", Median(Field(troupe_recovery, &Recovery::detected))};
    detect.samples = Field(troupe_recovery, &Recovery::detected);
    rows.push_back(detect);
    Row placed{"  of which: kill -9 -> attempt+1 (+ backoff 1 s, placement)", "ms",
               Median(Field(troupe_recovery, &Recovery::restarted))};
    placed.samples = Field(troupe_recovery, &Recovery::restarted);
    rows.push_back(placed);
    Row running{"  of which: kill -9 -> both new workers started (job running)", "ms",
                Median(Field(troupe_recovery, &Recovery::running))};
    running.samples = Field(troupe_recovery, &Recovery::running);
    rows.push_back(running);
    Row resumed{"  of which: kill -9 -> rank 0 prints 'resumed from step'", "ms",
                Median(Field(troupe_recovery, &Recovery::resumed)), "torchrun", Median(Field(torchrun_recovery, &Recovery::resumed))};
    resumed.samples = Field(troupe_recovery, &Recovery::resumed);
    resumed.baseline_samples = Field(torchrun_recovery, &Recovery::resumed);
    rows.push_back(resumed);
    Row import{"  `import torch` (" + python + " -c, once), in each restart", "ms", import_ms, "same, in torchrun's",
               import_ms};
    rows.push_back(import);
    Row standby{"same, with standby workers (entry.preload: [torch])" + n, "ms",
                Median(Field(standby_recovery, &Recovery::step)), "torchrun --max_restarts 3 (monitor_interval 5 s)",
                Median(Field(torchrun_recovery, &Recovery::step)), "<= 0.25x (stretch)"};
    standby.samples = Field(standby_recovery, &Recovery::step);
    standby.baseline_samples = Field(torchrun_recovery, &Recovery::step);
    if (!std::isnan(standby.ratio())) standby.met = standby.ratio() <= 0.25;
    rows.push_back(standby);
    Row standby_resumed{"  of which: kill -9 -> rank 0 prints 'resumed from step'", "ms",
                        Median(Field(standby_recovery, &Recovery::resumed))};
    standby_resumed.samples = Field(standby_recovery, &Recovery::resumed);
    rows.push_back(standby_resumed);
    if (!std::isnan(recovery.troupe) && !std::isnan(recovery.baseline)) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "import torch is %.0f%% of troupe's recovery and %.0f%% of torchrun's",
                    100 * import_ms / recovery.troupe, 100 * import_ms / recovery.baseline);
      notes.push_back(buf);
    }

    std::vector<double> hang_detected, hang_restarted;
    for (const auto& h : troupe_hang) hang_detected.push_back(h.detected), hang_restarted.push_back(h.restarted);
    Row hang{"SIGSTOP of rank 1 -> attempt+1" + n, "ms", Median(hang_restarted),
             quick ? "torchrun (full mode only)" : "torchrun: new worker group (1 run)", Median(torchrun_hang)};
    hang.samples = hang_restarted;
    hang.baseline_samples = torchrun_hang;
    rows.push_back(hang);
    Row hang_detect{"  of which: SIGSTOP -> job restarting (watchdog: stopped 1 s)", "ms", Median(hang_detected)};
    hang_detect.samples = hang_detected;
    rows.push_back(hang_detect);
  }

  // 3. Checkpoint commit vs dd, on the temporary directory's disk.
  const uint64_t mib = quick ? 8 : 64;
  {
    auto c = CheckpointCommits(dir + "/ckpt", mib, 3);
    if (!c.ok()) {
      fail("checkpoint commit", c.status());
    } else {
      const std::string what = "2x" + std::to_string(mib) + " MiB (median of 3)";
      const std::string dd = "dd bs=1M count=" + std::to_string(2 * mib) + " conv=fsync";
      Row synced{"Commit(), shards fsynced by the ranks, " + what, "MB/s", Median(c->synced_mbps), dd,
                 Median(c->dd_mbps), ">= 0.8x"};
      synced.samples = c->synced_mbps;
      synced.baseline_samples = c->dd_mbps;
      if (!std::isnan(synced.ratio())) synced.met = synced.ratio() >= 0.8;
      rows.push_back(synced);
      Row dirty{"Commit(), shards not fsynced (its fsync writes), " + what, "MB/s", Median(c->dirty_mbps),
                dd, Median(c->dd_mbps), ">= 0.8x"};
      dirty.samples = c->dirty_mbps;
      dirty.baseline_samples = c->dd_mbps;
      if (!std::isnan(dirty.ratio())) dirty.met = dirty.ratio() >= 0.8;
      rows.push_back(dirty);
    }
  }
  std::filesystem::remove_all(dir);

  Print(rows);
  for (const auto& note : notes) std::printf("note: %s\n", note.c_str());
  if (!json.empty() && !WriteJson(json, quick, rows, notes)) return 1;
  if (exit_code == 0 && !have_torch && !commit_only) return 77;
  return exit_code;
}

}  // namespace
}  // namespace troupe::bench

int main(int argc, char** argv) {
  (void)troupe::InitLogging("warn");
  bool quick = false;
  bool commit_only = false;
  std::string json;
  std::string python = "/usr/bin/python3";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--commit-only") {
      commit_only = true;
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--python" && i + 1 < argc) {
      python = argv[++i];
    } else {
      std::cerr << "usage: training_bench [--quick] [--commit-only] [--json PATH] [--python PATH]\n"
                   "  (PATH: a python with torch; default /usr/bin/python3; TRAINING_BENCH_VERBOSE=1 echoes torchrun)\n";
      return 2;
    }
  }
  return troupe::bench::Run(quick, commit_only, json, python);
}
