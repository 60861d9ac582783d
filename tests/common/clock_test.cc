// Tests of the clocks (common/clock.h): the manual clock and the Unix time on a clock.
#include <gtest/gtest.h>

#include "common/clock.h"

namespace troupe {
namespace {

TEST(Clock, ManualClockMovesOnlyWhenAdvanced) {
  ManualClock clock;
  auto t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(std::chrono::milliseconds(250));
  EXPECT_EQ(clock.Now() - t0, std::chrono::milliseconds(250));
  EXPECT_EQ(clock.NowCoarse(), clock.Now());
}

TEST(Clock, ManualClockUnixTimeStartsAtAFixedDateAndMovesWithIt) {
  ManualClock clock;
  EXPECT_EQ(clock.UnixMs(), ManualClock::kStartUnixMs);
  clock.Advance(std::chrono::milliseconds(1500));
  EXPECT_EQ(clock.UnixMs(), ManualClock::kStartUnixMs + 1500);
  clock.Advance(std::chrono::microseconds(999));  // whole milliseconds, rounded down
  EXPECT_EQ(clock.UnixMs(), ManualClock::kStartUnixMs + 1500);
}

TEST(Clock, SteadyClockUnixTimeIsTheSystemClocks) {
  auto ms = [](std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  };
  int64_t before = ms(std::chrono::system_clock::now());
  int64_t unix_ms = SteadyClock::Instance().UnixMs();
  int64_t after = ms(std::chrono::system_clock::now());
  EXPECT_GE(unix_ms, before);
  EXPECT_LE(unix_ms, after);
  EXPECT_GT(unix_ms, ManualClock::kStartUnixMs - int64_t{365} * 24 * 3600 * 1000) << "not Unix milliseconds";
}

}  // namespace
}  // namespace troupe
