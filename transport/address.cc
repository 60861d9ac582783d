// Parsing and printing of socket addresses.
#include "transport/address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cstring>

namespace troupe::transport {

StatusOr<SocketAddress> ParseSocketAddress(const std::string& text, int default_port) {
  std::string host;
  std::string port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) return InvalidArgumentError("address '" + text + "': missing ']'");
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') return InvalidArgumentError("address '" + text + "': expected ':' after ']'");
      port = text.substr(close + 2);
    }
  } else {
    auto colon = text.rfind(':');
    if (colon != std::string::npos && text.find(':') == colon) {
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
    } else {
      host = text;
    }
  }
  if (host.empty()) return InvalidArgumentError("address '" + text + "': missing host");
  if (port.empty()) {
    if (default_port < 0) return InvalidArgumentError("address '" + text + "': missing port (expected host:port)");
    port = std::to_string(default_port);
  }
  char* end = nullptr;
  long port_number = std::strtol(port.c_str(), &end, 10);
  if (end == port.c_str() || *end != '\0' || port_number < 0 || port_number > 65535) {
    return InvalidArgumentError("address '" + text + "': port '" + port + "' is not a number in 0..65535");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* result = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0 || result == nullptr) {
    return InvalidArgumentError("address '" + text + "': cannot resolve host '" + host + "': " + gai_strerror(rc));
  }
  SocketAddress out;
  std::memcpy(&out.storage, result->ai_addr, result->ai_addrlen);
  out.length = result->ai_addrlen;
  freeaddrinfo(result);
  return out;
}

std::string FormatSocketAddress(const sockaddr* addr) {
  char ip[INET6_ADDRSTRLEN] = {0};
  if (addr->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    return std::string(ip) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (addr->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "<unknown address family " + std::to_string(addr->sa_family) + ">";
}

}  // namespace troupe::transport
