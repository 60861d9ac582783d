// Clock: the time source of time-based logic (heartbeats, request deadlines), injectable so
// that unit tests can step time by hand instead of sleeping.
#pragma once

#include <atomic>
#include <chrono>

namespace troupe {

/// A monotonic time source. Implementations are thread-safe.
class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

/// The real monotonic clock.
class SteadyClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
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
