// PickFreePort.
#include "common/free_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

namespace troupe {

namespace {

// Binds `port` (0: any) on `host` and returns the port bound, or an error.
StatusOr<uint16_t> BindAndRelease(const std::string& host, uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return InternalError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) addr.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Status error = UnavailableError("no free port on " + host + ": " + std::strerror(errno));
    close(fd);
    return error;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

StatusOr<uint16_t> PickFreePort(const std::string& host) {
  // Below Linux's ephemeral range (32768-60999 by default): a port the kernel hands to some
  // outgoing connection (a worker's own gloo or NCCL sockets among them) between this check
  // and the child's bind cannot be this one.
  static thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<int> pick(20000, 32767);
  for (int i = 0; i < 64; ++i) {
    auto port = BindAndRelease(host, static_cast<uint16_t>(pick(rng)));
    if (port.ok()) return port;
  }
  return BindAndRelease(host, 0);
}

}  // namespace troupe
