// ChildProcess on posix_spawn and pipes.
#include "common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace troupe {

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                            const std::vector<std::string>& extra_env,
                                                            bool merge_stderr) {
  if (argv.empty()) return InvalidArgumentError("spawn: empty argv");
  int in_pipe[2];
  int out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0) return InternalError(std::string("pipe: ") + std::strerror(errno));
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    close(in_pipe[0]);
    close(in_pipe[1]);
    return InternalError(std::string("pipe: ") + std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  if (merge_stderr) posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDERR_FILENO);
  // The child gets stdin, stdout and stderr and nothing else: an inherited listening socket
  // (UCX opens its own without O_CLOEXEC) would outlive this process in its children and accept
  // connections for it that nobody answers.
  posix_spawn_file_actions_addclosefrom_np(&actions, STDERR_FILENO + 1);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  for (const auto& e : extra_env) env_strings.push_back(e);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  // The child starts with no signal blocked and default dispositions, whatever this process
  // blocks to sigwait() for them (a blocked SIGTERM would make it unstoppable but by SIGKILL).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE, SIGUSR1, SIGUSR2}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  pid_t pid = -1;
  int rc = posix_spawnp(&pid, cargv[0], &actions, &attr, cargv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  close(in_pipe[0]);
  close(out_pipe[1]);
  if (rc != 0) {
    close(in_pipe[1]);
    close(out_pipe[0]);
    return UnavailableError("cannot start '" + argv[0] + "': " + std::strerror(rc));
  }
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->pid_ = pid;
  child->stdin_fd_ = in_pipe[1];
  child->stdout_fd_ = out_pipe[0];
  return child;
}

ChildProcess::~ChildProcess() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

Status ChildProcess::WriteLine(const std::string& line) {
  std::string data = line + "\n";
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(stdin_fd_, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return UnavailableError(std::string("write to child: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  return OkStatus();
}

StatusOr<std::string> ChildProcess::ReadLine(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto newline = buffered_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffered_.substr(0, newline);
      buffered_.erase(0, newline + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return DeadlineExceededError("no line from child within the timeout");
    pollfd pfd{stdout_fd_, POLLIN, 0};
    int rc = poll(&pfd, 1, static_cast<int>(left.count()));
    if (rc < 0 && errno != EINTR) return InternalError(std::string("poll: ") + std::strerror(errno));
    if (rc <= 0) continue;
    char chunk[4096];
    ssize_t n = read(stdout_fd_, chunk, sizeof(chunk));
    if (n == 0) return UnavailableError("child closed its stdout");
    if (n < 0) {
      if (errno == EINTR) continue;
      return InternalError(std::string("read: ") + std::strerror(errno));
    }
    buffered_.append(chunk, static_cast<size_t>(n));
  }
}

StatusOr<std::string> ChildProcess::ReadLineWithPrefix(const std::string& prefix,
                                                       std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return DeadlineExceededError("no line starting with '" + prefix + "' from child");
    auto line = ReadLine(left);
    if (!line.ok()) return line.status();
    if (line->rfind(prefix, 0) == 0) return line->substr(prefix.size());
  }
}

void ChildProcess::Signal(int sig) {
  if (!reaped_ && pid_ > 0) kill(pid_, sig);
}

Status ChildProcess::Suspend() {
  if (reaped_ || pid_ <= 0) return FailedPreconditionError("child is not running");
  if (kill(pid_, SIGSTOP) != 0) return InternalError(std::string("kill: ") + std::strerror(errno));
  // A stop is reported to the parent as soon as it happens; SIGSTOP cannot be caught.
  siginfo_t info{};
  while (waitid(P_PID, static_cast<id_t>(pid_), &info, WSTOPPED | WNOWAIT) != 0) {
    if (errno != EINTR) return InternalError(std::string("waitid: ") + std::strerror(errno));
  }
  if (info.si_code != CLD_STOPPED) return UnavailableError("child exited instead of stopping");
  // Consume the stop report so a later Wait() sees only the exit.
  waitid(P_PID, static_cast<id_t>(pid_), &info, WSTOPPED | WNOHANG);
  return OkStatus();
}

StatusOr<int> ChildProcess::Wait(std::chrono::milliseconds timeout) {
  if (reaped_) return InvalidArgumentError("child already reaped");
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd < 0) return InternalError(std::string("pidfd_open: ") + std::strerror(errno));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t rc = waitpid(pid_, &status, WNOHANG);
    if (rc == pid_) {
      close(pidfd);
      reaped_ = true;
      return status;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (rc < 0 || left.count() <= 0) {
      close(pidfd);
      if (rc < 0) return InternalError(std::string("waitpid: ") + std::strerror(errno));
      return DeadlineExceededError("child " + std::to_string(pid_) + " did not exit in time");
    }
    // The pidfd becomes readable when the child exits.
    pollfd pfd{pidfd, POLLIN, 0};
    poll(&pfd, 1, static_cast<int>(left.count()));
  }
}

}  // namespace troupe
