// Tests of the HMAC challenge-response proofs.
#include "transport/auth.h"

#include <gtest/gtest.h>

namespace troupe::transport {
namespace {

TEST(Auth, NoncesAreFreshAndFullLength) {
  std::string a = RandomNonce();
  std::string b = RandomNonce();
  EXPECT_EQ(a.size(), kNonceBytes);
  EXPECT_NE(a, b);
}

TEST(Auth, ProofVerifiesOnlyWithTheSameTokenNoncesIdsAndRole) {
  std::string cn = RandomNonce();
  std::string sn = RandomNonce();
  std::string proof = ComputeProof("secret", AuthRole::kClient, cn, sn, 1, 2);
  EXPECT_EQ(proof.size(), kProofBytes);
  EXPECT_TRUE(ProofsEqual(proof, ComputeProof("secret", AuthRole::kClient, cn, sn, 1, 2)));
  EXPECT_FALSE(ProofsEqual(proof, ComputeProof("Secret", AuthRole::kClient, cn, sn, 1, 2)));
  EXPECT_FALSE(ProofsEqual(proof, ComputeProof("secret", AuthRole::kServer, cn, sn, 1, 2)));
  EXPECT_FALSE(ProofsEqual(proof, ComputeProof("secret", AuthRole::kClient, sn, cn, 1, 2)));
  EXPECT_FALSE(ProofsEqual(proof, ComputeProof("secret", AuthRole::kClient, cn, sn, 2, 1)));
}

TEST(Auth, ProofDoesNotContainTheToken) {
  std::string token = "a-very-recognisable-token-value";
  std::string proof = ComputeProof(token, AuthRole::kServer, RandomNonce(), RandomNonce(), 1, 2);
  EXPECT_EQ(proof.find("recognisable"), std::string::npos);
}

TEST(Auth, ProofsOfWrongLengthNeverCompareEqual) {
  EXPECT_FALSE(ProofsEqual("", ""));
  EXPECT_FALSE(ProofsEqual("short", "short"));
}

}  // namespace
}  // namespace troupe::transport
