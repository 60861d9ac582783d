// Clock: the time source of time-based logic (heartbeats, request deadlines), injectable so
// that unit tests can step time by hand instead of sleeping.
#pragma once

#include <time.h>

#include <atomic>
#include <chrono>

namespace troupe {

/// The monotonic clock at the kernel's tick resolution (CLOCK_MONOTONIC_COARSE: a few
/// milliseconds, trailing steady_clock by at most that), for about a tenth of the cost of
/// steady_clock::now(). For per-frame bookkeeping that needs no finer time.
inline std::chrono::steady_clock::time_point CoarseSteadyNow() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::chrono::steady_clock::time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}

/// A monotonic time source. Implementations are thread-safe.
class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  /// Now(), or up to a few milliseconds before it, read more cheaply (see CoarseSteadyNow).
  virtual TimePoint NowCoarse() const { return Now(); }
};

/// The real monotonic clock.
class SteadyClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  TimePoint NowCoarse() const override { return CoarseSteadyNow(); }
  /// A process-wide instance.
  static SteadyClock& Instance() {
    static SteadyClock clock;
    return clock;
  }
};

/// A clock that moves only when told to: for deterministic tests.
class ManualClock final : public Clock {
 public:
  TimePoint Now() const override { return TimePoint(Duration(now_.load())); }
  void Advance(Duration d) { now_.fetch_add(d.count()); }

 private:
  std::atomic<Duration::rep> now_{Duration(std::chrono::hours(1)).count()};
};

}  // namespace troupe
