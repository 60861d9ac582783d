// Socket addresses in "host:port" form, as they appear in configs and handshakes.
#pragma once

#include <sys/socket.h>

#include <string>

#include "common/status.h"

namespace troupe::transport {

/// A resolved socket address.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

/// Parses "host:port", "[v6]:port" or "host" with `default_port`. Resolves names.
/// Errors name the input and what was wrong with it.
StatusOr<SocketAddress> ParseSocketAddress(const std::string& text, int default_port = -1);

/// "ip:port" (or "[ip]:port" for IPv6).
std::string FormatSocketAddress(const sockaddr* addr);

}  // namespace troupe::transport
