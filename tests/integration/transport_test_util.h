// Shared set-up for multi-process transport tests: start a transport_peer and a local transport.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "common/child_process.h"
#include "tests/support/transport_inbox.h"
#include "transport/ucx_transport.h"

namespace troupe::testing {

inline constexpr const char* kTestToken = "test-cluster-token";
inline constexpr transport::NodeId kLocalNode = 1;
inline constexpr transport::NodeId kPeerNode = 2;

/// Starts transport_peer with `extra_args`; returns it and its listen address.
inline std::unique_ptr<ChildProcess> StartPeer(const std::vector<std::string>& extra_args, std::string* address) {
  std::vector<std::string> argv = {TROUPE_TRANSPORT_PEER_BIN, "--node-id", std::to_string(kPeerNode),
                                   "--token", kTestToken};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  auto child = ChildProcess::Spawn(argv);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return nullptr;
  auto listen = (*child)->ReadLineWithPrefix("LISTEN ", std::chrono::seconds(20));
  EXPECT_TRUE(listen.ok()) << "transport_peer did not report its address: " << listen.status();
  if (!listen.ok()) return nullptr;
  *address = *listen;
  return std::move(*child);
}

/// Parses "STATS k=v k=v" from transport_peer's "stats" command into a map.
inline std::map<std::string, uint64_t> PeerStats(ChildProcess* peer) {
  std::map<std::string, uint64_t> out;
  EXPECT_TRUE(peer->WriteLine("stats").ok());
  auto line = peer->ReadLineWithPrefix("STATS ", std::chrono::seconds(10));
  EXPECT_TRUE(line.ok()) << line.status();
  if (!line.ok()) return out;
  std::stringstream ss(*line);
  std::string kv;
  while (ss >> kv) {
    auto eq = kv.find('=');
    out[kv.substr(0, eq)] = std::stoull(kv.substr(eq + 1));
  }
  return out;
}

inline transport::UcxTransportConfig LocalConfig(const std::string& tls) {
  transport::UcxTransportConfig config;
  config.node_id = kLocalNode;
  config.node_name = "test";
  config.cluster_token = kTestToken;
  config.ucx_tls = tls;
  return config;
}

}  // namespace troupe::testing
