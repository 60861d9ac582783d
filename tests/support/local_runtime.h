// A Runtime of one node for in-process tests: listens on loopback port 0 with a token of the
// test's own, and knows the codecs `add_codecs` registers.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "common/status.h"
#include "runtime/runtime.h"

namespace troupe::testing {

/// Starts a Runtime named `name` (its cluster token "<name>-test") with the codecs `add_codecs`
/// adds; on failure records a test failure naming the error and returns nullptr.
inline std::unique_ptr<runtime::Runtime> StartLocalRuntime(
    const std::string& name, const std::function<Status(runtime::CodecRegistry&)>& add_codecs) {
  runtime::RuntimeConfig config;
  config.node_name = name;
  config.transport.cluster_token = name + "-test";
  runtime::CodecRegistry codecs;
  const Status added = add_codecs(codecs);
  EXPECT_TRUE(added.ok()) << added;
  auto rt = runtime::Runtime::Start(config, std::move(codecs));
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? std::move(*rt) : nullptr;
}

}  // namespace troupe::testing
