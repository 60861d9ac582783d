// Clock: the time source of time-based logic (heartbeats, request deadlines) and of timestamps,
// injectable so that unit tests can step time by hand instead of sleeping.
#pragma once

#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace troupe {

/// The monotonic clock at the kernel's tick resolution (CLOCK_MONOTONIC_COARSE: a few
/// milliseconds, trailing steady_clock by at most that), for about a tenth of the cost of
/// steady_clock::now(). For per-frame bookkeeping that needs no finer time.
inline std::chrono::steady_clock::time_point CoarseSteadyNow() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::chrono::steady_clock::time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}

/// A monotonic time source, and the wall clock beside it. Implementations are thread-safe.
class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  /// Now(), or up to a few milliseconds before it, read more cheaply (see CoarseSteadyNow).
  virtual TimePoint NowCoarse() const { return Now(); }
  /// The wall clock: for timestamps that people read or that outlive the process (events,
  /// stored records), never for timeouts (it jumps when the host's time is set).
  virtual std::chrono::system_clock::time_point WallNow() const { return std::chrono::system_clock::now(); }
  /// WallNow() as milliseconds since the Unix epoch (1970-01-01 00:00 UTC), the form of the
  /// `unix_ms` fields of events and records.
  int64_t UnixMs() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(WallNow().time_since_epoch()).count();
  }
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

/// A clock that moves only when told to: for deterministic tests. Its wall clock starts at
/// kStartUnixMs and moves with Advance() too.
class ManualClock final : public Clock {
 public:
  /// 2026-01-01 00:00:00 UTC: a fixed date, so that timestamps in tests are reproducible.
  static constexpr int64_t kStartUnixMs = 1767225600000;

  TimePoint Now() const override { return TimePoint(Duration(now_.load())); }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::time_point(std::chrono::duration_cast<std::chrono::system_clock::duration>(
        std::chrono::milliseconds(kStartUnixMs) + (Now() - TimePoint(kStart))));
  }
  void Advance(Duration d) { now_.fetch_add(d.count()); }

 private:
  static constexpr Duration kStart = std::chrono::hours(1);
  std::atomic<Duration::rep> now_{kStart.count()};
};

}  // namespace troupe
