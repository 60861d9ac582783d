// Helpers for tests of the HTTP gateway on a real cluster: a test-model deployment made ready, a
// second `troupe gateway` process, raw connections and a stream held open at its first event.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include "actors/serving/deployment_spec.h"
#include "cluster/client.h"
#include "common/child_process.h"

namespace troupe::testing {

/// The port of a URL that ends in ":PORT" ("http://127.0.0.1:8080" -> 8080).
inline int PortOf(const std::string& url) { return std::atoi(url.substr(url.rfind(':') + 1).c_str()); }

/// A plain TCP connection to 127.0.0.1:`port` (for clients that misbehave), or -1.
inline int ConnectRaw(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/// Sends a streamed `POST /v1/chat/completions` of `body` with `key` on a raw connection to
/// `port` and reads until its first event arrived (the request was admitted and is running): the
/// open socket, or -1 (with `*seen` saying what came instead) if no event came within 10 s.
inline int StartStream(int port, const std::string& key, const std::string& body, std::string* seen) {
  const int fd = ConnectRaw(port);
  if (fd < 0) return -1;
  const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
                              "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                              "\r\n\r\n" + body;
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return -1;
  }
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (seen->find("data: ") == std::string::npos) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) {
      close(fd);
      return -1;
    }
    seen->append(buf, static_cast<size_t>(n));
  }
  return fd;
}

/// The port of the gateway `troupe up` started for the cluster in `dir` (from the
/// `head/gateway.url` it writes), or 0 with a test failure recorded.
inline int TroupeUpGatewayPort(const std::string& dir) {
  std::string url;
  std::getline(std::ifstream(dir + "/head/gateway.url"), url);
  EXPECT_FALSE(url.empty()) << "troupe up's gateway wrote no " << dir << "/head/gateway.url";
  return url.empty() ? 0 : PortOf(url);
}

/// Starts `troupe gateway` for the cluster in `config` on a free port; its port via `*port` (0 on
/// failure, with a test failure recorded).
inline std::unique_ptr<ChildProcess> StartGateway(const std::string& config, int* port) {
  *port = 0;
  auto child = ChildProcess::Spawn({TROUPE_BIN, "gateway", "-c", config, "--listen", "127.0.0.1:0"});
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return nullptr;
  auto line = (*child)->ReadLineWithPrefix("GATEWAY ", std::chrono::seconds(30));
  EXPECT_TRUE(line.ok()) << "troupe gateway did not start: " << line.status();
  if (!line.ok()) return nullptr;
  *port = PortOf(*line);
  return std::move(*child);
}

/// Deploys `name` for `tenant`: one replica of the test model with `backend` (its options, e.g.
/// "{tokens_per_second: 5}") taking `max_ongoing` requests at a time, and waits (30 s at most)
/// until the replica is ready. Use with ASSERT_NO_FATAL_FAILURE.
inline void DeployTestModel(cluster::Client& client, const std::string& name, const std::string& tenant,
                            const std::string& backend, int max_ongoing) {
  using namespace std::chrono_literals;
  const std::string yaml = "name: " + name + "\ntenant: " + tenant + "\nversions:\n  - name: v1\n    backend: {test: " +
                           backend + "}\nreplicas: {min: 1, max: 1, initial: 1}\nmax_ongoing_requests: " +
                           std::to_string(max_ongoing) + "\nautoscaling: {target_ongoing_requests: 1}\n";
  auto spec = serving::ParseDeploymentSpec(yaml, "test spec");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto deployed = client.Deploy(*spec, 10s);
  ASSERT_TRUE(deployed.ok()) << deployed.status();
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto shown = client.DeploymentCommand("show", name, "", 5s);
    if (shown.ok() && nlohmann::json::parse(*shown)["status"]["replicas_by_state"].value("ready", 0) == 1) return;
  }
  FAIL() << "deployment " << name << " has no ready replica within 30 s";
}

}  // namespace troupe::testing
