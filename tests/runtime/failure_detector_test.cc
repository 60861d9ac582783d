// Tests of the heartbeat failure detector (runtime/failure_detector.h) on a manual clock.
#include <gtest/gtest.h>

#include <vector>

#include "common/clock.h"
#include "runtime/failure_detector.h"

namespace troupe::runtime {
namespace {

using std::chrono::milliseconds;
using Nodes = std::vector<NodeId>;

constexpr NodeId kNodeA = 11;
constexpr NodeId kNodeB = 22;

class FailureDetectorTest : public ::testing::Test {
 protected:
  // Checks every 100 ms (the default heartbeat interval) for `d`; returns the last verdict.
  FailureDetector::Verdict CheckFor(milliseconds d) {
    FailureDetector::Verdict v;
    for (milliseconds t{0}; t < d; t += milliseconds(100)) {
      clock_.Advance(milliseconds(100));
      v = detector_.Check();
    }
    return v;
  }

  ManualClock clock_;
  FailureDetector detector_{clock_, /*timeout=*/milliseconds(1000)};
};

TEST_F(FailureDetectorTest, APeerSilentForLongerThanTheTimeoutExpires) {
  detector_.Connected(kNodeA);
  auto v = CheckFor(milliseconds(1000));
  EXPECT_EQ(v.alive, Nodes{kNodeA}) << "silent for exactly the timeout is not yet too long";
  EXPECT_TRUE(v.expired.empty());
  v = CheckFor(milliseconds(100));
  EXPECT_TRUE(v.alive.empty());
  EXPECT_EQ(v.expired, Nodes{kNodeA});
  v = CheckFor(milliseconds(100));
  EXPECT_EQ(v.expired, Nodes{kNodeA}) << "it stays expired until it is lost";
  detector_.Lost(kNodeA);
  v = detector_.Check();
  EXPECT_TRUE(v.alive.empty() && v.expired.empty());
}

TEST_F(FailureDetectorTest, AnyFrameKeepsAPeerAlive) {
  detector_.Connected(kNodeA);
  detector_.Connected(kNodeB);
  for (int i = 0; i < 30; ++i) {
    CheckFor(milliseconds(100));
    detector_.Touch(kNodeA);
  }
  auto v = detector_.Check();
  EXPECT_EQ(v.alive, Nodes{kNodeA});
  EXPECT_EQ(v.expired, Nodes{kNodeB});
}

TEST_F(FailureDetectorTest, OnlyConnectedPeersAreWatched) {
  detector_.Touch(kNodeA);  // a frame from a peer not (or no longer) connected
  EXPECT_FALSE(detector_.Silence(kNodeA).has_value());
  auto v = CheckFor(milliseconds(2000));
  EXPECT_TRUE(v.alive.empty() && v.expired.empty());
  detector_.Connected(kNodeA);
  EXPECT_EQ(detector_.Silence(kNodeA), Clock::Duration(0));
  clock_.Advance(milliseconds(250));
  EXPECT_EQ(detector_.Silence(kNodeA), Clock::Duration(milliseconds(250)));
  detector_.Lost(kNodeA);
  EXPECT_FALSE(detector_.Silence(kNodeA).has_value());
}

TEST_F(FailureDetectorTest, AStallOfThisProcessRestartsEveryPeersSilence) {
  detector_.Connected(kNodeA);
  detector_.Check();
  // This process did not run for 5 s (suspended, or starved): its peers may well have sent
  // frames it has not read yet.
  clock_.Advance(milliseconds(5000));
  auto v = detector_.Check();
  EXPECT_EQ(v.alive, Nodes{kNodeA});
  EXPECT_EQ(detector_.Silence(kNodeA), Clock::Duration(0));
  // Checked on time again, the peer's real silence counts from the stall's end.
  v = CheckFor(milliseconds(1000));
  EXPECT_EQ(v.alive, Nodes{kNodeA});
  v = CheckFor(milliseconds(100));
  EXPECT_EQ(v.expired, Nodes{kNodeA});
}

TEST_F(FailureDetectorTest, ALateCheckWithinHalfTheTimeoutIsNoStall) {
  detector_.Connected(kNodeA);
  detector_.Check();
  clock_.Advance(milliseconds(500));  // half the timeout: late, but not a stall
  detector_.Check();
  clock_.Advance(milliseconds(500));
  detector_.Check();
  clock_.Advance(milliseconds(100));
  auto v = detector_.Check();
  EXPECT_EQ(v.expired, Nodes{kNodeA});
}

TEST_F(FailureDetectorTest, ClearForgetsEveryPeer) {
  detector_.Connected(kNodeA);
  detector_.Connected(kNodeB);
  detector_.Clear();
  auto v = CheckFor(milliseconds(2000));
  EXPECT_TRUE(v.alive.empty() && v.expired.empty());
}

}  // namespace
}  // namespace troupe::runtime
