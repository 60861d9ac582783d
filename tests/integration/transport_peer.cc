// transport_peer: a second process for transport tests. It listens, echoes every frame
// back to its sender, and answers "stats", "address N" and "quit" on stdin.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "common/logging.h"
#include "transport/ucx_transport.h"

using troupe::transport::Frame;
using troupe::transport::NodeId;
using troupe::transport::TransportHandler;
using troupe::transport::UcxTransport;
using troupe::transport::UcxTransportConfig;

int main(int argc, char** argv) {
  UcxTransportConfig config;
  config.node_id = 2;
  config.node_name = "transport-peer";
  std::string log_level = "warn";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    std::string value = argv[i + 1];
    if (flag == "--node-id") config.node_id = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--token") config.cluster_token = value;
    else if (flag == "--tls") config.ucx_tls = value;
    else if (flag == "--listen") config.listen_address = value;
    else if (flag == "--max-frame") config.max_frame_bytes = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--handshake-timeout-ms") config.handshake_timeout = std::chrono::milliseconds(std::atoi(value.c_str()));
    else if (flag == "--max-rndv-bytes") config.max_rndv_bytes_in_flight = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--max-unauthenticated") config.max_unauthenticated_connections = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--max-departed-peers") config.max_departed_peers = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--log-level") log_level = value;
    else {
      std::cerr << "transport_peer: unknown flag " << flag << "\n";
      return 2;
    }
  }
  if (!troupe::InitLogging(log_level).ok()) return 2;

  UcxTransport transport(config);
  TransportHandler handler;
  handler.on_frame = [&transport](NodeId peer, Frame frame) {
    auto status = transport.Send(peer, frame.header, std::move(frame.payload));
    if (!status.ok()) spdlog::error("transport_peer: echo failed: {}", status.ToString());
  };
  auto status = transport.Start(std::move(handler));
  if (!status.ok()) {
    std::cerr << "transport_peer: " << status << "\n";
    return 1;
  }
  std::cout << "LISTEN " << transport.listen_address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "stats") {
      auto s = transport.stats();
      std::cout << "STATS frames_received=" << s.frames_received << " frames_sent=" << s.frames_sent
                << " batches_sent=" << s.batches_sent
                << " auth_failures=" << s.auth_failures << " rejected_malformed=" << s.rejected_malformed
                << " rejected_version=" << s.rejected_version << " rejected_oversized=" << s.rejected_oversized
                << " rejected_unauthenticated=" << s.rejected_unauthenticated
                << " peers_connected=" << s.peers_connected << " connections_open=" << s.connections_open
                << " rejected_busy=" << s.rejected_busy << " connections_refused=" << s.connections_refused
                << " peers_known=" << s.peers_known << " addresses_known=" << s.addresses_known
                << " rndv_bytes_in_flight=" << s.rndv_bytes_in_flight << std::endl;
    } else if (line.rfind("address ", 0) == 0) {
      // "address N": where this process would dial node N ("-" if it knows no address).
      const std::string address = transport.PeerAddress(std::strtoull(line.c_str() + 8, nullptr, 10));
      std::cout << "ADDRESS " << (address.empty() ? "-" : address) << std::endl;
    } else if (line == "quit") {
      break;
    }
  }
  transport.Stop();
  return 0;
}
