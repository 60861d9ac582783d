// UsageMeter: batching per series and UTC hour, flush timing, running totals.
#include "actors/api/usage_meter.h"

#include <gtest/gtest.h>

namespace troupe::api {
namespace {

using std::chrono::milliseconds;

TEST(UsageMeter, RequestsOfOneSeriesInOneHourBatchIntoOneRow) {
  ManualClock clock;
  UsageMeter meter(clock);
  EXPECT_FALSE(meter.Record("k1", "acme", "chat", 10, 20, false));
  EXPECT_FALSE(meter.Record("k1", "acme", "chat", 5, 0, true));
  EXPECT_FALSE(meter.Record("k2", "acme", "chat", 1, 1, false));
  EXPECT_EQ(meter.pending_rows(), 2u);
  UsageFlush f = meter.Flush();
  ASSERT_EQ(f.deltas.size(), 2u);
  EXPECT_EQ(f.deltas[0].series, (UsageSeries{"k1", "acme", "chat"}));
  EXPECT_EQ(f.deltas[0].counts, (UsageCounts{2, 1, 15, 20}));
  EXPECT_EQ(f.deltas[0].hour_unix_s, ManualClock::kStartUnixMs / 1000) << "2026-01-01 00:00 UTC is an hour start";
  EXPECT_EQ(f.deltas[1].counts, (UsageCounts{1, 0, 1, 1}));
  EXPECT_EQ(meter.pending_rows(), 0u);
  EXPECT_TRUE(meter.Flush().deltas.empty());
}

TEST(UsageMeter, HourBoundariesSplitRowsInUtcHours) {
  ManualClock clock;
  UsageMeter meter(clock, {std::chrono::hours(2), 4096});
  clock.Advance(std::chrono::minutes(59) + std::chrono::seconds(59) + milliseconds(999));
  meter.Record("k", "acme", "chat", 1, 2, false);
  clock.Advance(milliseconds(1));
  meter.Record("k", "acme", "chat", 3, 4, false);
  UsageFlush f = meter.Flush();
  ASSERT_EQ(f.deltas.size(), 2u);
  const int64_t start = ManualClock::kStartUnixMs / 1000;
  EXPECT_EQ(f.deltas[0].hour_unix_s, start);
  EXPECT_EQ(f.deltas[0].counts.input_tokens, 1u);
  EXPECT_EQ(f.deltas[1].hour_unix_s, start + 3600);
  EXPECT_EQ(f.deltas[1].counts.input_tokens, 3u);
  ASSERT_EQ(f.totals.size(), 1u) << "one series over both hours";
  EXPECT_EQ(f.totals[0].counts, (UsageCounts{2, 0, 4, 6}));
}

TEST(UsageMeter, HourOfFloorsToTheUtcHour) {
  EXPECT_EQ(UsageMeter::HourOf(0), 0);
  EXPECT_EQ(UsageMeter::HourOf(3599999), 0);
  EXPECT_EQ(UsageMeter::HourOf(3600000), 3600);
  EXPECT_EQ(UsageMeter::HourOf(1767229199000), 1767225600);
  EXPECT_EQ(UsageMeter::HourOf(-1), -3600);
}

TEST(UsageMeter, FlushIsDueAfterTheIntervalOrAtTheRowCap) {
  ManualClock clock;
  UsageMeter meter(clock, {milliseconds(1000), 3});
  EXPECT_FALSE(meter.FlushDue()) << "nothing to flush";
  clock.Advance(milliseconds(5000));
  EXPECT_FALSE(meter.FlushDue()) << "an empty batch is never due";
  EXPECT_TRUE(meter.Record("k", "t", "m", 1, 1, false)) << "the interval passed while idle";
  meter.Flush();
  EXPECT_FALSE(meter.Record("k", "t", "m", 1, 1, false));
  clock.Advance(milliseconds(999));
  EXPECT_FALSE(meter.FlushDue());
  clock.Advance(milliseconds(1));
  EXPECT_TRUE(meter.FlushDue());
  meter.Flush();
  EXPECT_FALSE(meter.Record("a", "t", "m", 1, 1, false));
  EXPECT_FALSE(meter.Record("b", "t", "m", 1, 1, false));
  EXPECT_TRUE(meter.Record("c", "t", "m", 1, 1, false)) << "3 rows: the cap";
}

TEST(UsageMeter, TotalsRunAcrossFlushesAndReportOnlyTouchedSeries) {
  ManualClock clock;
  UsageMeter meter(clock);
  meter.Record("k1", "acme", "chat", 10, 10, false);
  meter.Record("k2", "acme", "embed", 7, 0, false);
  meter.Flush();
  clock.Advance(std::chrono::hours(3));
  meter.Record("k1", "acme", "chat", 1, 2, true);
  UsageFlush f = meter.Flush();
  ASSERT_EQ(f.deltas.size(), 1u);
  EXPECT_EQ(f.deltas[0].counts, (UsageCounts{1, 1, 1, 2}));
  ASSERT_EQ(f.totals.size(), 1u);
  EXPECT_EQ(f.totals[0].counts, (UsageCounts{2, 1, 11, 12}));
  ASSERT_EQ(meter.Totals().size(), 2u);
  EXPECT_EQ(meter.Totals().at(UsageSeries{"k2", "acme", "embed"}), (UsageCounts{1, 0, 7, 0}));
}

TEST(UsageMeter, DeltasAddUpToWhatWasRecorded) {
  // Many records over several hours and flushes: the rows sum to the records, the totals too.
  ManualClock clock;
  UsageMeter meter(clock, {milliseconds(250), 8});
  UsageCounts recorded, from_rows;
  for (int i = 0; i < 5000; ++i) {
    clock.Advance(milliseconds(7 * (i % 13)));
    std::string key = "k" + std::to_string(i % 5);
    uint64_t in = static_cast<uint64_t>(i % 17), out = static_cast<uint64_t>(i % 23);
    bool error = i % 31 == 0;
    recorded += UsageCounts{1, error ? 1u : 0u, in, out};
    if (meter.Record(key, "t" + std::to_string(i % 2), "m", in, out, error)) {
      for (const UsageRow& row : meter.Flush().deltas) from_rows += row.counts;
    }
  }
  for (const UsageRow& row : meter.Flush().deltas) from_rows += row.counts;
  EXPECT_EQ(from_rows, recorded);
  UsageCounts from_totals;
  for (const auto& [series, counts] : meter.Totals()) from_totals += counts;
  EXPECT_EQ(from_totals, recorded);
}

}  // namespace
}  // namespace troupe::api
