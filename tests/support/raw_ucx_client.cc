// RawUcxClient implementation.
#include "tests/support/raw_ucx_client.h"

#include "transport/address.h"

namespace troupe::testing {
namespace {
constexpr unsigned kTroupeAmId = 0x7e;  // must match transport/ucx_transport.cc
}

RawUcxClient::~RawUcxClient() {
  if (ep_ != nullptr) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    void* request = ucp_ep_close_nbx(ep_, &param);
    if (UCS_PTR_IS_PTR(request)) {
      while (ucp_request_check_status(request) == UCS_INPROGRESS) ucp_worker_progress(worker_);
      ucp_request_free(request);
    }
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

Status RawUcxClient::Connect(const std::string& address, const std::string& tls) {
  ucp_config_t* config = nullptr;
  if (ucp_config_read(nullptr, nullptr, &config) != UCS_OK) return InternalError("ucp_config_read");
  if (!tls.empty()) ucp_config_modify(config, "TLS", tls.c_str());
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM;
  ucs_status_t status = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (status != UCS_OK) return InternalError("ucp_init");
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  if (ucp_worker_create(context_, &wp, &worker_) != UCS_OK) return InternalError("ucp_worker_create");
  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  am.id = kTroupeAmId;
  am.cb = &RawUcxClient::OnAm;
  am.arg = this;
  if (ucp_worker_set_am_recv_handler(worker_, &am) != UCS_OK) return InternalError("set_am_recv_handler");
  auto addr = transport::ParseSocketAddress(address);
  if (!addr.ok()) return addr.status();
  ucp_ep_params_t ep_params{};
  ep_params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                         UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep_params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep_params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr->storage);
  ep_params.sockaddr.addrlen = addr->length;
  ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep_params.err_handler.cb = &RawUcxClient::OnError;
  ep_params.err_handler.arg = this;
  if (ucp_ep_create(worker_, &ep_params, &ep_) != UCS_OK) return UnavailableError("ucp_ep_create");
  return OkStatus();
}

Status RawUcxClient::SendAm(const std::string& header, const std::string& payload, bool reply,
                            std::chrono::milliseconds timeout) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = reply ? UCP_AM_SEND_FLAG_REPLY : 0;
  ucs_status_ptr_t request = ucp_am_send_nbx(ep_, kTroupeAmId, header.data(), header.size(),
                                             payload.data(), payload.size(), &param);
  if (request == nullptr) return OkStatus();
  if (UCS_PTR_IS_ERR(request)) return UnavailableError(ucs_status_string(UCS_PTR_STATUS(request)));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  ucs_status_t status;
  while ((status = ucp_request_check_status(request)) == UCS_INPROGRESS) {
    if (std::chrono::steady_clock::now() > deadline) break;
    ucp_worker_progress(worker_);
  }
  ucp_request_free(request);
  if (status == UCS_INPROGRESS) return DeadlineExceededError("raw send did not complete");
  return status == UCS_OK ? OkStatus() : UnavailableError(ucs_status_string(status));
}

StatusOr<std::string> RawUcxClient::ReceiveAm(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (received_.empty() && std::chrono::steady_clock::now() < deadline) ucp_worker_progress(worker_);
  if (received_.empty()) return DeadlineExceededError("no active message arrived");
  std::string out = received_.front();
  received_.erase(received_.begin());
  return out;
}

void RawUcxClient::Progress(std::chrono::milliseconds duration) {
  auto deadline = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < deadline) ucp_worker_progress(worker_);
}

ucs_status_t RawUcxClient::OnAm(void* arg, const void* header, size_t header_length, void*, size_t,
                                const ucp_am_recv_param_t*) {
  static_cast<RawUcxClient*>(arg)->received_.emplace_back(static_cast<const char*>(header), header_length);
  return UCS_OK;
}

void RawUcxClient::OnError(void* arg, ucp_ep_h, ucs_status_t) { static_cast<RawUcxClient*>(arg)->failed_ = true; }

}  // namespace troupe::testing
