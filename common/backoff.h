// Backoff: the delays between retries (rejoining the head, restarting a child or a process), one
// jittered exponential rule for all of troupe.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace troupe {

/// How the delay grows from one attempt to the next. Attempt n (counting from 1) waits
///
///   d(n) = min(initial * multiplier^(n-1), max), then drawn uniformly from [d(n) * (1 - jitter), d(n)]
///
/// which is the exponential backoff of gRPC's connection backoff (doc/connection-backoff.md:
/// initial, multiplier, max) with the jitter of AWS's "Exponential Backoff And Jitter" (Marc
/// Brooker, 2015): jitter 1 is its "full jitter", 0.5 its "equal jitter", 0 no jitter. Jitter
/// only shortens a delay, so `max` stays the longest wait; gRPC's own defaults (1 s, x1.6,
/// 120 s, +-20 %) suit a client of a distant server, troupe's callers pick their own.
/// Jitter keeps many retriers (say every node of a cluster after a head restart) from
/// retrying in lock step.
struct BackoffPolicy {
  std::chrono::milliseconds initial{100};  ///< the first delay
  double multiplier = 2.0;                 ///< each delay is this many times the one before (>= 1)
  std::chrono::milliseconds max{2000};     ///< no delay is longer
  double jitter = 0.0;                     ///< in [0, 1]: the fraction of a delay that is random

  /// The delay before attempt `attempt` (from 1; 0 counts as 1) for a uniform draw `u` in
  /// [0, 1): u = 0 gives the full d(n), u near 1 the shortest. Whole milliseconds, rounded
  /// down; never negative.
  std::chrono::milliseconds Delay(uint32_t attempt, double u) const;
};

/// The attempts of one retry loop and their random draws. Not thread-safe: it belongs to the
/// loop (or actor) that retries.
///
/// Lifecycle: Next() for every failed attempt (1, 2, 3, ...) -> Reset() after a success, so
/// the next failure waits `initial` again.
class Backoff {
 public:
  /// `seed` fixes the random draws (tests); without one they come from std::random_device.
  explicit Backoff(BackoffPolicy policy);
  Backoff(BackoffPolicy policy, uint64_t seed);

  /// The delay before the next attempt; counts the attempt.
  std::chrono::milliseconds Next() { return Delay(++attempts_); }
  /// The delay before attempt `attempt` (from 1), for callers that count attempts their own
  /// way (a supervisor counts restarts within its window); draws but counts nothing.
  std::chrono::milliseconds Delay(uint32_t attempt);
  /// Starts again from the first delay.
  void Reset() { attempts_ = 0; }

  /// Attempts counted by Next() since the last Reset().
  uint32_t attempts() const { return attempts_; }
  const BackoffPolicy& policy() const { return policy_; }

 private:
  BackoffPolicy policy_;
  std::mt19937_64 rng_;
  uint32_t attempts_ = 0;
};

}  // namespace troupe
