// ChildProcess: what a child inherits.
#include "common/child_process.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>

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

}  // namespace
}  // namespace troupe
