// PtyProcess: a program run on a pseudo-terminal of its own, as a user's terminal runs a shell:
// it leads a new session whose controlling terminal is the pty, in the terminal's foreground
// process group. The test types into the terminal (keys like Ctrl-C and Ctrl-Z included) and
// reads what the terminal shows.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace troupe::testing {

class PtyProcess {
 public:
  /// Starts `argv` (argv[0] a path) on a new pty. Unavailable with the reason if it cannot.
  static StatusOr<std::unique_ptr<PtyProcess>> Start(const std::vector<std::string>& argv) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
      const int error = errno;
      if (master >= 0) close(master);
      return UnavailableError(std::string("no pseudo-terminal: ") + std::strerror(error));
    }
    const std::string slave_name = ptsname(master);
    // Built before fork: the child of a multi-threaded process makes async-signal-safe calls only.
    std::vector<std::string> args = argv;
    std::vector<char*> cargv;
    for (auto& a : args) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      close(master);
      return UnavailableError(std::string("fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      setsid();  // a session without a terminal; opening the pty makes it the controlling one
      const int slave = open(slave_name.c_str(), O_RDWR);
      if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) != 0) _exit(126);
      dup2(slave, STDIN_FILENO);
      dup2(slave, STDOUT_FILENO);
      dup2(slave, STDERR_FILENO);
      if (slave > STDERR_FILENO) close(slave);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    std::unique_ptr<PtyProcess> p(new PtyProcess());
    p->pid_ = pid;
    p->master_ = master;
    return p;
  }

  ~PtyProcess() {
    if (!reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(master_);
  }

  pid_t pid() const { return pid_; }

  /// Types `keys` on the terminal ("\x03" is Ctrl-C, "\x1a" Ctrl-Z, "\n" Enter).
  Status Type(const std::string& keys) {
    if (write(master_, keys.data(), keys.size()) != static_cast<ssize_t>(keys.size())) {
      return UnavailableError(std::string("write to the terminal: ") + std::strerror(errno));
    }
    return OkStatus();
  }

  /// Reads what the terminal shows until a line (carriage returns dropped) starts with
  /// `prefix`; returns the rest of that line. DeadlineExceeded after `timeout`, Unavailable when
  /// the terminal closes (no process holds it any more).
  StatusOr<std::string> ReadLineWithPrefix(const std::string& prefix, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      for (size_t newline; (newline = shown_.find('\n')) != std::string::npos;) {
        std::string line = shown_.substr(0, newline);
        shown_.erase(0, newline + 1);
        line.erase(std::remove(line.begin(), line.end(), '\r'), line.end());
        if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return DeadlineExceededError("the terminal showed no line starting with '" + prefix + "'");
      pollfd pfd{master_, POLLIN, 0};
      if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      const ssize_t n = read(master_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return UnavailableError("the terminal closed");
      shown_.append(chunk, static_cast<size_t>(n));
    }
  }

  /// The next change of the process: its wait status once it stops (WIFSTOPPED) or exits (then
  /// it is reaped). DeadlineExceeded after `timeout`.
  StatusOr<int> WaitForChange(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      const pid_t rc = waitpid(pid_, &status, WUNTRACED | WNOHANG);
      if (rc == pid_) {
        if (!WIFSTOPPED(status)) reaped_ = true;
        return status;
      }
      if (rc < 0) return InternalError(std::string("waitpid: ") + std::strerror(errno));
      if (std::chrono::steady_clock::now() >= deadline) return DeadlineExceededError("the process did not change");
      // A stop is not seen through a pidfd: look again every few milliseconds until the deadline.
      poll(nullptr, 0, 5);
    }
  }

 private:
  PtyProcess() = default;
  pid_t pid_ = -1;
  int master_ = -1;
  bool reaped_ = false;
  std::string shown_;
};

}  // namespace troupe::testing
