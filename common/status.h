// Status and StatusOr: the error model of troupe, small enough to cross the wire.
#pragma once

#include <cassert>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace troupe {

/// The fixed set of error codes. Their numbers are part of the wire format: never renumber.
enum class StatusCode : uint8_t {
  kOk = 0,
  kCancelled = 1,          ///< The operation was stopped by its owner (shutdown, Stop()).
  kInvalidArgument = 2,    ///< Bad input: a malformed frame, config value, argument.
  kDeadlineExceeded = 3,   ///< A request's timeout passed without a reply.
  kNotFound = 4,           ///< The named thing (peer, actor, key) does not exist.
  kAlreadyExists = 5,      ///< It exists already.
  kPermissionDenied = 6,   ///< Authentication or authorization failed.
  kResourceExhausted = 7,  ///< A limit was hit: frame size, quota, slice memory.
  kFailedPrecondition = 8, ///< The system is not in a state where this can run.
  kUnavailable = 9,        ///< The peer or actor is gone or restarting; retrying may work.
  kInternal = 10,          ///< A bug or an unexpected failure of a dependency.
};

/// The lower-case name of a code, e.g. "unavailable".
std::string_view StatusCodeName(StatusCode code);

/// The result of an operation: OK, or a code and a message that says what and where.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  /// "code: message", or "ok".
  std::string ToString() const;

  /// Explicitly ignores the status (for best-effort calls).
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

std::ostream& operator<<(std::ostream& os, const Status& status);

inline Status OkStatus() { return Status(); }
inline Status CancelledError(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status InvalidArgumentError(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status DeadlineExceededError(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status NotFoundError(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status AlreadyExistsError(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status PermissionDeniedError(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status ResourceExhaustedError(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status FailedPreconditionError(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status UnavailableError(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status InternalError(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

/// A value or the Status that says why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : status_(status) { assert(!status_.ok()); }  // NOLINT
  StatusOr(Status&& status) : status_(std::move(status)) { assert(!status_.ok()); }  // NOLINT
  StatusOr(const T& value) : value_(value) {}  // NOLINT
  StatusOr(T&& value) : value_(std::move(value)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  /// Explicitly ignores the result (for best-effort calls).
  void IgnoreError() const {}

  const T& value() const& { assert(ok()); return *value_; }
  T& value() & { assert(ok()); return *value_; }
  T&& value() && { assert(ok()); return std::move(*value_); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace troupe

#define TROUPE_CONCAT_INNER(a, b) a##b
#define TROUPE_CONCAT(a, b) TROUPE_CONCAT_INNER(a, b)

/// Returns the Status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                              \
  do {                                                     \
    ::troupe::Status troupe_status_ = (expr);              \
    if (!troupe_status_.ok()) return troupe_status_;       \
  } while (0)

#define TROUPE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

/// `ASSIGN_OR_RETURN(auto x, F())` assigns F()'s value or returns its Status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  TROUPE_ASSIGN_OR_RETURN_IMPL(TROUPE_CONCAT(troupe_statusor_, __LINE__), lhs, expr)
