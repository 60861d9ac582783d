// Backend: what a serving replica runs requests on when the model is outside its actor (the
// process backend: an OpenAI-compatible server as a child process). The in-process test model
// (test_model.h) is the replica's own.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"

namespace troupe::serving {

/// A request's end at the backend: the server's HTTP status and body (empty when streamed: the
/// events went as chunks), and the usage counts it reported (0 when it reported none).
struct BackendResponse {
  uint32_t http_status = 200;
  std::string body;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
};

/// What a backend tells its replica. Called on the backend's own threads, never the replica's:
/// the replica turns each call into a message to itself.
struct BackendEvents {
  /// Starting ended, once: OK (ready to serve) or why not (DeadlineExceeded past the ready
  /// timeout, Unavailable: the server could not start or exited).
  std::function<void(const Status&)> ready;
  /// Whole server-sent events ("data: ...\n\n", one or more) of streamed request `seq`, in order.
  std::function<void(uint64_t seq, std::string events)> chunk;
  /// Request or probe `seq` ended, once (never after Cancel(seq)): its response or its error.
  std::function<void(uint64_t seq, StatusOr<BackendResponse> response)> done;
  /// After it was ready, the backend failed for good (its process exited), once: every request
  /// it held got done(Unavailable) first. The replica stops, and its deployment replaces it.
  std::function<void(const Status&)> failed;
};

/// A replica's backend. Every method returns at once (the work happens on the backend's own
/// threads, answered through BackendEvents); the destructor stops it (a process backend's whole
/// process group is killed) and may wait for its threads briefly. Methods are called from one
/// thread (the replica's).
class Backend {
 public:
  virtual ~Backend() = default;
  /// Starts it; BackendEvents::ready tells when it is ready or failed.
  virtual void Start() = 0;
  /// Sends request `seq` (unique per backend): `path` ("/v1/chat/completions", ...) and `body`
  /// as the client gave them. With `stream`, a 200 response's events come through chunk().
  virtual void Send(uint64_t seq, const std::string& path, const std::string& body, bool stream) = 0;
  /// A health check `seq` (done() with the response, or the error).
  virtual void Probe(uint64_t seq) = 0;
  /// Stops request or probe `seq`: its connection is closed; no done() for it follows. An
  /// unknown or finished `seq` is ignored.
  virtual void Cancel(uint64_t seq) = 0;
};

}  // namespace troupe::serving
