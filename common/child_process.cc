// ChildProcess on fork/exec and pipes.
#include "common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace troupe {

namespace {

std::string NameOf(const std::string& entry) { return entry.substr(0, entry.find('=')); }


// The file execve() should run for `name`: itself if it holds a '/', else the first executable
// match in PATH (as execvp searches). Resolved before fork(): the child may only make
// async-signal-safe calls.
StatusOr<std::string> ResolveProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t colon = dirs.find(':', start);
    if (colon == std::string::npos) colon = dirs.size();
    std::string dir = dirs.substr(start, colon - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = colon + 1;
  }
  return UnavailableError("cannot start '" + name + "': " + std::strerror(ENOENT) + " (not found in PATH)");
}

void CloseFrom(int first, int last) {
  if (first > last) return;
  if (syscall(SYS_close_range, first, last, 0) == 0) return;
  for (int fd = first; fd <= last && fd < 65536; ++fd) close(fd);
}

}  // namespace

std::vector<std::string> ChildEnvironment(const SpawnOptions& options) {
  std::vector<std::string> names;
  for (const auto& e : options.env) names.push_back(NameOf(e));
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    const std::string name = NameOf(entry);
    bool dropped = std::find(names.begin(), names.end(), name) != names.end();
    for (const auto& prefix : options.drop_env_prefixes) dropped = dropped || name.rfind(prefix, 0) == 0;
    if (!dropped) out.push_back(std::move(entry));
  }
  out.insert(out.end(), options.env.begin(), options.env.end());
  return out;
}

int SetForegroundGroup(int fd, pid_t group) {
  sigset_t ttou, old;
  sigemptyset(&ttou);
  sigaddset(&ttou, SIGTTOU);
  // pthread_sigmask, not sigprocmask: the launcher calling this may have other threads.
  pthread_sigmask(SIG_BLOCK, &ttou, &old);
  const int rc = tcsetpgrp(fd, group);
  const int error = rc == 0 ? 0 : errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return error;
}

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                            const std::vector<std::string>& extra_env,
                                                            bool merge_stderr) {
  SpawnOptions options;
  options.env = extra_env;
  options.merge_stderr = merge_stderr;
  return Spawn(argv, options);
}

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::vector<std::string>& argv,
                                                            const SpawnOptions& options) {
  if (argv.empty()) return InvalidArgumentError("spawn: empty argv");
  if (options.foreground_terminal >= 0 && !options.group_dies_with_parent) {
    return InvalidArgumentError("spawn: foreground_terminal needs group_dies_with_parent (a group of its own)");
  }
  ASSIGN_OR_RETURN(std::string program, ResolveProgram(options.program.empty() ? argv[0] : options.program));

  // Everything the child needs is built here: between fork() and exec() a child of a
  // multi-threaded process may only make async-signal-safe calls.
  std::vector<std::string> env_strings = ChildEnvironment(options);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  int in_pipe[2] = {-1, -1};
  int out_pipe[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};  // exec failure: the child writes its errno here
  // group_dies_with_parent: the child waits for a byte here before it runs the program, so that
  // its keeper exists before anything of the program does (else a kill -9 of this process in
  // between would leave the group without its keeper).
  int go_pipe[2] = {-1, -1};
  auto close_all = [&] {
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1], go_pipe[0], go_pipe[1]}) {
      if (fd >= 0) close(fd);
    }
  };
  if ((!options.inherit_stdio && (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0)) ||
      pipe2(err_pipe, O_CLOEXEC) != 0 || (options.group_dies_with_parent && pipe2(go_pipe, O_CLOEXEC) != 0)) {
    Status error = InternalError(std::string("pipe: ") + std::strerror(errno));
    close_all();
    return error;
  }

  // The child starts with no signal blocked and default dispositions, whatever this process
  // blocks to sigwait() for them (a blocked SIGTERM would make it unstoppable but by SIGKILL).
  sigset_t none;
  sigemptyset(&none);
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  const pid_t parent = getpid();

  pid_t pid = fork();
  if (pid < 0) {
    Status error = UnavailableError("cannot start '" + argv[0] + "': fork: " + std::strerror(errno));
    close_all();
    return error;
  }
  if (pid == 0) {
    if (options.die_with_parent) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);  // the parent died before the line above
    }
    if (options.group_dies_with_parent) setpgid(0, 0);
    // Before the program runs: it may read the terminal at once. The parent does the same after
    // fork (as shells do), so whichever runs first, the group is foreground before exec.
    if (options.foreground_terminal >= 0) SetForegroundGroup(options.foreground_terminal, getpid());
    if (!options.inherit_stdio) {
      dup2(in_pipe[0], STDIN_FILENO);
      dup2(out_pipe[1], STDOUT_FILENO);
      if (options.merge_stderr) dup2(out_pipe[1], STDERR_FILENO);
    }
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE, SIGUSR1, SIGUSR2, SIGTSTP, SIGTTIN, SIGTTOU}) {
      sigaction(sig, &default_action, nullptr);
    }
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (options.group_dies_with_parent) {
      close(go_pipe[1]);
      char go = 0;
      ssize_t got = 0;
      do {
        got = read(go_pipe[0], &go, 1);
      } while (got < 0 && errno == EINTR);
      if (got != 1) _exit(127);  // no keeper: the parent failed to start one, or is gone
    }
    // The child gets stdin, stdout and stderr and nothing else: an inherited listening socket
    // (UCX opens its own without O_CLOEXEC) would outlive this process in its children and
    // accept connections for it that nobody answers. err_pipe[1] closes itself on exec.
    CloseFrom(STDERR_FILENO + 1, err_pipe[1] - 1);
    CloseFrom(err_pipe[1] + 1, ~0U >> 1);
    if (!options.working_dir.empty() && chdir(options.working_dir.c_str()) != 0) {
      int error = errno;
      ssize_t written = write(err_pipe[1], &error, sizeof error);
      (void)written;
      _exit(127);
    }
    execve(program.c_str(), cargv.data(), envp.data());
    int error = errno;
    ssize_t written = write(err_pipe[1], &error, sizeof error);
    (void)written;
    _exit(127);
  }

  close(err_pipe[1]);
  err_pipe[1] = -1;
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->pid_ = pid;
  if (options.group_dies_with_parent) {
    setpgid(pid, pid);  // also here: whichever of the two runs first, the group exists before the keeper
    if (options.foreground_terminal >= 0) SetForegroundGroup(options.foreground_terminal, pid);
    close(go_pipe[0]);
    go_pipe[0] = -1;
    Status kept = child->StartKeeper();
    const char go = 1;
    if (!kept.ok() || write(go_pipe[1], &go, 1) != 1) {
      close_all();  // the child, never told to go, exits; the destructor reaps it
      return kept.ok() ? InternalError(std::string("cannot start a child: ") + std::strerror(errno)) : kept;
    }
    close(go_pipe[1]);
    go_pipe[1] = -1;
  }
  int exec_errno = 0;
  ssize_t n = 0;
  do {
    n = read(err_pipe[0], &exec_errno, sizeof exec_errno);
  } while (n < 0 && errno == EINTR);
  if (n > 0) {  // exec failed: the child exits at once (the destructor reaps it and the keeper)
    close_all();
    return UnavailableError("cannot start '" + argv[0] + "': " + std::strerror(exec_errno));
  }
  if (!options.inherit_stdio) {
    close(in_pipe[0]);
    close(out_pipe[1]);
    child->stdin_fd_ = in_pipe[1];
    child->stdout_fd_ = out_pipe[0];
  }
  close(err_pipe[0]);
  return child;
}

Status ChildProcess::StartKeeper() {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return InternalError(std::string("pipe: ") + std::strerror(errno));
  const pid_t group = pid_;
  pid_t keeper = fork();
  if (keeper < 0) {
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return UnavailableError(std::string("cannot start the keeper of a child's process group: fork: ") +
                            std::strerror(errno));
  }
  if (keeper == 0) {
    // Async-signal-safe calls only (this process may have had other threads). A session of its
    // own: no terminal signal, and no signal sent to the parent's group, reaches it. It reads
    // until the write end closes (the parent let go of the child, or the parent is gone).
    setsid();
    const int read_fd = pipe_fds[0];
    CloseFrom(0, read_fd - 1);
    CloseFrom(read_fd + 1, ~0U >> 1);
    char byte;
    for (;;) {
      const ssize_t n = read(read_fd, &byte, 1);
      if (n == 0 || (n < 0 && errno != EINTR)) break;
    }
    kill(-group, SIGKILL);
    _exit(0);
  }
  close(pipe_fds[0]);
  keeper_pid_ = keeper;
  keeper_fd_ = pipe_fds[1];
  return OkStatus();
}

ChildProcess::~ChildProcess() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (stdout_fd_ >= 0) close(stdout_fd_);
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (keeper_fd_ >= 0) close(keeper_fd_);  // the keeper kills what is left of the group, and exits
  if (keeper_pid_ > 0) waitpid(keeper_pid_, nullptr, 0);
}

Status ChildProcess::WriteLine(const std::string& line) {
  if (stdin_fd_ < 0) return FailedPreconditionError("the child's stdin is not a pipe of this process");
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
  if (stdout_fd_ < 0) return FailedPreconditionError("the child's stdout is not a pipe of this process");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto newline = buffered_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffered_.substr(0, newline);
      buffered_.erase(0, newline + 1);
      return line;
    }
    // Polled at least once, even with no time left: ReadLine(0ms) returns what the child has
    // written already (it used to return DeadlineExceeded without looking).
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd pfd{stdout_fd_, POLLIN, 0};
    int rc = poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (rc < 0 && errno != EINTR) return InternalError(std::string("poll: ") + std::strerror(errno));
    if (rc <= 0) {
      if (left.count() <= 0) return DeadlineExceededError("no line from child within the timeout");
      continue;
    }
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
  if (!reaped_ && pid_ > 0) kill(keeper_pid_ > 0 ? -pid_ : pid_, sig);
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

Status ChildProcess::AwaitExit(std::chrono::milliseconds timeout) {
  if (reaped_) return OkStatus();
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd < 0) return InternalError(std::string("pidfd_open: ") + std::strerror(errno));
  // The pidfd becomes readable when the child exits (reaped or not).
  pollfd pfd{pidfd, POLLIN, 0};
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int rc = 0;
  do {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    rc = poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
  } while (rc < 0 && errno == EINTR);
  close(pidfd);
  if (rc < 0) return InternalError(std::string("poll: ") + std::strerror(errno));
  if (rc == 0) return DeadlineExceededError("child " + std::to_string(pid_) + " did not exit in time");
  return OkStatus();
}

StatusOr<bool> ChildProcess::AwaitExitOrStop() {
  if (reaped_) return true;
  siginfo_t info{};
  while (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WSTOPPED | WNOWAIT) != 0) {
    if (errno != EINTR) return InternalError(std::string("waitid: ") + std::strerror(errno));
  }
  if (info.si_code != CLD_STOPPED && info.si_code != CLD_TRAPPED) return true;
  // Consume the stop report (WSTOPPED alone never reaps an exit).
  siginfo_t consumed{};
  waitid(P_PID, static_cast<id_t>(pid_), &consumed, WSTOPPED | WNOHANG);
  return false;
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
