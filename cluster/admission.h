// Admit and call in one message: the gateway's path for a whole (not streamed) completion
// (type ids 1570-1571; schema cluster/admission.capnp; docs/gateway.md "The request path").
//
//   gateway session --AdmitAndInfer--> api actor (head) --InferenceRequest--> router (head)
//   router --InferenceResponse--> api actor --AdmitAndInferReply--> gateway session
//
// The api actor and the deployments' routers live in the head's process, so the request goes
// on to the router without a second round trip between the gateway and the head (the two-step
// path, Admit then InferenceRequest, took one more: about a third of the gateway's overhead on
// this machine; bench/gateway). Streamed requests still take the two-step path: their first
// chunk needs the admission's rate-limit headers, and chunks come from the replica, not the head.
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>
#include <chrono>
#include <cstdint>
#include <string>

#include "actors/api/messages.h"
#include "actors/serving/messages.h"
#include "common/status.h"
#include "runtime/actor_ref.h"
#include "runtime/codec.h"

namespace troupe::cluster {

/// Gateway -> the head's api actor (api::kApiActorName). Reply: AdmitAndInferReply, always
/// (refusals and the router's errors are in it; error replies are only the runtime's own, such
/// as DeadlineExceeded). The reservation belongs to the sender, as an api::Admit's does: send it
/// from the gateway's long-lived session actor and Settle it (api::Settle) when the call ends.
struct AdmitAndInfer {
  /// action must be api::Action::kCallModel, deployment the request's.
  api::Admit admit;
  /// The deployment's tenant as the gateway's route knows it: an admitted key of another tenant
  /// is answered dispatched=false, NotFound (nothing was sent; settle the reservation as an
  /// error), since to that key the model does not exist.
  std::string deployment_tenant;
  /// Nonzero: a reservation the sender holds already (a retry after the router moved): no new
  /// admission; one it does not hold is answered FailedPrecondition, not dispatched.
  uint64_t reservation = 0;
  /// The deployment's router (an actor of the head's process).
  runtime::ActorRef router;
  /// Sent on to the router as it is once admitted (whole: stream false).
  serving::InferenceRequest request;
};

struct AdmitAndInferReply {
  /// The admission (for a retry with `reservation`: admitted, with that reservation only).
  api::AdmitReply admit;
  /// The request went to the router: `response` is its reply, or `error_code` says why not.
  bool dispatched = false;
  serving::InferenceResponse response;
  /// A troupe::StatusCode (0: none) and its message. Not dispatched: NotFound (another tenant's
  /// deployment), FailedPrecondition (a retry's reservation is not open), Unavailable (the
  /// router is not on this head: look it up again and retry with the reservation). Dispatched:
  /// the router's failure (NotFound: it ended; Unavailable; DeadlineExceeded).
  uint32_t error_code = 0;
  std::string error_message;

  Status error() const {
    if (error_code == 0) return OkStatus();
    // A code this build does not know (a peer of another build) is still an error.
    const auto code = error_code <= static_cast<uint32_t>(StatusCode::kInternal) ? static_cast<StatusCode>(error_code)
                                                                                  : StatusCode::kInternal;
    return Status(code, error_message);
  }
};

/// How long the api actor waits for the router's reply to a request due at `deadline_unix_ms`
/// (0: none given), at `now_unix_ms`: the time left (60 s without a deadline, 0 once past it)
/// plus 1 s, so that the router's own deadline error, which names the replica, answers first.
std::chrono::milliseconds RouterReplyTimeout(int64_t deadline_unix_ms, int64_t now_unix_ms);

enum AdmissionTypeId : uint32_t { kAdmitAndInfer = 1570, kAdmitAndInferReply };

Status AddAdmissionCodecs(runtime::CodecRegistry& registry);

}  // namespace troupe::cluster

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::AdmitAndInfer)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::cluster::AdmitAndInferReply)
