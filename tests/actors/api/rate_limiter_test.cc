// RateLimiter: reserve and settle at three levels over a manual clock, and the property that no
// bucket lets through more than its bound over any window under random interleavings.
#include "actors/api/rate_limiter.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>
#include <vector>

namespace troupe::api {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

RateLimiter::Request Req(std::string key, std::string tenant, uint64_t prompt, uint64_t max_tokens, Limits key_limits = {},
                         Limits tenant_limits = {}) {
  RateLimiter::Request r;
  r.key_id = std::move(key);
  r.tenant = std::move(tenant);
  r.key_limits = key_limits;
  r.tenant_limits = tenant_limits;
  r.prompt_tokens = prompt;
  r.max_tokens = max_tokens;
  return r;
}

TEST(TokenBucket, RefillsContinuouslyAtCapacityPerMinute) {
  ManualClock clock;
  TokenBucket bucket(600, clock.Now());  // 10 per second
  bucket.Take(600, clock.Now());
  EXPECT_FALSE(bucket.CanTake(1, clock.Now()));
  clock.Advance(milliseconds(1500));
  EXPECT_NEAR(bucket.Level(clock.Now()), 15, 1e-9);
  EXPECT_EQ(bucket.TimeUntil(25, clock.Now()), milliseconds(1000));
  clock.Advance(seconds(600));
  EXPECT_NEAR(bucket.Level(clock.Now()), 600, 1e-9) << "never above capacity";
}

TEST(TokenBucket, ReservedTokensCountAgainstCapacityWhileRefilling) {
  ManualClock clock;
  TokenBucket bucket(100, clock.Now());
  bucket.Reserve(100, clock.Now());
  clock.Advance(seconds(120));
  EXPECT_NEAR(bucket.Level(clock.Now()), 0, 1e-9) << "100 held: the level may not refill above 100 - 100";
  bucket.Settle(100, 40, clock.Now());
  EXPECT_NEAR(bucket.Level(clock.Now()), 60, 1e-9);
  EXPECT_EQ(bucket.reserved(), 0);
}

TEST(RateLimiter, RefundAfterRefillDoesNotLetABurstThrough) {
  // The case behind the reserved-counts-against-capacity rule (rate_limiter.h): without it the
  // third request passes and 150 tokens go through within one instant of a 100/min bucket.
  ManualClock clock;
  RateLimiter limiter({}, clock);
  Limits key{0, 100, 0};
  auto first = limiter.Reserve(Req("k", "t", 0, 100, key));
  ASSERT_TRUE(first.ok());
  clock.Advance(seconds(30));
  auto second = limiter.Reserve(Req("k", "t", 0, 50, key));
  ASSERT_FALSE(second.ok()) << "100 are held: nothing has refilled";
  ASSERT_TRUE(limiter.Settle(*first.reservation, 0).ok());
  auto third = limiter.Reserve(Req("k", "t", 0, 100, key));
  EXPECT_TRUE(third.ok()) << "the refund of an unused reservation returns it whole";
  auto fourth = limiter.Reserve(Req("k", "t", 0, 1, key));
  EXPECT_FALSE(fourth.ok());
}

TEST(RateLimiter, RefusalNamesLevelLimitAndRetryAfterFromTheRefillRate) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  Limits key{0, 600, 0};  // 10 tokens per second
  auto first = limiter.Reserve(Req("k", "t", 100, 500, key));
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(limiter.Settle(*first.reservation, 600).ok());
  auto refused = limiter.Reserve(Req("k", "t", 50, 50, key));
  ASSERT_FALSE(refused.ok());
  const Refusal& r = *refused.refusal;
  EXPECT_EQ(r.level, LimitLevel::kKey);
  EXPECT_EQ(r.kind, LimitKind::kTokens);
  EXPECT_EQ(r.limit, 600u);
  EXPECT_EQ(r.retry_after_seconds, 10u) << "100 tokens at 10 per second";
  EXPECT_FALSE(r.never);
  EXPECT_NE(r.message.find("key token limit 600/min"), std::string::npos) << r.message;
  clock.Advance(seconds(r.retry_after_seconds));
  EXPECT_TRUE(limiter.Reserve(Req("k", "t", 50, 50, key)).ok()) << "Retry-After is honest";
}

TEST(RateLimiter, RequestsPerMinuteCountEachRequestOnce) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  Limits tenant{2, 0, 0};
  for (int i = 0; i < 2; ++i) {
    auto o = limiter.Reserve(Req("k", "t", 1, 1, {}, tenant));
    ASSERT_TRUE(o.ok());
    ASSERT_TRUE(limiter.Settle(*o.reservation, 0).ok());
  }
  auto refused = limiter.Reserve(Req("k", "t", 1, 1, {}, tenant));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.refusal->level, LimitLevel::kTenant);
  EXPECT_EQ(refused.refusal->kind, LimitKind::kRequests);
  EXPECT_EQ(refused.refusal->retry_after_seconds, 30u) << "2 per minute: one every 30 s";
}

TEST(RateLimiter, ARefusalAtOneLevelTakesNothingFromTheOthers) {
  ManualClock clock;
  RateLimiter limiter({100, 1000, 0}, clock);
  Limits tenant{100, 300, 0};
  Limits key{100, 1000, 0};
  ASSERT_TRUE(limiter.Reserve(Req("k1", "t", 0, 250, key, tenant)).ok());
  auto before = limiter.Headers("k1", "t");
  auto refused = limiter.Reserve(Req("k1", "t", 0, 100, key, tenant));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.refusal->level, LimitLevel::kTenant);
  auto after = limiter.Headers("k1", "t");
  EXPECT_EQ(after.remaining_requests, before.remaining_requests);
  EXPECT_EQ(after.remaining_tokens, before.remaining_tokens);
  EXPECT_EQ(limiter.InFlight("k1"), 1u);
  // The global bucket gave nothing either: another tenant can still use all it has left.
  EXPECT_TRUE(limiter.Reserve(Req("k2", "u", 0, 750, key)).ok());
}

TEST(RateLimiter, ARequestLargerThanABucketIsRefusedAtOnceAsNever) {
  ManualClock clock;
  RateLimiter limiter({0, 100000, 0}, clock);
  Limits key{0, 1000, 0};
  // The global bucket has room; the key's could never hold 1200.
  auto refused = limiter.Reserve(Req("k", "t", 200, 1000, key));
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(refused.refusal->never);
  EXPECT_EQ(refused.refusal->level, LimitLevel::kKey);
  EXPECT_EQ(refused.refusal->limit, 1000u);
  EXPECT_NE(refused.refusal->message.find("more than the limit ever allows"), std::string::npos)
      << refused.refusal->message;
}

TEST(RateLimiter, TokenCountsThatWouldWrapAreRefusedAsNever) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  auto refused = limiter.Reserve(Req("k", "t", 10, UINT64_MAX - 5, Limits{0, 1000, 0}));
  ASSERT_FALSE(refused.ok()) << "10 + (2^64 - 6) must not wrap to 4 tokens";
  EXPECT_TRUE(refused.refusal->never);
}

TEST(RateLimiter, HeadersAreZeroWhereEveryLevelIsUnlimited) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  ASSERT_TRUE(limiter.Reserve(Req("k", "t", 1, 1)).ok());
  auto h = limiter.Headers("k", "t");
  EXPECT_EQ(h.limit_requests, 0u);
  EXPECT_EQ(h.limit_tokens, 0u);
  EXPECT_EQ(h.reset_tokens, "0s");
}

TEST(RateLimiter, AChargeBeyondTheReservationMakesLaterRequestsWait) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  Limits key{0, 600, 0};
  auto o = limiter.Reserve(Req("k", "t", 100, 100, key));
  ASSERT_TRUE(o.ok());
  ASSERT_TRUE(limiter.Settle(*o.reservation, 900).ok());  // the backend overran max_tokens
  auto refused = limiter.Reserve(Req("k", "t", 0, 1, key));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.refusal->retry_after_seconds, 31u) << "a debt of 300 plus 1 token at 10 per second";
  clock.Advance(milliseconds(30100));
  EXPECT_TRUE(limiter.Reserve(Req("k", "t", 0, 1, key)).ok());
}

TEST(RateLimiter, ConcurrencyCapHoldsUntilASettleFreesASlot) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  Limits key{0, 0, 2};
  auto a = limiter.Reserve(Req("k", "t", 1, 1, key));
  auto b = limiter.Reserve(Req("k", "t", 1, 1, key));
  ASSERT_TRUE(a.ok() && b.ok());
  auto refused = limiter.Reserve(Req("k", "t", 1, 1, key));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.refusal->kind, LimitKind::kConcurrency);
  EXPECT_EQ(refused.refusal->limit, 2u);
  EXPECT_EQ(refused.refusal->retry_after_seconds, 1u);
  EXPECT_TRUE(limiter.Reserve(Req("other", "t", 1, 1, key)).ok()) << "the cap is per key";
  ASSERT_TRUE(limiter.Settle(*a.reservation, 2).ok());
  EXPECT_TRUE(limiter.Reserve(Req("k", "t", 1, 1, key)).ok());
}

TEST(RateLimiter, SettlingTwiceIsRefused) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  auto o = limiter.Reserve(Req("k", "t", 1, 1));
  ASSERT_TRUE(o.ok());
  ASSERT_TRUE(limiter.Settle(*o.reservation, 2).ok());
  Status again = limiter.Settle(*o.reservation, 2);
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(limiter.InFlight("k"), 0u);
}

TEST(RateLimiter, ReservationsAreNumberedFromTheFirstIdAndEachRunDrawsItsOwnBlock) {
  ManualClock clock;
  const uint64_t first = RateLimiter::NewRunFirstId();
  RateLimiter limiter({}, clock, first);
  auto a = limiter.Reserve(Req("k", "t", 1, 1));
  auto b = limiter.Reserve(Req("k", "t", 1, 1));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a.reservation->id, first);
  EXPECT_EQ(b.reservation->id, first + 1);
  EXPECT_EQ(first % (uint64_t{1} << 32), 1u) << "a block of 2^32 ids, from its first";
  EXPECT_GE(first, (uint64_t{1} << 32) + 1);
  EXPECT_NE(RateLimiter::NewRunFirstId(), first) << "two runs drew the same block (once in 2^31)";
  EXPECT_EQ(RateLimiter({}, clock).Reserve(Req("k", "t", 1, 1)).reservation->id, 1u) << "the default";
}

TEST(RateLimiter, HeadersGiveOpenAIValuesOfTheTightestLevel) {
  ManualClock clock;
  RateLimiter limiter({60, 100000, 0}, clock);
  Limits tenant{0, 6000, 0};
  Limits key{10, 0, 0};
  auto o = limiter.Reserve(Req("k", "t", 1000, 2000, key, tenant));
  ASSERT_TRUE(o.ok());
  auto h = limiter.Headers("k", "t");
  EXPECT_EQ(h.limit_requests, 10u) << "the key's 10/min binds before the global 60/min";
  EXPECT_EQ(h.remaining_requests, 9u);
  EXPECT_EQ(h.reset_requests, "6s") << "one request refills in 6 s";
  EXPECT_EQ(h.limit_tokens, 6000u);
  EXPECT_EQ(h.remaining_tokens, 3000u);
  EXPECT_EQ(h.reset_tokens, "30s");
}

TEST(RateLimiter, EditedLimitsTakeEffectOnTheNextRequest) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  ASSERT_TRUE(limiter.Reserve(Req("k", "t", 0, 500, Limits{0, 1000, 0})).ok());
  auto refused = limiter.Reserve(Req("k", "t", 0, 400, Limits{0, 600, 0}));
  ASSERT_FALSE(refused.ok()) << "the level 500 is capped at the new capacity less what is reserved: 100";
  EXPECT_TRUE(limiter.Reserve(Req("k", "t", 0, 100, Limits{0, 600, 0})).ok());
}

TEST(RateLimiter, PruneDropsOnlyIdleFullBuckets) {
  ManualClock clock;
  RateLimiter limiter({}, clock);
  Limits key{10, 1000, 0};
  auto busy = limiter.Reserve(Req("busy", "t", 1, 1, key));
  auto done = limiter.Reserve(Req("done", "u", 1, 1, key));
  ASSERT_TRUE(busy.ok() && done.ok());
  ASSERT_TRUE(limiter.Settle(*done.reservation, 2).ok());
  EXPECT_EQ(limiter.Prune(), 1u) << "tenant u (unlimited, nothing held); key done's buckets are not full yet";
  clock.Advance(seconds(60));
  EXPECT_EQ(limiter.Prune(), 1u) << "key done, full again";
  EXPECT_EQ(limiter.InFlight("busy"), 1u);
  EXPECT_TRUE(limiter.Settle(*busy.reservation, 2).ok());
}

TEST(FormatResetDuration, WritesOpenAIsDurations) {
  EXPECT_EQ(FormatResetDuration(milliseconds(20)), "20ms");
  EXPECT_EQ(FormatResetDuration(milliseconds(1000)), "1s");
  EXPECT_EQ(FormatResetDuration(milliseconds(1500)), "1.5s");
  EXPECT_EQ(FormatResetDuration(milliseconds(360000)), "6m0s");
  EXPECT_EQ(FormatResetDuration(milliseconds(3723000)), "1h2m3s");
  EXPECT_EQ(FormatResetDuration(milliseconds(-5)), "0ms");
}

// The property: for every bucket and every window [a, b] between two admissions, the tokens
// (settled, or reserved if still held) of the requests admitted in it are at most
// capacity + rate * (b - a) plus the charges beyond their reservations of the requests held at b,
// and the requests admitted are at most capacity + rate * (b - a); no key ever has more than its
// cap in flight. Random interleavings of
// reserves and settles over 3 tenants x 2 keys with many reservations held at once.
TEST(RateLimiterProperty, NoWindowExceedsTheBucketBound) {
  struct Admission {
    double t_ms;
    uint64_t reserved;
    double actual;  // settled, or reserved while held
    size_t admit_seq;
    size_t settle_seq = SIZE_MAX;
  };
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    ManualClock clock;
    Limits global{120, 6000, 0};
    Limits tenant{60, 3000, 0};
    Limits key{40, 2000, 6};
    RateLimiter limiter(global, clock);
    const double start_ms = std::chrono::duration<double, std::milli>(clock.Now().time_since_epoch()).count();
    std::vector<Admission> admissions;
    std::map<std::string, std::vector<size_t>> by_bucket;  // "g", "t:<tenant>", "k:<key>" -> admissions
    std::vector<std::pair<Reservation, size_t>> held;
    size_t seq = 0, refused = 0;
    for (int step = 0; step < 1500; ++step) {
      clock.Advance(milliseconds(std::uniform_int_distribution<int>(0, 400)(rng)));
      double now_ms = std::chrono::duration<double, std::milli>(clock.Now().time_since_epoch()).count() - start_ms;
      bool settle = !held.empty() && std::uniform_int_distribution<int>(0, 2)(rng) == 0;
      if (settle) {
        size_t pick = std::uniform_int_distribution<size_t>(0, held.size() - 1)(rng);
        auto [reservation, index] = held[pick];
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(pick));
        // Mostly less than reserved (the usual completion), sometimes more (an overrun).
        uint64_t actual = std::uniform_int_distribution<int>(0, 9)(rng) == 0
                              ? reservation.tokens + std::uniform_int_distribution<uint64_t>(0, 300)(rng)
                              : std::uniform_int_distribution<uint64_t>(0, reservation.tokens)(rng);
        ASSERT_TRUE(limiter.Settle(reservation, actual).ok());
        admissions[index].actual = static_cast<double>(actual);
        admissions[index].settle_seq = ++seq;
      } else {
        int t = std::uniform_int_distribution<int>(0, 2)(rng);
        int k = std::uniform_int_distribution<int>(0, 1)(rng);
        std::string tenant_name = "t" + std::to_string(t);
        std::string key_name = tenant_name + "k" + std::to_string(k);
        uint64_t prompt = std::uniform_int_distribution<uint64_t>(0, 100)(rng);
        uint64_t max_tokens = std::uniform_int_distribution<uint64_t>(0, 300)(rng);
        auto outcome = limiter.Reserve(Req(key_name, tenant_name, prompt, max_tokens, key, tenant));
        if (!outcome.ok()) {
          ++refused;
          continue;
        }
        size_t index = admissions.size();
        admissions.push_back({now_ms, outcome.reservation->tokens, static_cast<double>(outcome.reservation->tokens), ++seq});
        held.emplace_back(*outcome.reservation, index);
        ASSERT_LE(limiter.InFlight(key_name), key.max_concurrent) << "seed " << seed << " key " << key_name;
        for (const std::string& bucket : {std::string("g"), "t:" + tenant_name, "k:" + key_name}) {
          by_bucket[bucket].push_back(index);
        }
      }
    }
    ASSERT_GT(refused, 100u) << "seed " << seed << ": the limits must bind for the test to mean anything";
    ASSERT_GT(admissions.size(), 150u) << "seed " << seed;
    if (seed == 1) std::printf("seed 1: %zu admitted, %zu refused\n", admissions.size(), refused);
    for (const auto& [bucket, indices] : by_bucket) {
      const Limits& limits = bucket == "g" ? global : bucket[0] == 't' ? tenant : key;
      double tokens_capacity = static_cast<double>(limits.tokens_per_minute);
      double requests_capacity = static_cast<double>(limits.requests_per_minute);
      for (size_t j = 0; j < indices.size(); ++j) {
        const Admission& last = admissions[indices[j]];
        // Charges beyond reservations of this bucket's requests held when `last` was admitted.
        double slack = 0;
        for (size_t r : indices) {
          const Admission& a = admissions[r];
          if (a.admit_seq <= last.admit_seq && a.settle_seq > last.admit_seq) {
            slack += std::max(0.0, a.actual - static_cast<double>(a.reserved));
          }
        }
        double tokens = 0;
        for (size_t i = j + 1; i-- > 0;) {
          const Admission& first = admissions[indices[i]];
          tokens += first.actual;
          double window_ms = last.t_ms - first.t_ms;
          double requests = static_cast<double>(j - i + 1);
          ASSERT_LE(tokens, tokens_capacity + tokens_capacity * window_ms / 60000.0 + slack + 1e-6)
              << "seed " << seed << " bucket " << bucket << " window " << first.t_ms << ".." << last.t_ms << " ms";
          ASSERT_LE(requests, requests_capacity + requests_capacity * window_ms / 60000.0 + 1e-6)
              << "seed " << seed << " bucket " << bucket << " window " << first.t_ms << ".." << last.t_ms << " ms";
        }
      }
    }
  }
}

}  // namespace
}  // namespace troupe::api
