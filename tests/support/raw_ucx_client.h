// RawUcxClient: a hostile or misbehaving peer built on raw UCX, for bad-input tests.
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"

namespace troupe::testing {

/// Connects to a troupe listener with plain UCX and sends whatever bytes a test asks for
/// as active messages on troupe's AM id, bypassing every check of UcxTransport.
/// Single-threaded: the caller's thread drives progress.
class RawUcxClient {
 public:
  RawUcxClient() = default;
  ~RawUcxClient();

  Status Connect(const std::string& address, const std::string& tls);
  /// Sends `header` and `payload` as one AM; `reply` sets UCP_AM_SEND_FLAG_REPLY, which
  /// troupe requires to identify the sender. Waits for local completion.
  Status SendAm(const std::string& header, const std::string& payload, bool reply = true,
                std::chrono::milliseconds timeout = std::chrono::seconds(5));
  /// Progresses until an AM arrives; returns its header bytes.
  StatusOr<std::string> ReceiveAm(std::chrono::milliseconds timeout);
  /// True once UCX reported an error on the endpoint (e.g. the server closed it).
  bool failed() const { return failed_; }
  void Progress(std::chrono::milliseconds duration);

 private:
  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param);
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  bool failed_ = false;
  std::vector<std::string> received_;
};

}  // namespace troupe::testing
