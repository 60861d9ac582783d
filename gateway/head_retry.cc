// Retrying a request through a head restart.
#include "gateway/head_retry.h"

#include <caf/atom.hpp>
#include <caf/exit_reason.hpp>
#include <caf/sec.hpp>

#include "runtime/error.h"

namespace troupe::gateway {

CallOutcome OutcomeOf(const Status& status) {
  if (status.code() == StatusCode::kUnavailable) return CallOutcome::kHeadLost;
  if (status.code() == StatusCode::kDeadlineExceeded) return CallOutcome::kHeadSilent;
  return CallOutcome::kAnswered;
}

CallOutcome OutcomeOf(const StatusOr<cluster::AdmitAndInferReply>& reply) {
  if (reply.ok()) return CallOutcome::kAnswered;
  return OutcomeOf(reply.status());
}

bool IsReceiverLost(const caf::error& error) {
  if (!error || error.category() == runtime::kStatusCategory) return false;
  if (error.category() == caf::atom("system")) {
    return static_cast<caf::sec>(error.code()) == caf::sec::request_receiver_down;
  }
  if (error.category() == caf::atom("exit")) {
    const auto reason = static_cast<caf::exit_reason>(error.code());
    return reason == caf::exit_reason::remote_link_unreachable || reason == caf::exit_reason::unreachable;
  }
  return false;
}

HeadRetryDecision DecideHeadRetry(const HeadRetryPolicy& policy, CallOutcome outcome, uint32_t attempt,
                                  std::chrono::milliseconds waited, std::chrono::milliseconds left, double u) {
  HeadRetryDecision decision;
  switch (outcome) {
    case CallOutcome::kAnswered:
      decision.why = "the head answered";
      return decision;
    case CallOutcome::kHeadSilent:
      decision.why = "the head did not answer in time and may still be running the request";
      return decision;
    case CallOutcome::kHeadLost:
      break;
  }
  const std::chrono::milliseconds delay = policy.backoff.Delay(attempt, u);
  if (waited + delay > policy.budget) {
    decision.why = "the head was not back within gateway.head_retry_budget (" +
                   std::to_string(policy.budget.count()) + " ms, " + std::to_string(attempt) + " attempt(s))";
    return decision;
  }
  if (delay >= left) {
    decision.why = "the request's deadline (gateway.request_timeout) ends before the head is back";
    return decision;
  }
  decision.retry = true;
  decision.delay = delay;
  decision.why = "the head was lost (attempt " + std::to_string(attempt) + ")";
  return decision;
}

}  // namespace troupe::gateway
