// RateLimiter: token buckets at three levels, reserved before dispatch and settled after.
#include "actors/api/rate_limiter.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace troupe::api {

namespace {

// Level arithmetic is in doubles; a level within this of the asked amount counts as enough
// (refill of a fraction of a millisecond must not make a request wait a whole second).
constexpr double kEpsilon = 1e-9;

uint64_t RetryAfterSeconds(std::chrono::milliseconds wait) {
  auto seconds = static_cast<uint64_t>((wait.count() + 999) / 1000);
  return std::max<uint64_t>(seconds, 1);
}

}  // namespace

TokenBucket::TokenBucket(uint64_t capacity_per_minute, TimePoint now)
    : capacity_(capacity_per_minute), level_(static_cast<double>(capacity_per_minute)), last_(now) {}

void TokenBucket::Refill(TimePoint now) {
  if (now <= last_) return;
  if (!unlimited()) {
    double ms = std::chrono::duration<double, std::milli>(now - last_).count();
    // Reserved tokens count against capacity (see the class comment): the level refills to
    // capacity - reserved at most.
    double ceiling = static_cast<double>(capacity_) - reserved_;
    if (level_ < ceiling) level_ = std::min(ceiling, level_ + ms * PerMs());
  }
  last_ = now;
}

double TokenBucket::Level(TimePoint now) {
  Refill(now);
  return level_;
}

bool TokenBucket::CanTake(double n, TimePoint now) {
  if (unlimited()) return true;
  Refill(now);
  return level_ + kEpsilon >= n;
}

void TokenBucket::Take(double n, TimePoint now) {
  Refill(now);
  if (!unlimited()) level_ -= n;
}

void TokenBucket::Reserve(double n, TimePoint now) {
  Refill(now);
  if (!unlimited()) level_ -= n;
  reserved_ += n;
}

void TokenBucket::Settle(double reserved, double actual, TimePoint now) {
  Refill(now);
  if (!unlimited()) level_ += reserved - actual;
  reserved_ = std::max(0.0, reserved_ - reserved);
}

std::chrono::milliseconds TokenBucket::TimeUntil(double n, TimePoint now) {
  if (unlimited()) return std::chrono::milliseconds(0);
  Refill(now);
  double deficit = n - level_;
  if (deficit <= kEpsilon) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(deficit / PerMs())));
}

std::chrono::milliseconds TokenBucket::TimeUntilFull(TimePoint now) {
  return TimeUntil(static_cast<double>(capacity_), now);
}

void TokenBucket::SetCapacity(uint64_t capacity_per_minute, TimePoint now) {
  Refill(now);
  bool was_unlimited = unlimited();
  capacity_ = capacity_per_minute;
  double ceiling = static_cast<double>(capacity_) - reserved_;
  // A bucket that was unlimited took nothing from its level: it starts full, less what is reserved.
  level_ = was_unlimited ? ceiling : std::min(level_, ceiling);
}

const char* LimitLevelName(LimitLevel level) {
  switch (level) {
    case LimitLevel::kGlobal: return "global";
    case LimitLevel::kTenant: return "tenant";
    case LimitLevel::kKey: return "key";
  }
  return "unknown";
}

const char* LimitKindName(LimitKind kind) {
  switch (kind) {
    case LimitKind::kRequests: return "requests";
    case LimitKind::kTokens: return "tokens";
    case LimitKind::kConcurrency: return "concurrency";
  }
  return "unknown";
}

std::string FormatResetDuration(std::chrono::milliseconds d) {
  int64_t ms = std::max<int64_t>(d.count(), 0);
  if (ms < 1000) return fmt::format("{}ms", ms);
  int64_t hours = ms / 3600000;
  int64_t minutes = ms / 60000 % 60;
  int64_t whole_seconds = ms / 1000 % 60;
  int64_t rest_ms = ms % 1000;
  std::string seconds = rest_ms == 0 ? fmt::format("{}s", whole_seconds)
                                     : fmt::format("{}s", static_cast<double>(whole_seconds) + rest_ms / 1000.0);
  if (hours > 0) return fmt::format("{}h{}m{}", hours, minutes, seconds);
  if (minutes > 0) return fmt::format("{}m{}", minutes, seconds);
  return seconds;
}

RateLimiter::RateLimiter(Limits global, const Clock& clock, uint64_t first_id)
    : clock_(clock), global_limits_(global), global_(global, clock.Now()), next_id_(first_id == 0 ? 1 : first_id) {}

uint64_t RateLimiter::NewRunFirstId() {
  std::random_device random;
  uint64_t block = 0;
  while (block == 0) block = random() & 0x7FFFFFFFu;
  return (block << 32) + 1;
}

RateLimiter::Level& RateLimiter::LevelFor(std::unordered_map<std::string, Level>& levels, const std::string& name,
                                          const Limits& limits, Clock::TimePoint now) {
  auto it = levels.find(name);
  if (it == levels.end()) return levels.emplace(name, Level(limits, now)).first->second;
  Level& level = it->second;
  if (level.requests.capacity() != limits.requests_per_minute) level.requests.SetCapacity(limits.requests_per_minute, now);
  if (level.tokens.capacity() != limits.tokens_per_minute) level.tokens.SetCapacity(limits.tokens_per_minute, now);
  return level;
}

std::optional<Refusal> RateLimiter::Check(Level& level, LimitLevel which, uint32_t max_concurrent, uint64_t tokens,
                                          Clock::TimePoint now) {
  Refusal refusal;
  refusal.level = which;
  if (max_concurrent != 0 && level.in_flight >= max_concurrent) {
    refusal.kind = LimitKind::kConcurrency;
    refusal.limit = max_concurrent;
    refusal.message = fmt::format("{} concurrency limit {} requests at once reached; retry after 1 s",
                                  LimitLevelName(which), max_concurrent);
    return refusal;
  }
  if (!level.requests.CanTake(1, now)) {
    auto wait = level.requests.TimeUntil(1, now);
    refusal.kind = LimitKind::kRequests;
    refusal.limit = level.requests.capacity();
    refusal.retry_after_seconds = RetryAfterSeconds(wait);
    refusal.message = fmt::format("{} request limit {}/min reached; retry after {} s", LimitLevelName(which),
                                  refusal.limit, refusal.retry_after_seconds);
    return refusal;
  }
  auto n = static_cast<double>(tokens);
  if (!level.tokens.CanTake(n, now)) {
    auto wait = level.tokens.TimeUntil(n, now);
    refusal.kind = LimitKind::kTokens;
    refusal.limit = level.tokens.capacity();
    refusal.retry_after_seconds = RetryAfterSeconds(wait);
    refusal.message = fmt::format("{} token limit {}/min: {} tokens requested (prompt + max_tokens), {} available; "
                                  "retry after {} s",
                                  LimitLevelName(which), refusal.limit, tokens,
                                  static_cast<int64_t>(std::floor(std::max(0.0, level.tokens.Level(now)))),
                                  refusal.retry_after_seconds);
    return refusal;
  }
  return std::nullopt;
}

RateLimiter::Outcome RateLimiter::Reserve(const Request& request) {
  Clock::TimePoint now = clock_.Now();
  // Saturating: the counts come from clients; a sum that wraps must not look small.
  uint64_t tokens = request.max_tokens > std::numeric_limits<uint64_t>::max() - request.prompt_tokens
                        ? std::numeric_limits<uint64_t>::max()
                        : request.prompt_tokens + request.max_tokens;
  Level& tenant = LevelFor(tenants_, request.tenant, request.tenant_limits, now);
  Level& key = LevelFor(keys_, request.key_id, request.key_limits, now);
  struct Step {
    Level* level;
    LimitLevel which;
    uint32_t max_concurrent;
  };
  const Step steps[] = {{&global_, LimitLevel::kGlobal, global_limits_.max_concurrent},
                        {&tenant, LimitLevel::kTenant, request.tenant_limits.max_concurrent},
                        {&key, LimitLevel::kKey, request.key_limits.max_concurrent}};
  Outcome outcome;
  // First the requests that could never pass, so that they are not told to wait at a level
  // checked before the one they can never fit.
  for (const Step& step : steps) {
    uint64_t capacity = step.level->tokens.capacity();
    if (capacity != 0 && tokens > capacity) {
      Refusal refusal;
      refusal.level = step.which;
      refusal.kind = LimitKind::kTokens;
      refusal.limit = capacity;
      refusal.never = true;
      refusal.retry_after_seconds = 0;
      refusal.message = fmt::format(
          "{} token limit {}/min: this request asks for {} tokens (prompt {} + max_tokens {}), more than the limit "
          "ever allows; lower max_tokens or shorten the prompt",
          LimitLevelName(step.which), capacity, tokens, request.prompt_tokens, request.max_tokens);
      outcome.refusal = std::move(refusal);
      return outcome;
    }
  }
  for (const Step& step : steps) {
    if (auto refusal = Check(*step.level, step.which, step.max_concurrent, tokens, now)) {
      outcome.refusal = std::move(refusal);
      return outcome;
    }
  }
  for (const Step& step : steps) {
    step.level->requests.Take(1, now);
    step.level->tokens.Reserve(static_cast<double>(tokens), now);
    ++step.level->in_flight;
  }
  Reservation reservation{next_id_++, request.key_id, request.tenant, tokens};
  outstanding_.emplace(reservation.id, reservation);
  outcome.reservation = std::move(reservation);
  return outcome;
}

Status RateLimiter::Settle(const Reservation& reservation, uint64_t actual_tokens) {
  auto it = outstanding_.find(reservation.id);
  if (it == outstanding_.end()) {
    return FailedPreconditionError(fmt::format(
        "rate limiter: reservation {} (key {}) is unknown or already settled; settle each reservation once",
        reservation.id, reservation.key_id));
  }
  Reservation held = std::move(it->second);
  outstanding_.erase(it);
  Clock::TimePoint now = clock_.Now();
  // Buckets with a reservation are never pruned, so both are still there.
  Level* levels[] = {&global_, &tenants_.at(held.tenant), &keys_.at(held.key_id)};
  for (Level* level : levels) {
    level->tokens.Settle(static_cast<double>(held.tokens), static_cast<double>(actual_tokens), now);
    --level->in_flight;
  }
  return OkStatus();
}

RateLimitHeaders RateLimiter::Headers(const std::string& key_id, const std::string& tenant) {
  Clock::TimePoint now = clock_.Now();
  std::vector<Level*> levels = {&global_};
  if (auto it = tenants_.find(tenant); it != tenants_.end()) levels.push_back(&it->second);
  if (auto it = keys_.find(key_id); it != keys_.end()) levels.push_back(&it->second);
  RateLimitHeaders headers;
  auto fill = [&](TokenBucket Level::*member, uint64_t& limit, uint64_t& remaining, std::string& reset) {
    double fewest = std::numeric_limits<double>::infinity();
    for (Level* level : levels) {
      TokenBucket& bucket = level->*member;
      if (bucket.unlimited()) continue;
      double left = bucket.Level(now);
      if (left < fewest) {
        fewest = left;
        limit = bucket.capacity();
        remaining = static_cast<uint64_t>(std::floor(std::max(0.0, left)));
        reset = FormatResetDuration(bucket.TimeUntilFull(now));
      }
    }
  };
  fill(&Level::requests, headers.limit_requests, headers.remaining_requests, headers.reset_requests);
  fill(&Level::tokens, headers.limit_tokens, headers.remaining_tokens, headers.reset_tokens);
  return headers;
}

size_t RateLimiter::Prune() {
  Clock::TimePoint now = clock_.Now();
  auto idle = [now](Level& level) {
    auto full = [now](TokenBucket& bucket) {
      return bucket.unlimited() || bucket.Level(now) + kEpsilon >= static_cast<double>(bucket.capacity());
    };
    return level.in_flight == 0 && level.tokens.reserved() == 0 && full(level.requests) && full(level.tokens);
  };
  size_t dropped = 0;
  for (auto* levels : {&tenants_, &keys_}) {
    for (auto it = levels->begin(); it != levels->end();) {
      if (idle(it->second)) {
        it = levels->erase(it);
        ++dropped;
      } else {
        ++it;
      }
    }
  }
  return dropped;
}

uint32_t RateLimiter::InFlight(const std::string& key_id) const {
  auto it = keys_.find(key_id);
  return it == keys_.end() ? 0 : it->second.in_flight;
}

}  // namespace troupe::api
