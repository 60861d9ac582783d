// Location-transparent actors across three real processes on loopback: this test process
// (node A) and two runtime_peer children (B hosts the directory, C registers in it).
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "common/child_process.h"
#include "runtime/directory.h"
#include "runtime/messages.capnp.h"
#include "runtime/node_identity.h"
#include "runtime/runtime.h"
#include "runtime/supervisor.h"
#include "runtime/wire_types.h"
#include "tests/runtime/test_actors.h"
#include "tests/runtime/test_messages.capnp.h"
#include "tests/support/transport_inbox.h"
#include "transport/ucx_transport.h"

namespace troupe::testing {
namespace {

using namespace std::chrono_literals;
using runtime::ActorRef;
using runtime::NodeId;
using runtime::Runtime;

constexpr const char* kToken = "runtime-test-token";
constexpr NodeId kNodeA = 101, kNodeB = 102, kNodeC = 103;
// The runtime's defaults: what the failure-detection promises are made for.
constexpr int kHeartbeatMs = 100;
constexpr int kHeartbeatTimeoutMs = 1000;

struct Peer {
  std::unique_ptr<ChildProcess> process;
  NodeId id = 0;
  std::string address;
  uint32_t incarnation = 0;
};

Peer StartPeer(NodeId id, const std::string& name, std::vector<std::string> extra) {
  Peer peer;
  std::vector<std::string> argv = {TROUPE_RUNTIME_PEER_BIN, "--name", name, "--node-id", std::to_string(id),
                                   "--token", kToken, "--heartbeat-ms", std::to_string(kHeartbeatMs),
                                   "--heartbeat-timeout-ms", std::to_string(kHeartbeatTimeoutMs)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto child = ChildProcess::Spawn(argv);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return peer;
  auto ready = (*child)->ReadLineWithPrefix("READY ", 20s);
  EXPECT_TRUE(ready.ok()) << name << " did not start: " << ready.status();
  if (!ready.ok()) return peer;
  std::stringstream ss(*ready);
  ss >> peer.id >> peer.address >> peer.incarnation;
  peer.process = std::move(*child);
  return peer;
}

class RuntimeThreeProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    b_ = StartPeer(kNodeB, "b", {"--host-directory"});
    ASSERT_TRUE(b_.process);
    c_ = StartPeer(kNodeC, "c", {"--register-in", std::to_string(kNodeB) + "@" + b_.address});
    ASSERT_TRUE(c_.process);
    runtime::RuntimeConfig config;
    config.node_name = "a";
    config.node_id = kNodeA;
    config.transport.cluster_token = kToken;
    config.heartbeat_interval = std::chrono::milliseconds(kHeartbeatMs);
    config.heartbeat_timeout = std::chrono::milliseconds(kHeartbeatTimeoutMs);
    runtime::CodecRegistry codecs;
    ASSERT_TRUE(AddTestCodecs(codecs).ok());
    auto rt = Runtime::Start(config, std::move(codecs));
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    rt_->AddNode(kNodeB, b_.address);
    rt_->AddNode(kNodeC, c_.address);
  }

  void TearDown() override {
    if (rt_) rt_->Stop();
  }

 public:
  ActorRef Lookup(NodeId node, const std::string& name) {
    auto ref = rt_->LookupName(node, name, 5s);
    EXPECT_TRUE(ref.ok()) << ref.status();
    return ref.ok() ? *ref : ActorRef();
  }

 protected:
  Peer b_, c_;
  std::unique_ptr<Runtime> rt_;
};

// Waits (bounded) for an asynchronous result.
template <class T>
std::optional<T> WaitFor(std::future<T>& future, std::chrono::milliseconds limit) {
  if (future.wait_for(limit) != std::future_status::ready) return std::nullopt;
  return future.get();
}

TEST_F(RuntimeThreeProcess, RequestResponseAcrossProcesses) {
  ActorRef counter = Lookup(kNodeB, "counter");
  ASSERT_TRUE(counter.valid());
  EXPECT_EQ(counter.node(), kNodeB);
  auto count = counter.Request<Count>(Add{5}, 5s);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->value, 5);
  count = counter.Request<Count>(Get{}, 5s);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->value, 5);
}

TEST_F(RuntimeThreeProcess, RefForwardedThroughAThirdNodeStillWorks) {
  // A holds a ref to C's counter and hands it to B's relay, which calls it from B.
  ActorRef counter_c = Lookup(kNodeC, "counter");
  ActorRef relay_b = Lookup(kNodeB, "relay");
  ASSERT_TRUE(counter_c.valid() && relay_b.valid());
  auto via = relay_b.Request<Count>(CallVia{counter_c, 7}, 10s);
  ASSERT_TRUE(via.ok()) << via.status();
  EXPECT_EQ(via->value, 7);
  auto direct = counter_c.Request<Count>(Get{}, 5s);
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(direct->value, 7) << "B's call did not reach the counter on C";
  // And a ref to an actor of A itself, sent to B and used by B to call back into A.
  ActorRef local = rt_->Spawn(Counter, int64_t{100});
  via = relay_b.Request<Count>(CallVia{local, 1}, 10s);
  ASSERT_TRUE(via.ok()) << via.status();
  EXPECT_EQ(via->value, 101);
}

TEST_F(RuntimeThreeProcess, HundredThousandPipelinedMessagesArriveInOrder) {
  ActorRef counter = Lookup(kNodeB, "counter");
  ASSERT_TRUE(counter.valid());
  constexpr uint64_t kMessages = 100000;
  for (uint64_t i = 0; i < kMessages; ++i) counter.Send(Seq{i});
  auto result = AwaitSeq(counter, kMessages, 60s);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->received, kMessages) << "messages were lost";
  EXPECT_TRUE(result->in_order) << "messages arrived out of order";
}

TEST_F(RuntimeThreeProcess, RemoteSpawnReturnsAWorkingRef) {
  auto spawned = rt_->SpawnOn(kNodeC, "counter", CounterArgs{10}, 5s);
  ASSERT_TRUE(spawned.ok()) << spawned.status();
  EXPECT_EQ(spawned->node(), kNodeC);
  auto count = spawned->Request<Count>(Add{1}, 5s);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->value, 11);

  auto unknown = rt_->SpawnOn(kNodeC, "no-such-type", 5s);
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound) << unknown.status();
  auto wrong_args = rt_->SpawnOn(kNodeC, "counter", Add{1}, 5s);
  EXPECT_EQ(wrong_args.status().code(), StatusCode::kInvalidArgument) << wrong_args.status();
}

TEST_F(RuntimeThreeProcess, NamedLookupOnANodeAndThroughTheDirectory) {
  auto missing = rt_->LookupName(kNodeB, "nobody", 5s);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status();

  ActorRef directory = Lookup(kNodeB, runtime::kDirectoryName);
  ASSERT_TRUE(directory.valid());
  // C registered its counter in B's directory at start; A finds it there.
  auto entry = directory.Request<runtime::DirectoryEntry>(runtime::DirectoryLookup{"c.counter"}, 5s);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(entry->ref.node(), kNodeC);
  auto count = entry->ref.Request<Count>(Add{3}, 5s);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->value, 3);

  // A registers one of its own actors; the directory drops it when the actor exits.
  ActorRef mine = rt_->Spawn(Counter, int64_t{0});
  auto reg = directory.Request<runtime::DirectoryEntry>(runtime::DirectoryRegister{"a.counter", mine}, 5s);
  ASSERT_TRUE(reg.ok()) << reg.status();
  auto taken = directory.Request<runtime::DirectoryEntry>(
      runtime::DirectoryRegister{"a.counter", rt_->Spawn(Counter, int64_t{0})}, 5s);
  EXPECT_EQ(taken.status().code(), StatusCode::kAlreadyExists) << taken.status();
  mine.Send(Quit{StatusCode::kCancelled, "done"});
  auto deadline = std::chrono::steady_clock::now() + 5s;
  StatusOr<runtime::DirectoryEntry> gone = InternalError("not asked");
  while (std::chrono::steady_clock::now() < deadline) {
    gone = directory.Request<runtime::DirectoryEntry>(runtime::DirectoryLookup{"a.counter"}, 5s);
    if (!gone.ok()) break;
  }
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound) << "the directory kept an exited actor";
}

TEST_F(RuntimeThreeProcess, MonitoredRemoteActorThatQuitsReportsItsReason) {
  auto spawned = rt_->SpawnOn(kNodeB, "counter", CounterArgs{0}, 5s);
  ASSERT_TRUE(spawned.ok()) << spawned.status();
  std::promise<Status> down;
  auto fired = down.get_future();
  spawned->Monitor([&down](const Status& reason) { down.set_value(reason); });
  spawned->Send(Quit{StatusCode::kFailedPrecondition, "checkpoint missing"});
  auto reason = WaitFor(fired, 5s);
  ASSERT_TRUE(reason) << "the monitor did not fire";
  EXPECT_EQ(reason->code(), StatusCode::kFailedPrecondition) << *reason;
  EXPECT_NE(reason->message().find("checkpoint missing"), std::string::npos) << *reason;
  // Requests to it now fail fast instead of timing out.
  auto start = std::chrono::steady_clock::now();
  auto after = spawned->Request<Count>(Get{}, 5s);
  EXPECT_FALSE(after.ok());
  EXPECT_NE(after.status().code(), StatusCode::kDeadlineExceeded) << after.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

// Kill -9 or SIGSTOP node C while A monitors its counter and has a request pending there.
void ExpectNodeLossIsSeen(RuntimeThreeProcess* test, Runtime& rt, Peer& c, bool hang,
                          std::chrono::milliseconds limit) {
  auto counter = rt.LookupName(kNodeC, "counter", 5s);
  ASSERT_TRUE(counter.ok()) << counter.status();
  std::promise<Status> down;
  auto fired = down.get_future();
  counter->Monitor([&down](const Status& reason) { down.set_value(reason); });
  std::promise<StatusOr<Count>> held;
  auto pending = held.get_future();
  counter->Request<Count>(Hold{}, std::chrono::milliseconds(30000),
                          [&held](StatusOr<Count> r) { held.set_value(std::move(r)); });
  // The hold request must be with C before C goes away: a Get after it on the same path
  // is answered only after the Hold was delivered.
  ASSERT_TRUE(counter->Request<Count>(Get{}, 5s).ok());

  auto start = std::chrono::steady_clock::now();
  if (hang) {
    ASSERT_TRUE(c.process->Suspend().ok());
  } else {
    c.process->Signal(SIGKILL);
    ASSERT_TRUE(c.process->Wait(5s).ok());  // reaped, as a real parent would
  }
  auto reason = WaitFor(fired, limit + 2s);
  ASSERT_TRUE(reason) << "the monitor did not fire";
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  EXPECT_LE(elapsed, limit) << "node loss seen after " << elapsed.count() << " ms";
  EXPECT_EQ(reason->code(), StatusCode::kUnavailable) << *reason;
  auto result = WaitFor(pending, 2s);
  ASSERT_TRUE(result) << "the pending request was not failed";
  EXPECT_EQ(result->status().code(), StatusCode::kUnavailable) << result->status();
  // New requests to the lost node fail fast, not by timeout.
  auto again = counter->Request<Count>(Get{}, 10s);
  EXPECT_EQ(again.status().code(), StatusCode::kUnavailable) << again.status();
  // Everything else still works.
  ActorRef b = test->Lookup(kNodeB, "counter");
  EXPECT_TRUE(b.Request<Count>(Get{}, 5s).ok());
  std::printf("node loss (%s) seen in %lld ms: %s\n", hang ? "SIGSTOP" : "kill -9",
              static_cast<long long>(elapsed.count()), reason->ToString().c_str());
  if (hang) c.process->Signal(SIGKILL);
}

TEST_F(RuntimeThreeProcess, KillNineFiresTheMonitorWithinOneSecondAndFailsPendingRequests) {
  ExpectNodeLossIsSeen(this, *rt_, c_, /*hang=*/false, 1000ms);
}

TEST_F(RuntimeThreeProcess, SigstopFiresTheMonitorWithinTheHeartbeatTimeout) {
  ExpectNodeLossIsSeen(this, *rt_, c_, /*hang=*/true,
                       std::chrono::milliseconds(kHeartbeatTimeoutMs + 2 * kHeartbeatMs + 200));
}

TEST_F(RuntimeThreeProcess, AnActorThatNeverExistedGetsAnError) {
  ActorRef ghost = rt_->bridge().RefTo(kNodeB, runtime::MakeWireActorId(b_.incarnation, 999999));
  auto reply = ghost.Request<Count>(Get{}, 5s);
  EXPECT_EQ(reply.status().code(), StatusCode::kNotFound) << reply.status();
  std::promise<Status> down;
  auto fired = down.get_future();
  ghost.Monitor([&down](const Status& reason) { down.set_value(reason); });
  auto reason = WaitFor(fired, 5s);
  ASSERT_TRUE(reason) << "monitoring a never-existing actor did not fire";
  EXPECT_EQ(reason->code(), StatusCode::kNotFound) << *reason;
  // An id from an earlier incarnation of B is refused the same way.
  ActorRef stale = rt_->bridge().RefTo(kNodeB, runtime::MakeWireActorId(b_.incarnation ^ 1, 1));
  EXPECT_EQ(stale.Request<Count>(Get{}, 5s).status().code(), StatusCode::kNotFound);
  // A message without a codec is refused before it leaves.
  ActorRef counter = Lookup(kNodeB, "counter");
  auto no_codec = counter.Request<Count>(std::string("hello"), 5s);
  EXPECT_EQ(no_codec.status().code(), StatusCode::kInvalidArgument) << no_codec.status();
}

// Raw frames from an authenticated peer that is not a runtime: unknown type id, garbage payload.
TEST_F(RuntimeThreeProcess, BadFramesGetErrorRepliesAndTheNodeKeepsWorking) {
  ActorRef counter = Lookup(kNodeB, "counter");
  ASSERT_TRUE(counter.valid());
  transport::UcxTransportConfig config;
  config.node_id = 999;
  config.node_name = "raw";
  config.cluster_token = kToken;
  transport::UcxTransport raw(config);
  TransportInbox inbox;
  ASSERT_TRUE(raw.Start(inbox.Handler()).ok());
  raw.AddPeer(kNodeB, b_.address);

  auto request = [&](uint64_t id, uint32_t type_id, uint64_t dst, Buffer payload) {
    transport::FrameHeader header;
    header.dst_actor = dst;
    header.request_id = id;
    header.type_id = type_id;
    header.flags = runtime::kFlagRequest;
    ASSERT_TRUE(raw.Send(kNodeB, header, std::move(payload)).ok());
  };
  auto error_of = [&](uint64_t id) -> Status {
    auto frame = inbox.WaitForFrame([id](const transport::Frame& f) { return f.header.request_id == id; }, 10s);
    if (!frame) return InternalError("no reply to request " + std::to_string(id));
    if (frame->header.type_id != runtime::kErrorReply) return InternalError("reply is not an error");
    Status error;
    Status read = runtime::ReadFlat<runtime::wire::ErrorInfo>(
        frame->payload.data(), frame->payload.size(), "error reply", [&](runtime::wire::ErrorInfo::Reader info) {
          error = Status(static_cast<StatusCode>(info.getCode()), info.getText());
          return OkStatus();
        });
    return read.ok() ? error : read;
  };
  request(1, 4242, counter.id(), Buffer::CopyOf("whatever"));
  Status unknown = error_of(1);
  EXPECT_EQ(unknown.code(), StatusCode::kInvalidArgument) << unknown;
  EXPECT_NE(unknown.message().find("4242"), std::string::npos) << unknown;

  request(2, kAdd, counter.id(), Buffer::CopyOf(std::string(24, '\xff')));
  Status garbage = error_of(2);
  EXPECT_EQ(garbage.code(), StatusCode::kInvalidArgument) << garbage;
  EXPECT_NE(garbage.message().find("Add"), std::string::npos) << garbage;

  request(3, kAdd, counter.id(), Buffer::CopyOf("odd"));
  EXPECT_EQ(error_of(3).code(), StatusCode::kInvalidArgument);

  request(4, kGet, runtime::MakeWireActorId(b_.incarnation, 777777), Buffer());
  EXPECT_EQ(error_of(4).code(), StatusCode::kNotFound);
  raw.Stop();

  auto count = counter.Request<Count>(Add{2}, 5s);
  ASSERT_TRUE(count.ok()) << "B stopped working after bad frames: " << count.status();
  EXPECT_EQ(count->value, 2);
}

// A supervisor on A watches a child on C through a remote monitor. kill -9 of C counts as the
// child failing; the start function (the placement) puts it on B instead. Stopping the
// supervisor stops the remote child through an exit request, without waiting for the timeout.
TEST_F(RuntimeThreeProcess, SupervisorRestartsARemoteChildElsewhereWhenItsNodeIsLost) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<runtime::SupervisorEvent> events;
  auto count_kind = [&](const std::string& kind) {
    return std::count_if(events.begin(), events.end(), [&](const auto& e) { return e.kind == kind; });
  };
  runtime::SupervisorSpec spec;
  spec.name = "remote";
  spec.on_event = [&](const runtime::SupervisorEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(e);
    cv.notify_all();
  };
  runtime::ChildSpec child;
  child.id = "worker";
  child.shutdown_timeout = 3s;
  Runtime* rt = rt_.get();
  child.start = [rt](const runtime::StartContext& ctx) -> StatusOr<ActorRef> {
    const NodeId node = ctx.node_lost && ctx.last_node == kNodeC ? kNodeB : kNodeC;
    return rt->SpawnOn(node, "counter", CounterArgs{100}, 5s);
  };
  spec.children.push_back(child);
  ActorRef sup = runtime::StartSupervisor(*rt_, spec);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return count_kind("started") == 1; }));
    EXPECT_EQ(events.back().node, kNodeC);
  }
  auto start = std::chrono::steady_clock::now();
  c_.process->Signal(SIGKILL);
  ASSERT_TRUE(c_.process->Wait(5s).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return count_kind("started") == 2; })) << "no restart";
    EXPECT_EQ(events.back().node, kNodeB) << "restarted where the placement said";
    auto exited = std::find_if(events.begin(), events.end(), [](const auto& e) { return e.kind == "exited"; });
    ASSERT_NE(exited, events.end());
    EXPECT_NE(exited->reason.find("unavailable"), std::string::npos) << exited->reason;
  }
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  EXPECT_LT(elapsed, 2000ms) << "node loss to restart took " << elapsed.count() << " ms";
  std::printf("remote child restarted on another node %lld ms after kill -9 of its node\n",
              static_cast<long long>(elapsed.count()));

  // The child on B works, and an orderly stop reaches it across the wire.
  std::promise<Status> sup_down;
  auto sup_fired = sup_down.get_future();
  sup.Monitor([&sup_down](const Status& s) { sup_down.set_value(s); });
  start = std::chrono::steady_clock::now();
  caf::anon_send_exit(sup.handle(), caf::exit_reason::user_shutdown);
  ASSERT_EQ(sup_fired.wait_for(5s), std::future_status::ready);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "the remote child was not stopped by its exit request";
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(count_kind("stopped"), 1);
  EXPECT_EQ(rt_->supervision().restarts()[std::make_pair(std::string("remote"), std::string("worker"))], 1u);
}

}  // namespace
}  // namespace troupe::testing
