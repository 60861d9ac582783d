// The audit log's wire messages, and the caller that deployment and job commands carry for it,
// through the cluster's codecs as they cross nodes.
#include <gtest/gtest.h>

#include <caf/all.hpp>

#include "actors/serving/messages.h"
#include "actors/training/messages.h"
#include "cluster/bootstrap.h"
#include "cluster/messages.h"
#include "tests/fakes/fake_ref_codec.h"

namespace troupe::cluster {
namespace {

template <class T>
T RoundTrip(const T& message) {
  runtime::CodecRegistry codecs = ClusterCodecs();
  testing::FakeRefCodec refs;
  auto encoded = codecs.Encode(caf::make_message(message), refs);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  if (!encoded.ok()) return T{};
  auto decoded = codecs.Decode(encoded->type_id, encoded->payload, refs);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  return decoded.ok() ? decoded->template get_as<T>(0) : T{};
}

TEST(AuditMessages, QueryAndReplyCrossTheWire) {
  AuditQuery query = RoundTrip(AuditQuery{1767225600000, true});
  EXPECT_EQ(query.since_unix_ms, 1767225600000);
  EXPECT_TRUE(query.verify);
  EXPECT_EQ(RoundTrip(AuditReply{R"({"records":[]})"}).json, R"({"records":[]})");
}

TEST(AuditMessages, CommandsCarryTheirCallerAndOlderOnesDecodeWithoutOne) {
  auto job = RoundTrip(training::JobCommand{"submit", "j", "{}", "cli@client-1"});
  EXPECT_EQ(job.caller, "cli@client-1");
  EXPECT_EQ(job.body, "{}");
  auto deployment = RoundTrip(serving::DeploymentCommand{"scale", "d", "2", "cli@client-2"});
  EXPECT_EQ(deployment.caller, "cli@client-2");
  EXPECT_EQ(deployment.body, "2");
  // An older sender sets no caller (field 3 absent): it reads as empty.
  EXPECT_EQ(RoundTrip(serving::DeploymentCommand{"delete", "d", ""}).caller, "");
}

}  // namespace
}  // namespace troupe::cluster
