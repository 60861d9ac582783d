// Two processes on loopback exchange frames over shared memory and over TCP.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "tests/integration/transport_test_util.h"

namespace troupe::testing {
namespace {

using transport::FrameHeader;
using transport::UcxTransport;
using namespace std::chrono_literals;

struct Mode {
  const char* name;
  const char* tls;
  bool expect_shm;
};

class TwoProcessTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    // Both sides take frames up to 256 MiB (the default caps are for messages: 64 MiB a frame,
    // 256 MiB of rendezvous receives in flight), for the payload test below.
    const std::string big = std::to_string(256u << 20);
    peer_ = StartPeer({"--tls", GetParam().tls, "--max-frame", big, "--max-rndv-bytes", big}, &peer_address_);
    ASSERT_NE(peer_, nullptr);
    auto config = LocalConfig(GetParam().tls);
    config.max_frame_bytes = 256u << 20;
    config.max_rndv_bytes_in_flight = 256u << 20;
    transport_ = std::make_unique<UcxTransport>(config);
    auto handler = inbox_.Handler();
    handler.on_frame = [this, record = handler.on_frame](transport::NodeId peer, transport::Frame frame) {
      if (on_frame_) on_frame_(frame);
      record(peer, std::move(frame));
    };
    ASSERT_TRUE(transport_->Start(std::move(handler)).ok());
    transport_->AddPeer(kPeerNode, peer_address_);
  }
  void TearDown() override {
    if (transport_) transport_->Stop();
    if (peer_) {
      peer_->WriteLine("quit").IgnoreError();
      auto status = peer_->Wait(10s);
      EXPECT_TRUE(status.ok() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << "transport_peer did not exit cleanly";
    }
  }

  TransportInbox inbox_;
  // Runs on the progress thread before the inbox records a frame; set before the first send.
  std::function<void(const transport::Frame&)> on_frame_;
  std::unique_ptr<ChildProcess> peer_;
  std::string peer_address_;
  std::unique_ptr<UcxTransport> transport_;
};

TEST_P(TwoProcessTest, TenThousandSmallFramesArriveIntactAndInOrder) {
  constexpr uint64_t kFrames = 10000;
  for (uint64_t i = 0; i < kFrames; ++i) {
    FrameHeader h;
    h.request_id = i;
    h.type_id = 7;
    ASSERT_TRUE(transport_->Send(kPeerNode, h, Buffer::CopyOf(&i, sizeof(i))).ok());
  }
  ASSERT_TRUE(inbox_.WaitForFrames(kFrames, 60s)) << "echoes of all 10,000 frames did not arrive";
  auto frames = inbox_.TakeFrames();
  ASSERT_EQ(frames.size(), kFrames);
  for (uint64_t i = 0; i < kFrames; ++i) {
    const auto& [from, frame] = frames[i];
    ASSERT_EQ(from, kPeerNode);
    ASSERT_EQ(frame.header.request_id, i) << "frame " << i << " out of order";
    ASSERT_EQ(frame.header.type_id, 7u);
    ASSERT_EQ(frame.header.src_node, kPeerNode);
    ASSERT_EQ(frame.payload.size(), sizeof(i));
    uint64_t value;
    std::memcpy(&value, frame.payload.data(), sizeof(value));
    ASSERT_EQ(value, i);
  }
  // Per-peer traffic: everything went to, and came from, the one peer. Send completions can
  // trail the echoes by a moment, so they are awaited (bounded).
  transport::PeerTraffic traffic;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  do {
    for (const auto& t : transport_->peer_traffic()) {
      if (t.peer == kPeerNode) traffic = t;
    }
  } while (traffic.frames_out < kFrames && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(traffic.frames_in, kFrames);
  EXPECT_EQ(traffic.bytes_in, kFrames * sizeof(uint64_t));
  EXPECT_EQ(traffic.frames_out, kFrames);
  EXPECT_EQ(traffic.bytes_out, kFrames * sizeof(uint64_t));
  // Small frames queued in the same progress turn travel together: 10,000 sends from this
  // thread and the peer's echoes (sent from its frame handler) cannot all go one by one.
  EXPECT_GT(transport_->stats().batches_sent, 0u) << "no batch was sent";
  EXPECT_GT(PeerStats(peer_.get())["batches_sent"], 0u) << "the peer's echoes were never batched";
}

TEST_P(TwoProcessTest, AFrameQueuedByAnotherThreadLeavesBeforeTheHandlerSendThatFollowsIt) {
  // An actor can send from a CAF worker and then, woken by a frame, run in a handler on the
  // progress thread, whose first send may leave from inside the progress call. The frame the
  // other thread queued first must still leave first. Here each echoed trigger makes the
  // handler queue frame 2k+1 from a second thread, join it, and then send frame 2k+2 itself.
  constexpr uint32_t kTrigger = 9, kOrdered = 8;
  constexpr uint64_t kRounds = 20;
  auto ordered = [](uint64_t id) {
    FrameHeader h;
    h.type_id = kOrdered;
    h.request_id = id;
    return h;
  };
  on_frame_ = [this, ordered](const transport::Frame& frame) {
    if (frame.header.type_id != kTrigger) return;
    const uint64_t k = frame.header.request_id;
    std::thread other([&] { EXPECT_TRUE(transport_->Send(kPeerNode, ordered(2 * k + 1), Buffer()).ok()); });
    other.join();
    EXPECT_TRUE(transport_->Send(kPeerNode, ordered(2 * k + 2), Buffer()).ok());
  };
  for (uint64_t k = 0; k < kRounds; ++k) {
    // One trigger at a time, after the previous round's echoes: nothing else is queued or
    // batched for the peer when the handler sends, so its send may take the direct path.
    FrameHeader trigger;
    trigger.type_id = kTrigger;
    trigger.request_id = k;
    ASSERT_TRUE(transport_->Send(kPeerNode, trigger, Buffer()).ok());
    ASSERT_TRUE(inbox_.WaitForFrames(3 * (k + 1), 20s)) << "round " << k << ": the trigger and both frames were not echoed";
  }
  std::vector<uint64_t> seen;
  for (const auto& [from, frame] : inbox_.TakeFrames()) {
    if (frame.header.type_id == kOrdered) seen.push_back(frame.header.request_id);
  }
  ASSERT_EQ(seen.size(), 2 * kRounds);
  for (uint64_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], i + 1) << "frame at position " << i;
}

// Streams `count` frames of `size` bytes with at most `window` in flight, the way the transport
// bench and the runtime's bridge pipeline: the first frame is sent from the calling thread, every
// later one from an earlier frame's send callback on the progress thread. Each send happens after
// the one before it, so the frames must reach the peer, and its echoes come back, in that order.
class CompletionDrivenStream {
 public:
  static constexpr uint32_t kTypeId = 11;

  CompletionDrivenStream(UcxTransport* transport, size_t size, uint64_t count, int window)
      : transport_(transport), size_(size), count_(count), window_(window) {}

  void Start() { SendNext(); }
  bool failed() const { return failed_.load(); }

 private:
  void SendNext() {
    if (next_.load() >= count_) return;
    FrameHeader h;
    h.type_id = kTypeId;
    h.request_id = next_++;
    ++in_flight_;
    Status sent = transport_->Send(kPeerNode, h, Buffer::Allocate(size_), [this](const Status& status) {
      if (!status.ok()) failed_ = true;
      --in_flight_;
      SendNext();
      if (in_flight_.load() < window_) SendNext();
    });
    if (!sent.ok()) failed_ = true;
  }

  UcxTransport* transport_;
  const size_t size_;
  const uint64_t count_;
  const int window_;
  std::atomic<uint64_t> next_{0};
  std::atomic<int> in_flight_{0};
  std::atomic<bool> failed_{false};
};

TEST_P(TwoProcessTest, FramesSentFromSendCallbacksArriveInOrder) {
  // A send from a send callback runs inside UCX's progress call; it used to leave from there at
  // once (the handler fast path) and could overtake frames UCX still held for this peer, or be
  // overtaken by the next one: a stream's last frame then arrived before some earlier ones.
  struct Case {
    size_t size;
    uint64_t count;
    int window;
  };
  for (const Case& c : {Case{8, 20000, 256}, Case{64u << 10, 1000, 16}}) {
    SCOPED_TRACE("frames of " + std::to_string(c.size) + " bytes");
    CompletionDrivenStream stream(transport_.get(), c.size, c.count, c.window);
    stream.Start();
    ASSERT_TRUE(inbox_.WaitForFrames(c.count, 60s)) << "echoes of all " << c.count << " frames did not arrive";
    EXPECT_FALSE(stream.failed()) << "a send failed";
    uint64_t expected = 0;
    size_t out_of_order = 0;
    for (const auto& [from, frame] : inbox_.TakeFrames()) {
      ASSERT_EQ(frame.header.type_id, CompletionDrivenStream::kTypeId);
      if (frame.header.request_id != expected && out_of_order++ < 5) {
        ADD_FAILURE() << "frame " << frame.header.request_id << " arrived where " << expected << " was due";
      }
      expected = frame.header.request_id + 1;
    }
    EXPECT_EQ(out_of_order, 0u) << "frames out of order";
  }
}

Buffer PatternedPayload(size_t size, uint64_t seed) {
  Buffer b = Buffer::Allocate(size);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(b.data() + i, &x, 8);
  }
  for (; i < size; ++i) b.data()[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
  return b;
}

uint64_t Fnv1a(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

TEST_P(TwoProcessTest, PayloadsFromZeroTo256MiBArriveByteIdentical) {
  const std::vector<size_t> sizes = {0,         1,           7,          8,         4095,      8192,
                                     16383,     16384,       65536,      1 << 20,   (1 << 20) + 3,
                                     16u << 20, 256u << 20};
  for (size_t n = 0; n < sizes.size(); ++n) {
    size_t size = sizes[n];
    Buffer sent = PatternedPayload(size, n + 1);
    uint64_t checksum = size <= (1u << 20) ? Fnv1a(sent.data(), size) : 0;
    Buffer copy = Buffer::CopyOf(sent.data(), size);
    FrameHeader h;
    h.request_id = n;
    SendResults done;
    ASSERT_TRUE(transport_->Send(kPeerNode, h, std::move(copy), done.Callback()).ok());
    ASSERT_TRUE(inbox_.WaitForFrames(1, 60s)) << "echo of a " << size << "-byte payload did not arrive";
    ASSERT_TRUE(done.WaitFor(1, 10s));
    EXPECT_TRUE(done.results()[0].ok()) << done.results()[0];
    auto frames = inbox_.TakeFrames();
    ASSERT_EQ(frames.size(), 1u);
    const Buffer& got = frames[0].second.payload;
    ASSERT_EQ(frames[0].second.header.request_id, n);
    ASSERT_EQ(got.size(), size);
    if (checksum != 0) {
      EXPECT_EQ(Fnv1a(got.data(), size), checksum);
    }
    if (size > 0) {
      ASSERT_EQ(std::memcmp(got.data(), sent.data(), size), 0) << "payload of " << size << " bytes differs";
    }
  }
}

TEST_P(TwoProcessTest, UsesTheConfiguredTransports) {
  ASSERT_TRUE(transport_->Send(kPeerNode, FrameHeader{}, Buffer::CopyOf("x")).ok());
  ASSERT_TRUE(inbox_.WaitForFrames(1, 20s));
  auto info = transport_->DescribePeer(kPeerNode);
  ASSERT_TRUE(info.ok()) << info.status();
  bool has_shm = info->find("posix/") != std::string::npos || info->find("sysv/") != std::string::npos;
  bool has_tcp = info->find("tcp/") != std::string::npos;
  EXPECT_EQ(has_shm, GetParam().expect_shm) << *info;
  // Data moves to a direct endpoint after the handshake: on one host it carries shared
  // memory only, with no TCP lane for UCX to poll on every progress call.
  EXPECT_EQ(has_tcp, !GetParam().expect_shm) << *info;
}

TEST_P(TwoProcessTest, PayloadsLandInTheBufferTheReceiverProvides) {
  // A second local transport whose allocator hands out buffers it tracks.
  std::mutex mu;
  std::set<const uint8_t*> provided;
  TransportInbox inbox;
  auto handler = inbox.Handler();
  handler.allocate_payload = [&](const FrameHeader&, size_t size) {
    Buffer b = Buffer::Allocate(size);
    std::lock_guard<std::mutex> lock(mu);
    provided.insert(b.data());
    return b;
  };
  auto config = LocalConfig(GetParam().tls);
  config.node_id = 7;
  UcxTransport receiver(config);
  ASSERT_TRUE(receiver.Start(std::move(handler)).ok());
  receiver.AddPeer(kPeerNode, peer_address_);
  const std::vector<size_t> sizes = {64, 64u << 10, 4u << 20};  // eager, rendezvous, rendezvous
  for (size_t size : sizes) {
    ASSERT_TRUE(receiver.Send(kPeerNode, FrameHeader{}, PatternedPayload(size, size)).ok());
  }
  ASSERT_TRUE(inbox.WaitForFrames(sizes.size(), 30s));
  auto frames = inbox.TakeFrames();
  std::lock_guard<std::mutex> lock(mu);
  for (size_t i = 0; i < sizes.size(); ++i) {
    const Buffer& got = frames[i].second.payload;
    ASSERT_EQ(got.size(), sizes[i]);
    EXPECT_EQ(provided.count(got.data()), 1u)
        << "the " << sizes[i] << "-byte payload was not delivered in the receiver's own buffer";
    Buffer expected = PatternedPayload(sizes[i], sizes[i]);
    EXPECT_EQ(std::memcmp(got.data(), expected.data(), sizes[i]), 0);
  }
  receiver.Stop();
}

INSTANTIATE_TEST_SUITE_P(Transports, TwoProcessTest,
                         ::testing::Values(Mode{"SharedMemory", "shm,self,tcp", true},
                                           Mode{"TcpOnly", "tcp", false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace troupe::testing
