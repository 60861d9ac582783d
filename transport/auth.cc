// HMAC-SHA256 proofs through OpenSSL's libcrypto.
#include "transport/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace troupe::transport {

std::string RandomNonce() {
  std::string nonce(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), kNonceBytes) != 1) {
    // Without randomness authentication is meaningless; this is not recoverable.
    std::abort();
  }
  return nonce;
}

std::string ComputeProof(std::string_view token, AuthRole role, std::string_view client_nonce,
                         std::string_view server_nonce, NodeId client_id, NodeId server_id) {
  std::string message = role == AuthRole::kClient ? "troupe-client-proof-v1" : "troupe-server-proof-v1";
  message.push_back('\0');
  message.append(client_nonce);
  message.append(server_nonce);
  for (uint64_t id : {client_id, server_id}) {
    for (int i = 0; i < 8; ++i) message.push_back(static_cast<char>((id >> (8 * i)) & 0xff));
  }
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_len);
  return std::string(reinterpret_cast<const char*>(mac), mac_len);
}

bool ProofsEqual(std::string_view a, std::string_view b) {
  if (a.size() != b.size() || a.size() != kProofBytes) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace troupe::transport
