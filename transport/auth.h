// Challenge-response authentication of peers with a shared cluster token (HMAC-SHA256).
#pragma once

#include <string>
#include <string_view>

#include "transport/frame.h"

namespace troupe::transport {

/// Bytes in a handshake nonce and in a proof.
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;

/// Which side computes a proof; the two differ so a proof cannot be reflected back.
enum class AuthRole { kClient, kServer };

/// Fresh random bytes from the system CSPRNG.
std::string RandomNonce();

/// HMAC-SHA256 keyed by `token` over the role label, both nonces and both node ids.
/// The token itself never leaves the process.
std::string ComputeProof(std::string_view token, AuthRole role, std::string_view client_nonce,
                         std::string_view server_nonce, NodeId client_id, NodeId server_id);

/// Constant-time comparison of two proofs.
bool ProofsEqual(std::string_view a, std::string_view b);

}  // namespace troupe::transport
