// Helpers for tests that run real `troupe` processes: start one and wait for its ready line,
// read one `troupe status --json` line, pick a node's field out of it.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/child_process.h"

namespace troupe::testing {

/// Starts `argv` (with `env` added) and waits up to 30 s for a stdout line starting with
/// `ready`; on failure records a test failure naming the command and returns nullptr.
inline std::unique_ptr<ChildProcess> StartUntilReady(const std::vector<std::string>& argv, const std::string& ready,
                                                     const std::vector<std::string>& env = {}) {
  auto child = ChildProcess::Spawn(argv, env);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return nullptr;
  auto line = (*child)->ReadLineWithPrefix(ready, std::chrono::seconds(30));
  std::string command;
  for (const auto& a : argv) command += a + " ";
  EXPECT_TRUE(line.ok()) << "`" << command << "` did not report " << ready << ": " << line.status();
  return line.ok() ? std::move(*child) : nullptr;
}

/// Runs `argv` to completion (its stdout and stderr read and dropped, 10 s at most for each line
/// and for the exit); its exit code, or -1 if it could not run or did not exit normally.
inline int RunToExit(const std::vector<std::string>& argv) {
  auto child = ChildProcess::Spawn(argv, {}, /*merge_stderr=*/true);
  if (!child.ok()) return -1;
  while ((*child)->ReadLine(std::chrono::seconds(10)).ok()) {
  }
  auto status = (*child)->Wait(std::chrono::seconds(10));
  return status.ok() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
}

/// The first stdout line of `argv` (a `troupe status --json` command), or "" if there is none.
inline std::string FirstLine(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}) {
  auto child = ChildProcess::Spawn(argv, env);
  if (!child.ok()) return "";
  auto line = (*child)->ReadLine(std::chrono::seconds(20));
  (void)(*child)->Wait(std::chrono::seconds(20));
  return line.ok() ? *line : "";
}

/// True once `pid` (any process, not only a child of this one) has exited, within `timeout`.
inline bool ExitsWithin(pid_t pid, std::chrono::milliseconds timeout) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;  // gone already
  pollfd pfd{fd, POLLIN, 0};
  int rc = poll(&pfd, 1, static_cast<int>(timeout.count()));
  close(fd);
  return rc == 1;
}

/// The value of `field` in node `name`'s object of a `troupe status --json` line ("" if the line
/// is not JSON of that shape or has no such node or field): a string as it is, anything else as
/// JSON ("3", "-1", "true").
inline std::string NodeField(const std::string& status, const std::string& name, const std::string& field) {
  const auto json = nlohmann::json::parse(status, nullptr, /*allow_exceptions=*/false);
  const auto nodes = json.is_object() ? json.find("nodes") : json.end();
  if (nodes == json.end() || !nodes->is_array()) return "";
  for (const auto& node : *nodes) {
    const auto node_name = node.find("name");
    if (!node.is_object() || node_name == node.end() || *node_name != name) continue;
    const auto value = node.find(field);
    if (value == node.end()) return "";
    return value->is_string() ? value->get<std::string>() : value->dump();
  }
  return "";
}

}  // namespace troupe::testing
