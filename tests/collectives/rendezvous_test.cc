// The rendezvous store actor, its blocking client, the Gloo adapter and PeerWatch, in one
// process with a Runtime (label caf). Across processes: rendezvous_process_test.cc.
#include <gtest/gtest.h>

#include <caf/all.hpp>
#if defined(TROUPE_HAVE_GLOO)
#include <gloo/common/error.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/peer_watch.h"
#include "collectives/rendezvous.h"
#if defined(TROUPE_HAVE_GLOO)
#include "collectives/gloo_communicator.h"
#endif
#include "runtime/runtime.h"
#include "tests/collectives/rendezvous_group.h"
#include "tests/support/local_runtime.h"
#if defined(TROUPE_HAVE_GLOO)
#include "tests/collectives/vanished_gloo_rank.h"
#endif

namespace troupe::collectives {
namespace {

using namespace std::chrono_literals;
using runtime::ActorRef;

std::unique_ptr<runtime::Runtime> StartRuntime() {
  return ::troupe::testing::StartLocalRuntime("rendezvous", AddRendezvousCodecs);
}

class RendezvousTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rt_ = StartRuntime();
    ASSERT_TRUE(rt_);
  }
  void TearDown() override {
    for (auto& ref : spawned_) caf::anon_send_exit(ref.handle(), caf::exit_reason::user_shutdown);
    rt_->Stop();
    EXPECT_TRUE(rt_->AwaitActors(5s));
  }
  ActorRef Store(RendezvousLimits limits = {}) {
    ActorRef ref = rt_->Ref(SpawnRendezvousStore(rt_->system(), limits));
    spawned_.push_back(ref);
    return ref;
  }

  std::unique_ptr<runtime::Runtime> rt_;
  std::vector<ActorRef> spawned_;
};

TEST_F(RendezvousTest, SetThenGetReturnsTheValuesInTheOrderAsked) {
  RendezvousClient client(Store());
  ASSERT_TRUE(client.Set("a", "alpha").ok());
  ASSERT_TRUE(client.Set("b", std::string("\0\1\2", 3)).ok());
  auto values = client.Get(std::vector<std::string>{"b", "a"}, 1s);
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(*values, (std::vector<std::string>{std::string("\0\1\2", 3), "alpha"}));
  ASSERT_TRUE(client.Set("a", "replaced").ok());
  auto one = client.Get("a", 1s);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, "replaced");
  EXPECT_TRUE(client.Wait({"a", "b"}, 0ms).ok());
}

TEST_F(RendezvousTest, PrefixedClientsOfOneStoreDoNotShareKeys) {
  RendezvousClient client(Store());
  RendezvousClient gloo = client.WithPrefix("gloo/");
  RendezvousClient nccl = client.WithPrefix("nccl/");
  ASSERT_TRUE(gloo.Set("0", "gloo rank 0").ok());
  ASSERT_TRUE(nccl.Set("0", "nccl id").ok());
  EXPECT_EQ(*gloo.Get("0", 1s), "gloo rank 0");
  EXPECT_EQ(*nccl.Get("0", 1s), "nccl id");
  EXPECT_EQ(*client.Get("gloo/0", 1s), "gloo rank 0");
  EXPECT_EQ(gloo.WithPrefix("a/").prefix(), "gloo/a/");
  Status missing = gloo.Wait({"1"}, 0ms);
  EXPECT_NE(missing.message().find("'gloo/1'"), std::string::npos) << missing;
}

TEST_F(RendezvousTest, GetWaitsForAKeySetLater) {
  ActorRef store = Store();
  RendezvousClient client(store);
  auto pending = std::async(std::launch::async, [&] { return client.Get(std::vector<std::string>{"x", "y"}, 10s); });
  ASSERT_TRUE(client.Set("x", "1").ok());
  EXPECT_EQ(pending.wait_for(0ms), std::future_status::timeout) << "answered before 'y' was set";
  ASSERT_TRUE(RendezvousClient(store).Set("y", "2").ok());
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready);
  auto values = pending.get();
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(*values, (std::vector<std::string>{"1", "2"}));
}

TEST_F(RendezvousTest, AGetThatTimesOutNamesTheMissingKeys) {
  RendezvousClient client(Store());
  ASSERT_TRUE(client.Set("rank/0", "here").ok());
  const auto start = std::chrono::steady_clock::now();
  auto values = client.Get(std::vector<std::string>{"rank/0", "rank/1", "rank/2"}, 200ms);
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(values.ok());
  EXPECT_EQ(values.status().code(), StatusCode::kDeadlineExceeded) << values.status();
  EXPECT_NE(values.status().message().find("'rank/1', 'rank/2'"), std::string::npos) << values.status();
  EXPECT_EQ(values.status().message().find("'rank/0'"), std::string::npos) << values.status();
  EXPECT_GE(waited, 200ms);
  EXPECT_LT(waited, 200ms + RendezvousClient::kReplyGrace) << "the store's own answer did not come first";
  // Without a wait, at once.
  Status now = client.Wait({"rank/3"}, 0ms);
  EXPECT_EQ(now.code(), StatusCode::kDeadlineExceeded) << now;
  EXPECT_NE(now.message().find("'rank/3'"), std::string::npos) << now;
}

TEST_F(RendezvousTest, LimitsRefuseWhatWouldGrowTheStoreWithResourceExhausted) {
  RendezvousLimits limits;
  limits.max_keys = 3;
  limits.max_key_bytes = 8;
  limits.max_value_bytes = 16;
  limits.max_total_bytes = 40;
  limits.max_waiting = 2;
  ActorRef store = Store(limits);
  RendezvousClient client(store);
  auto expect_exhausted = [](const Status& s, const std::string& names) {
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
    EXPECT_NE(s.message().find(names), std::string::npos) << s;
  };
  expect_exhausted(client.Set("k", std::string(17, 'v')), "max_value_bytes 16");
  expect_exhausted(client.Set("123456789", "v"), "max_key_bytes 8");
  EXPECT_EQ(client.Set("", "v").code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(client.Set("a", std::string(16, 'v')).ok());  // 17 bytes
  ASSERT_TRUE(client.Set("b", std::string(16, 'v')).ok());  // 34 bytes
  expect_exhausted(client.Set("c", std::string(16, 'v')), "max_total_bytes 40");
  ASSERT_TRUE(client.Set("c", "v").ok());  // 36 bytes, 3 keys
  expect_exhausted(client.Set("d", ""), "max_keys 3");
  ASSERT_TRUE(client.Set("a", "").ok()) << "replacing a key is not a new key";
  expect_exhausted(client.Get(std::vector<std::string>{"1", "2", "3", "4"}, 1s).status(), "max_keys 3");
  // Two Gets may wait; a third is refused rather than queued.
  auto w1 = std::async(std::launch::async, [&] { return client.Wait({"late"}, 10s); });
  auto w2 = std::async(std::launch::async, [&] { return client.Wait({"late"}, 10s); });
  // Until both wait in the store (each asks on its own thread): a set tells how many wait.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  uint32_t waiting = 0;
  while (waiting < 2 && std::chrono::steady_clock::now() < deadline) {
    auto reply = store.Request<RendezvousSetReply>(RendezvousSet{"a", ""}, 5s);
    ASSERT_TRUE(reply.ok()) << reply.status();
    waiting = reply->waiting;
  }
  ASSERT_EQ(waiting, 2u);
  Status third = client.Wait({"late"}, 10s);
  expect_exhausted(third, "max_waiting 2");
  // Ending the store ends the waiting ones too (their receiver is gone), at once.
  caf::anon_send_exit(store.handle(), caf::exit_reason::user_shutdown);
  ASSERT_EQ(w1.wait_for(10s), std::future_status::ready);
  ASSERT_EQ(w2.wait_for(10s), std::future_status::ready);
  EXPECT_FALSE(w1.get().ok());
  EXPECT_FALSE(w2.get().ok());
}

TEST_F(RendezvousTest, ManyConcurrentClientsFormAGroup) {
  constexpr int kRanks = 32;
  ActorRef store = Store();
  std::vector<std::string> keys;
  for (int r = 0; r < kRanks; ++r) keys.push_back("rank/" + std::to_string(r));
  std::vector<std::future<StatusOr<std::vector<std::string>>>> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      RendezvousClient client(store);
      Status s = client.Set(keys[r], "address of " + std::to_string(r));
      if (!s.ok()) return StatusOr<std::vector<std::string>>(s);
      return client.Get(keys, 10s);
    }));
  }
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(ranks[r].wait_for(15s), std::future_status::ready);
    auto values = ranks[r].get();
    ASSERT_TRUE(values.ok()) << "rank " << r << ": " << values.status();
    ASSERT_EQ(values->size(), static_cast<size_t>(kRanks));
    for (int p = 0; p < kRanks; ++p) EXPECT_EQ((*values)[p], "address of " + std::to_string(p));
  }
}

// Waits (at most 10 s) until `store` holds `n` waiting Gets: a set tells how many wait.
::testing::AssertionResult StoreHasWaiting(const ActorRef& store, uint32_t n) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  uint32_t waiting = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    auto reply = store.Request<RendezvousSetReply>(RendezvousSet{"probe", ""}, 5s);
    if (!reply.ok()) return ::testing::AssertionFailure() << "the store did not answer a set: " << reply.status();
    waiting = reply->waiting;
    if (waiting == n) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << waiting << " Gets wait in the store after 10 s, not " << n;
}

double Millis(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

TEST_F(RendezvousTest, AnAbortEndsAClientsWaitAtOnceWithItsReason) {
  ActorRef store = Store();
  auto abort = std::make_shared<AbortSignal>();
  // WithPrefix keeps the abort (the NCCL id's client is a prefixed one).
  const RendezvousClient client = RendezvousClient(store).WithAbort(abort).WithPrefix("gloo/");
  auto pending = std::async(std::launch::async, [&] { return client.Wait({"never"}, 30s); });
  ASSERT_TRUE(StoreHasWaiting(store, 1));
  const auto aborted_at = std::chrono::steady_clock::now();
  abort->Abort(UnavailableError("rank 1 (actor 7 on node 2) lost"));
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready) << "the wait outlived the abort (store: 30 s)";
  const auto returned_after = std::chrono::steady_clock::now() - aborted_at;
  Status waited = pending.get();
  EXPECT_EQ(waited.code(), StatusCode::kUnavailable) << waited;
  EXPECT_NE(waited.message().find("rank 1 (actor 7 on node 2) lost"), std::string::npos) << waited;
  EXPECT_NE(waited.message().find("rendezvous store"), std::string::npos) << waited;
  EXPECT_LT(Millis(returned_after), 1000.0) << "ms after the abort";
  std::printf("client wait returned %.2f ms after the abort (the store would have answered in 30000 ms)\n",
              Millis(returned_after));
  // Raised before: every call returns the reason without asking the store.
  EXPECT_EQ(client.Set("k", "v").code(), StatusCode::kUnavailable);
  EXPECT_EQ(client.Get("k", 30s).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(RendezvousClient(store).Wait({"gloo/k"}, 0ms).code(), StatusCode::kDeadlineExceeded)
      << "the aborted set reached the store";
  // A client without the signal is not aborted by it.
  EXPECT_TRUE(RendezvousClient(store).Set("k", "v").ok());
}

TEST_F(RendezvousTest, AClientOfAnEndedStoreFailsAtOnceInsteadOfWaiting) {
  ActorRef store = Store();
  RendezvousClient client(store);
  auto pending = std::async(std::launch::async, [&] { return client.Wait({"never"}, 30s); });
  ASSERT_EQ(client.Wait({"never"}, 0ms).code(), StatusCode::kDeadlineExceeded);
  caf::anon_send_exit(store.handle(), caf::exit_reason::user_shutdown);
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready) << "a Get outlived its store";
  Status waited = pending.get();
  EXPECT_EQ(waited.code(), StatusCode::kUnavailable) << waited;
  EXPECT_NE(waited.message().find("rendezvous store"), std::string::npos) << waited;
  EXPECT_FALSE(client.Set("k", "v").ok());
}

#if defined(TROUPE_HAVE_GLOO)
TEST_F(RendezvousTest, TheGlooAdapterSetsGetsWaitsAndThrowsTheStatus) {
  GlooRendezvousStore gloo_store(RendezvousClient(Store()), 200ms);
  gloo_store.set("addr", std::vector<char>{'h', 'i', '\0'});
  gloo_store.wait({"addr"});
  gloo_store.wait({"addr"}, std::chrono::milliseconds(0));
  EXPECT_EQ(gloo_store.get("addr"), (std::vector<char>{'h', 'i', '\0'}));
  try {
    gloo_store.get("missing");
    FAIL() << "get of a key never set returned";
  } catch (const gloo::IoException& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("deadline_exceeded"), std::string::npos) << what;
    EXPECT_NE(what.find("'missing'"), std::string::npos) << what;
  }
  EXPECT_THROW(gloo_store.wait({"missing"}, std::chrono::milliseconds(10)), gloo::IoException);
  EXPECT_THROW(gloo_store.set("", {}), gloo::IoException);
}

// A Gloo mesh forms with two requests to the store a rank (its set; one get of every peer's key,
// whose values GlooRendezvousStore keeps for Gloo's gets), however many peers: with Gloo's own
// connectFullMesh each rank asked the store once or twice for each peer in turn (14 requests a
// rank here), each a round trip to the head in a job.
TEST_F(RendezvousTest, AGlooMeshFormsWithTwoStoreRequestsARank) {
  constexpr int kRanks = 4;
  const caf::actor target = Store().handle();
  auto sets = std::make_shared<std::atomic<int>>(0);
  auto gets = std::make_shared<std::atomic<int>>(0);
  ActorRef counting = rt_->Ref(rt_->system().spawn([=](caf::event_based_actor* self) -> caf::behavior {
    return {
        [=](RendezvousSet& set) {
          sets->fetch_add(1);
          return self->delegate(target, std::move(set));
        },
        [=](RendezvousGet& get) {
          gets->fetch_add(1);
          return self->delegate(target, std::move(get));
        },
    };
  }));
  spawned_.push_back(counting);
  std::vector<std::future<StatusOr<std::unique_ptr<GlooCommunicator>>>> forming;
  for (int r = 0; r < kRanks; ++r) {
    forming.push_back(std::async(std::launch::async, [counting, r] {
      return GlooCommunicator::Create(r, kRanks,
                                      std::make_shared<GlooRendezvousStore>(RendezvousClient(counting), 20s));
    }));
  }
  std::vector<std::unique_ptr<GlooCommunicator>> comms;
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(forming[r].wait_for(30s), std::future_status::ready) << "rank " << r << " did not form";
    auto comm = forming[r].get();
    ASSERT_TRUE(comm.ok()) << "rank " << r << ": " << comm.status();
    comms.push_back(std::move(*comm));
  }
  // The mesh is whole: an allreduce over every pair.
  std::vector<int64_t> values(kRanks);
  std::vector<Work> works;
  for (int r = 0; r < kRanks; ++r) {
    values[r] = r + 1;
    works.push_back(comms[r]->AllReduce(&values[r], 1, DataType::kInt64, ReduceOp::kSum, 20s));
  }
  for (int r = 0; r < kRanks; ++r) {
    auto done = works[r].WaitFor(30s);
    ASSERT_TRUE(done.has_value()) << "rank " << r << "'s allreduce did not end";
    ASSERT_TRUE(done->ok()) << *done;
    EXPECT_EQ(values[r], kRanks * (kRanks + 1) / 2) << "rank " << r;
  }
  EXPECT_EQ(sets->load(), kRanks);
  EXPECT_EQ(gets->load(), kRanks);
}

// A formation aborted while it waits in the store for a peer's addresses that never come (rank 1
// never calls Create): with the store watching the signal (a client WithAbort, as the actor
// workers' factory makes it) Create returns the reason within moments; a store that does not
// watch it (the baseline, measured in the same run) holds Create until connect_timeout.
TEST_F(RendezvousTest, AnAbortEndsACreateWaitingInTheStoreForItsPeersAddresses) {
  // Rank 0 of 2 forms through `store` (watching `abort` or not); returns how long Create took
  // after the abort, and its status.
  auto abort_formation = [&](bool store_watches, std::chrono::milliseconds connect_timeout,
                             std::chrono::steady_clock::duration* after_abort) -> Status {
    const ActorRef store = Store();
    auto abort = std::make_shared<AbortSignal>();
    RendezvousClient client(store);
    if (store_watches) client = client.WithAbort(abort);
    GlooOptions options;
    options.connect_timeout = connect_timeout;
    options.abort = abort;
    auto forming = std::async(std::launch::async, [&] {
      return GlooCommunicator::Create(0, 2, std::make_shared<GlooRendezvousStore>(client), options).status();
    });
    if (!StoreHasWaiting(store, 1)) {
      ADD_FAILURE() << "rank 0 never waited in the store";
      return forming.get();
    }
    const auto aborted_at = std::chrono::steady_clock::now();
    abort->Abort(CancelledError("rank 0 was stopped by its supervisor"));
    // Watched: 10 s, half the connect_timeout given; not: the connect_timeout and 10 s more.
    if (forming.wait_for(store_watches ? 10s : connect_timeout + 10s) != std::future_status::ready) {
      ADD_FAILURE() << "Create still waits " << (store_watches ? "10 s" : "10 s past its connect_timeout")
                    << " after the abort";
    }
    Status status = forming.get();
    *after_abort = std::chrono::steady_clock::now() - aborted_at;
    return status;
  };
  std::chrono::steady_clock::duration watched{};
  const Status aborted = abort_formation(true, 20s, &watched);
  EXPECT_EQ(aborted.code(), StatusCode::kCancelled) << aborted;
  EXPECT_NE(aborted.message().find("formation aborted: rank 0 was stopped by its supervisor"), std::string::npos)
      << aborted;
  EXPECT_LT(Millis(watched), 1000.0) << "ms after the abort";
  // Baseline: the same abort, the store not watching it (connect_timeout 2 s).
  std::chrono::steady_clock::duration unwatched{};
  const Status baseline = abort_formation(false, 2s, &unwatched);
  EXPECT_EQ(baseline.code(), StatusCode::kCancelled) << baseline;
  std::printf("Create returned %.2f ms after the abort with the store watching it; %.2f ms without "
              "(connect_timeout 2000 ms): %.0fx sooner\n",
              Millis(watched), Millis(unwatched), Millis(unwatched) / std::max(Millis(watched), 0.001));
}
#endif  // TROUPE_HAVE_GLOO

// ---- PeerWatch ----

using testing::BlockingCommunicator;
using testing::IdleWorker;

TEST_F(RendezvousTest, APeerThatExitsAbortsThePendingCollectiveNamingTheRank) {
  BlockingCommunicator comm(0, 3);
  ActorRef one = rt_->Spawn(IdleWorker);
  ActorRef two = rt_->Spawn(IdleWorker);
  spawned_ = {one, two};
  std::promise<Status> told;
  PeerWatch watch(*rt_, comm, {{1, one}, {2, two}}, [&](const Status& s) { told.set_value(s); });
  Work work = comm.AllReduce(nullptr, 0, DataType::kFloat32, ReduceOp::kSum, 30s);
  EXPECT_FALSE(work.WaitFor(0ms).has_value());
  caf::anon_send_exit(two.handle(), caf::exit_reason::kill);
  auto failed = work.WaitFor(10s);
  ASSERT_TRUE(failed.has_value()) << "the collective did not fail after its peer exited";
  EXPECT_EQ(failed->code(), StatusCode::kUnavailable) << *failed;
  EXPECT_NE(failed->message().find("rank 2 (" + two.ToString() + ") lost"), std::string::npos) << *failed;
  EXPECT_EQ(comm.health(), *failed);
  EXPECT_EQ(watch.lost(), *failed);
  auto future = told.get_future();
  ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(future.get(), *failed);
  // A second loss changes nothing.
  caf::anon_send_exit(one.handle(), caf::exit_reason::kill);
  EXPECT_EQ(comm.AllReduce(nullptr, 0, DataType::kFloat32, ReduceOp::kSum, 30s).Wait(), *failed);
}

TEST_F(RendezvousTest, APeerThatExitsNormallyStillAbortsAndAnEmptyRefAtOnce) {
  {
    BlockingCommunicator comm(0, 3);
    ActorRef one = rt_->Spawn(IdleWorker);
    PeerWatch watch(*rt_, comm, {{1, one}});
    caf::anon_send_exit(one.handle(), caf::exit_reason::user_shutdown);
    Work work = comm.Barrier(30s);
    auto failed = work.WaitFor(10s);
    ASSERT_TRUE(failed.has_value());
    EXPECT_EQ(failed->code(), StatusCode::kUnavailable) << *failed;
  }
  BlockingCommunicator comm(0, 3);
  PeerWatch watch(*rt_, comm, {{4, ActorRef()}});
  EXPECT_EQ(comm.health().code(), StatusCode::kUnavailable);
  EXPECT_NE(comm.health().message().find("rank 4"), std::string::npos) << comm.health();
}

TEST_F(RendezvousTest, ADestroyedWatchNoLongerAborts) {
  BlockingCommunicator comm(0, 3);
  ActorRef one = rt_->Spawn(IdleWorker);
  { PeerWatch watch(*rt_, comm, {{1, one}}); }
  std::promise<Status> down;
  one.Monitor([&](const Status& s) { down.set_value(s); });
  caf::anon_send_exit(one.handle(), caf::exit_reason::kill);
  auto future = down.get_future();
  ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(comm.health().ok()) << comm.health();
}

#if defined(TROUPE_HAVE_GLOO)
// A rank lost between its store set and its connects (its addresses published, then gone:
// PublishAndVanish; its worker actor killed). Ranks 0 and 1 form through the store with a watch on
// rank 2's actor started before their formation, raising an AbortSignal (as actor workers do from
// ActorWorkerPeers on): both Creates fail within moments of the loss with Unavailable naming rank
// 2, not after Gloo's 30 s connect timeout.
TEST_F(RendezvousTest, AWatchStartedBeforeFormationEndsItWhenARankThatPublishedItsAddressIsLost) {
  const ActorRef store = Store();
  GlooRendezvousStore published(RendezvousClient{store});
  testing::PublishAndVanish(published, 2, 3);
  ActorRef two = rt_->Spawn(IdleWorker);
  spawned_.push_back(two);
  std::vector<std::shared_ptr<AbortSignal>> aborts;
  std::vector<std::unique_ptr<PeerWatch>> watches;
  for (int rank = 0; rank < 2; ++rank) {
    aborts.push_back(std::make_shared<AbortSignal>());
    watches.push_back(std::make_unique<PeerWatch>(*rt_, aborts.back(), std::vector<PeerWatch::Peer>{{2, two}}));
  }
  std::vector<Status> statuses(2);
  std::vector<std::chrono::steady_clock::time_point> ended(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      GlooOptions options;  // connect_timeout: Gloo's 30 s
      options.abort = aborts[rank];
      statuses[rank] =
          GlooCommunicator::Create(rank, 3, std::make_shared<GlooRendezvousStore>(RendezvousClient{store}), options)
              .status();
      ended[rank] = std::chrono::steady_clock::now();
    });
  }
  // Both have published theirs, so every key is set: they are past the store or about to be.
  ASSERT_TRUE(RendezvousClient(store).Wait({"0", "1"}, 10s).ok());
  const auto killed_at = std::chrono::steady_clock::now();
  caf::anon_send_exit(two.handle(), caf::exit_reason::kill);
  for (auto& thread : threads) thread.join();
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(statuses[rank].code(), StatusCode::kUnavailable) << statuses[rank];
    EXPECT_NE(statuses[rank].message().find("formation aborted: rank 2 (" + two.ToString() + ") lost"),
              std::string::npos)
        << statuses[rank];
    EXPECT_LT(ended[rank] - killed_at, 2s) << "rank " << rank << ": " << statuses[rank];
  }
  watches.clear();
}
#endif  // TROUPE_HAVE_GLOO

}  // namespace
}  // namespace troupe::collectives
