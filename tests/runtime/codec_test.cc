// CodecRegistry, error mapping and node identity: deterministic, no processes.
#include <gtest/gtest.h>

#include <caf/all.hpp>

#include "runtime/codec.h"
#include "runtime/error.h"
#include "runtime/node_identity.h"
#include "tests/fakes/fake_ref_codec.h"
#include "tests/runtime/test_actors.h"
#include "tests/runtime/test_messages.capnp.h"

namespace troupe::testing {
namespace {

using runtime::ActorRef;
using runtime::CodecRegistry;

class Codec : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(AddTestCodecs(codecs_).ok()); }
  CodecRegistry codecs_;
  FakeRefCodec refs_;
};

TEST_F(Codec, RoundTripsAMessageWithARefInside) {
  auto encoded = codecs_.Encode(caf::make_message(CallVia{ActorRef::Dangling(5, 9), 3}), refs_);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(encoded->type_id, kCallVia);
  EXPECT_EQ(encoded->payload.size() % 8, 0u);
  auto decoded = codecs_.Decode(encoded->type_id, encoded->payload, refs_);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(decoded->match_elements<CallVia>());
  const auto& via = decoded->get_as<CallVia>(0);
  EXPECT_EQ(via.n, 3);
  EXPECT_EQ(via.target.node(), 5u);
  EXPECT_EQ(via.target.id(), 9u);
}

// Counts the references it is asked to decode (the bridge records their addresses and makes
// proxies for them).
class CountingRefCodec final : public runtime::RefCodec {
 public:
  void EncodeRef(const ActorRef& ref, runtime::wire::ActorAddress::Builder out) override { fake.EncodeRef(ref, out); }
  ActorRef DecodeRef(runtime::wire::ActorAddress::Reader in) override {
    ++decoded;
    return fake.DecodeRef(in);
  }
  FakeRefCodec fake;
  int decoded = 0;
};

TEST(CodecDecoding, AMessageThatFailsToDecodeNeverHasItsReferencesDecoded) {
  // A decoder that reads its reference first and refuses the message after.
  CodecRegistry codecs;
  ASSERT_TRUE((codecs.Add<CallVia, wire::CallVia>(
                   kCallVia, "CallVia",
                   [](const CallVia& m, wire::CallVia::Builder b, runtime::RefCodec& refs) {
                     refs.EncodeRef(m.target, b.initTarget());
                     b.setN(m.n);
                   },
                   [](wire::CallVia::Reader in, runtime::RefCodec& refs) -> StatusOr<CallVia> {
                     ActorRef target = refs.DecodeRef(in.getTarget());
                     if (in.getN() < 0) return InvalidArgumentError("CallVia: n must not be negative");
                     return CallVia{target, in.getN()};
                   }))
                  .ok());
  CountingRefCodec refs;
  auto bad = codecs.Encode(caf::make_message(CallVia{ActorRef::Dangling(5, 9), -1}), refs);
  ASSERT_TRUE(bad.ok()) << bad.status();
  auto refused = codecs.Decode(bad->type_id, bad->payload, refs);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status();
  EXPECT_EQ(refs.decoded, 0) << "a reference of a message that did not decode was decoded (a proxy made)";

  auto good = codecs.Encode(caf::make_message(CallVia{ActorRef::Dangling(5, 9), 3}), refs);
  ASSERT_TRUE(good.ok()) << good.status();
  auto decoded = codecs.Decode(good->type_id, good->payload, refs);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(refs.decoded, 1) << "each reference of a good message is decoded once";
  EXPECT_EQ(decoded->get_as<CallVia>(0).target.id(), 9u);
}

TEST_F(Codec, SmallMessagesAreExactlyTheirFlatBytesAndLargeOnesRoundTrip) {
  // A small message is built in place in its payload: a one-word segment table, then the root
  // pointer and the struct's data word, nothing more.
  auto small = codecs_.Encode(caf::make_message(Count{42}), refs_);
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->payload.size(), 3 * 8u);
  auto back = codecs_.Decode(kCount, small->payload, refs_);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->get_as<Count>(0).value, 42);
  // Larger than the in-place segment (and than the next one): more segments, copied out.
  for (size_t size : {200u, 5000u, 100000u}) {
    std::string text(size, 'x');
    for (size_t i = 0; i < size; ++i) text[i] = static_cast<char>('a' + i % 26);
    auto big = codecs_.Encode(caf::make_message(Quit{StatusCode::kFailedPrecondition, text}), refs_);
    ASSERT_TRUE(big.ok()) << big.status();
    auto decoded = codecs_.Decode(kQuit, big->payload, refs_);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->get_as<Quit>(0).text, text) << size << " bytes of text";
    EXPECT_EQ(decoded->get_as<Quit>(0).code, StatusCode::kFailedPrecondition);
  }
}

TEST_F(Codec, UnknownTypeIdIsInvalidArgument) {
  auto decoded = codecs_.Decode(4242, Buffer::CopyOf(std::string(8, '\0')), refs_);
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("4242"), std::string::npos);
}

TEST_F(Codec, BytesThatDoNotDecodeAreInvalidArgumentNotACrash) {
  for (const std::string& bytes : {std::string(), std::string("odd"), std::string(24, '\xff'),
                                   std::string("\x00\x00\x00\x00\xff\xff\xff\x7f", 8)}) {
    auto decoded = codecs_.Decode(kAdd, Buffer::CopyOf(bytes), refs_);
    EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument) << bytes.size() << " bytes";
  }
  // A valid message whose decoder refuses the content.
  auto encoded = codecs_.Encode(caf::make_message(Quit{StatusCode::kInternal, "x"}), refs_);
  ASSERT_TRUE(encoded.ok());
  encoded->payload.data()[16] = 0xEE;  // the status code field lies in the data section
  auto decoded = codecs_.Decode(kQuit, encoded->payload, refs_);
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument) << decoded.status();
}

TEST_F(Codec, AMessageWithoutACodecIsInvalidArgument) {
  EXPECT_EQ(codecs_.Encode(caf::make_message(std::string("hi")), refs_).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(codecs_.Encode(caf::make_message(Add{1}, Add{2}), refs_).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(Codec, ReservedAndDuplicateRegistrationsAreRefused) {
  using Enc = CodecRegistry::Encoder<Add, wire::Add>;
  using Dec = CodecRegistry::Decoder<Add, wire::Add>;
  Enc enc = [](const Add&, wire::Add::Builder, runtime::RefCodec&) {};
  Dec dec = [](wire::Add::Reader, runtime::RefCodec&) -> StatusOr<Add> { return Add{}; };
  CodecRegistry fresh;
  EXPECT_EQ((fresh.Add<Add, wire::Add>(5, "Add", enc, dec)).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE((fresh.Add<Add, wire::Add>(2000, "Add", enc, dec)).ok());
  EXPECT_EQ((fresh.Add<Add, wire::Add>(2000, "Add", enc, dec)).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ((fresh.Add<Add, wire::Add>(2001, "Add", enc, dec)).code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(fresh.AddRuntimeTypes().ok());
}

TEST(ErrorMapping, StatusSurvivesTheCafErrorRoundTrip) {
  Status status = UnavailableError("node 7 is lost: link down");
  EXPECT_EQ(runtime::ToStatus(runtime::ToCafError(status)), status);
  EXPECT_EQ(runtime::ToStatus(caf::make_error(caf::sec::request_timeout)).code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(runtime::ToStatus(caf::make_error(caf::sec::request_receiver_down)).code(), StatusCode::kUnavailable);
  EXPECT_EQ(runtime::ToStatus(caf::make_error(caf::sec::unexpected_message)).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(runtime::ToStatus(caf::error{}).ok());
}

TEST(NodeIdentity, TroupeNodeIdsMapToCafNodesAndBack) {
  for (runtime::NodeId id : {runtime::NodeId{1}, runtime::NodeId{0xdeadbeefcafef00dull}, ~runtime::NodeId{0}}) {
    auto node = runtime::ToCafNode(id);
    ASSERT_TRUE(node);
    EXPECT_EQ(runtime::FromCafNode(node), id);
  }
  caf::actor_system_config cfg;
  caf::actor_system system{cfg};
  EXPECT_FALSE(runtime::FromCafNode(system.node())) << "the local node must not look like a proxy node";
  uint64_t wire = runtime::MakeWireActorId(0xABCDEF, 42);
  EXPECT_EQ(runtime::IncarnationOf(wire), 0xABCDEFu);
  EXPECT_EQ(runtime::LocalIdOf(wire), 42u);
  EXPECT_EQ(runtime::NodeIdFromName("worker-a"), runtime::NodeIdFromName("worker-a"));
  EXPECT_NE(runtime::NodeIdFromName("worker-a"), runtime::NodeIdFromName("worker-b"));
}

}  // namespace
}  // namespace troupe::testing
