// Backoff: jittered exponential delays between retries.
#include "common/backoff.h"

#include <algorithm>
#include <cmath>

namespace troupe {

std::chrono::milliseconds BackoffPolicy::Delay(uint32_t attempt, double u) const {
  const double n = std::max<uint32_t>(attempt, 1);
  const double cap = static_cast<double>(max.count());
  // pow may overflow to infinity for long loops: the cap is applied before converting back.
  double ms = std::min(static_cast<double>(initial.count()) * std::pow(multiplier, n - 1), cap);
  const double j = std::clamp(jitter, 0.0, 1.0);
  ms *= 1.0 - j * std::clamp(u, 0.0, 1.0);
  return std::chrono::milliseconds(static_cast<int64_t>(std::max(ms, 0.0)));
}

Backoff::Backoff(BackoffPolicy policy) : Backoff(policy, std::random_device()()) {}

Backoff::Backoff(BackoffPolicy policy, uint64_t seed) : policy_(policy), rng_(seed) {}

std::chrono::milliseconds Backoff::Delay(uint32_t attempt) {
  // 53 random bits make a double in [0, 1) the same way on every standard library
  // (std::uniform_real_distribution's algorithm is the library's own).
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  return policy_.Delay(attempt, u);
}

}  // namespace troupe
