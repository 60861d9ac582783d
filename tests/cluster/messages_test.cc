// The cluster's messages as a peer could send them: a payload decodes into at most a small
// multiple of its own size, whatever its lists claim.
#include <gtest/gtest.h>

#include <caf/all.hpp>

#include <cstring>

#include "cluster/protocol.capnp.h"
#include "cluster/messages.h"
#include "runtime/codec.h"
#include "tests/fakes/fake_ref_codec.h"

namespace troupe::cluster {
namespace {

// A flat single-segment `cluster.NodeList` of `bytes` bytes whose `nodes` list claims `count`
// zero-sized elements (a composite list of 0 words: an honest encoder never writes one). The
// rest of the segment is zero padding, which raises what the reader may traverse.
Buffer ZeroSizedNodeList(uint32_t count, size_t bytes) {
  const size_t words = bytes / 8;
  Buffer out = Buffer::Allocate(words * 8);
  std::memset(out.data(), 0, out.size());
  uint64_t* w = reinterpret_cast<uint64_t*>(out.data());
  const uint32_t segment_words = static_cast<uint32_t>(words - 1);
  w[0] = uint64_t{segment_words} << 32;  // segment table: one segment of `segment_words`
  w[1] = uint64_t{2} << 48;              // root: struct, 0 data words, 2 pointers, right after
  w[2] = 0;                              // clusterName: null
  w[3] = 1 | (uint64_t{7} << 32);        // nodes: composite list, 0 words, its tag right after
  w[4] = uint64_t{count} << 2;           // tag: `count` elements of 0 data words, 0 pointers
  return out;
}

class ClusterMessages : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(AddClusterCodecs(codecs_).ok()); }
  runtime::CodecRegistry codecs_;
  testing::FakeRefCodec refs_;
};

TEST_F(ClusterMessages, AListOfZeroSizedRecordsIsRefusedInsteadOfDecodedIntoMillions) {
  // 1 MiB that claimed 525,304 empty node records (487 MB peak) before lists were checked.
  Buffer hostile = ZeroSizedNodeList(100000, 1 << 20);
  // It is what it claims: read without the check, its list holds 100,000 records.
  ASSERT_TRUE((runtime::ReadFlat<wire::NodeList>(hostile.data(), hostile.size(), "raw NodeList",
                                                 [](wire::NodeList::Reader in) {
                                                   EXPECT_EQ(in.getNodes().size(), 100000u);
                                                   return OkStatus();
                                                 }))
                  .ok());
  auto decoded = codecs_.Decode(kNodeList, hostile, refs_);
  ASSERT_FALSE(decoded.ok()) << "decoded into "
                             << decoded->get_as<NodeList>(0).nodes.size() << " records";
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("cluster.NodeList"), std::string::npos) << decoded.status();
}

TEST_F(ClusterMessages, AnHonestNodeListStillDecodes) {
  NodeList list;
  list.cluster_name = "c";
  for (int i = 0; i < 1000; ++i) {
    NodeRecord r;
    r.name = "node-" + std::to_string(i);
    if (i % 2 == 0) r.gpus.push_back(GpuInfo{"sim-0", 1ull << 30, true, "", 0});
    list.nodes.push_back(r);
  }
  list.nodes.push_back(NodeRecord{});  // every field at its default: the smallest record
  auto encoded = codecs_.Encode(caf::make_message(list), refs_);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  auto decoded = codecs_.Decode(encoded->type_id, encoded->payload, refs_);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const auto& back = decoded->get_as<NodeList>(0);
  ASSERT_EQ(back.nodes.size(), 1001u);
  EXPECT_EQ(back.nodes[998].name, "node-998");
  EXPECT_EQ(back.nodes[998].gpus.size(), 1u);
}

}  // namespace
}  // namespace troupe::cluster
