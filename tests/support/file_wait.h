// Waiting in a test for a condition on files that processes under test write: woken by inotify
// whenever a file in the watched directories changes, bounded by a deadline (no polling, no sleeps).
#pragma once

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace troupe::testing {

/// Waits until `done()` holds, checking it again whenever a file in one of `dirs` has an event of
/// `events` (inotify's mask; by default a file written and closed, created or renamed into place,
/// as the head replaces a file by rename; add IN_MODIFY to follow a log that is appended to), at
/// most `limit`. The time it took, or -1 ms if it never held.
inline std::chrono::milliseconds WaitForFileCondition(const std::vector<std::string>& dirs,
                                                      std::chrono::milliseconds limit,
                                                      const std::function<bool()>& done,
                                                      uint32_t events = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  for (const auto& dir : dirs) {
    if (fd >= 0) (void)inotify_add_watch(fd, dir.c_str(), events);
  }
  auto result = std::chrono::milliseconds(-1);
  for (;;) {
    if (done()) {
      result = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(start + limit - Clock::now());
    if (left.count() <= 0) break;
    // The watches were added before the first check: every later event wakes this poll.
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) > 0) {
      char buffer[4096];
      while (read(fd, buffer, sizeof buffer) > 0) {
      }
    }
  }
  if (fd >= 0) close(fd);
  return result;
}

/// The same for one directory.
inline std::chrono::milliseconds WaitForFileCondition(const std::string& dir, std::chrono::milliseconds limit,
                                                      const std::function<bool()>& done) {
  return WaitForFileCondition(std::vector<std::string>{dir}, limit, done);
}

}  // namespace troupe::testing
