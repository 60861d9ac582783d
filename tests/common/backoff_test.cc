// Tests of the jittered exponential backoff (common/backoff.h).
#include <gtest/gtest.h>

#include <vector>

#include "common/backoff.h"

namespace troupe {
namespace {

using std::chrono::milliseconds;

TEST(Backoff, GrowsByTheMultiplierFromTheInitialDelay) {
  Backoff b(BackoffPolicy{milliseconds(100), 2.0, milliseconds(10000), 0.0}, /*seed=*/1);
  EXPECT_EQ(b.Next(), milliseconds(100));
  EXPECT_EQ(b.Next(), milliseconds(200));
  EXPECT_EQ(b.Next(), milliseconds(400));
  EXPECT_EQ(b.Next(), milliseconds(800));
  EXPECT_EQ(b.attempts(), 4u);
  BackoffPolicy grpc_like{milliseconds(1000), 1.6, milliseconds(120000), 0.0};
  EXPECT_EQ(grpc_like.Delay(3, 0.0), milliseconds(2560));
}

TEST(Backoff, StopsGrowingAtTheCap) {
  // The node agent's rejoin loop: 100 ms doubling, at most 2 s.
  Backoff b(BackoffPolicy{milliseconds(100), 2.0, milliseconds(2000), 0.0}, 1);
  std::vector<milliseconds> got;
  for (int i = 0; i < 8; ++i) got.push_back(b.Next());
  std::vector<milliseconds> want = {milliseconds(100),  milliseconds(200),  milliseconds(400),  milliseconds(800),
                                    milliseconds(1600), milliseconds(2000), milliseconds(2000), milliseconds(2000)};
  EXPECT_EQ(got, want);
  // Far past the point where the multiplier overflows a double, the cap still holds.
  EXPECT_EQ(b.Delay(100000), milliseconds(2000));
}

TEST(Backoff, JitterOnlyShortensADelayByAtMostItsFraction) {
  BackoffPolicy p{milliseconds(1000), 2.0, milliseconds(4000), 0.25};
  EXPECT_EQ(p.Delay(1, 0.0), milliseconds(1000));
  EXPECT_EQ(p.Delay(1, 0.5), milliseconds(875));
  EXPECT_EQ(p.Delay(3, 0.999999), milliseconds(3000));  // 4000 * (1 - 0.25 * 0.999999), rounded down
  Backoff b(p, 42);
  for (int i = 0; i < 1000; ++i) {
    milliseconds d = b.Delay(2);
    EXPECT_GE(d, milliseconds(1500)) << "draw " << i;
    EXPECT_LE(d, milliseconds(2000)) << "draw " << i;
  }
  // Full jitter (AWS): anywhere in [0, d].
  BackoffPolicy full{milliseconds(1000), 2.0, milliseconds(4000), 1.0};
  EXPECT_EQ(full.Delay(1, 0.999999), milliseconds(0));
}

TEST(Backoff, JitterSpreadsTheDrawsOverItsRange) {
  Backoff b(BackoffPolicy{milliseconds(1000), 2.0, milliseconds(1000), 1.0}, 7);
  milliseconds lowest = milliseconds(1000), highest = milliseconds(0);
  for (int i = 0; i < 1000; ++i) {
    milliseconds d = b.Next();
    lowest = std::min(lowest, d);
    highest = std::max(highest, d);
  }
  EXPECT_LT(lowest, milliseconds(100));
  EXPECT_GT(highest, milliseconds(900));
}

TEST(Backoff, ResetStartsAgainFromTheInitialDelay) {
  Backoff b(BackoffPolicy{milliseconds(50), 3.0, milliseconds(10000), 0.0}, 1);
  b.Next();
  b.Next();
  EXPECT_EQ(b.Next(), milliseconds(450));
  b.Reset();
  EXPECT_EQ(b.attempts(), 0u);
  EXPECT_EQ(b.Next(), milliseconds(50));
}

TEST(Backoff, TheSameSeedDrawsTheSameDelays) {
  BackoffPolicy p{milliseconds(100), 2.0, milliseconds(5000), 0.5};
  Backoff a(p, 1234), b(p, 1234), c(p, 4321);
  std::vector<milliseconds> da, db, dc;
  for (int i = 0; i < 20; ++i) {
    da.push_back(a.Next());
    db.push_back(b.Next());
    dc.push_back(c.Next());
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(Backoff, NoInitialDelayMeansNoDelay) {
  // A supervisor's default: restarts at once.
  Backoff b(BackoffPolicy{milliseconds(0), 2.0, milliseconds(5000), 0.0}, 1);
  EXPECT_EQ(b.Delay(1), milliseconds(0));
  EXPECT_EQ(b.Delay(10), milliseconds(0));
}

}  // namespace
}  // namespace troupe
