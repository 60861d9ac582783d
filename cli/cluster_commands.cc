// troupe head | node | up | down | status | slices | events | run.
#include "cli/cluster_commands.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "actors/slice_environment.h"
#include "cli/json_output.h"
#include "cluster/bootstrap.h"
#include "cluster/client.h"
#include "gateway/gateway.h"
#include "cluster/config.h"
#include "cluster/head.h"
#include "cluster/node_agent.h"
#include "common/backoff.h"
#include "common/child_process.h"
#include "common/logging.h"

namespace troupe::cli {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::ordered_json;

// Signals taken by one waiter thread instead of their default actions. The constructor blocks
// them and must run before the command starts any other thread: a thread inherits the signal
// mask of the thread that made it, and a signal goes to any thread that does not block it (there,
// SIGTERM's default action ends the process at once, whatever the waiter would have done).
class SignalWaiter {
 public:
  explicit SignalWaiter(std::initializer_list<int> signals = {SIGINT, SIGTERM}) {
    sigemptyset(&set_);
    for (int sig : signals) sigaddset(&set_, sig);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  }
  // Calls `on_signal` for each signal until it returns false.
  void Start(std::function<bool(const siginfo_t&)> on_signal) {
    thread_ = std::thread([this, on_signal] {
      for (;;) {
        siginfo_t info{};
        if (sigwaitinfo(&set_, &info) < 0) continue;  // EINTR
        if (done_) return;
        if (!on_signal(info)) return;
      }
    });
  }
  ~SignalWaiter() { Join(); }
  // Ends the waiter (waking it if it still waits) and waits for its thread. A command calls it
  // before what `on_signal` touches goes away: those objects are made after the waiter (it must
  // come first, see above) and so are destroyed before its destructor runs, while the thread may
  // still be inside `on_signal` (a TSan run saw NodeAgent's destructor destroy the condition
  // variable its Stop, on this thread, was still notifying).
  void Join() {
    done_ = true;
    if (thread_.joinable()) {
      pthread_kill(thread_.native_handle(), SIGTERM);
      thread_.join();
    }
  }

 private:
  sigset_t set_;
  std::thread thread_;
  std::atomic<bool> done_{false};
};

// Kills every process left under this one (children, and what becomes a child as its parent
// dies: this process is a child subreaper) and reaps them, so nothing a command started on a
// slice outlives its lease. Returns how many it killed.
int KillLeftovers() {
  int killed = 0;
  const std::string self = std::to_string(getpid());
  for (int round = 0; round < 1000; ++round) {  // each round takes one generation
    std::vector<pid_t> children;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(entry.path() / "stat");
      std::string text((std::istreambuf_iterator<char>(stat)), {});
      auto close = text.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream fields(text.substr(close + 2));
      std::string state, ppid;
      fields >> state >> ppid;
      if (ppid != self) continue;
      children.push_back(static_cast<pid_t>(std::stol(name)));
      if (state != "Z" && kill(children.back(), SIGKILL) == 0) ++killed;  // a zombie is only reaped
    }
    if (children.empty()) break;
    for (pid_t pid : children) waitpid(pid, nullptr, 0);
  }
  return killed;
}

// The path of this program, for starting more of it (`troupe up`'s members, the demo's peer).
std::string SelfPath() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "/proc/self/exe" : path.string();
}

// Loads the cluster file and sets the log level: --log-level, else the node's own log_level
// (for `troupe node --name N`), else the cluster's.
StatusOr<cluster::ClusterConfig> Load(const ClusterOptions& args, const std::string& node_name = "") {
  auto config = cluster::LoadClusterConfig(args.config_path);
  if (!config.ok()) return config.status();
  std::string level = config->log_level;
  if (const auto* node = config->FindNode(node_name); node != nullptr && !node->log_level.empty()) {
    level = node->log_level;
  }
  if (!args.log_level.empty()) level = args.log_level;
  RETURN_IF_ERROR(InitLogging(level));
  return config;
}

int Fail(const std::string& command, const Status& status) {
  std::cerr << "troupe " << command << ": " << status.message() << "\n";
  bool bad_input = status.code() == StatusCode::kInvalidArgument || status.code() == StatusCode::kFailedPrecondition;
  return bad_input ? 2 : 1;
}

std::string Bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1fGiB", b / double(1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.0fMiB", b / double(1ull << 20));
  else std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(b));
  return buf;
}

}  // namespace

int RunHead(ClusterOptions args) {
  SignalWaiter signals;
  auto config = Load(args);
  if (!config.ok()) return Fail("head", config.status());
  if (Status ports = cluster::CheckPortsFree(*config, /*include_nodes=*/false); !ports.ok()) return Fail("head", ports);
  auto head = cluster::Head::Start(*config);
  if (!head.ok()) return Fail("head", head.status());
  std::cout << "READY " << (*head)->node_id() << " " << (*head)->address() << std::endl;
  spdlog::info("head of cluster '{}' listening on {}", config->name, (*head)->address());
  std::promise<int> stop;
  signals.Start([&stop](const siginfo_t& info) {
    stop.set_value(info.si_signo);
    return false;
  });
  int sig = stop.get_future().get();
  signals.Join();  // its thread may still be in set_value; `stop` goes before `signals`
  spdlog::info("head: stopping ({})", strsignal(sig));
  (*head)->Stop();
  return 0;
}

int RunGateway(ClusterOptions args) {
  SignalWaiter signals;
  auto config = Load(args);
  if (!config.ok()) return Fail("gateway", config.status());
  config->gateway.enabled = true;  // without the section: its defaults
  if (!args.listen.empty()) config->gateway.listen = args.listen;
  // The head may still be starting (troupe up starts the gateway right after it): Connect waits.
  auto client = cluster::Client::Connect(*config, args.head, 30s);
  if (!client.ok()) return Fail("gateway", client.status());
  auto gateway = gateway::Gateway::Start(*config, client->get(), 30s);
  if (!gateway.ok()) return Fail("gateway", gateway.status());
  std::cout << "GATEWAY " << (*gateway)->url() << std::endl;
  spdlog::info("gateway of cluster '{}' serving the OpenAI API on {}", config->name, (*gateway)->url());
  if (!config->head.data_dir.empty()) {
    // Where `troupe up`'s gateway serves, for scripts (scripts/bootstrap.sh run prints a curl
    // line from it). Written only when the head's data directory exists (troupe up made it).
    std::error_code ec;
    if (std::filesystem::is_directory(config->head.data_dir, ec)) {
      const std::string path = config->head.data_dir + "/gateway.url";
      std::ofstream(path + ".tmp") << (*gateway)->url() << "\n";
      std::rename((path + ".tmp").c_str(), path.c_str());
    }
  }
  std::promise<int> stop;
  signals.Start([&stop](const siginfo_t& info) {
    stop.set_value(info.si_signo);
    return false;
  });
  int sig = stop.get_future().get();
  signals.Join();  // its thread may still be in set_value; `stop` goes before `signals`
  spdlog::info("gateway: stopping ({})", strsignal(sig));
  (*gateway)->Stop();
  return 0;
}

int RunNode(ClusterOptions args) {
  SignalWaiter signals;
  auto config = Load(args, args.name);
  if (!config.ok()) return Fail("node", config.status());
  auto agent = cluster::NodeAgent::Start(*config, args.name, args.head);
  if (!agent.ok()) return Fail("node", agent.status());
  signals.Start([&agent](const siginfo_t&) {
    (*agent)->Stop();
    return false;
  });
  bool first = true;
  (*agent)->Run([&](const cluster::JoinReply& reply) {
    if (first) std::cout << "JOINED " << reply.cluster_name << " " << args.name << std::endl;
    first = false;
    spdlog::info("node {} joined cluster '{}'", args.name, reply.cluster_name);
  });
  signals.Join();  // before the agent, whose Stop its thread may still be running, goes
  return 0;
}

int RunStatus(ClusterOptions args) {
  if (args.log_level.empty()) args.log_level = "warn";
  auto config = Load(args);
  if (!config.ok()) return Fail("status", config.status());
  auto client = cluster::Client::Connect(*config, args.head, 3s);
  if (!client.ok()) return Fail("status", client.status());
  auto list = (*client)->ListNodes(5s);
  if (!list.ok()) return Fail("status", list.status());
  // Free and total slices per node, from the head's scheduler.
  std::map<std::string, std::pair<uint64_t, uint64_t>> slices;  // node -> (free, total)
  if (auto sl = (*client)->ListSlices(5s); sl.ok()) {
    for (const auto& g : sl->gpus) {
      slices[g.node].first += g.slices_free;
      slices[g.node].second += g.slices_total;
    }
  }
  if (args.json) {
    Json nodes = Json::array();
    for (const auto& n : list->nodes) {
      Json gpus = Json::array();
      for (const auto& g : n.gpus) {
        gpus.push_back({{"name", g.name}, {"memory_bytes", g.memory_bytes}, {"simulated", g.simulated}});
      }
      nodes.push_back({{"name", n.name},
                       {"node_id", n.node_id},
                       {"state", n.state},
                       {"address", n.address},
                       {"pid", n.pid},
                       {"cpus", n.cpus},
                       {"memory_bytes", n.memory_bytes},
                       {"slice_memory_bytes", n.slice_memory_bytes},
                       {"slices_total", slices[n.name].second},
                       {"slices_free", slices[n.name].first},
                       {"joins", n.joins},
                       {"heartbeat_age_ms", n.heartbeat_age_ms},
                       {"state_since_unix_ms", n.last_change_unix_ms},
                       {"reason", n.reason},
                       {"gpus", std::move(gpus)}});
    }
    Json out = {{"cluster", list->cluster_name}, {"head", (*client)->head_address()}, {"nodes", std::move(nodes)}};
    std::cout << OneLineJson(out) << std::endl;
    return 0;
  }
  std::printf("cluster %s, head at %s\n\n", list->cluster_name.c_str(), (*client)->head_address().c_str());
  std::printf("%-12s %-8s %-22s %7s %5s %9s  %-28s %-7s %6s %9s\n", "NODE", "STATE", "ADDRESS", "PID", "CPUS",
              "MEMORY", "GPUS", "SLICES", "JOINS", "HEARTBEAT");
  for (const auto& n : list->nodes) {
    std::string gpus;
    for (const auto& g : n.gpus) gpus += (gpus.empty() ? "" : ",") + Bytes(g.memory_bytes) + (g.simulated ? "(sim)" : "");
    if (gpus.empty()) gpus = "-";
    std::string age = n.heartbeat_age_ms < 0 ? "-" : std::to_string(n.heartbeat_age_ms) + "ms";
    const auto& [free, total] = slices[n.name];
    std::string slice_text = total == 0 ? "-" : std::to_string(free) + "/" + std::to_string(total);
    std::printf("%-12s %-8s %-22s %7lld %5u %9s  %-28s %-7s %6llu %9s\n", n.name.c_str(), n.state.c_str(),
                n.address.c_str(), static_cast<long long>(n.pid), n.cpus, Bytes(n.memory_bytes).c_str(), gpus.c_str(),
                slice_text.c_str(), static_cast<unsigned long long>(n.joins), age.c_str());
    if (n.state == "dead" && !n.reason.empty()) std::printf("    %s\n", n.reason.c_str());
  }
  return 0;
}

int RunUp(ClusterOptions args) {
  SignalWaiter signals({SIGINT, SIGTERM, SIGCHLD});
  auto config = Load(args);
  if (!config.ok()) return Fail("up", config.status());
  if (config->head.data_dir.empty()) {
    return Fail("up", InvalidArgumentError(config->source + ": head.data_dir is required"));
  }
  if (Status ports = cluster::CheckPortsFree(*config, /*include_nodes=*/true); !ports.ok()) return Fail("up", ports);
  std::string pid_file = config->head.data_dir + "/up.pid";
  std::error_code ec;
  std::filesystem::create_directories(config->head.data_dir, ec);
  if (ec) return Fail("up", InvalidArgumentError("cannot create " + config->head.data_dir + ": " + ec.message()));
  std::ofstream(pid_file) << getpid() << "\n";

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  bool child_exited = false;
  signals.Start([&](const siginfo_t& info) {
    std::lock_guard<std::mutex> lock(mu);
    if (info.si_signo == SIGCHLD) {
      child_exited = true;  // reap it now: an unreaped child still looks alive to its peers
    } else {
      spdlog::info("up: {}: stopping the cluster", strsignal(info.si_signo));
      stopping = true;
    }
    cv.notify_all();
    return info.si_signo == SIGCHLD;
  });

  struct Member {
    std::string label;
    std::vector<std::string> argv;
    std::string ready_prefix;
    std::unique_ptr<ChildProcess> process;
    int restarts = 0;
    // A member that exits within kStableRun of its start waits longer each time before it is
    // started again: 100 ms, doubling, at most 5 s (a crash loop does not spin); one that ran
    // longer starts again after 100 ms.
    Backoff backoff{BackoffPolicy{100ms, 2.0, 5000ms, 0.0}};
    std::chrono::steady_clock::time_point started{};
  };
  constexpr auto kStableRun = 10s;
  std::vector<Member> members;
  // Members run this program, shown by `ps` as "troupe head -c FILE" and "troupe node --name N
  // ...", and die with this process: a `troupe up` killed by SIGKILL leaves no cluster behind
  // that `troupe down` could not stop and a new `troupe up` would collide with.
  const std::string self_path = SelfPath();
  std::vector<std::string> common = {"-c", args.config_path};
  if (!args.log_level.empty()) common.insert(common.end(), {"--log-level", args.log_level});
  Member head{"head", {"troupe", "head"}, "READY ", nullptr, 0};
  head.argv.insert(head.argv.end(), common.begin(), common.end());
  members.push_back(std::move(head));
  for (const auto& node : config->nodes) {
    Member m{"node " + node.name, {"troupe", "node", "--name", node.name}, "JOINED ", nullptr, 0};
    m.argv.insert(m.argv.end(), common.begin(), common.end());
    members.push_back(std::move(m));
  }
  if (config->gateway.enabled) {
    // The gateway last: it asks the head for its api actor at start.
    Member m{"gateway", {"troupe", "gateway"}, "GATEWAY ", nullptr, 0};
    m.argv.insert(m.argv.end(), common.begin(), common.end());
    members.push_back(std::move(m));
  }

  auto spawn = [&](Member& m) -> Status {
    SpawnOptions options;
    options.program = self_path;
    options.die_with_parent = true;  // spawned and restarted from this (the main) thread
    m.started = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(m.process, ChildProcess::Spawn(m.argv, options));
    return OkStatus();
  };
  std::string gateway_url;
  auto await_ready = [&](Member& m) -> Status {
    auto line = m.process->ReadLineWithPrefix(m.ready_prefix, 30s);
    if (!line.ok()) return Status(line.status().code(), m.label + " did not start: " + line.status().message());
    if (m.label == "gateway") gateway_url = *line;  // the line after its prefix
    return OkStatus();
  };
  auto start = [&](Member& m) -> Status {
    RETURN_IF_ERROR(spawn(m));
    return await_ready(m);
  };
  auto t0 = std::chrono::steady_clock::now();
  // The head first (nodes need its address), then every node at once.
  Status started = start(members[0]);
  for (size_t i = 1; started.ok() && i < members.size(); ++i) started = spawn(members[i]);
  for (size_t i = 1; started.ok() && i < members.size(); ++i) started = await_ready(members[i]);
  if (!started.ok()) {
    for (auto& other : members) {
      if (other.process) other.process->Signal(SIGTERM);
    }
    return Fail("up", started);
  }
  for (auto& m : members) std::printf("%-14s pid %d\n", m.label.c_str(), m.process->pid());
  std::fflush(stdout);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  auto head_address = cluster::ResolveHeadAddress(*config, "");
  std::printf("cluster %s up: head at %s, %zu node(s) joined in %lld ms (Ctrl-C stops it; `troupe status -c %s`)\n",
              config->name.c_str(), head_address.ok() ? head_address->c_str() : "?", config->nodes.size(),
              static_cast<long long>(ms), args.config_path.c_str());
  if (!gateway_url.empty()) {
    std::printf("gateway serving the OpenAI API at %s (keys: `troupe key create -c %s --tenant T`)\n",
                gateway_url.c_str(), args.config_path.c_str());
  }
  std::fflush(stdout);

  // Supervise: a member that exits is started again (with a bounded back-off).
  bool stop = false;
  while (!stop) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (cv.wait_for(lock, 1s, [&] { return stopping || child_exited; }) && stopping) break;
      child_exited = false;
    }
    for (auto& m : members) {
      auto exited = m.process->Wait(0ms);
      if (!exited.ok()) continue;  // still running
      ++m.restarts;
      std::string how = WIFSIGNALED(*exited) ? "killed by signal " + std::to_string(WTERMSIG(*exited))
                                             : "exit code " + std::to_string(WEXITSTATUS(*exited));
      spdlog::warn("up: {} (pid {}) exited ({}); restarting it (restart #{})", m.label, m.process->pid(), how,
                   m.restarts);
      std::printf("%s exited (%s); restarting (#%d)\n", m.label.c_str(), how.c_str(), m.restarts);
      std::fflush(stdout);
      if (std::chrono::steady_clock::now() - m.started >= kStableRun) m.backoff.Reset();
      {
        std::unique_lock<std::mutex> lock(mu);
        stop = cv.wait_for(lock, m.backoff.Next(), [&] { return stopping; });
      }
      if (stop) break;
      Status s = start(m);
      if (!s.ok()) spdlog::error("up: {}", s.ToString());
    }
  }
  // Orderly stop: nodes first, then the head.
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    if (it->process) it->process->Signal(SIGTERM);
  }
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    if (it->process && !it->process->Wait(10s).ok()) it->process->Signal(SIGKILL);
  }
  std::remove(pid_file.c_str());
  signals.Join();  // a SIGCHLD now would run the callback on `mu` and `cv`, which go first
  std::printf("cluster %s stopped\n", config->name.c_str());
  return 0;
}

int RunDown(ClusterOptions args) {
  auto config = cluster::LoadClusterConfig(args.config_path);
  if (!config.ok()) return Fail("down", config.status());
  std::string pid_file = config->head.data_dir + "/up.pid";
  std::ifstream in(pid_file);
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0) {
    return Fail("down", NotFoundError("no running `troupe up` for " + args.config_path + " (no " + pid_file + ")"));
  }
  if (kill(pid, SIGTERM) != 0) {
    std::remove(pid_file.c_str());
    return Fail("down", NotFoundError("`troupe up` (pid " + std::to_string(pid) + ") is not running"));
  }
  // Running means: it exists and is not a zombie (an exited child its parent has not reaped).
  auto running = [pid] {
    if (kill(pid, 0) != 0) return false;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), {});
    auto close = text.rfind(')');
    return close == std::string::npos || close + 2 >= text.size() || text[close + 2] != 'Z';
  };
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);  // waiting for another process to exit: nothing to block on
  }
  if (running()) return Fail("down", UnavailableError("`troupe up` (pid " + std::to_string(pid) + ") did not stop in 20 s"));
  std::cout << "cluster " << config->name << " stopped\n";
  return 0;
}

}  // namespace troupe::cli

namespace troupe::cli {

StatusOr<std::unique_ptr<cluster::Client>> ConnectFor(ClusterOptions& args) {
  if (args.log_level.empty()) args.log_level = "warn";
  ASSIGN_OR_RETURN(auto config, Load(args));
  return cluster::Client::Connect(config, args.head, 3s);
}

namespace {

// Waits until the command exits (not reaping it). On a terminal, a stop of the command (Ctrl-Z,
// or reading the terminal from the background) is relayed the way a shell relays one of a job:
// this process takes the terminal back and stops itself, so the shell that started it sees its
// job stop; when continued (`fg` or `bg`), it hands the terminal on if it is in the foreground
// again and continues the command's group.
Status AwaitCommand(ChildProcess& command, bool on_terminal) {
  for (;;) {
    ASSIGN_OR_RETURN(bool exited, command.AwaitExitOrStop());
    if (exited) break;
    if (!on_terminal) continue;  // stopped by someone's SIGSTOP: it waits for their SIGCONT
    // Stopped by Ctrl-Z, or by reading the terminal from the background (SIGTTIN).
    if (tcgetpgrp(STDIN_FILENO) == command.pid()) SetForegroundGroup(STDIN_FILENO, getpgrp());
    raise(SIGSTOP);
    if (tcgetpgrp(STDIN_FILENO) == getpgrp()) SetForegroundGroup(STDIN_FILENO, command.pid());
    command.Signal(SIGCONT);
  }
  // The terminal comes back to this process's group for what it prints last; the shell that
  // started it takes it back when it exits.
  if (on_terminal && tcgetpgrp(STDIN_FILENO) == command.pid()) SetForegroundGroup(STDIN_FILENO, getpgrp());
  return OkStatus();
}

}  // namespace

int RunSlices(ClusterOptions args) {
  auto client = ConnectFor(args);
  if (!client.ok()) return Fail("slices", client.status());
  auto list = (*client)->ListSlices(5s);
  if (!list.ok()) return Fail("slices", list.status());
  if (args.json) {
    Json gpus = Json::array();
    for (const auto& g : list->gpus) {
      Json leases = Json::array();
      for (const auto& l : g.leases) {
        leases.push_back({{"lease_id", l.lease_id}, {"tenant", l.tenant}, {"owner", l.owner}, {"slices", l.slices}});
      }
      gpus.push_back({{"node", g.node},
                      {"node_state", g.node_state},
                      {"index", g.gpu.index},
                      {"name", g.gpu.name},
                      {"uuid", g.gpu.uuid},
                      {"simulated", g.gpu.simulated},
                      {"memory_bytes", g.gpu.memory_bytes},
                      {"slice_memory_bytes", g.slice_memory_bytes},
                      {"slices_total", g.slices_total},
                      {"slices_free", g.slices_free},
                      {"free_memory_bytes", uint64_t{g.slices_free} * g.slice_memory_bytes},
                      {"utilisation", g.utilisation},
                      {"memory_used_bytes", g.memory_used_bytes},
                      {"leases", std::move(leases)}});
    }
    Json pending = Json::array();
    for (const auto& p : list->pending) {
      pending.push_back({{"lease_id", p.lease_id},
                         {"tenant", p.tenant},
                         {"count", p.count},
                         {"placed", p.placed},
                         {"waited_ms", p.waited_ms},
                         {"reason", p.reason},
                         {"priority", p.priority}});
    }
    std::cout << OneLineJson({{"gpus", std::move(gpus)}, {"pending", std::move(pending)}}) << std::endl;
    return 0;
  }
  std::printf("%-10s %-4s %-20s %-10s %-9s %-7s %-10s %5s  %s\n", "NODE", "GPU", "NAME", "MEMORY", "SLICE", "FREE",
              "FREE MEM", "UTIL", "LEASES (id tenant slices owner)");
  for (const auto& g : list->gpus) {
    std::string name = g.gpu.name + (g.gpu.simulated ? " (sim)" : "");
    std::string leases;
    for (const auto& l : g.leases) {
      leases += (leases.empty() ? "" : "; ") + std::to_string(l.lease_id) + " " + l.tenant + " " +
                std::to_string(l.slices) + " " + l.owner;
    }
    std::string free = std::to_string(g.slices_free) + "/" + std::to_string(g.slices_total);
    std::printf("%-10s %-4u %-20s %-10s %-9s %-7s %-10s %4.0f%%  %s%s\n", g.node.c_str(), g.gpu.index, name.c_str(),
                Bytes(g.gpu.memory_bytes).c_str(), Bytes(g.slice_memory_bytes).c_str(), free.c_str(),
                Bytes(uint64_t{g.slices_free} * g.slice_memory_bytes).c_str(), g.utilisation * 100,
                leases.empty() ? "-" : leases.c_str(), g.node_state == "alive" ? "" : ("  [node " + g.node_state + "]").c_str());
  }
  if (!list->pending.empty()) {
    std::printf("\nwaiting requests:\n");
    for (const auto& p : list->pending) {
      std::printf("  lease %llu tenant %s: %u/%u placed, %s, waiting %lld ms (%s)\n",
                  static_cast<unsigned long long>(p.lease_id), p.tenant.c_str(), p.placed, p.count, p.priority.c_str(),
                  static_cast<long long>(p.waited_ms), p.reason.c_str());
    }
  }
  return 0;
}

int RunEvents(ClusterOptions args) {
  auto client = ConnectFor(args);
  if (!client.ok()) return Fail("events", client.status());
  auto list = (*client)->SupervisionEvents(5s);
  if (!list.ok()) return Fail("events", list.status());
  if (args.json) {
    Json events = Json::array();
    for (const auto& e : list->events) {
      events.push_back({{"supervisor", e.supervisor},
                        {"child", e.child},
                        {"kind", e.kind},
                        {"reason", e.reason},
                        {"node", e.node},
                        {"unix_ms", e.unix_ms},
                        {"restarts", e.restarts}});
    }
    std::cout << OneLineJson({{"events", std::move(events)}}) << std::endl;
    return 0;
  }
  for (const auto& e : list->events) {
    std::printf("%lld %s %s %s %s\n", static_cast<long long>(e.unix_ms), e.supervisor.c_str(),
                e.child.empty() ? "-" : e.child.c_str(), e.kind.c_str(), e.reason.c_str());
  }
  if (list->events.empty()) std::printf("no supervision events\n");
  return 0;
}

int RunOnSlice(RunOptions args) {
  // The command runs in this process's place, as ssh, srun and `docker run` run theirs: it gets
  // this process's stdin, stdout and stderr, and the signals this process is sent (TERM, INT,
  // HUP, USR1, USR2), and it dies with this process (kill -9 included), so it never outlives the
  // lease that this process holds. The slice is released only once the command is gone.
  // Blocked before the client starts its threads (see SignalWaiter).
  SignalWaiter signals({SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2});
  // What the command starts and leaves behind when it exits becomes this process's child; it is
  // killed before the lease is released.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  struct Launch {
    std::mutex mu;
    ChildProcess* child = nullptr;  // set while the command runs (exited or not, not yet reaped)
    std::string lease_lost;         // why the head ended the lease; empty while it holds
    bool command_ended = false;     // the command has exited: the lease is being released
  };
  auto launch = std::make_shared<Launch>();
  // The command leads a process group of its own, which a keeper process kills whole when this
  // process ends, kill -9 included: nothing the command started outlives the lease. Run as a
  // foreground job of a terminal, this process hands the terminal's foreground to the command's
  // group, as a job-control shell does, so the command reads the terminal and the terminal's
  // keys reach it; it takes the terminal back when the command stops (Ctrl-Z) or ends.
  const bool on_terminal = isatty(STDIN_FILENO) != 0;
  signals.Start([launch](const siginfo_t& info) {
    std::lock_guard<std::mutex> lock(launch->mu);
    // After the command: this process only releases the lease (at most a few seconds) and exits
    // with the command's status; a signal now (a second Ctrl-C) must not cut that short.
    if (launch->command_ended) return true;
    if (launch->child == nullptr) {
      if (info.si_signo == SIGUSR1 || info.si_signo == SIGUSR2) return true;  // no command to tell yet
      // Before the command started: nothing runs on the slice; the head ends the lease request
      // (or the lease) when this process is gone.
      std::fprintf(stderr, "troupe run: %s before the command started; not starting it\n", strsignal(info.si_signo));
      std::_Exit(128 + info.si_signo);
    }
    // The command's whole group gets every signal sent here. The terminal's keys do not come
    // here: they signal the foreground group, the command's.
    launch->child->Signal(info.si_signo);
    return true;
  });

  auto client = ConnectFor(args.cluster);
  if (!client.ok()) return Fail("run", client.status());
  // The lease can end under the command (a node it uses is lost): the command is stopped then,
  // as a batch scheduler stops a job whose node failed.
  auto lease = (*client)->RequestSlices(args.request, args.timeout, [launch](const cluster::LeaseEnded& e) {
    std::lock_guard<std::mutex> lock(launch->mu);
    launch->lease_lost = e.reason.empty() ? "ended by the head" : e.reason;
    std::fprintf(stderr, "troupe run: lease %llu ended: %s; stopping the command\n",
                 static_cast<unsigned long long>(e.lease_id), launch->lease_lost.c_str());
    if (launch->child) launch->child->Signal(SIGTERM);
  });
  if (!lease.ok()) return Fail("run", lease.status());
  const auto& w = lease->grant.workers.at(0);
  actors::SliceAssignment slice{w.gpu_index, w.simulated ? "" : w.gpu_id, w.memory_bytes, w.compute_percent,
                                w.simulated, lease->grant.lease_id};
  SpawnOptions options;
  // The slice's variables replace the caller's (a CUDA_VISIBLE_DEVICES=7 of the caller must not
  // win over the slice's GPU); a lease without a GPU hides every GPU.
  options.env = w.gpu_index != cluster::kNoGpuIndex ? actors::SliceEnvironment(slice, actors::FindMpsPipeDirectory())
                                                    : actors::NoGpuEnvironment(lease->grant.lease_id);
  options.drop_env_prefixes = actors::SliceEnvironmentPrefixes();
  options.inherit_stdio = true;
  options.die_with_parent = true;  // spawned from the main thread, which lives until the end
  options.group_dies_with_parent = true;
  options.foreground_terminal = on_terminal && tcgetpgrp(STDIN_FILENO) == getpgrp() ? STDIN_FILENO : -1;
  if (w.gpu_index == cluster::kNoGpuIndex) {
    std::fprintf(stderr, "troupe run: lease %llu: no GPU, node %s (waited %lld ms)\n",
                 static_cast<unsigned long long>(lease->grant.lease_id), w.node.c_str(),
                 static_cast<long long>(lease->grant.waited_ms));
  } else {
    std::fprintf(stderr, "troupe run: lease %llu: %sGPU %u of node %s, %s, %u%% compute (waited %lld ms)\n",
                 static_cast<unsigned long long>(lease->grant.lease_id), w.simulated ? "simulated " : "", w.gpu_index,
                 w.node.c_str(), Bytes(w.memory_bytes).c_str(), w.compute_percent,
                 static_cast<long long>(lease->grant.waited_ms));
  }
  std::unique_ptr<ChildProcess> child;
  {
    std::lock_guard<std::mutex> lock(launch->mu);  // a signal now waits for the command to exist
    auto spawned = ChildProcess::Spawn(args.command, options);
    if (!spawned.ok()) {
      (void)(*client)->ReleaseSlices(*lease, 5s);
      return Fail("run", spawned.status());
    }
    child = std::move(*spawned);
    launch->child = child.get();
    if (!launch->lease_lost.empty()) child->Signal(SIGTERM);
  }
  if (Status waited = AwaitCommand(*child, on_terminal); !waited.ok()) {
    std::fprintf(stderr, "troupe run: %s; stopping the command\n", waited.ToString().c_str());
  }
  std::string lost;
  {
    // Reaped only here: until then its pid cannot belong to another process that a forwarded
    // signal would reach.
    std::lock_guard<std::mutex> lock(launch->mu);
    launch->child = nullptr;
    launch->command_ended = true;
    lost = launch->lease_lost;
  }
  auto exit = child->Wait(std::chrono::seconds(10));
  child.reset();  // its keeper kills what is left of its process group
  if (int left = KillLeftovers(); left > 0) {
    std::fprintf(stderr, "troupe run: killed %d process(es) the command left running\n", left);
  }
  // The command and all it started are gone: its slice may go to the next workload.
  if (lost.empty()) {
    Status released = (*client)->ReleaseSlices(*lease, 5s);
    if (!released.ok()) std::fprintf(stderr, "troupe run: release: %s\n", released.ToString().c_str());
  }
  if (!exit.ok()) return Fail("run", exit.status());
  const int code = WIFEXITED(*exit) ? WEXITSTATUS(*exit) : 128 + WTERMSIG(*exit);
  // A command whose lease was lost did not run to the end on its slice, whatever it returned.
  return !lost.empty() && code == 0 ? 1 : code;
}

}  // namespace troupe::cli
