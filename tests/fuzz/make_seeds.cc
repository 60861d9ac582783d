// Writes the binary seed inputs of the fuzz targets (valid envelopes, payloads and stored
// records) into tests/fuzz/corpus/<target>/, so that the corpus can be made again when a
// format changes: build-fuzz/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "actors/api/messages.h"
#include "actors/serving/messages.h"
#include "cluster/messages.h"
#include "runtime/codec.h"
#include "tests/fakes/fake_ref_codec.h"
#include "transport/envelope.h"

namespace {

using namespace troupe;

void Write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  std::printf("%s (%zu bytes)\n", path.c_str(), bytes.size());
}

std::string Bytes(const void* data, size_t size) { return std::string(static_cast<const char*>(data), size); }

cluster::NodeRecord SampleNode() {
  cluster::NodeRecord r;
  r.name = "node-a";
  r.node_id = 42;
  r.address = "127.0.0.1:7401";
  r.state = "alive";
  r.cpus = 8;
  r.memory_bytes = 16ull << 30;
  r.gpus = {{"sim-0", 16ull << 30, true, "", 0}, {"sim-1", 16ull << 30, true, "GPU-1234", 1}};
  r.slice_memory_bytes = 4ull << 30;
  r.pid = 1234;
  r.joins = 2;
  r.metrics_address = "127.0.0.1:9100";
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  testing::FakeRefCodec refs;

  // Envelopes: a data frame and each handshake kind.
  transport::FrameHeader header;
  header.dst_actor = 7;
  header.request_id = 99;
  header.type_id = 1100;
  transport::HandshakeInfo hello;
  hello.node_id = 3;
  hello.node_name = "node-a";
  hello.listen_address = "127.0.0.1:7401";
  hello.nonce = std::string(32, 'n');
  hello.proof = std::string(32, 'p');
  hello.reason = "bad token";
  transport::EncodedEnvelope env;
  const std::pair<transport::FrameKind, const char*> kinds[] = {
      {transport::FrameKind::kData, "data"},     {transport::FrameKind::kHello, "hello"},
      {transport::FrameKind::kChallenge, "challenge"}, {transport::FrameKind::kAuth, "auth"},
      {transport::FrameKind::kReject, "reject"}, {transport::FrameKind::kBatch, "batch"}};
  for (const auto& [kind, name] : kinds) {
    const bool data = kind == transport::FrameKind::kData || kind == transport::FrameKind::kBatch;
    if (!transport::EncodeEnvelope(kind, header, data ? nullptr : &hello, &env).ok()) return 1;
    Write(dir + "/envelope_fuzz/" + name, Bytes(env.bytes, env.size));
  }

  // Payloads of registered types, each prefixed with its index among the registered ids (the
  // order codec_fuzz.cc picks them in).
  runtime::CodecRegistry codecs;
  if (!codecs.AddRuntimeTypes().ok() || !cluster::AddClusterCodecs(codecs).ok() ||
      !serving::AddServingCodecs(codecs).ok() || !api::AddApiCodecs(codecs).ok()) {
    return 1;
  }
  std::vector<uint32_t> ids;
  for (uint32_t id = 0; id < 100000; ++id) {
    if (codecs.Has(id)) ids.push_back(id);
  }
  auto seed = [&](const char* name, caf::message msg) {
    auto encoded = codecs.Encode(msg, refs);
    if (!encoded.ok()) return;
    size_t index = 0;
    while (index < ids.size() && ids[index] != encoded->type_id) ++index;
    std::string bytes;
    bytes += static_cast<char>(index >> 8);
    bytes += static_cast<char>(index & 0xff);
    bytes += Bytes(encoded->payload.data(), encoded->payload.size());
    Write(dir + "/codec_fuzz/" + name, bytes);
  };
  cluster::JoinRequest join;
  join.node = SampleNode();
  join.agent = runtime::ActorRef::Dangling(42, 5);
  cluster::AssignSlices assign;
  assign.lease_id = 9;
  assign.owner = "owner";
  cluster::LeaseWorker worker;
  worker.node = "node-a";
  worker.node_id = 42;
  worker.gpu_index = 1;
  worker.gpu_id = "GPU-1234";
  worker.slices = 2;
  worker.memory_bytes = 8ull << 30;
  assign.workers = {worker};
  join.held = {assign};
  seed("join_request", caf::make_message(join));
  cluster::NodeList list;
  list.cluster_name = "local";
  list.nodes = {SampleNode(), SampleNode()};
  seed("node_list", caf::make_message(list));
  cluster::LeaseRequest request;
  request.tenant = "team";
  request.count = 2;
  request.slice_memory_bytes = 4ull << 30;
  request.gang = true;
  request.owner = runtime::ActorRef::Dangling(42, 6);
  request.key = "job-1";
  seed("lease_request", caf::make_message(request));
  cluster::LeaseGrant grant;
  grant.lease_id = 9;
  grant.workers = {worker, worker};
  grant.tenant = "team";
  seed("lease_grant", caf::make_message(grant));
  seed("assign_slices", caf::make_message(assign));
  serving::InferenceRequest inference;
  inference.id = 7;
  inference.deployment = "chat";
  inference.path = "/v1/chat/completions";
  inference.body = R"({"messages":[{"role":"user","content":"hi"}],"stream":true})";
  inference.stream = true;
  inference.stream_to = runtime::ActorRef::Dangling(42, 7);
  seed("inference_request", caf::make_message(inference));
  serving::ReplicaSet replicas;
  replicas.deployment = "chat";
  replicas.generation = 3;
  replicas.replicas = {serving::ReplicaInfo{runtime::ActorRef::Dangling(42, 8), "chat/v1/replica-0", "v1", 1.0, 4}};
  seed("replica_set", caf::make_message(replicas));
  serving::ReplicaStatus status{"chat/v1/replica-0", serving::ReplicaState::kReady, 1, 2, 0};
  seed("replica_status", caf::make_message(status));
  api::AdmitReply admit_reply;
  admit_reply.admitted = true;
  admit_reply.reservation = 7;
  admit_reply.deployments = {"chat"};
  admit_reply.headers = {{"x-ratelimit-limit-requests", "60"}};
  seed("api_admit_reply", caf::make_message(admit_reply));

  // Stored records: the first byte chooses the decoder (stored_record_fuzz.cc).
  Write(dir + "/stored_record_fuzz/node_record", std::string(1, '\0') + cluster::EncodeNodeRecord(SampleNode()));
  Write(dir + "/stored_record_fuzz/stored_lease",
        std::string(1, '\1') + cluster::EncodeStoredLease(request, grant, refs));
  Write(dir + "/stored_record_fuzz/lease_key", std::string(1, '\2') + std::string("\0\0\0\0\0\0\0\x09", 8));
  return 0;
}
