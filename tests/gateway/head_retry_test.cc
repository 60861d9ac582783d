// The gateway's retry decision through a head restart (gateway/head_retry.h): which outcomes of a
// call to the head are sent again, the back-off between attempts, and the budget and deadline
// that bound it. Pure functions: no actor system, no clock.
#include "gateway/head_retry.h"

#include <gtest/gtest.h>

#include <caf/exit_reason.hpp>
#include <caf/sec.hpp>

#include "runtime/error.h"

namespace troupe::gateway {
namespace {

using Ms = std::chrono::milliseconds;

constexpr Ms kLongDeadline{60000};

TEST(HeadRetry, ACallTheHeadNeverAnsweredBecauseItWasLostIsRetriedWithTheJitteredBackoff) {
  const HeadRetryPolicy policy;  // 50 ms doubling to 500 ms, up to half drawn off
  const CallOutcome lost = OutcomeOf(StatusOr<cluster::AdmitAndInferReply>(UnavailableError("head gone")));
  ASSERT_EQ(lost, CallOutcome::kHeadLost);
  const Ms expected_full[] = {Ms(50), Ms(100), Ms(200), Ms(400), Ms(500), Ms(500)};
  Ms waited{0};
  for (uint32_t attempt = 1; attempt <= 6; ++attempt) {
    const HeadRetryDecision full = DecideHeadRetry(policy, lost, attempt, waited, kLongDeadline, 0.0);
    ASSERT_TRUE(full.retry) << "attempt " << attempt << ": " << full.why;
    EXPECT_EQ(full.delay, expected_full[attempt - 1]) << "attempt " << attempt;
    const HeadRetryDecision shortest = DecideHeadRetry(policy, lost, attempt, waited, kLongDeadline, 0.999999);
    EXPECT_EQ(shortest.delay, expected_full[attempt - 1] / 2) << "jitter 0.5 halves the delay at most";
    waited += full.delay;
  }
  // Attempts 1-4 wait 750 ms in all: a head back 0.4-1.4 s after kill -9 is found within 5-6.
  EXPECT_EQ(waited, Ms(1750));
}

TEST(HeadRetry, AnAnswerOfTheHeadIsNeverRetried) {
  const HeadRetryPolicy policy;
  // The replica answered (even with an error status): the gateway got it, it is the answer.
  cluster::AdmitAndInferReply answered;
  answered.admit.admitted = true;
  answered.dispatched = true;
  answered.response.http_status = 500;
  // A refusal (429) and a router error after dispatch (the replica died while serving).
  cluster::AdmitAndInferReply refused;
  refused.admit.http_status = 429;
  cluster::AdmitAndInferReply replica_died;
  replica_died.admit.admitted = true;
  replica_died.dispatched = true;
  replica_died.error_code = static_cast<uint32_t>(StatusCode::kUnavailable);
  replica_died.error_message = "replica r-0 died while serving the request";
  for (const auto& reply : {answered, refused, replica_died}) {
    const CallOutcome outcome = OutcomeOf(StatusOr<cluster::AdmitAndInferReply>(reply));
    EXPECT_EQ(outcome, CallOutcome::kAnswered);
    EXPECT_FALSE(DecideHeadRetry(policy, outcome, 1, Ms(0), kLongDeadline, 0.0).retry);
  }
  // A refusal or failure as a Status (an Admit's, a route lookup's) other than the head's loss.
  for (const Status& status : {PermissionDeniedError("key"), InvalidArgumentError("body"), InternalError("bug")}) {
    EXPECT_EQ(OutcomeOf(status), CallOutcome::kAnswered) << status;
  }
}

TEST(HeadRetry, AHeadThatDidNotAnswerInTimeIsNotRetried) {
  // It may still be running the request, and the request's deadline has passed by then.
  const CallOutcome silent = OutcomeOf(StatusOr<cluster::AdmitAndInferReply>(DeadlineExceededError("no reply")));
  EXPECT_EQ(silent, CallOutcome::kHeadSilent);
  const HeadRetryDecision decision = DecideHeadRetry(HeadRetryPolicy{}, silent, 1, Ms(0), kLongDeadline, 0.0);
  EXPECT_FALSE(decision.retry);
  EXPECT_NE(decision.why.find("did not answer in time"), std::string::npos) << decision.why;
}

TEST(HeadRetry, RetriesEndAtTheBudgetAndBeforeTheRequestsDeadline) {
  HeadRetryPolicy policy;
  policy.budget = Ms(1000);
  // 800 ms waited, a full 500 ms delay next: past the budget.
  HeadRetryDecision over = DecideHeadRetry(policy, CallOutcome::kHeadLost, 5, Ms(800), kLongDeadline, 0.0);
  EXPECT_FALSE(over.retry);
  EXPECT_NE(over.why.find("head_retry_budget (1000 ms, 5 attempt(s))"), std::string::npos) << over.why;
  EXPECT_TRUE(DecideHeadRetry(policy, CallOutcome::kHeadLost, 5, Ms(500), kLongDeadline, 0.0).retry);
  // 100 ms to the deadline and a 200 ms delay: answered now (503), not cut short later (504).
  HeadRetryDecision late = DecideHeadRetry(policy, CallOutcome::kHeadLost, 3, Ms(0), Ms(100), 0.0);
  EXPECT_FALSE(late.retry);
  EXPECT_NE(late.why.find("deadline"), std::string::npos) << late.why;
  EXPECT_FALSE(DecideHeadRetry(policy, CallOutcome::kHeadLost, 1, Ms(0), Ms(-5), 0.0).retry) << "deadline passed";
  // Budget 0: never retried.
  policy.budget = Ms(0);
  EXPECT_FALSE(DecideHeadRetry(policy, CallOutcome::kHeadLost, 1, Ms(0), kLongDeadline, 0.0).retry);
}

TEST(HeadRetry, AStreamsRouterCountsAsLostOnlyForTheRuntimesOwnErrors) {
  EXPECT_TRUE(IsReceiverLost(caf::make_error(caf::sec::request_receiver_down)));
  EXPECT_TRUE(IsReceiverLost(caf::make_error(caf::exit_reason::remote_link_unreachable)));
  EXPECT_TRUE(IsReceiverLost(caf::make_error(caf::exit_reason::unreachable)));
  EXPECT_FALSE(IsReceiverLost(caf::make_error(caf::sec::request_timeout)));
  EXPECT_FALSE(IsReceiverLost(caf::error()));
  // The router's own answers (a full queue, a replica that died while serving) are troupe
  // Statuses, even Unavailable ones: the request's answer, not a lost head.
  EXPECT_FALSE(IsReceiverLost(runtime::ToCafError(UnavailableError("queue full"))));
  EXPECT_FALSE(IsReceiverLost(runtime::ToCafError(UnavailableError("replica died while serving"))));
}

}  // namespace
}  // namespace troupe::gateway
