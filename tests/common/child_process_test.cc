// ChildProcess: what a child inherits.
#include "common/child_process.h"
#include "tests/support/troupe_processes.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

namespace troupe {
namespace {

using namespace std::chrono_literals;

TEST(ChildProcess, AChildInheritsNoDescriptorsButItsStandardOnes) {
  // A descriptor without O_CLOEXEC, like the sockets UCX opens.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 3);
  const std::string probe = "test -e /proc/self/fd/" + std::to_string(fd) + " && echo inherited || echo closed";
  auto child = ChildProcess::Spawn({"sh", "-c", probe});
  ASSERT_TRUE(child.ok()) << child.status();
  auto line = (*child)->ReadLine(10s);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "closed") << "descriptor " << fd << " leaked into the child";
  EXPECT_TRUE((*child)->Wait(10s).ok());
  close(fd);
}

TEST(ChildProcess, AChildStartsWithNoSignalBlocked) {
  // A parent that waits for SIGTERM with sigwait() blocks it; its children must not inherit that.
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &term, &old), 0);
  auto child = ChildProcess::Spawn({"sleep", "60"});
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, &old, nullptr), 0);
  ASSERT_TRUE(child.ok()) << child.status();
  (*child)->Signal(SIGTERM);
  auto rc = (*child)->Wait(10s);
  ASSERT_TRUE(rc.ok()) << "SIGTERM did not stop the child: " << rc.status();
  EXPECT_TRUE(WIFSIGNALED(*rc));
  EXPECT_EQ(WTERMSIG(*rc), SIGTERM);
}

TEST(ChildProcess, AVariableGivenToTheChildReplacesTheCallersOwn) {
  // getenv() returns the first of two same-named entries: appending would let the caller's win.
  ASSERT_EQ(setenv("TROUPE_CHILD_TEST", "caller", 1), 0);
  auto child = ChildProcess::Spawn({"sh", "-c", "echo $(env | grep -c ^TROUPE_CHILD_TEST=) $TROUPE_CHILD_TEST"},
                                   {"TROUPE_CHILD_TEST=child"});
  unsetenv("TROUPE_CHILD_TEST");
  ASSERT_TRUE(child.ok()) << child.status();
  auto line = (*child)->ReadLine(10s);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "1 child");
  EXPECT_TRUE((*child)->Wait(10s).ok());
}

TEST(ChildProcess, ReadLineWithNoTimeLeftReturnsWhatTheChildWroteAlready) {
  auto child = ChildProcess::Spawn({"sh", "-c", "echo written; exec sleep 30"});
  ASSERT_TRUE(child.ok()) << child.status();
  // The line is in the pipe once the child has exited or waits; wait for it without reading.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  StatusOr<std::string> line = DeadlineExceededError("not yet");
  while (!line.ok() && std::chrono::steady_clock::now() < deadline) {
    line = (*child)->ReadLine(std::chrono::milliseconds(0));  // returned "no line" without looking before
  }
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "written");
  EXPECT_EQ((*child)->ReadLine(std::chrono::milliseconds(0)).status().code(), StatusCode::kDeadlineExceeded);
  (*child)->Signal(SIGKILL);
  EXPECT_TRUE((*child)->Wait(10s).ok());
}

TEST(ChildProcess, ChildEnvironmentIsWhatASpawnedChildGets) {
  ASSERT_EQ(setenv("TROUPE_ENV_TEST_DROP", "x", 1), 0);
  ASSERT_EQ(setenv("ENV_TEST_REPLACED", "caller", 1), 0);
  SpawnOptions options;
  options.env = {"ENV_TEST_REPLACED=child"};
  options.drop_env_prefixes = {"TROUPE_ENV_TEST"};
  auto env = ChildEnvironment(options);
  unsetenv("TROUPE_ENV_TEST_DROP");
  unsetenv("ENV_TEST_REPLACED");
  EXPECT_EQ(std::count(env.begin(), env.end(), "ENV_TEST_REPLACED=child"), 1);
  EXPECT_EQ(std::count(env.begin(), env.end(), "ENV_TEST_REPLACED=caller"), 0);
  EXPECT_EQ(std::count(env.begin(), env.end(), "TROUPE_ENV_TEST_DROP=x"), 0);
}

TEST(ChildProcess, VariablesWithADroppedPrefixAreNotPassedOn) {
  ASSERT_EQ(setenv("TROUPE_DROPPED_TEST", "caller", 1), 0);
  ASSERT_EQ(setenv("KEPT_CHILD_TEST", "kept", 1), 0);
  SpawnOptions options;
  options.drop_env_prefixes = {"TROUPE_DROPPED"};
  auto child = ChildProcess::Spawn({"sh", "-c", "echo ${TROUPE_DROPPED_TEST:-unset} $KEPT_CHILD_TEST"}, options);
  unsetenv("TROUPE_DROPPED_TEST");
  unsetenv("KEPT_CHILD_TEST");
  ASSERT_TRUE(child.ok()) << child.status();
  auto line = (*child)->ReadLine(10s);
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(*line, "unset kept");
}

TEST(ChildProcess, AProgramRunsUnderTheNameItsArgvGives) {
  SpawnOptions options;
  options.program = "/bin/sh";
  auto child = ChildProcess::Spawn({"troupe-named", "-c", "echo $0; cat /proc/$$/comm"}, options);
  ASSERT_TRUE(child.ok()) << child.status();
  auto name = (*child)->ReadLine(10s);
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "troupe-named");
  auto comm = (*child)->ReadLine(10s);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ(*comm, "sh") << "the kernel names the process after the file it runs";
}

TEST(ChildProcess, AProgramThatCannotRunIsAnErrorNamingIt) {
  auto missing = ChildProcess::Spawn({"troupe-no-such-program"});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(missing.status().message().find("troupe-no-such-program"), std::string::npos) << missing.status();
  auto not_executable = ChildProcess::Spawn({"/etc/passwd"});
  ASSERT_FALSE(not_executable.ok());
  EXPECT_NE(not_executable.status().message().find("ermission"), std::string::npos) << not_executable.status();
}

// Forks a parent that starts `argv` with `options` and reports a pid: the child's, or (with
// `pid_from_child`) the first line the child prints. Kills the parent with SIGKILL and returns
// that pid (-1 if none was reported).
pid_t PidOfAKilledParentsChild(const std::vector<std::string>& argv, const SpawnOptions& options,
                               bool pid_from_child) {
  int report[2];
  if (pipe(report) != 0) return -1;
  pid_t parent = fork();
  if (parent == 0) {
    close(report[0]);
    auto child = ChildProcess::Spawn(argv, options);
    pid_t pid = -1;
    if (child.ok() && !pid_from_child) pid = (*child)->pid();
    if (child.ok() && pid_from_child) {
      auto line = (*child)->ReadLine(10s);
      if (line.ok()) pid = std::stoi(*line);
    }
    if (write(report[1], &pid, sizeof pid) != sizeof pid) _exit(1);
    pause();
    _exit(0);
  }
  close(report[1]);
  pid_t reported = -1;
  if (read(report[0], &reported, sizeof reported) != sizeof reported) reported = -1;
  close(report[0]);
  kill(parent, SIGKILL);
  waitpid(parent, nullptr, 0);
  return reported;
}

// A `sleep 60` started by a parent that was then killed.
pid_t SleeperOfAKilledParent(bool die_with_parent) {
  SpawnOptions options;
  options.die_with_parent = die_with_parent;
  return PidOfAKilledParentsChild({"sleep", "60"}, options, /*pid_from_child=*/false);
}

TEST(ChildProcess, AChildThatDiesWithItsParentEndsWhenTheParentIsKilled) {
  pid_t sleeper = SleeperOfAKilledParent(/*die_with_parent=*/true);
  ASSERT_GT(sleeper, 0);
  EXPECT_TRUE(testing::ExitsWithin(sleeper, 10s)) << "sleep " << sleeper << " outlived its killed parent";
  kill(sleeper, SIGKILL);

  // Without the option the child lives on (what the option is for).
  pid_t orphan = SleeperOfAKilledParent(/*die_with_parent=*/false);
  ASSERT_GT(orphan, 0);
  EXPECT_FALSE(testing::ExitsWithin(orphan, 100ms));
  kill(orphan, SIGKILL);
}

// A `sleep 60` started by `sh`, started with `options` by a parent that was then killed.
pid_t GrandchildOfAKilledParent(const SpawnOptions& options) {
  return PidOfAKilledParentsChild({"sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!; wait"}, options,
                                  /*pid_from_child=*/true);
}

TEST(ChildProcess, AGroupThatDiesWithItsParentTakesTheChildsChildrenAlong) {
  SpawnOptions options;
  options.die_with_parent = true;
  options.group_dies_with_parent = true;
  pid_t grandchild = GrandchildOfAKilledParent(options);
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(testing::ExitsWithin(grandchild, 10s)) << "sleep " << grandchild << " outlived its killed grandparent";
  kill(grandchild, SIGKILL);

  // The parent-death signal alone reaches the child only (what the group is for).
  options.group_dies_with_parent = false;
  pid_t orphan = GrandchildOfAKilledParent(options);
  ASSERT_GT(orphan, 0);
  EXPECT_FALSE(testing::ExitsWithin(orphan, 100ms));
  kill(orphan, SIGKILL);
}

// Starts `sh` leading its own group, which starts `sleep 60`; returns the sleeper's pid.
pid_t StartGroupWithASleeper(std::unique_ptr<ChildProcess>* out) {
  SpawnOptions options;
  options.group_dies_with_parent = true;
  auto child = ChildProcess::Spawn({"sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!; wait"}, options);
  if (!child.ok()) return -1;
  auto line = (*child)->ReadLine(10s);
  if (!line.ok()) return -1;
  *out = std::move(*child);
  return std::stoi(*line);
}

TEST(ChildProcess, AGroupsChildIsSignalledWithItAndEndsWithTheChildProcess) {
  std::unique_ptr<ChildProcess> child;
  pid_t sleeper = StartGroupWithASleeper(&child);
  ASSERT_GT(sleeper, 0);
  EXPECT_EQ(getpgid(sleeper), child->pid()) << "the child leads the group its children join";
  child->Signal(SIGTERM);
  EXPECT_TRUE(testing::ExitsWithin(sleeper, 10s)) << "SIGTERM reached the child only";
  child.reset();

  sleeper = StartGroupWithASleeper(&child);
  ASSERT_GT(sleeper, 0);
  child.reset();  // neither the child nor what it started outlives its ChildProcess
  EXPECT_TRUE(testing::ExitsWithin(sleeper, 10s));
}

TEST(ChildProcess, AwaitExitLeavesTheChildUnreapedUntilWait) {
  auto child = ChildProcess::Spawn({"sh", "-c", "exit 7"});
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE((*child)->AwaitExit(10s).ok());
  // A zombie keeps its pid: nothing else can be given it while it is unreaped.
  std::ifstream stat("/proc/" + std::to_string((*child)->pid()) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), {});
  ASSERT_FALSE(text.empty()) << "the child was reaped by AwaitExit";
  EXPECT_EQ(text[text.rfind(')') + 2], 'Z') << text;
  EXPECT_FALSE((*child)->reaped());
  auto rc = (*child)->Wait(10s);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(WEXITSTATUS(*rc), 7);
  EXPECT_TRUE((*child)->reaped());
}

TEST(ChildProcess, AwaitExitOrStopReportsEachStopOnceAndTheExitUnreaped) {
  auto child = ChildProcess::Spawn({"sh", "-c", "read line; exit 5"});
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_EQ(kill((*child)->pid(), SIGSTOP), 0);
  auto first = (*child)->AwaitExitOrStop();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(*first) << "a stop was reported as an exit";
  ASSERT_EQ(kill((*child)->pid(), SIGCONT), 0);
  ASSERT_TRUE((*child)->WriteLine("go").ok());
  // The stop was consumed: the next report is the exit.
  auto second = (*child)->AwaitExitOrStop();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(*second);
  EXPECT_FALSE((*child)->reaped());
  auto rc = (*child)->Wait(10s);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(WEXITSTATUS(*rc), 5);
}

TEST(ChildProcess, AForegroundTerminalNeedsAGroupOfItsOwn) {
  SpawnOptions options;
  options.foreground_terminal = STDIN_FILENO;
  auto child = ChildProcess::Spawn({"true"}, options);
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(child.status().message().find("group_dies_with_parent"), std::string::npos) << child.status();
}

}  // namespace
}  // namespace troupe
