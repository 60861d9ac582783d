// Retrying a request through a head restart: which failures of the gateway's call to the head are
// sent again, and when (docs/gateway.md "A head restart").
#pragma once

#include <caf/error.hpp>

#include <chrono>
#include <cstdint>
#include <string>

#include "cluster/admission.h"
#include "common/backoff.h"
#include "common/status.h"

namespace troupe::gateway {

/// How a call of the gateway to the head (an AdmitAndInfer, an Admit, or a stream's request to
/// the router on the head) ended, as far as retrying it goes.
enum class CallOutcome {
  /// No answer from the head at all: the runtime's Unavailable (its process or connection lost,
  /// the api actor not known since). Nothing the head did for the request outlives it: the
  /// reservation died with it (or is not known to a restarted head). Retried.
  kHeadLost,
  /// The head did not answer within the call's timeout (DeadlineExceeded from the runtime). It may
  /// still run, and the request with it: not retried (the request's deadline is past by then).
  kHeadSilent,
  /// The head answered with a refusal (401, 403, 404, 429) or a router/replica error
  /// (dispatched). The request's own answer: not retried here.
  kAnswered,
};

/// The outcome of a whole call (AdmitAndInfer), from the session actor's reply. Only a reply
/// that is no reply (the runtime's error) can be kHeadLost: an AdmitAndInferReply, whatever it
/// says, is the head's answer, and one with a replica's response in it is never sent again.
CallOutcome OutcomeOf(const StatusOr<cluster::AdmitAndInferReply>& reply);
/// The outcome of a call answered by a Status (an Admit's error, a failed route lookup during a
/// retry): Unavailable is kHeadLost, DeadlineExceeded kHeadSilent, the rest kAnswered.
CallOutcome OutcomeOf(const Status& status);
/// True when a CAF request failed because its receiver is gone as CAF itself says it
/// (request_receiver_down, an unreachable exit), not because the receiver answered with an error
/// (troupe's status category). A remote node's loss arrives as troupe's Unavailable from the
/// bridge instead, like a router's own Unavailable answer: the gateway tells those apart by
/// looking the head's api actor up again (gateway.cc, Stream).
bool IsReceiverLost(const caf::error& error);

/// The gateway's retry of a request through a head restart. Envoy's route retry policy
/// (retry_on: reset,connect-failure, bounded by the route's timeout, jittered exponential
/// back-off from 25 ms) and Ray Serve's handle, which resends a request whose actor died before
/// it answered, are the models.
struct HeadRetryPolicy {
  /// Between attempts: 50 ms doubling to 500 ms, up to half of each drawn off (common/backoff.h).
  /// A restarted head answers 0.4-1.4 s after a kill -9 (docs/serving.md): 4-6 attempts.
  BackoffPolicy backoff{std::chrono::milliseconds(50), 2.0, std::chrono::milliseconds(500), 0.5};
  /// gateway.head_retry_budget: the longest a request waits for the head in all, from its first
  /// failed attempt (0: never retried). The request's deadline bounds it too.
  std::chrono::milliseconds budget{30000};
};

struct HeadRetryDecision {
  bool retry = false;
  std::chrono::milliseconds delay{0};  ///< wait this long, then send again (retry only)
  std::string why;                     ///< why not (for the 503's message), or why
};

/// Whether to send a request again after a failed attempt, and after how long.
///
/// `outcome`: how the attempt ended; `attempt`: the failed attempts so far (from 1); `waited`:
/// time since the first failed attempt; `left`: time to the request's deadline; `u`: a uniform
/// draw in [0, 1) for the jitter. Only kHeadLost is retried, and only if the delay ends within
/// both the budget and the deadline (a retry the deadline would cut short is not made: the
/// caller answers 503 now rather than 504 later).
HeadRetryDecision DecideHeadRetry(const HeadRetryPolicy& policy, CallOutcome outcome, uint32_t attempt,
                                  std::chrono::milliseconds waited, std::chrono::milliseconds left, double u);

}  // namespace troupe::gateway
