// RoutingPolicy: the shares each policy gives over many picks, full replicas skipped, none when all
// are full, and power of two choices preferring the less loaded replica.
#include "actors/serving/routing_policy.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace troupe::serving {
namespace {

constexpr uint64_t kSeed = 20;

std::vector<ReplicaSlot> Table(size_t n, uint32_t max_ongoing = 100) {
  std::vector<ReplicaSlot> table(n);
  for (size_t i = 0; i < n; ++i) {
    table[i].info.name = "d/v1/replica-" + std::to_string(i);
    table[i].info.max_ongoing_requests = max_ongoing;
  }
  return table;
}

// Picks `n` times without counting the picks as outstanding (the router would; here the loads stay
// as the test set them) and returns how often each replica was picked.
std::vector<int> Counts(RoutingPolicy& policy, const std::vector<ReplicaSlot>& table, int n) {
  std::vector<int> counts(table.size(), 0);
  for (int k = 0; k < n; ++k) {
    auto pick = policy.Pick(table);
    EXPECT_TRUE(pick.has_value()) << "pick " << k;
    if (!pick) break;
    ++counts[*pick];
  }
  return counts;
}

const RoutingPolicyKind kAll[] = {RoutingPolicyKind::kRoundRobin, RoutingPolicyKind::kRandom,
                                  RoutingPolicyKind::kWeighted, RoutingPolicyKind::kLeastOutstanding,
                                  RoutingPolicyKind::kPowerOfTwoChoices};

TEST(RoutingPolicy, NamesRoundTripAndUnknownNamesAreRefusedWithTheChoices) {
  for (RoutingPolicyKind kind : kAll) {
    auto parsed = ParseRoutingPolicy(RoutingPolicyName(kind));
    ASSERT_TRUE(parsed.ok()) << RoutingPolicyName(kind);
    EXPECT_EQ(*parsed, kind);
    EXPECT_EQ(MakeRoutingPolicy(kind, kSeed)->kind(), kind);
  }
  auto bad = ParseRoutingPolicy("least_loaded");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'least_loaded'"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("power_of_two_choices"), std::string::npos) << bad.status();
}

TEST(RoutingPolicy, RoundRobinTakesEachReplicaInTurnExactly) {
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kRoundRobin, kSeed);
  auto table = Table(3);
  for (int k = 0; k < 30; ++k) EXPECT_EQ(policy->Pick(table), static_cast<size_t>(k % 3)) << "pick " << k;
}

TEST(RoutingPolicy, RandomIsUniformWithinTolerance) {
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kRandom, kSeed);
  auto counts = Counts(*policy, Table(4), 40000);
  // 10000 expected each; the standard deviation is about 87, so 5% is over 5 sigma.
  for (size_t i = 0; i < counts.size(); ++i) EXPECT_NEAR(counts[i], 10000, 500) << "replica " << i;
}

TEST(RoutingPolicy, WeightedSplitsNinetyTenExactlyAndInterleaved) {
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kWeighted, kSeed);
  auto table = Table(2);
  table[0].info.weight = 90;
  table[1].info.weight = 10;
  // Smooth weighted round robin: exact in every cycle of 100 picks, and the 10% never in a burst.
  std::vector<int> counts(2, 0);
  int run_of_small = 0;
  for (int k = 0; k < 10000; ++k) {
    auto pick = policy->Pick(table);
    ASSERT_TRUE(pick.has_value());
    ++counts[*pick];
    run_of_small = *pick == 1 ? run_of_small + 1 : 0;
    ASSERT_LE(run_of_small, 1) << "the 10% replica was picked twice in a row at pick " << k;
    if ((k + 1) % 100 == 0) {
      ASSERT_EQ(counts[1], (k + 1) / 10) << "after " << k + 1 << " picks";
    }
  }
  EXPECT_EQ(counts[0], 9000);
  EXPECT_EQ(counts[1], 1000);
}

TEST(RoutingPolicy, WeightedFollowsNginxSmoothOrderAndGivesWeightZeroNothing) {
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kWeighted, kSeed);
  auto table = Table(4);
  table[0].info.weight = 5;
  table[1].info.weight = 1;
  table[2].info.weight = 1;
  table[3].info.weight = 0;
  std::string order;
  for (int k = 0; k < 14; ++k) order += static_cast<char>('a' + *policy->Pick(table));
  EXPECT_EQ(order, "aabacaaaabacaa");
  // Fractional weights (a 0.9/0.1 split written as fractions) split the same way.
  auto fractions = Table(2);
  fractions[0].info.weight = 0.9;
  fractions[1].info.weight = 0.1;
  auto counts = Counts(*MakeRoutingPolicy(RoutingPolicyKind::kWeighted, kSeed), fractions, 1000);
  EXPECT_NEAR(counts[1], 100, 1);
}

TEST(RoutingPolicy, EveryPolicySkipsFullReplicas) {
  for (RoutingPolicyKind kind : kAll) {
    auto policy = MakeRoutingPolicy(kind, kSeed);
    auto table = Table(4, /*max_ongoing=*/2);
    table[0].outstanding = 2;
    table[2].outstanding = 2;
    auto counts = Counts(*policy, table, 1000);
    EXPECT_EQ(counts[0], 0) << RoutingPolicyName(kind);
    EXPECT_EQ(counts[2], 0) << RoutingPolicyName(kind);
    EXPECT_EQ(counts[1] + counts[3], 1000) << RoutingPolicyName(kind);
    if (kind != RoutingPolicyKind::kPowerOfTwoChoices) {
      EXPECT_GT(counts[1], 0) << RoutingPolicyName(kind);
      EXPECT_GT(counts[3], 0) << RoutingPolicyName(kind);
    }
  }
}

TEST(RoutingPolicy, EveryPolicyPicksNoneWhenAllAreFullOrTheTableIsEmpty) {
  for (RoutingPolicyKind kind : kAll) {
    auto policy = MakeRoutingPolicy(kind, kSeed);
    EXPECT_FALSE(policy->Pick({}).has_value()) << RoutingPolicyName(kind);
    auto table = Table(3, /*max_ongoing=*/1);
    for (auto& slot : table) slot.outstanding = 1;
    EXPECT_FALSE(policy->Pick(table).has_value()) << RoutingPolicyName(kind);
    table[1].outstanding = 0;
    EXPECT_EQ(policy->Pick(table), size_t{1}) << RoutingPolicyName(kind);
    // The one replica with room is the one a retried request avoids: none.
    EXPECT_FALSE(policy->Pick(table, /*exclude=*/1).has_value()) << RoutingPolicyName(kind);
  }
}

TEST(RoutingPolicy, EveryPolicyFillsAReplicaUpToItsMaxAsTheRouterCountsPicks) {
  for (RoutingPolicyKind kind : kAll) {
    auto policy = MakeRoutingPolicy(kind, kSeed);
    auto table = Table(3, /*max_ongoing=*/4);
    int picks = 0;
    while (auto pick = policy->Pick(table)) {
      ++table[*pick].outstanding;
      ASSERT_LE(++picks, 12) << RoutingPolicyName(kind);
    }
    EXPECT_EQ(picks, 12) << RoutingPolicyName(kind);
    for (const auto& slot : table) EXPECT_EQ(slot.outstanding, 4u) << RoutingPolicyName(kind);
  }
}

TEST(RoutingPolicy, LeastOutstandingTakesTheLeastLoadedAndSharesTies) {
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kLeastOutstanding, kSeed);
  auto table = Table(3);
  table[0].outstanding = 3;
  table[1].outstanding = 1;
  table[2].outstanding = 2;
  EXPECT_EQ(policy->Pick(table), size_t{1});
  auto idle = Table(3);
  auto counts = Counts(*policy, idle, 300);
  EXPECT_EQ(counts, (std::vector<int>{100, 100, 100}));
}

TEST(RoutingPolicy, PowerOfTwoChoicesPrefersTheLessLoaded) {
  // Two replicas: both are always drawn, so the idle one always wins.
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kPowerOfTwoChoices, kSeed);
  auto pair = Table(2);
  pair[0].outstanding = 5;
  auto counts = Counts(*policy, pair, 1000);
  EXPECT_EQ(counts[1], 1000);
  // Four replicas, one idle and three busy: the idle one is in the sample with probability
  // 1 - C(3,2)/C(4,2) = 1/2 (random choice: 1/4); the busy ones share the rest, a sixth each.
  auto four = Table(4);
  for (size_t i = 1; i < 4; ++i) four[i].outstanding = 5;
  counts = Counts(*policy, four, 12000);
  EXPECT_NEAR(counts[0], 6000, 300);
  for (size_t i = 1; i < 4; ++i) EXPECT_NEAR(counts[i], 2000, 200) << "replica " << i;
}

TEST(RoutingPolicy, PowerOfTwoChoicesDrawsDistinctReplicas) {
  // Of two replicas with room, the loaded one would be picked only if it were drawn twice.
  auto policy = MakeRoutingPolicy(RoutingPolicyKind::kPowerOfTwoChoices, kSeed);
  auto table = Table(3, /*max_ongoing=*/4);
  table[0].outstanding = 4;  // full
  table[1].outstanding = 3;
  table[2].outstanding = 0;
  auto counts = Counts(*policy, table, 1000);
  EXPECT_EQ(counts[2], 1000);
}

TEST(RoutingPolicy, SameSeedSamePicks) {
  for (RoutingPolicyKind kind : {RoutingPolicyKind::kRandom, RoutingPolicyKind::kPowerOfTwoChoices}) {
    auto a = MakeRoutingPolicy(kind, kSeed);
    auto b = MakeRoutingPolicy(kind, kSeed);
    auto table = Table(5);
    for (size_t i = 0; i < table.size(); ++i) table[i].outstanding = static_cast<uint32_t>(i % 3);
    for (int k = 0; k < 100; ++k) ASSERT_EQ(a->Pick(table), b->Pick(table)) << RoutingPolicyName(kind);
  }
}

}  // namespace
}  // namespace troupe::serving
