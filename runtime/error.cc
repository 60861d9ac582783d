// Errors at the CAF boundary.
#include "runtime/error.h"

#include <caf/exit_reason.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace troupe::runtime {

caf::error ToCafError(const Status& status) {
  return caf::error(static_cast<uint8_t>(status.code()), kStatusCategory,
                    caf::make_message(status.message()));
}

namespace {

std::string ContextText(const caf::error& error) {
  const auto& ctx = error.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0)) return ctx.get_as<std::string>(0);
  if (ctx.empty()) return {};
  return caf::to_string(ctx);
}

}  // namespace

std::string ErrorText(const caf::error& error) {
  if (!error) return "no error";
  std::string text = ContextText(error);
  if (error.category() == kStatusCategory) {
    auto name = std::string(StatusCodeName(static_cast<StatusCode>(error.code())));
    return text.empty() ? name : name + ": " + text;
  }
  std::string name;
  if (error.category() == caf::atom("system")) {
    name = caf::to_string(static_cast<caf::sec>(error.code()));
  } else if (error.category() == caf::atom("exit")) {
    name = caf::to_string(static_cast<caf::exit_reason>(error.code()));
  } else {
    name = caf::to_string(error.category()) + " error " + std::to_string(error.code());
  }
  return text.empty() ? name : name + ": " + text;
}

Status ToStatus(const caf::error& error) {
  if (!error) return OkStatus();
  if (error.category() == kStatusCategory) {
    auto code = static_cast<StatusCode>(error.code());
    if (error.code() > static_cast<uint8_t>(StatusCode::kInternal) || code == StatusCode::kOk) {
      return InternalError("error with unknown status code " + std::to_string(error.code()));
    }
    return Status(code, ContextText(error));
  }
  std::string text = ErrorText(error);
  if (error.category() == caf::atom("system")) {
    switch (static_cast<caf::sec>(error.code())) {
      case caf::sec::request_timeout:
        return DeadlineExceededError(text);
      case caf::sec::request_receiver_down:
        return UnavailableError(text);
      case caf::sec::unexpected_message:
      case caf::sec::unexpected_response:
        return InvalidArgumentError(text);
      default:
        return InternalError(text);
    }
  }
  if (error.category() == caf::atom("exit")) {
    switch (static_cast<caf::exit_reason>(error.code())) {
      case caf::exit_reason::user_shutdown:
      case caf::exit_reason::kill:
        return CancelledError(text);
      case caf::exit_reason::remote_link_unreachable:
      case caf::exit_reason::unreachable:
        return UnavailableError(text);
      default:
        return InternalError(text);
    }
  }
  return InternalError(text);
}

}  // namespace troupe::runtime
