// The serving protocol's codecs: every message comes back as it went, and what a bad peer could
// send (truncated bytes, an unknown replica state, a list of empty records) is refused.
#include <gtest/gtest.h>

#include <caf/all.hpp>

#include <cstring>
#include <random>

#include "actors/serving/messages.h"
#include "actors/serving/serving.capnp.h"
#include "runtime/codec.h"
#include "tests/fakes/fake_ref_codec.h"

namespace troupe::serving {
namespace {

class ServingMessages : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(AddServingCodecs(codecs_).ok()); }

  // Encodes `m`, checks its type id, decodes it again.
  template <class T>
  T RoundTrip(const T& m, uint32_t type_id) {
    auto encoded = codecs_.Encode(caf::make_message(m), refs_);
    EXPECT_TRUE(encoded.ok()) << encoded.status();
    if (!encoded.ok()) return T{};
    EXPECT_EQ(encoded->type_id, type_id);
    auto decoded = codecs_.Decode(encoded->type_id, encoded->payload, refs_);
    EXPECT_TRUE(decoded.ok()) << decoded.status();
    if (!decoded.ok()) return T{};
    return decoded->template get_as<T>(0);
  }

  runtime::CodecRegistry codecs_;
  testing::FakeRefCodec refs_;
};

TEST_F(ServingMessages, RequestsChunksAndResponsesRoundTripWithTheirBytesAndRefs) {
  InferenceRequest req;
  req.id = 42;
  req.deployment = "chat";
  req.path = "/v1/chat/completions";
  req.body = std::string("{\"model\":\"m\"}\0\xff", 15);  // any bytes survive
  req.stream = true;
  req.deadline_unix_ms = 1767225600123;
  req.stream_to = runtime::ActorRef::Dangling(7, 99);
  auto back = RoundTrip(req, kInferenceRequest);
  EXPECT_EQ(back.id, 42u);
  EXPECT_EQ(back.deployment, "chat");
  EXPECT_EQ(back.path, req.path);
  EXPECT_EQ(back.body, req.body);
  EXPECT_TRUE(back.stream);
  EXPECT_EQ(back.deadline_unix_ms, req.deadline_unix_ms);
  EXPECT_EQ(back.stream_to, req.stream_to);

  auto chunk = RoundTrip(ResponseChunk{42, 3, "data: {}\n\n"}, kResponseChunk);
  EXPECT_EQ(chunk.request_id, 42u);
  EXPECT_EQ(chunk.index, 3u);
  EXPECT_EQ(chunk.data, "data: {}\n\n");

  auto resp = RoundTrip(InferenceResponse{42, 200, "{}", 5, 16, 1234, "chat/v1/replica-0"}, kInferenceResponse);
  EXPECT_EQ(resp.request_id, 42u);
  EXPECT_EQ(resp.http_status, 200u);
  EXPECT_EQ(resp.body, "{}");
  EXPECT_EQ(resp.prompt_tokens, 5u);
  EXPECT_EQ(resp.completion_tokens, 16u);
  EXPECT_EQ(resp.first_token_us, 1234);
  EXPECT_EQ(resp.replica, "chat/v1/replica-0");
}

TEST_F(ServingMessages, ReplicaSetsLoadsAndDecisionsRoundTrip) {
  ReplicaSet set{"chat", 9, {}};
  set.replicas.push_back(ReplicaInfo{runtime::ActorRef::Dangling(3, 4), "chat/v1/replica-0", "v1", 0.9, 4});
  set.replicas.push_back(ReplicaInfo{});  // every field at its default: an empty ref stays empty
  auto back = RoundTrip(set, kReplicaSet);
  EXPECT_EQ(back.deployment, "chat");
  EXPECT_EQ(back.generation, 9u);
  ASSERT_EQ(back.replicas.size(), 2u);
  EXPECT_EQ(back.replicas[0].replica, set.replicas[0].replica);
  EXPECT_EQ(back.replicas[0].name, "chat/v1/replica-0");
  EXPECT_EQ(back.replicas[0].version, "v1");
  EXPECT_DOUBLE_EQ(back.replicas[0].weight, 0.9);
  EXPECT_EQ(back.replicas[0].max_ongoing_requests, 4u);
  EXPECT_EQ(back.replicas[1].replica.node(), 0u);

  auto load = RoundTrip(LoadReport{"chat", "router/1", 1767225600000, 3, 2, 12.5}, kLoadReport);
  EXPECT_EQ(load.source, "router/1");
  EXPECT_EQ(load.at_unix_ms, 1767225600000);
  EXPECT_EQ(load.ongoing, 3u);
  EXPECT_EQ(load.queued, 2u);
  EXPECT_DOUBLE_EQ(load.completed_per_second, 12.5);

  auto decision = RoundTrip(ScaleDecision{"chat", 5, 2, true, "panic: 5 > 2 x 2"}, kScaleDecision);
  EXPECT_EQ(decision.desired, 5u);
  EXPECT_EQ(decision.current, 2u);
  EXPECT_TRUE(decision.panic);
  EXPECT_EQ(decision.reason, "panic: 5 > 2 x 2");

  auto count = RoundTrip(ReplicaCount{"chat", 4, 3}, kReplicaCount);
  EXPECT_EQ(count.deployment, "chat");
  EXPECT_EQ(count.current, 4u);
  EXPECT_EQ(count.ready, 3u);
}

TEST_F(ServingMessages, ReplicaControlRoundTrips) {
  EXPECT_EQ(RoundTrip(CancelRequest{77}, kCancelRequest).request_id, 77u);
  EXPECT_EQ(RoundTrip(Drain{2500}, kDrain).timeout_ms, 2500);
  auto drained = RoundTrip(DrainReply{3, 1}, kDrainReply);
  EXPECT_EQ(drained.finished, 3u);
  EXPECT_EQ(drained.abandoned, 1u);
  EXPECT_EQ(RoundTrip(HealthProbe{300}, kHealthProbe).timeout_ms, 300);
  auto probe = RoundTrip(HealthProbeReply{"r", ReplicaState::kDraining, 55, 2}, kHealthProbeReply);
  EXPECT_EQ(probe.replica, "r");
  EXPECT_EQ(probe.state, ReplicaState::kDraining);
  EXPECT_EQ(probe.latency_us, 55);
  EXPECT_EQ(probe.ongoing, 2u);
  RoundTrip(ReplicaQuery{}, kReplicaQuery);
  auto status = RoundTrip(ReplicaStatus{"r", ReplicaState::kReady, 1, 10, 2}, kReplicaStatus);
  EXPECT_EQ(status.state, ReplicaState::kReady);
  EXPECT_EQ(status.completed, 10u);
  EXPECT_EQ(status.failed, 2u);
  auto changed = RoundTrip(ReplicaStateChanged{"r", ReplicaState::kStopped, "drained"}, kReplicaStateChanged);
  EXPECT_EQ(changed.state, ReplicaState::kStopped);
  EXPECT_EQ(changed.reason, "drained");
}

TEST_F(ServingMessages, AnUnknownReplicaStateFromAPeerIsRefused) {
  Buffer bytes = runtime::EncodeFlat<wire::ReplicaStatus>([](wire::ReplicaStatus::Builder b) {
    b.setName("r");
    b.setState(static_cast<wire::ReplicaState>(9));
  });
  auto decoded = codecs_.Decode(kReplicaStatus, bytes, refs_);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("unknown replica state 9"), std::string::npos) << decoded.status();
}

TEST_F(ServingMessages, TruncatedAndGarbageBytesAreRefusedNotCrashed) {
  InferenceRequest req;
  req.body = std::string(200, 'x');
  auto encoded = codecs_.Encode(caf::make_message(req), refs_);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  for (size_t cut : {size_t{0}, size_t{8}, encoded->payload.size() / 2, encoded->payload.size() - 8}) {
    Buffer part = Buffer::CopyOf(encoded->payload.data(), cut);
    auto decoded = codecs_.Decode(kInferenceRequest, part, refs_);
    ASSERT_FALSE(decoded.ok()) << "cut at " << cut;
    EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument) << decoded.status();
  }
  std::string garbage(64, '\xff');
  auto decoded = codecs_.Decode(kReplicaSet, reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size(), refs_);
  EXPECT_FALSE(decoded.ok());
}

TEST_F(ServingMessages, MutatedBytesDecodeOrAreRefusedNeverCrash) {
  // What codec_fuzz does, in short and seeded: valid payloads of every message, bytes changed at
  // random. A decoder returns a message (which encodes again) or InvalidArgument.
  InferenceRequest req;
  req.body = R"({"prompt":"x"})";
  req.stream_to = runtime::ActorRef::Dangling(1, 2);
  ReplicaSet set{"d", 1, {ReplicaInfo{runtime::ActorRef::Dangling(1, 3), "r", "v", 1.0, 2}, ReplicaInfo{}}};
  const std::vector<caf::message> samples = {
      caf::make_message(req),
      caf::make_message(ResponseChunk{1, 2, "data: {}\n\n"}),
      caf::make_message(InferenceResponse{1, 200, "{}", 1, 2, 3, "r"}),
      caf::make_message(set),
      caf::make_message(LoadReport{"d", "r", 1, 2, 3, 4.5}),
      caf::make_message(ScaleDecision{"d", 2, 1, true, "why"}),
      caf::make_message(ReplicaCount{"d", 3}),
      caf::make_message(CancelRequest{9}),
      caf::make_message(Drain{10}),
      caf::make_message(DrainReply{1, 2}),
      caf::make_message(HealthProbe{5}),
      caf::make_message(HealthProbeReply{"r", ReplicaState::kReady, 4, 1}),
      caf::make_message(ReplicaQuery{}),
      caf::make_message(ReplicaStatus{"r", ReplicaState::kDraining, 1, 2, 3}),
      caf::make_message(ReplicaStateChanged{"r", ReplicaState::kStopped, "why"}),
  };
  std::mt19937_64 gen(20);
  int decoded_ok = 0;
  int refused = 0;
  for (const auto& sample : samples) {
    auto encoded = codecs_.Encode(sample, refs_);
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    const Buffer& payload = encoded->payload;
    for (int round = 0; round < 500; ++round) {
      std::string bytes(reinterpret_cast<const char*>(payload.data()), payload.size());
      const int changes = 1 + static_cast<int>(gen() % 4);
      for (int c = 0; c < changes; ++c) bytes[gen() % bytes.size()] = static_cast<char>(gen());
      if (gen() % 8 == 0) bytes.resize(gen() % bytes.size());
      Buffer copy = Buffer::CopyOf(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      auto decoded = codecs_.Decode(encoded->type_id, copy, refs_);
      if (decoded.ok()) {
        ++decoded_ok;
        EXPECT_TRUE(codecs_.Encode(*decoded, refs_).ok()) << codecs_.NameOf(encoded->type_id);
      } else {
        ++refused;
        EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument) << decoded.status();
      }
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(decoded_ok, 0);
}

TEST_F(ServingMessages, AReplicaListOfEmptyRecordsIsRefused) {
  // A composite list claiming 100,000 zero-word records in a few words of payload: an honest
  // encoder writes each ReplicaInfo at its full size.
  const size_t words = 16;
  Buffer hostile = Buffer::Allocate(words * 8);
  std::memset(hostile.data(), 0, hostile.size());
  uint64_t* w = reinterpret_cast<uint64_t*>(hostile.data());
  w[0] = uint64_t{words - 1} << 32;             // one segment
  w[1] = (uint64_t{1} << 32) | (uint64_t{2} << 48);  // root: 1 data word (generation), 2 pointers, right after
  w[2] = 0;                                      // generation
  w[3] = 0;                                      // deployment: null
  w[4] = 1 | (uint64_t{7} << 32);                // replicas: composite list of 0 words, tag right after
  w[5] = uint64_t{100000} << 2;                  // tag: 100,000 elements of 0 words
  auto decoded = codecs_.Decode(kReplicaSet, hostile, refs_);
  ASSERT_FALSE(decoded.ok()) << "decoded into " << decoded->get_as<ReplicaSet>(0).replicas.size() << " records";
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(ServingMessages, DeploymentMessagesRoundTrip) {
  StartReplica start;
  start.deployment = "chat";
  start.version = "v2";
  start.name = "chat/v2/replica-3";
  start.lease_id = 17;
  start.max_ongoing_requests = 7;
  start.drain_timeout_ms = 1500;
  start.start_timeout_ms = 9000;
  start.tokens_per_second = 250.5;
  start.first_token_latency_us = 12000;
  start.max_tokens = 8;
  start.stall_after = 3;
  start.seed = 99;
  start.startup_delay_ms = 2500;
  start.fail_every = 4;
  start.crash_after = 6;
  start.owner = runtime::ActorRef::Dangling(3, 4);
  auto back = RoundTrip(start, kStartReplica);
  EXPECT_EQ(back.name, "chat/v2/replica-3");
  EXPECT_EQ(back.version, "v2");
  EXPECT_EQ(back.lease_id, 17u);
  EXPECT_EQ(back.max_ongoing_requests, 7u);
  EXPECT_EQ(back.drain_timeout_ms, 1500);
  EXPECT_EQ(back.start_timeout_ms, 9000);
  EXPECT_DOUBLE_EQ(back.tokens_per_second, 250.5);
  EXPECT_EQ(back.first_token_latency_us, 12000);
  EXPECT_EQ(back.max_tokens, 8u);
  EXPECT_EQ(back.stall_after, 3u);
  EXPECT_EQ(back.seed, 99u);
  EXPECT_EQ(back.startup_delay_ms, 2500);
  EXPECT_EQ(back.fail_every, 4u);
  EXPECT_EQ(back.crash_after, 6u);
  EXPECT_EQ(back.owner, start.owner);
  EXPECT_EQ(back.autoscaler.node(), 0u);
  // A test-backend replica without a GPU: no process, no slice.
  EXPECT_TRUE(back.process_command.empty());
  EXPECT_EQ(back.gpu_index, kNoReplicaGpu);
  EXPECT_EQ(back.process_port_env, "PORT");
  EXPECT_EQ(back.process_health_path, "/health");

  auto started = RoundTrip(ReplicaStarted{"chat/v2/replica-3", runtime::ActorRef::Dangling(5, 6)}, kReplicaStarted);
  EXPECT_EQ(started.name, "chat/v2/replica-3");
  EXPECT_EQ(started.replica, runtime::ActorRef::Dangling(5, 6));
  EXPECT_EQ(RoundTrip(StopReplica{"chat/v1/replica-0"}, kStopReplica).name, "chat/v1/replica-0");
  auto adopt = RoundTrip(AdoptReplica{"chat/v1/replica-0", runtime::ActorRef::Dangling(7, 8), {}}, kAdoptReplica);
  EXPECT_EQ(adopt.name, "chat/v1/replica-0");
  EXPECT_EQ(adopt.owner, runtime::ActorRef::Dangling(7, 8));
  EXPECT_EQ(adopt.autoscaler.node(), 0u);  // none: a deployment without an autoscaler
  DeploymentCommand scale;
  scale.op = "scale";
  scale.name = "chat";
  scale.body = std::string("3\0", 2);
  auto command = RoundTrip(scale, kDeploymentCommand);
  EXPECT_EQ(command.op, "scale");
  EXPECT_EQ(command.name, "chat");
  EXPECT_EQ(command.body, std::string("3\0", 2));
  EXPECT_EQ(RoundTrip(DeploymentCommandReply{"{}"}, kDeploymentCommandReply).body, "{}");
}

TEST_F(ServingMessages, StartReplicaCarriesTheProcessBackendAndTheSlice) {
  StartReplica start;
  start.deployment = "chat";
  start.name = "chat/v1/replica-0";
  start.owner = runtime::ActorRef::Dangling(3, 4);
  start.process_command = {"python3", "server.py", "--checkpoint", "/ckpt dir/step-10"};
  start.process_env = {"A=1", "HF_HOME=/data/hf"};
  start.process_working_dir = "/srv/models";
  start.process_port_env = "SERVER_PORT";
  start.process_health_path = "/v1/health";
  start.process_ready_timeout_ms = 7200000;
  start.gpu_index = 1;
  start.gpu_id = "GPU-5d2b1c3e-0000-1111-2222-333344445555";
  start.memory_bytes = uint64_t{40} << 30;
  start.compute_percent = 50;
  start.simulated = true;
  auto back = RoundTrip(start, kStartReplica);
  EXPECT_EQ(back.process_command, start.process_command);
  EXPECT_EQ(back.process_env, start.process_env);
  EXPECT_EQ(back.process_working_dir, "/srv/models");
  EXPECT_EQ(back.process_port_env, "SERVER_PORT");
  EXPECT_EQ(back.process_health_path, "/v1/health");
  EXPECT_EQ(back.process_ready_timeout_ms, 7200000);
  EXPECT_EQ(back.gpu_index, 1u);
  EXPECT_EQ(back.gpu_id, start.gpu_id);
  EXPECT_EQ(back.memory_bytes, uint64_t{40} << 30);
  EXPECT_EQ(back.compute_percent, 50u);
  EXPECT_TRUE(back.simulated);
}

}  // namespace
}  // namespace troupe::serving
