// A Gloo rank that publishes its pairs' addresses in a group's store, as GlooCommunicator::Create
// does, and then is gone before it connects: a rank killed between its store set and its connects.
#pragma once

#include <gloo/rendezvous/store.h>
#include <gloo/transport/context.h>
#include <gloo/transport/device.h>
#include <gloo/transport/pair.h>
#include <gloo/transport/tcp/device.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace troupe::collectives::testing {

/// Publishes rank `rank` of `world_size` in `store` and leaves no socket behind. Gloo's TCP pair
/// connects from the side whose address compares higher (port as stored, when the hosts are the
/// same) and waits for the other side to connect to it; each published address here has port
/// 65535, the highest, so every peer is the waiting side of its pair with this rank and waits
/// for a connect that never comes (Gloo's connect timeout, 30 s by default) unless its formation
/// is aborted. (A peer on the connecting side would fail at once: connection refused.)
inline void PublishAndVanish(gloo::rendezvous::Store& store, int rank, int world_size) {
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto device = gloo::transport::tcp::CreateDevice(attr);
  auto context = device->createContext(rank, world_size);
  std::vector<char> addresses;
  for (int peer = 0; peer < world_size; ++peer) {
    if (peer == rank) continue;
    std::vector<char> bytes = context->createPair(peer)->address().bytes();
    sockaddr_in in{};
    std::memcpy(&in, bytes.data(), sizeof(in));  // the address starts with its sockaddr_storage
    in.sin_port = htons(65535);
    std::memcpy(bytes.data(), &in, sizeof(in));
    addresses.insert(addresses.end(), bytes.begin(), bytes.end());
  }
  store.set(std::to_string(rank), addresses);
}

}  // namespace troupe::collectives::testing
