// The API gateway's messages to the head's api actor (type ids 1500-1549; their Cap'n Proto
// schema and codecs are api.capnp and messages.cc). Who sends what (docs/gateway.md, "The api
// actor"):
//
//   gateway --Admit--> api actor (named kApiActorName on the head) --AdmitReply--> gateway
//   gateway --Settle (one-way)--> api actor, once per admitted request, when it ends
//   CLI, admin HTTP API --ApiCommand--> api actor --ApiCommandReply (JSON)--> caller
#pragma once

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "runtime/codec.h"

namespace troupe::api {

/// The head's api actor's registered name.
inline const char* kApiActorName = "troupe.api";

/// Gateway -> api actor, before every /v1 request: authenticate the key, authorize the action on
/// the deployment, reserve the limits. Reply: AdmitReply, always (a refusal is in it, never an
/// error reply; errors are only the runtime's own, such as DeadlineExceeded).
///
/// The reservation belongs to the actor that sent the Admit: the api actor monitors it and, when
/// it ends (or its node is lost), settles its open reservations as cancelled (0 tokens, counted
/// as errors). Send Admit from the gateway's long-lived actor (`self->request(...)` inside it),
/// never through ActorRef::Request's blocking or asynchronous forms: their temporary actor ends
/// with the reply, and the reservation with it.
struct Admit {
  /// As the client sent it (never logged: api::RedactKeys).
  std::string api_key;
  /// The body's "model"; empty for /v1/models.
  std::string deployment;
  /// api::Action as an integer (kCallModel, kListModels ...).
  uint32_t action = 0;
  /// The gateway's estimate of the prompt's tokens (an upper bound), and the completion's cap.
  uint32_t prompt_tokens = 0;
  uint32_t max_tokens = 0;
};

struct AdmitReply {
  bool admitted = false;
  /// 200 when admitted; a refusal: 400 (an action this build does not know), 401 (no such key,
  /// wrong secret, revoked, expired), 403 (role, tenant or deployment not allowed), 429 (a limit;
  /// retry_after_s 0: the request can never pass, it asks for more tokens than a limit holds).
  uint32_t http_status = 200;
  /// The OpenAI error code: invalid_api_key (401), permission_denied (403),
  /// rate_limit_exceeded (429), invalid_request_error (400); empty when admitted.
  std::string error_type;
  /// One line for the error body; names the key by id only.
  std::string message;
  /// 429 only: whole seconds until a retry can pass (the Retry-After header; not in `headers`).
  uint32_t retry_after_s = 0;
  /// Admitted: settle it exactly once (Settle).
  uint64_t reservation = 0;
  std::string key_id, tenant;
  /// What the key may call: its list, or "*" alone for every deployment of its tenant.
  std::vector<std::string> deployments;
  /// x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the response (admitted and 429).
  std::vector<std::pair<std::string, std::string>> headers;
};

/// Gateway -> api actor, one-way, after every admitted request ends (answered, failed,
/// cancelled): refunds or charges the reservation against the real counts and meters them. A
/// reservation that is unknown (settled already, or cancelled with its sender) is ignored.
struct Settle {
  uint64_t reservation = 0;
  /// The model, for metering (empty: the Admit's deployment).
  std::string deployment;
  /// The real counts (0 if the replica gave none).
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  /// Counted as an error in usage.
  bool error = false;
};

/// CLI or admin HTTP API -> api actor: an admin operation with its JSON reply (the shape of
/// serving::DeploymentCommand). Ops: key.create key.list key.revoke tenant.create tenant.list
/// usage (and ops other parts add, such as audit). `api_key` empty: the caller holds the cluster
/// token (the CLI) and acts as admin of every tenant, recorded in the audit log as `caller`.
/// Errors (as Status): InvalidArgument (a bad body or op), NotFound (no such key or tenant),
/// AlreadyExists (a tenant of that name), PermissionDenied (the key may not do it),
/// Unavailable (the store could not be written: nothing changed).
struct ApiCommand {
  std::string op;
  /// The key id (key.revoke) or the tenant (tenant.create).
  std::string name;
  /// The JSON arguments (docs/gateway.md, "Keys, tenants and usage from the command line").
  std::string body;
  /// Admin HTTP API: the caller's key (authorized by its role); the CLI: empty.
  std::string api_key;
  /// The CLI: "cli@<client node name>".
  std::string caller;
};
struct ApiCommandReply {
  std::string json;
};

enum ApiTypeId : uint32_t {
  kAdmit = 1500, kAdmitReply, kSettle, kApiCommand, kApiCommandReply,
};

/// Registers the codecs of every message in this file. A peer's bytes that do not decode give
/// InvalidArgument, never a crash.
Status AddApiCodecs(runtime::CodecRegistry& registry);

}  // namespace troupe::api

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::api::Admit)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::api::AdmitReply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::api::Settle)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::api::ApiCommand)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::api::ApiCommandReply)
