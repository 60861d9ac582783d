// Bridge: deterministic tests against a FakeTransport and a ManualClock, with a real CAF
// actor system (bounded waits only where a CAF thread answers).
#include <gtest/gtest.h>

#include <caf/all.hpp>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <atomic>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "runtime/codec.h"
#include "runtime/error.h"
#include "runtime/bridge.h"
#include "runtime/internal/lazy_clock.h"
#include "runtime/messages.capnp.h"
#include "runtime/node_identity.h"
#include "runtime/wire_types.h"
#include "tests/fakes/fake_transport.h"
#include "tests/runtime/test_actors.h"

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;
using runtime::ActorRef;
using runtime::Bridge;
using transport::Frame;
using transport::FrameHeader;

constexpr runtime::NodeId kSelf = 1, kPeer = 2;
constexpr uint32_t kIncarnation = 0x123;

// CAF configured as troupe's runtime configures it (work sharing, troupe's clock).
caf::actor_system_config& Sharing(caf::actor_system_config& cfg) {
  cfg.set("scheduler.policy", caf::atom("sharing"));
  cfg.set("scheduler.max-threads", 2);
  runtime::internal::InstallLazyClock(cfg);
  return cfg;
}

// The number of timers in the actor system's clock once it has applied every change queued so
// far (cancellations wait in its queue until something wakes it: a 1 ms delayed message does;
// the count the clock publishes just before it delivers that message includes it).
size_t TimersAfterFlush(caf::actor_system& system) {
  auto& clock = static_cast<runtime::internal::LazyClock&>(system.clock());
  std::promise<void> fired;
  auto marker = system.spawn([&](caf::event_based_actor* self) -> caf::behavior {
    return {[&, self](caf::ok_atom) {
      fired.set_value();
      self->quit();
    }};
  });
  clock.schedule_message(clock.now() + std::chrono::milliseconds(1), caf::actor_cast<caf::strong_actor_ptr>(marker),
                         caf::make_mailbox_element(nullptr, caf::make_message_id(), {}, caf::ok_atom::value));
  if (fired.get_future().wait_for(std::chrono::seconds(5)) != std::future_status::ready) return SIZE_MAX;
  return clock.scheduled() - 1;
}

Status ErrorIn(const Frame& frame) {
  Status error;
  Status read = runtime::ReadFlat<runtime::wire::ErrorInfo>(
      frame.payload.data(), frame.payload.size(), "error reply", [&](runtime::wire::ErrorInfo::Reader info) {
        error = Status(static_cast<StatusCode>(info.getCode()), info.getText());
        return OkStatus();
      });
  return read.ok() ? error : read;
}

class BridgeTest : public ::testing::Test {
 protected:
  BridgeTest() : system_(Sharing(cfg_)), transport_(kSelf) {}

  void SetUp() override { Make(runtime::BridgeConfig{}); }
  void TearDown() override {
    if (bridge_) bridge_->Shutdown();
  }

  void Make(runtime::BridgeConfig config) {
    if (bridge_) bridge_->Shutdown();
    codecs_ = runtime::CodecRegistry();
    ASSERT_TRUE(AddTestCodecs(codecs_).ok());
    ASSERT_TRUE(codecs_.AddRuntimeTypes().ok());
    bridge_ = std::make_shared<Bridge>(system_, transport_, codecs_, config, clock_, kIncarnation);
    bridge_->Start();
    ASSERT_TRUE(transport_.Start(bridge_->Handler()).ok());
  }

  Buffer Encode(caf::message msg) {
    auto encoded = codecs_.Encode(msg, *bridge_);
    EXPECT_TRUE(encoded.ok()) << encoded.status();
    return std::move(encoded->payload);
  }

  /// Answers `request` (from kPeer's actor 77) with Count{value}.
  void ReplyCount(const Frame& request, int value) {
    FrameHeader header;
    header.flags = runtime::kFlagResponse;
    header.request_id = request.header.request_id;
    header.type_id = kCount;
    header.src_actor = 77;
    transport_.Deliver(kPeer, header, Encode(caf::make_message(Count{value})));
  }

  std::optional<Frame> WaitSent(uint32_t type_id, uint32_t flags = 0) {
    return transport_.WaitForSent(
        [&](const Frame& f) { return f.header.type_id == type_id && (f.header.flags & flags) == flags; }, 5s);
  }

  caf::actor_system_config cfg_;
  caf::actor_system system_;
  FakeTransport transport_;
  ManualClock clock_;
  runtime::CodecRegistry codecs_;
  std::shared_ptr<Bridge> bridge_;
};

TEST_F(BridgeTest, AProxyAsksItsNodeToMonitorTheActor) {
  ActorRef ref = bridge_->RefTo(kPeer, 77);
  ASSERT_TRUE(ref.valid());
  auto frame = WaitSent(runtime::kMonitorRequest);
  ASSERT_TRUE(frame) << "no monitor request for a new proxy";
  EXPECT_EQ(frame->header.dst_node, kPeer);
  EXPECT_EQ(frame->header.dst_actor, 77u);
  EXPECT_EQ(bridge_->stats().proxies, 1u);
}

TEST_F(BridgeTest, ARequestBecomesAFrameAndItsReplyReachesTheRequester) {
  ActorRef ref = bridge_->RefTo(kPeer, 77);
  auto reply = std::async(std::launch::async, [&] { return ref.Request<Count>(Get{}, 5s); });
  auto request = WaitSent(kGet, runtime::kFlagRequest);
  ASSERT_TRUE(request) << "the request never reached the transport";
  EXPECT_EQ(bridge_->stats().requests_pending, 1u);
  ReplyCount(*request, 42);
  auto count = reply.get();
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->value, 42);
  EXPECT_EQ(bridge_->stats().requests_pending, 0u);
  EXPECT_EQ(bridge_->stats().latency_count, 1u) << "the round trip was not recorded in the latency histogram";
}

TEST_F(BridgeTest, AnAnsweredRequestLeavesNoTimerInTheClock) {
  // CAF 0.17 keeps a request's timer until it fires (or its actor exits), answered or not; the
  // bridge cancels it when it delivers the reply, and when it fails the request fast. The
  // requester here lives on, as services do.
  ActorRef ref = bridge_->RefTo(kPeer, 77);
  ASSERT_EQ(TimersAfterFlush(system_), 0u) << "timers before any request";
  std::vector<caf::actor> requesters;
  for (int i = 0; i < 2; ++i) {
    auto done = std::make_shared<std::promise<bool>>();
    auto answered = done->get_future();
    caf::actor target = ref.handle();
    requesters.push_back(system_.spawn([target, done](caf::event_based_actor* self) -> caf::behavior {
      self->request(target, std::chrono::seconds(30), Get{})
          .then([done](Count&) { done->set_value(true); }, [done](caf::error&) { done->set_value(false); });
      return {[](int) {}};  // stays alive after the reply
    }));
    auto request = WaitSent(kGet, runtime::kFlagRequest);
    ASSERT_TRUE(request) << "the request never reached the transport";
    if (i == 0) {
      ReplyCount(*request, 1);
    } else {
      transport_.Fail(kPeer, UnavailableError("link down"));
    }
    ASSERT_EQ(answered.wait_for(5s), std::future_status::ready) << "the requester got no reply";
    EXPECT_EQ(answered.get(), i == 0);
    EXPECT_EQ(TimersAfterFlush(system_), 0u)
        << (i == 0 ? "an answered" : "a failed") << " request's 30 s timer is still in the clock";
  }
  for (auto& r : requesters) caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
}

TEST_F(BridgeTest, NodeLossFailsPendingRequestsAndFiresMonitors) {
  ActorRef ref = bridge_->RefTo(kPeer, 77);
  std::promise<Status> down;
  auto fired = down.get_future();
  ref.Monitor([&down](const Status& s) { down.set_value(s); });
  auto reply = std::async(std::launch::async, [&] { return ref.Request<Count>(Get{}, 30s); });
  ASSERT_TRUE(WaitSent(kGet, runtime::kFlagRequest));
  transport_.Fail(kPeer, UnavailableError("link down"));
  ASSERT_EQ(reply.wait_for(5s), std::future_status::ready) << "the pending request was not failed";
  auto result = reply.get();
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable) << result.status();
  EXPECT_NE(result.status().message().find("link down"), std::string::npos);
  ASSERT_EQ(fired.wait_for(5s), std::future_status::ready) << "the monitor did not fire";
  EXPECT_EQ(fired.get().code(), StatusCode::kUnavailable);
  // Later requests through the dead proxy fail at once.
  EXPECT_EQ(ref.Request<Count>(Get{}, 30s).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(bridge_->stats().proxies, 0u);
}

TEST_F(BridgeTest, AFailedSendFailsTheRequestFast) {
  transport_.set_fail_sends(true);
  ActorRef ref = bridge_->RefTo(kPeer, 78);
  auto result = ref.Request<Count>(Get{}, 30s);
  EXPECT_EQ(result.status().code(), StatusCode::kUnavailable) << result.status();
}

TEST_F(BridgeTest, HeartbeatsGoToConnectedPeersAndSilenceDisconnects) {
  runtime::BridgeConfig config;
  config.heartbeat_timeout = 1000ms;
  Make(config);
  transport_.Connect(kPeer);
  transport_.Connect(3);
  bridge_->Tick();
  EXPECT_TRUE(WaitSent(runtime::kHeartbeat)) << "no heartbeat";
  FrameHeader beat;
  beat.type_id = runtime::kHeartbeat;
  for (int round = 1; round <= 6; ++round) {  // ticks every 200 ms up to 1.2 s
    clock_.Advance(200ms);
    if (round == 3) transport_.Deliver(3, beat, Buffer());  // node 3 is alive, node 2 is silent
    bridge_->Tick();
    if (round < 6) {
      EXPECT_TRUE(transport_.disconnected().empty()) << "round " << round;
    }
  }
  auto disconnected = transport_.disconnected();
  ASSERT_EQ(disconnected.size(), 1u);
  EXPECT_EQ(disconnected[0].first, kPeer);
  EXPECT_EQ(disconnected[0].second.code(), StatusCode::kUnavailable);
  EXPECT_EQ(bridge_->stats().heartbeat_timeouts, 1u);
  EXPECT_EQ(bridge_->stats().nodes_lost, 1u);
}

TEST_F(BridgeTest, AStalledProcessDoesNotBlameItsPeers) {
  transport_.Connect(kPeer);
  bridge_->Tick();
  clock_.Advance(5s);  // this process did not run at all (suspended, overloaded)
  bridge_->Tick();
  EXPECT_TRUE(transport_.disconnected().empty());
  for (int i = 0; i < 3; ++i) {  // then 1.2 s of silence, ticking normally
    clock_.Advance(400ms);
    bridge_->Tick();
  }
  EXPECT_EQ(transport_.disconnected().size(), 1u) << "real silence after the stall must still count";
}

TEST_F(BridgeTest, ThePendingTableIsBoundedAndSwept) {
  runtime::BridgeConfig config;
  config.max_pending_requests = 2;
  config.request_ttl = 1000ms;
  Make(config);
  ActorRef ref = bridge_->RefTo(kPeer, 79);
  std::vector<std::future<StatusOr<Count>>> replies;
  for (int i = 0; i < 2; ++i) {
    replies.push_back(std::async(std::launch::async, [&] { return ref.Request<Count>(Get{}, 300ms); }));
    ASSERT_TRUE(WaitSent(kGet, runtime::kFlagRequest));
  }
  EXPECT_EQ(bridge_->stats().requests_pending, 2u);
  auto third = ref.Request<Count>(Get{}, 5s);
  EXPECT_EQ(third.status().code(), StatusCode::kResourceExhausted) << third.status();
  clock_.Advance(1001ms);
  bridge_->Tick();
  EXPECT_EQ(bridge_->stats().requests_pending, 0u) << "expired requests stayed in the table";
  for (auto& r : replies) EXPECT_EQ(r.get().status().code(), StatusCode::kDeadlineExceeded);
}

TEST_F(BridgeTest, AControlRequestTimesOutOnItsOwnTimeoutBehindLongerLivedActorRequests) {
  runtime::BridgeConfig config;
  config.request_ttl = 10s;
  Make(config);
  ActorRef ref = bridge_->RefTo(kPeer, 79);
  auto actor_reply = std::async(std::launch::async, [&] { return ref.Request<Count>(Get{}, 30s); });
  auto request = WaitSent(kGet, runtime::kFlagRequest);
  ASSERT_TRUE(request);
  std::promise<StatusOr<ActorRef>> looked_up;
  auto lookup = looked_up.get_future();
  bridge_->ControlRequest(kPeer, runtime::kNameLookup, Buffer(), 100ms,
                           [&](StatusOr<ActorRef> r) { looked_up.set_value(std::move(r)); });
  EXPECT_EQ(bridge_->stats().requests_pending, 2u);
  clock_.Advance(101ms);
  bridge_->Tick();
  ASSERT_EQ(lookup.wait_for(0s), std::future_status::ready) << "the control request outlived its timeout";
  EXPECT_EQ(lookup.get().status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(bridge_->stats().requests_pending, 1u) << "the actor request went before its TTL";
  ReplyCount(*request, 7);
  auto reply = actor_reply.get();
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->value, 7);
}

TEST_F(BridgeTest, AnInboundRequestReachesTheActorAndTheReplyIsRouted) {
  auto counter = system_.spawn(Counter, int64_t{10});
  ActorRef ref = bridge_->RefOf(caf::actor_cast<caf::strong_actor_ptr>(counter));
  bridge_->MakeAddressable(caf::actor_cast<caf::strong_actor_ptr>(counter));
  EXPECT_EQ(runtime::IncarnationOf(ref.id()), kIncarnation);
  FrameHeader header;
  header.dst_actor = ref.id();
  header.src_actor = 55;
  header.request_id = 9;
  header.type_id = kAdd;
  header.flags = runtime::kFlagRequest;
  transport_.Deliver(kPeer, header, Encode(caf::make_message(Add{5})));
  auto reply = WaitSent(kCount, runtime::kFlagResponse);
  ASSERT_TRUE(reply) << "no reply frame";
  EXPECT_EQ(reply->header.request_id, 9u);
  EXPECT_EQ(reply->header.dst_node, kPeer);
  auto decoded = codecs_.Decode(kCount, reply->payload, *bridge_);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->get_as<Count>(0).value, 15);
  caf::anon_send_exit(counter, caf::exit_reason::user_shutdown);
}

// Threads that encode the same new ref at once (a job supervisor's spawn helpers, each sending
// the attempt's rendezvous store to a node) may each send it as soon as MakeAddressable returns:
// a peer's first request to it must find it, never "no actor ... (it exited, or never existed)".
// Before the fix the thread that lost the race returned while the winner had not put the actor
// in the registry yet.
TEST_F(BridgeTest, AnActorMadeAddressableByThreadsAtOnceIsFindableWhenEachReturns) {
  constexpr int kActors = 3000;
  constexpr int kThreads = 3;
  int missing = 0;
  for (int i = 0; i < kActors && missing == 0; ++i) {
    auto actor = caf::actor_cast<caf::strong_actor_ptr>(system_.spawn(Counter, int64_t{0}));
    std::atomic<int> ready{0};
    std::atomic<int> not_found{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < kThreads) std::this_thread::yield();
        bridge_->MakeAddressable(actor);
        if (!system_.registry().get(actor->id())) not_found.fetch_add(1);
      });
    }
    for (auto& thread : threads) thread.join();
    missing += not_found.load();
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  }
  EXPECT_EQ(missing, 0) << "a MakeAddressable returned before its actor could be found";
}

TEST_F(BridgeTest, BadInboundRequestsGetErrorReplies) {
  auto counter = system_.spawn(Counter, int64_t{0});
  ActorRef ref = bridge_->RefOf(caf::actor_cast<caf::strong_actor_ptr>(counter));
  bridge_->MakeAddressable(caf::actor_cast<caf::strong_actor_ptr>(counter));
  struct Case {
    uint64_t dst;
    uint32_t type;
    std::string bytes;
    StatusCode want;
  };
  std::vector<Case> cases = {
      {ref.id(), 4242, std::string(8, '\0'), StatusCode::kInvalidArgument},             // unknown type id
      {ref.id(), kAdd, std::string(24, '\xff'), StatusCode::kInvalidArgument},          // undecodable
      {runtime::MakeWireActorId(kIncarnation, 999999), kGet, "", StatusCode::kNotFound}, // never existed
      {runtime::MakeWireActorId(kIncarnation + 1, 1), kGet, "", StatusCode::kNotFound},  // earlier run
  };
  uint64_t id = 100;
  for (const auto& c : cases) {
    FrameHeader header;
    header.dst_actor = c.dst;
    header.request_id = ++id;
    header.type_id = c.type;
    header.flags = runtime::kFlagRequest;
    transport_.Deliver(kPeer, header, Buffer::CopyOf(c.bytes));
    // The bridge answers on the delivering thread: the reply is there already.
    auto sent = transport_.TakeSent();
    ASSERT_EQ(sent.size(), 1u) << "type " << c.type;
    EXPECT_EQ(sent[0].header.type_id, runtime::kErrorReply);
    EXPECT_EQ(sent[0].header.request_id, id);
    EXPECT_EQ(ErrorIn(sent[0]).code(), c.want) << ErrorIn(sent[0]);
  }
  EXPECT_EQ(bridge_->stats().error_replies_sent, cases.size());
  caf::anon_send_exit(counter, caf::exit_reason::user_shutdown);
}

TEST_F(BridgeTest, ADownNoticeKillsTheProxyWithTheRemoteReason) {
  ActorRef ref = bridge_->RefTo(kPeer, 88);
  std::promise<Status> down;
  auto fired = down.get_future();
  ref.Monitor([&down](const Status& s) { down.set_value(s); });
  capnp::MallocMessageBuilder builder;
  auto reason = builder.initRoot<runtime::wire::DownNotice>().initReason();
  reason.setCategory(static_cast<uint64_t>(runtime::kStatusCategory));
  reason.setCode(static_cast<uint8_t>(StatusCode::kFailedPrecondition));
  reason.setText("bye");
  FrameHeader header;
  header.type_id = runtime::kDownNotice;
  header.src_actor = 88;
  transport_.Deliver(kPeer, header, runtime::SerializeToBuffer(builder));
  ASSERT_EQ(fired.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(fired.get(), FailedPreconditionError("bye"));
}

TEST_F(BridgeTest, MonitoringAnActorThatDoesNotExistAnswersDownAtOnce) {
  FrameHeader header;
  header.type_id = runtime::kMonitorRequest;
  header.dst_actor = runtime::MakeWireActorId(kIncarnation, 424242);
  transport_.Deliver(kPeer, header, Buffer());
  auto sent = transport_.TakeSent();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].header.type_id, runtime::kDownNotice);
  EXPECT_EQ(sent[0].header.src_actor, header.dst_actor);
}

TEST_F(BridgeTest, AWatchedLocalActorThatExitsSendsItsReason) {
  auto counter = system_.spawn(Counter, int64_t{0});
  bridge_->MakeAddressable(caf::actor_cast<caf::strong_actor_ptr>(counter));
  ActorRef ref = bridge_->RefOf(caf::actor_cast<caf::strong_actor_ptr>(counter));
  FrameHeader header;
  header.type_id = runtime::kMonitorRequest;
  header.dst_actor = ref.id();
  transport_.Deliver(kPeer, header, Buffer());
  caf::anon_send(counter, Quit{StatusCode::kAlreadyExists, "gone"});
  auto notice = WaitSent(runtime::kDownNotice);
  ASSERT_TRUE(notice) << "no down notice";
  EXPECT_EQ(notice->header.src_actor, ref.id());
  EXPECT_EQ(notice->header.dst_node, kPeer);
  // The notice carries the exit reason itself, as the watcher's side will read it.
  Status reason = InternalError("not decoded");
  ASSERT_TRUE((runtime::ReadFlat<runtime::wire::DownNotice>(notice->payload.data(), notice->payload.size(),
                                                             "DownNotice", [&](runtime::wire::DownNotice::Reader r) {
                                                               reason = runtime::ToStatus(runtime::ReadErrorInfo(r.getReason()));
                                                               return OkStatus();
                                                             }))
                  .ok());
  EXPECT_EQ(reason.code(), StatusCode::kAlreadyExists) << reason;
  EXPECT_NE(reason.message().find("gone"), std::string::npos) << reason;
}

}  // namespace
}  // namespace troupe::testing
