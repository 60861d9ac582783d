// A message through the cluster's codecs (cluster::ClusterCodecs) as it crosses nodes: encoded,
// decoded, and the decoded copy returned (default-constructed, with a test failure, if either
// step fails).
#pragma once

#include <gtest/gtest.h>

#include <caf/all.hpp>

#include "cluster/bootstrap.h"
#include "tests/fakes/fake_ref_codec.h"

namespace troupe::testing {

template <class T>
T ClusterRoundTrip(const T& message) {
  runtime::CodecRegistry codecs = cluster::ClusterCodecs();
  FakeRefCodec refs;
  auto encoded = codecs.Encode(caf::make_message(message), refs);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  if (!encoded.ok()) return T{};
  auto decoded = codecs.Decode(encoded->type_id, encoded->payload, refs);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  return decoded.ok() ? decoded->template get_as<T>(0) : T{};
}

}  // namespace troupe::testing
