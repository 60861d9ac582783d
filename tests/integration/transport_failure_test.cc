// Peer failures: kill -9 and a hung (SIGSTOP) peer never leave sends hanging.
#include <gtest/gtest.h>
#include <signal.h>

#include "tests/integration/transport_test_util.h"

namespace troupe::testing {
namespace {

using transport::FrameHeader;
using transport::UcxTransport;
using namespace std::chrono_literals;

class TransportFailureTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    peer_ = StartPeer({"--tls", GetParam()}, &peer_address_);
    ASSERT_NE(peer_, nullptr);
    transport_ = std::make_unique<UcxTransport>(LocalConfig(GetParam()));
    ASSERT_TRUE(transport_->Start(inbox_.Handler()).ok());
    transport_->AddPeer(kPeerNode, peer_address_);
    // One echo proves the connection is up and authenticated.
    ASSERT_TRUE(transport_->Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("ping")).ok());
    ASSERT_TRUE(inbox_.WaitForFrames(1, 20s)) << "first echo did not arrive";
    inbox_.TakeFrames();
  }

  /// Stops the peer, then queues rendezvous-sized frames that cannot complete while it
  /// is stopped.
  void QueueSendsToStoppedPeer(SendResults* results, int count) {
    ASSERT_TRUE(peer_->Suspend().ok()) << "the peer did not stop";
    for (int i = 0; i < count; ++i) {
      ASSERT_TRUE(transport_->Send(kPeerNode, FrameHeader{}, Buffer::Allocate(4u << 20), results->Callback()).ok());
    }
    EXPECT_FALSE(results->WaitFor(static_cast<size_t>(count), 200ms))
        << "rendezvous sends completed although the peer is stopped";
  }

  TransportInbox inbox_;
  std::unique_ptr<ChildProcess> peer_;
  std::string peer_address_;
  std::unique_ptr<UcxTransport> transport_;
};

TEST_P(TransportFailureTest, KillNineFiresPeerFailureWithinOneSecondAndFailsPendingSends) {
  SendResults results;
  QueueSendsToStoppedPeer(&results, 4);
  auto killed_at = std::chrono::steady_clock::now();
  peer_->Signal(SIGKILL);
  // Reap it, as the peer's parent (troupe up, systemd, a shell) does: shared-memory
  // keepalive checks the peer's process, and an unreaped zombie still looks alive.
  ASSERT_TRUE(peer_->Wait(1s).ok());
  auto reason = inbox_.WaitForFailure(kPeerNode, 1s);
  ASSERT_TRUE(reason.has_value()) << "on_peer_failed did not fire within 1 s of kill -9";
  auto detection = inbox_.FailureTime(kPeerNode) - killed_at;
  EXPECT_LT(detection, 1s);
  EXPECT_EQ(reason->code(), StatusCode::kUnavailable) << *reason;
  ASSERT_TRUE(results.WaitFor(4, 1s)) << "pending sends did not complete after the peer died";
  for (const auto& s : results.results()) EXPECT_FALSE(s.ok()) << "a send to a dead peer reported success";
  std::cout << "kill -9 detected after "
            << std::chrono::duration_cast<std::chrono::microseconds>(detection).count() << " us\n";

  // A new send reconnects on demand, finds nobody, and fails rather than hangs.
  SendResults after;
  ASSERT_TRUE(transport_->Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("x"), after.Callback()).ok());
  ASSERT_TRUE(after.WaitFor(1, 10s)) << "send to a dead peer hung";
  EXPECT_EQ(after.results()[0].code(), StatusCode::kUnavailable) << after.results()[0];
}

TEST_P(TransportFailureTest, DisconnectingAHungPeerFailsItsInFlightSends) {
  SendResults results;
  QueueSendsToStoppedPeer(&results, 3);
  // UCX cannot see a hung peer; the runtime's heartbeats decide and call Disconnect.
  transport_->Disconnect(kPeerNode, UnavailableError("missed heartbeats"));
  auto reason = inbox_.WaitForFailure(kPeerNode, 1s);
  ASSERT_TRUE(reason.has_value()) << "on_peer_failed did not fire after Disconnect";
  EXPECT_EQ(reason->message(), "missed heartbeats");
  ASSERT_TRUE(results.WaitFor(3, 1s)) << "in-flight sends to a hung peer did not complete";
  for (const auto& s : results.results()) EXPECT_FALSE(s.ok());
  peer_->Signal(SIGKILL);
}

// A peer this side gave up on while it was stopped (the runtime's heartbeat: Disconnect) comes
// back, and this side dials it again: the peer, which never saw its earlier connection close (it
// was stopped; over shared memory nothing tells it), must answer on the new connection, not
// through the earlier one this side has closed. Its echo arrives.
TEST_P(TransportFailureTest, AHungPeerDisconnectedAndDialedAgainOnceItResumesAnswersOnTheNewConnection) {
  ASSERT_TRUE(peer_->Suspend().ok()) << "the peer did not stop";
  transport_->Disconnect(kPeerNode, UnavailableError("missed heartbeats"));
  ASSERT_TRUE(inbox_.WaitForFailure(kPeerNode, 1s).has_value()) << "on_peer_failed did not fire after Disconnect";
  peer_->Signal(SIGCONT);
  SendResults sent;
  ASSERT_TRUE(transport_->Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("again"), sent.Callback()).ok());
  ASSERT_TRUE(sent.WaitFor(1, 10s)) << "the send to the resumed peer did not complete";
  EXPECT_TRUE(sent.results()[0].ok()) << sent.results()[0];
  EXPECT_TRUE(inbox_.WaitForFrames(1, 10s)) << "the resumed peer's echo never arrived: it answered through the "
                                               "connection this side had closed";
  peer_->Signal(SIGKILL);
}

TEST_P(TransportFailureTest, StopCompletesSendsStuckOnAHungPeer) {
  SendResults results;
  QueueSendsToStoppedPeer(&results, 3);
  transport_->Stop();
  ASSERT_EQ(results.size(), 3u) << "Stop() returned with sends still outstanding";
  for (const auto& s : results.results()) EXPECT_FALSE(s.ok()) << s;
  peer_->Signal(SIGKILL);
}

TEST_P(TransportFailureTest, ClosingAConnectionWithAReceiveInFlightIsSafe) {
  // A second local transport disconnects the peer from inside allocate_payload: the
  // disconnect runs right after the rendezvous receive into that buffer has started, so
  // the connection is torn down while UCX still owns the buffer (ASan watches this).
  auto config = LocalConfig(GetParam());
  config.node_id = 9;
  UcxTransport* receiver_ptr = nullptr;
  TransportInbox inbox;
  auto handler = inbox.Handler();
  handler.allocate_payload = [&receiver_ptr](const FrameHeader&, size_t size) {
    if (size >= (1u << 20)) receiver_ptr->Disconnect(kPeerNode, UnavailableError("cut mid-transfer"));
    return Buffer::Allocate(size);
  };
  UcxTransport receiver(config);
  receiver_ptr = &receiver;
  ASSERT_TRUE(receiver.Start(std::move(handler)).ok());
  receiver.AddPeer(kPeerNode, peer_address_);
  SendResults sent;
  ASSERT_TRUE(receiver.Send(kPeerNode, FrameHeader{}, Buffer::Allocate(64u << 20), sent.Callback()).ok());
  auto reason = inbox.WaitForFailure(kPeerNode, 20s);
  ASSERT_TRUE(reason.has_value()) << "the disconnect during the echo's receive never happened";
  EXPECT_EQ(reason->message(), "cut mid-transfer");
  EXPECT_TRUE(sent.WaitFor(1, 10s));
  EXPECT_FALSE(inbox.WaitForFrames(1, 100ms)) << "a frame whose receive was cut was delivered";
  receiver.Stop();
}

INSTANTIATE_TEST_SUITE_P(Transports, TransportFailureTest, ::testing::Values("shm,self,tcp", "tcp"),
                         [](const auto& info) {
                           return std::string(info.param == std::string("tcp") ? "TcpOnly" : "SharedMemory");
                         });

TEST(TransportLifecycle, SendsAfterStopAreRefusedAndStopIsIdempotent) {
  UcxTransport transport(LocalConfig(""));
  TransportInbox inbox;
  ASSERT_TRUE(transport.Start(inbox.Handler()).ok());
  EXPECT_FALSE(transport.listen_address().empty());
  SendResults results;
  // No address for node 9: the send completes with NotFound instead of hanging.
  ASSERT_TRUE(transport.Send(9, FrameHeader{}, Buffer::CopyOf("x"), results.Callback()).ok());
  ASSERT_TRUE(results.WaitFor(1, 5s));
  EXPECT_EQ(results.results()[0].code(), StatusCode::kNotFound);
  transport.Stop();
  transport.Stop();
  EXPECT_EQ(transport.Send(9, FrameHeader{}, Buffer::CopyOf("x")).code(), StatusCode::kCancelled);
}

TEST(TransportLifecycle, BadConfigIsRefusedWithTheFieldName) {
  auto config = LocalConfig("");
  config.cluster_token.clear();
  UcxTransport no_token(config);
  auto status = no_token.Start({});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("cluster_token"), std::string::npos) << status;

  config = LocalConfig("");
  config.listen_address = "127.0.0.1:notaport";
  UcxTransport bad_address(config);
  status = bad_address.Start({});
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("listen_address"), std::string::npos) << status;
}

TEST(TransportLifecycle, PortInUseIsReported) {
  UcxTransport first(LocalConfig(""));
  ASSERT_TRUE(first.Start({}).ok());
  auto config = LocalConfig("");
  config.node_id = 3;
  config.listen_address = first.listen_address();
  UcxTransport second(config);
  auto status = second.Start({});
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(first.listen_address()), std::string::npos) << status;
}

}  // namespace
}  // namespace troupe::testing
