// The audit log's wire messages, and the caller that deployment and job commands carry for it,
// through the cluster's codecs as they cross nodes.
#include <gtest/gtest.h>

#include "actors/serving/messages.h"
#include "actors/training/messages.h"
#include "cluster/messages.h"
#include "tests/support/cluster_round_trip.h"

namespace troupe::cluster {
namespace {

using testing::ClusterRoundTrip;

TEST(AuditMessages, QueryAndReplyCrossTheWire) {
  AuditQuery query = ClusterRoundTrip(AuditQuery{1767225600000, true});
  EXPECT_EQ(query.since_unix_ms, 1767225600000);
  EXPECT_TRUE(query.verify);
  EXPECT_EQ(ClusterRoundTrip(AuditReply{R"({"records":[]})"}).json, R"({"records":[]})");
}

TEST(AuditMessages, CommandsCarryTheirCallerAndOlderOnesDecodeWithoutOne) {
  auto job = ClusterRoundTrip(training::JobCommand{"submit", "j", "{}", "cli@client-1"});
  EXPECT_EQ(job.caller, "cli@client-1");
  EXPECT_EQ(job.body, "{}");
  auto deployment = ClusterRoundTrip(serving::DeploymentCommand{"scale", "d", "2", "cli@client-2"});
  EXPECT_EQ(deployment.caller, "cli@client-2");
  EXPECT_EQ(deployment.body, "2");
  // An older sender sets no caller (field 3 absent): it reads as empty.
  EXPECT_EQ(ClusterRoundTrip(serving::DeploymentCommand{"delete", "d", ""}).caller, "");
}

}  // namespace
}  // namespace troupe::cluster
