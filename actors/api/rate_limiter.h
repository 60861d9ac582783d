// RateLimiter: the API gateway's limits on requests and tokens per minute at three levels
// (global, tenant, key) and on each key's concurrent requests, reserved before a request is
// dispatched and settled with its real token count afterwards (docs/gateway.md "Rate limits").
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "common/status.h"

namespace troupe::api {

/// One level's limits. 0 means unlimited. Units: requests per minute, tokens (prompt plus
/// completion) per minute, requests in flight at once.
struct Limits {
  uint64_t requests_per_minute = 0;
  uint64_t tokens_per_minute = 0;
  uint32_t max_concurrent = 0;
};

/// A token bucket over an injected time: it holds up to `capacity` units and refills at
/// capacity per minute, continuously (OpenAI: "limits are continuously replenished"; Envoy's
/// token_bucket_impl has the same shape). Not thread-safe: one owner.
///
/// Two rules beyond the textbook bucket, both for reservations whose real cost is known only
/// later (a streamed completion):
/// - A settle may charge more than was reserved and take the level below zero; later requests
///   then wait until refill pays the debt off. Guava's RateLimiter documents the same rule
///   ("it is the next request that will experience extra throttling, thus paying for the cost
///   of the expensive task"); it keeps the long-run rate exact when a backend overruns.
/// - Tokens still reserved count against capacity while the bucket refills: the level never
///   refills above capacity - reserved. Without it a refund lifts the level above what the
///   rate allows: a 100-token bucket with 100 reserved refills to 50, lets a 50-token request
///   through, and the refund of the first 100 then lets a third 100 through at once, 150
///   tokens within an instant (RateLimiterProperty.NoWindowExceedsTheBucketBound finds it).
/// With both, the settled tokens of the requests admitted in any window [a, b] are at most
/// capacity + rate * (b - a), plus whatever settles charged beyond their reservations.
class TokenBucket {
 public:
  using TimePoint = Clock::TimePoint;

  /// A full bucket at `now`. capacity 0 is unlimited.
  TokenBucket(uint64_t capacity_per_minute, TimePoint now);

  uint64_t capacity() const { return capacity_; }
  bool unlimited() const { return capacity_ == 0; }
  /// The level at `now` (may be negative after a charge), after refill.
  double Level(TimePoint now);
  /// Units reserved and not yet settled.
  double reserved() const { return reserved_; }

  /// True if `n` units can be taken at `now` (level >= n). Takes nothing.
  bool CanTake(double n, TimePoint now);
  /// Takes `n` units for good (requests: a request counts once, whatever it costs later).
  /// The caller checked CanTake.
  void Take(double n, TimePoint now);
  /// Takes `n` units as a reservation, to be settled with Settle. The caller checked CanTake.
  void Reserve(double n, TimePoint now);
  /// Ends a reservation of `reserved` units whose real cost was `actual`: refunds the
  /// difference, or charges it (the level may go below zero).
  void Settle(double reserved, double actual, TimePoint now);
  /// How long from `now` until `n` units can be taken, assuming nothing else happens and the
  /// reservations are settled at their reserved size (a lower bound while they are held).
  std::chrono::milliseconds TimeUntil(double n, TimePoint now);
  /// How long from `now` until the bucket is full again (x-ratelimit-reset-*).
  std::chrono::milliseconds TimeUntilFull(TimePoint now);
  /// Changes the capacity (a key's limits were edited). The level is kept, capped at the new capacity.
  void SetCapacity(uint64_t capacity_per_minute, TimePoint now);

 private:
  void Refill(TimePoint now);
  double PerMs() const { return static_cast<double>(capacity_) / 60000.0; }

  uint64_t capacity_;
  double level_;
  double reserved_ = 0;
  TimePoint last_;
};

/// Which level refused a request.
enum class LimitLevel { kGlobal, kTenant, kKey };
/// "global", "tenant", "key".
const char* LimitLevelName(LimitLevel level);

/// Which limit of a level refused it.
enum class LimitKind { kRequests, kTokens, kConcurrency };
/// "requests", "tokens", "concurrency".
const char* LimitKindName(LimitKind kind);

/// One request's claim on the limits, handed back to Settle.
struct Reservation {
  uint64_t id = 0;
  std::string key_id;
  std::string tenant;
  /// prompt_tokens + max_tokens.
  uint64_t tokens = 0;
};

/// What the API gateway needs to answer 429 (docs/gateway.md "Rate limits").
struct Refusal {
  LimitLevel level = LimitLevel::kKey;
  LimitKind kind = LimitKind::kRequests;
  /// The limit that was hit, in its own unit (per minute, or requests at once).
  uint64_t limit = 0;
  /// Whole seconds until a retry can pass (the Retry-After header, rounded up, at least 1).
  /// For tokens and requests from the refill rate; for concurrency 1 (no rate says when a
  /// request ends). A lower bound while other requests still hold reservations.
  uint64_t retry_after_seconds = 1;
  /// The request can never pass: it asks for more tokens than the bucket holds.
  bool never = false;
  /// One line for the error body and logs, e.g. "tenant token limit 1000/min: 1200 tokens
  /// requested, 310 available; retry after 54 s".
  std::string message;
};

/// The x-ratelimit-* header values of one level, OpenAI's names (LiteLLM sends the same):
/// x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests and
/// the -tokens ones. Resets are OpenAI's duration strings ("1s", "6m0s", "20ms"): the time until
/// the bucket is full again.
struct RateLimitHeaders {
  uint64_t limit_requests = 0;
  uint64_t remaining_requests = 0;
  std::string reset_requests = "0s";
  uint64_t limit_tokens = 0;
  uint64_t remaining_tokens = 0;
  std::string reset_tokens = "0s";
};

/// A duration the way OpenAI's reset headers write it: "20ms", "1s", "1.5s", "6m0s", "1h2m3s".
std::string FormatResetDuration(std::chrono::milliseconds d);

/// The three levels of buckets and the per-key in-flight counts.
///
/// Owned by one thread or actor, with no locks inside: today one gateway; later an actor
/// that several gateway processes ask (the issue: limits must hold across gateways), which is
/// why each call takes whole values and returns whole values (they can be messages).
/// Each key's and tenant's limits come with each request (from its KeyRecord and tenant), so
/// an edit takes effect on the next request. Buckets of keys and tenants are made on first use.
class RateLimiter {
 public:
  /// `clock` outlives the limiter. Reservations are numbered `first_id`, `first_id + 1`, ...
  /// (`first_id` 0 counts as 1; 0 is never an id).
  RateLimiter(Limits global, const Clock& clock, uint64_t first_id = 1);

  /// A first id for a limiter whose reservations must not be mistaken for those of an earlier
  /// run of the same service: 2^32 times a random number in [1, 2^31), plus 1 (4 billion
  /// reservations a run before ids could meet another run's; two runs draw the same block once
  /// in 2^31). The head's api actor uses it: a gateway's request in flight across a head restart
  /// settles a reservation of the earlier run, which with ids from 1 at every start matched one
  /// of the new run (another request, perhaps of another key, settled with its counts).
  static uint64_t NewRunFirstId();

  struct Request {
    std::string key_id;
    std::string tenant;
    Limits key_limits;
    Limits tenant_limits;
    uint64_t prompt_tokens = 0;
    /// The completion's cap (the request's max_tokens, or the gateway's default).
    uint64_t max_tokens = 0;
  };

  /// Reserves 1 request and prompt_tokens + max_tokens tokens and a concurrency slot at every
  /// level, all or nothing: a refusal at one level takes nothing from any other.
  /// Levels are checked global, tenant, key; the first that refuses is reported.
  /// A request of more tokens than a bucket's capacity is refused at once (`never`).
  struct Outcome {
    std::optional<Reservation> reservation;
    std::optional<Refusal> refusal;
    bool ok() const { return reservation.has_value(); }
  };
  Outcome Reserve(const Request& request);

  /// Ends a reservation with the request's real token count (prompt + completion; 0 if it
  /// never reached a replica): refunds or charges the difference at every level and frees the
  /// concurrency slots. FailedPrecondition for a reservation that is unknown or settled.
  Status Settle(const Reservation& reservation, uint64_t actual_tokens);

  /// The header values for a request of `key_id` at the clock's now: the request headers of
  /// the level with the fewest requests remaining, the token headers of the level with the
  /// fewest tokens remaining (a client backs off for whichever binds). Unlimited buckets are
  /// skipped; a pair is all zero if every level leaves it unlimited.
  RateLimitHeaders Headers(const std::string& key_id, const std::string& tenant);

  /// Drops the buckets of keys and tenants that are full and hold nothing (their state is the
  /// same as a new bucket's). Returns how many were dropped.
  size_t Prune();

  /// Requests reserved and not yet settled.
  size_t outstanding() const { return outstanding_.size(); }
  /// Requests in flight for `key_id`.
  uint32_t InFlight(const std::string& key_id) const;

 private:
  struct Level {
    TokenBucket requests;
    TokenBucket tokens;
    uint32_t in_flight = 0;
    Level(const Limits& limits, Clock::TimePoint now)
        : requests(limits.requests_per_minute, now), tokens(limits.tokens_per_minute, now) {}
  };

  Level& LevelFor(std::unordered_map<std::string, Level>& levels, const std::string& name, const Limits& limits,
                  Clock::TimePoint now);
  std::optional<Refusal> Check(Level& level, LimitLevel which, uint32_t max_concurrent, uint64_t tokens,
                               Clock::TimePoint now);

  const Clock& clock_;
  Limits global_limits_;
  Level global_;
  std::unordered_map<std::string, Level> tenants_;
  std::unordered_map<std::string, Level> keys_;
  std::unordered_map<uint64_t, Reservation> outstanding_;
  uint64_t next_id_ = 1;
};

}  // namespace troupe::api
