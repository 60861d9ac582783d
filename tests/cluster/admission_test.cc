// The gateway's admit-and-call messages (cluster/admission.h) through the cluster's codecs.
#include "cluster/admission.h"

#include <gtest/gtest.h>

#include "tests/support/cluster_round_trip.h"

namespace troupe::cluster {
namespace {

using testing::ClusterRoundTrip;

TEST(Admission, ACallCarriesItsAdmitAndItsRequest) {
  AdmitAndInfer call;
  call.admit = api::Admit{"tk-a-b", "chat", 1, 12, 16};
  call.deployment_tenant = "acme";
  call.reservation = 7;
  call.request.id = 42;
  call.request.deployment = "chat";
  call.request.path = "/v1/chat/completions";
  call.request.body = std::string("{\"model\":\"chat\"}\0tail", 22);
  call.request.deadline_unix_ms = 1767225600123;
  const AdmitAndInfer got = ClusterRoundTrip(call);
  EXPECT_EQ(got.admit.api_key, "tk-a-b");
  EXPECT_EQ(got.admit.deployment, "chat");
  EXPECT_EQ(got.admit.prompt_tokens, 12u);
  EXPECT_EQ(got.admit.max_tokens, 16u);
  EXPECT_EQ(got.deployment_tenant, "acme");
  EXPECT_EQ(got.reservation, 7u);
  EXPECT_EQ(got.request.id, 42u);
  EXPECT_EQ(got.request.path, "/v1/chat/completions");
  EXPECT_EQ(got.request.body, call.request.body);  // bytes, a NUL included
  EXPECT_EQ(got.request.deadline_unix_ms, 1767225600123);
  EXPECT_FALSE(got.request.stream);
}

TEST(Admission, AReplyCarriesTheAdmissionTheResponseAndTheError) {
  AdmitAndInferReply reply;
  reply.admit.admitted = true;
  reply.admit.reservation = 9;
  reply.admit.tenant = "acme";
  reply.admit.headers = {{"x-ratelimit-remaining-requests", "5"}};
  reply.dispatched = true;
  reply.response.http_status = 200;
  reply.response.body = R"({"usage":{}})";
  reply.response.prompt_tokens = 3;
  reply.response.completion_tokens = 4;
  reply.response.replica = "chat-1";
  AdmitAndInferReply got = ClusterRoundTrip(reply);
  EXPECT_TRUE(got.admit.admitted);
  EXPECT_EQ(got.admit.reservation, 9u);
  ASSERT_EQ(got.admit.headers.size(), 1u);
  EXPECT_EQ(got.admit.headers[0].second, "5");
  EXPECT_TRUE(got.dispatched);
  EXPECT_EQ(got.response.body, reply.response.body);
  EXPECT_EQ(got.response.completion_tokens, 4u);
  EXPECT_EQ(got.response.replica, "chat-1");
  EXPECT_TRUE(got.error().ok());

  reply.error_code = static_cast<uint32_t>(StatusCode::kUnavailable);
  reply.error_message = "router gone";
  got = ClusterRoundTrip(reply);
  EXPECT_EQ(got.error().code(), StatusCode::kUnavailable);
  EXPECT_EQ(got.error().message(), "router gone");
  // A code this build does not know (another build's peer) is still an error.
  reply.error_code = 200;
  EXPECT_EQ(ClusterRoundTrip(reply).error().code(), StatusCode::kInternal);
}

TEST(Admission, TheRoutersReplyIsAwaitedForTheTimeLeftPlusASecond) {
  using std::chrono::milliseconds;
  EXPECT_EQ(RouterReplyTimeout(10'000, 7'500), milliseconds(3'500));
  EXPECT_EQ(RouterReplyTimeout(10'000, 12'000), milliseconds(1'000));  // past its deadline
  EXPECT_EQ(RouterReplyTimeout(0, 12'000), milliseconds(61'000));      // no deadline given
}

}  // namespace
}  // namespace troupe::cluster
