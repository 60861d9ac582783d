// A group of 3 ranks in 3 processes formed through a rendezvous store (label caf): this test
// process is rank 0 and hosts the store; ranks 1 and 2 are rendezvous_peer children. Where Gloo
// is built the group allreduces through GlooCommunicator; then one rank is killed (kill -9) or
// stopped (SIGSTOP) while the others are blocked in an allreduce, and their Work must fail with
// Unavailable within the failure-detection time (the runtime's heartbeat_timeout, 300 ms here),
// not after Gloo's own timeout. The time from the signal to each rank's failure is printed.
// RendezvousProcessWatchOnly repeats the two with a communicator only the peer watch can end.
#include <gtest/gtest.h>
#include <signal.h>
#include <time.h>

#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "tests/collectives/rendezvous_group.h"

namespace troupe::collectives {
namespace {

using namespace std::chrono_literals;

constexpr const char* kToken = "rendezvous-process-test";
constexpr int kWorld = 3;
constexpr int kHeartbeatMs = 50;
constexpr int kHeartbeatTimeoutMs = 300;
constexpr runtime::NodeId kFirstNode = 7100;
#if defined(TROUPE_HAVE_GLOO)
constexpr bool kGloo = true;
#else
constexpr bool kGloo = false;
#endif

int64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

class RendezvousProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    runtime::RuntimeConfig config;
    config.node_name = "rank-0";
    config.node_id = kFirstNode;
    config.transport.cluster_token = kToken;
    config.heartbeat_interval = std::chrono::milliseconds(kHeartbeatMs);
    config.heartbeat_timeout = std::chrono::milliseconds(kHeartbeatTimeoutMs);
    runtime::CodecRegistry codecs;
    ASSERT_TRUE(AddRendezvousCodecs(codecs).ok());
    auto rt = runtime::Runtime::Start(config, std::move(codecs));
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    store_ = rt_->Ref(SpawnRendezvousStore(rt_->system()));
    ASSERT_TRUE(rt_->RegisterName(testing::kStoreName, store_).ok());
    for (int rank = 1; rank < kWorld; ++rank) {
      auto child = ChildProcess::Spawn(
          {TROUPE_RENDEZVOUS_PEER_BIN, "--rank", std::to_string(rank), "--world", std::to_string(kWorld), "--node-id",
           std::to_string(kFirstNode + rank), "--token", kToken, "--store-node", std::to_string(kFirstNode),
           "--store-address", rt_->address(), "--heartbeat-ms", std::to_string(kHeartbeatMs),
           "--heartbeat-timeout-ms", std::to_string(kHeartbeatTimeoutMs), "--backend", gloo_ ? "gloo" : "blocking"});
      ASSERT_TRUE(child.ok()) << child.status();
      auto ready = (*child)->ReadLineWithPrefix("READY ", 20s);
      ASSERT_TRUE(ready.ok()) << "rank " << rank << " did not start: " << ready.status();
      peers_.push_back(std::move(*child));
    }
    // Rank 0 forms the group here while the children do in theirs.
    auto member = std::async(std::launch::async,
                             [&] { return testing::FormGroup(*rt_, store_, 0, kWorld, gloo_, 15s); });
    for (int rank = 1; rank < kWorld; ++rank) {
      auto group = peers_[rank - 1]->ReadLine(20s);
      ASSERT_TRUE(group.ok()) << group.status();
      ASSERT_EQ(*group, "GROUP " + std::to_string(rank));
    }
    ASSERT_EQ(member.wait_for(20s), std::future_status::ready);
    auto formed = member.get();
    ASSERT_TRUE(formed.ok()) << formed.status();
    member_ = std::move(*formed);
  }

  void TearDown() override {
    for (auto& peer : peers_) {
      if (peer && !peer->reaped()) peer->Signal(SIGKILL);
    }
    member_.reset();
    if (rt_) {
      caf::anon_send_exit(store_.handle(), caf::exit_reason::user_shutdown);
      rt_->Stop();
      EXPECT_TRUE(rt_->AwaitActors(5s));
    }
  }

  // Ranks 0 and 1 block in an allreduce; `stop_rank_2` (kill -9 or SIGSTOP) takes rank 2 away.
  // Returns each rank's time from the signal to its failure, in ms.
  void ExpectTheOthersFailFast(const std::function<void(ChildProcess&)>& stop_rank_2, const char* what) {
    float x = 1;
    Work mine = member_->communicator->AllReduce(&x, 1, DataType::kFloat32, ReduceOp::kSum, 60s);
    ChildProcess& rank1 = *peers_[0];
    ASSERT_TRUE(rank1.WriteLine("block").ok());
    auto issued = rank1.ReadLine(10s);
    ASSERT_TRUE(issued.ok() && *issued == "ISSUED") << (issued.ok() ? *issued : issued.status().ToString());
    EXPECT_FALSE(mine.WaitFor(0ms).has_value()) << "rank 0's allreduce finished without rank 2";
    const int64_t t0 = MonotonicNs();
    stop_rank_2(*peers_[1]);
    auto failed = mine.WaitFor(10s);
    const int64_t t_rank0 = MonotonicNs();
    ASSERT_TRUE(failed.has_value()) << "rank 0's allreduce still blocked 10 s after " << what;
    EXPECT_EQ(failed->code(), StatusCode::kUnavailable) << *failed;
    auto line = rank1.ReadLineWithPrefix("FAILED ", 10s);
    ASSERT_TRUE(line.ok()) << "rank 1: " << line.status();
    std::istringstream in(*line);
    int64_t t_rank1 = 0;
    std::string status;
    in >> t_rank1;
    std::getline(in, status);
    EXPECT_NE(status.find("unavailable"), std::string::npos) << "rank 1: " << status;
    const double ms0 = (t_rank0 - t0) / 1e6, ms1 = (t_rank1 - t0) / 1e6;
    std::printf("%s of rank 2 (%s, heartbeat timeout %d ms): rank 0 failed after %.1f ms (%s), rank 1 after %.1f "
                "ms (%s)\n",
                what, gloo_ ? "gloo" : "blocking communicator (the watch alone)", kHeartbeatTimeoutMs, ms0, failed->ToString().c_str(),
                ms1, status.c_str());
    // The failure-detection time plus a margin for a loaded 2-core CI machine (ASan).
    EXPECT_LT(ms0, kHeartbeatTimeoutMs + 2000);
    EXPECT_LT(ms1, kHeartbeatTimeoutMs + 2000);
  }

  // Gloo where built; the blocking fake (only the peer watch ends an op) in RendezvousProcessWatchOnly.
  bool gloo_ = kGloo;
  std::unique_ptr<runtime::Runtime> rt_;
  runtime::ActorRef store_;
  std::vector<std::unique_ptr<ChildProcess>> peers_;
  std::unique_ptr<testing::GroupMember> member_;
};

TEST_F(RendezvousProcess, ThreeProcessesFormAGroupThroughTheStoreAndAllreduce) {
  ASSERT_EQ(member_->peers.size(), 2u);
  EXPECT_EQ(member_->peers[0].ref.node(), kFirstNode + 1);
  EXPECT_EQ(member_->peers[1].ref.node(), kFirstNode + 2);
  if (!gloo_) GTEST_SKIP() << "GlooCommunicator is not built here (no libgloo-dev): the group formed, no allreduce";
  constexpr size_t kCount = 4096;
  for (auto& peer : peers_) ASSERT_TRUE(peer->WriteLine("allreduce " + std::to_string(kCount)).ok());
  std::vector<float> data(kCount, 1.0f);
  Status mine = member_->communicator->AllReduce(data.data(), kCount, DataType::kFloat32, ReduceOp::kSum, 30s).Wait();
  ASSERT_TRUE(mine.ok()) << mine;
  EXPECT_EQ(data.front(), 6.0f);
  EXPECT_EQ(data.back(), 6.0f);
  for (auto& peer : peers_) {
    auto line = peer->ReadLineWithPrefix("ALLREDUCE ", 20s);
    ASSERT_TRUE(line.ok()) << line.status();
    EXPECT_EQ(*line, "OK 6 6");
  }
  EXPECT_TRUE(member_->communicator->health().ok());
}

TEST_F(RendezvousProcess, KillMinus9OfARankFailsTheOthersBlockedInAnAllreduce) {
  ExpectTheOthersFailFast([](ChildProcess& rank2) { rank2.Signal(SIGKILL); }, "kill -9");
}

TEST_F(RendezvousProcess, SigstopOfARankFailsTheOthersAfterTheHeartbeatTimeout) {
  ExpectTheOthersFailFast(
      [](ChildProcess& rank2) {
        Status s = rank2.Suspend();
        EXPECT_TRUE(s.ok()) << s;
      },
      "SIGSTOP");
  // Rank 0's own watch sees the loss too (its Gloo op may have failed first: rank 1's abort
  // closed its connections).
  auto lost = member_->lost->get_future();
  ASSERT_EQ(lost.wait_for(10s), std::future_status::ready);
  Status why = lost.get();
  EXPECT_EQ(why.code(), StatusCode::kUnavailable) << why;
  EXPECT_NE(why.message().find("rank 2 (actor"), std::string::npos) << why;
  EXPECT_NE(why.message().find("node " + std::to_string(kFirstNode + 2)), std::string::npos) << why;
}

// The same group with a communicator that nothing but the peer watch ends (as an NCCL op that
// does not see a peer's socket close): the time the runtime takes to see each loss.
class RendezvousProcessWatchOnly : public RendezvousProcess {
 protected:
  RendezvousProcessWatchOnly() { gloo_ = false; }
};

TEST_F(RendezvousProcessWatchOnly, KillMinus9OfARankIsSeenByEveryWatch) {
  ExpectTheOthersFailFast([](ChildProcess& rank2) { rank2.Signal(SIGKILL); }, "kill -9");
}

TEST_F(RendezvousProcessWatchOnly, SigstopOfARankIsSeenByEveryWatchAtTheHeartbeatTimeout) {
  ExpectTheOthersFailFast(
      [](ChildProcess& rank2) {
        Status s = rank2.Suspend();
        EXPECT_TRUE(s.ok()) << s;
      },
      "SIGSTOP");
}

TEST_F(RendezvousProcess, AGetWaitingOnAStoreWhoseNodeIsKilledFailsWithUnavailable) {
  // Every rendezvous_peer hosts a spare store too: rank 0 waits on rank 2's, then rank 2 dies.
  auto store = rt_->LookupName(kFirstNode + 2, testing::kStoreName, 10s);
  ASSERT_TRUE(store.ok()) << store.status();
  RendezvousClient client(*store);
  ASSERT_TRUE(client.Set("here", "1").ok());
  auto pending = std::async(std::launch::async, [&] { return client.Wait({"here", "never"}, 30s); });
  EXPECT_EQ(client.Wait({"never"}, 0ms).code(), StatusCode::kDeadlineExceeded);
  const int64_t t0 = MonotonicNs();
  peers_[1]->Signal(SIGKILL);
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready) << "a Get outlived its store's node";
  // At the transport's disconnect or at the latest the heartbeat timeout, not the Get's 30 s.
  const double ms = (MonotonicNs() - t0) / 1e6;
  Status s = pending.get();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
  std::printf("a Get waiting on a store whose node was killed failed after %.1f ms: %s\n", ms, s.ToString().c_str());
  EXPECT_EQ(client.Set("k", "v").code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace troupe::collectives
