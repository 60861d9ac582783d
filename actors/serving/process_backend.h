// ProcessServerBackend: a serving replica's backend that is an OpenAI-compatible HTTP server (vLLM,
// SGLang, llama.cpp's server, examples/serving/server.py) started as a child process, with
// requests forwarded to it over loopback HTTP/1.1 (Boost.Beast) (docs/serving.md, "The process
// backend").
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "actors/serving/backend.h"
#include "actors/serving/deployment_spec.h"

namespace troupe::serving {

/// How a process backend runs its server (ReplicaConfig::process; from a deployment version's
/// `process:` section by ProcessBackendConfigFromSpec).
struct ProcessBackendConfig {
  /// argv; argv[0] is searched in PATH. Not empty.
  std::vector<std::string> command;
  /// "NAME=value" entries added to (replacing in) the node's environment.
  std::vector<std::string> env;
  /// Variables of the node's environment whose names start with one of these are not passed on
  /// (a replica on a slice: actors::SliceEnvironmentPrefixes(), so the slice's entries in `env`
  /// are the only CUDA_VISIBLE_DEVICES, MPS limits and TROUPE_ variables the server sees).
  std::vector<std::string> drop_env_prefixes;
  /// The server's working directory (empty: this process's). Must exist.
  std::string working_dir;
  /// The variable that tells the server its port: a free loopback port (PickFreePort) is passed
  /// as port_env=PORT, and requests go to 127.0.0.1:PORT.
  std::string port_env = "PORT";
  /// GET this path answers 200 once the server is ready (vLLM's and SGLang's /health). The
  /// replica's HealthProbe is a GET of it (200 needed) and then a one-token POST /v1/completions
  /// (test_model.h ProbeBody; any answer below 500 passes: the request path answers), so a
  /// server whose health endpoint answers while its completions hang fails the probe by its
  /// timeout.
  std::string health_path = "/health";
  /// From the process's start to its first 200 on health_path; past it the start fails with
  /// DeadlineExceeded (the spec's ready_timeout: 10 min, model loads take minutes).
  std::chrono::milliseconds ready_timeout{10 * 60 * 1000};
  /// How often health_path is polled while starting.
  std::chrono::milliseconds health_poll_interval{100};
  /// The server's stdout and stderr, line by line, rotated as workers' logs (empty:
  /// <temp dir>/troupe-serving/<replica name, '/' as '_'>.log).
  std::string log_path;
  uint64_t max_log_bytes = 16 << 20;
  int log_files_kept = 2;
  /// The most bytes of one response body that is not streamed (a larger one fails the request
  /// with ResourceExhausted): 64 MiB.
  uint64_t max_body_bytes = 64 << 20;
};

/// A process backend's settings from a deployment version's `process:` section (env as
/// NAME=value, sorted by name).
ProcessBackendConfig ProcessBackendConfigFromSpec(const ProcessBackend& spec);

/// The process backend (ProcessServerBackend). Start() picks a free port, starts `command` in a process group of its
/// own that dies with this process however it ends (SpawnOptions::group_dies_with_parent), with
/// port_env set, its output to log_path, and polls GET health_path until it answers 200 (ready)
/// or ready_timeout passes. Send() forwards the path and body unchanged as an HTTP/1.1 POST on
/// a connection of its own (Connection: close): not streamed, the whole body comes back with the
/// usage from its JSON; streamed (and answered 200), the server-sent events go to chunk() as
/// they arrive, whole events only, and done() ends it with the usage of the event that carried
/// one. A non-200 answer comes back as it is (status and body, not streamed). Cancel() closes the
/// connection. If the process exits, every request in flight gets done(Unavailable, naming the
/// exit and the log) and then failed() (or ready() with the error while starting). The
/// destructor kills the whole process group and joins the threads.
///
/// Threads: one runs the Boost.Asio io_context (every connection and timer), one reads the
/// server's output and watches it exit. Lifecycle: created -> Start() -> starting -> ready ->
/// (exited | destroyed).
class ProcessServerBackend final : public Backend {
 public:
  /// `name`: the replica's name, in errors and the default log path.
  ProcessServerBackend(std::string name, ProcessBackendConfig config, BackendEvents events);
  ~ProcessServerBackend() override;
  ProcessServerBackend(const ProcessServerBackend&) = delete;
  ProcessServerBackend& operator=(const ProcessServerBackend&) = delete;

  void Start() override;
  void Send(uint64_t seq, const std::string& path, const std::string& body, bool stream) override;
  void Probe(uint64_t seq) override;
  void Cancel(uint64_t seq) override;

  /// The port the server was given (0 before Start()).
  uint16_t port() const;
  /// The log file's path.
  const std::string& log_path() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// ---- The pure parts (unit-tested) ----

/// Takes the whole server-sent events out of `pending` (the bytes read so far): everything up
/// to and including the last blank line that ends an event ("\n\n", or "\r\n\r\n" as the SSE
/// standard allows); the rest (a part of an event) stays in `pending`. Returns "" when no event
/// is whole yet.
std::string TakeWholeEvents(std::string* pending);

/// The usage counts an OpenAI response or stream chunk reports.
struct Usage {
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
};
/// The `usage` object ({"prompt_tokens": N, "completion_tokens": M, ...}) of a JSON response
/// body; nullopt when the body is not JSON, has no usage object (or null, as vLLM's chunks
/// before the last) or its counts are not non-negative integers below 2^32.
std::optional<Usage> ParseUsage(const std::string& json_body);
/// The usage of a stream: that of the last event in `events` ("data: {...}\n\n" events) that
/// carries one (OpenAI sends it in a last chunk with stream_options.include_usage; vLLM can
/// send it in every chunk, growing); nullopt when none does.
std::optional<Usage> StreamUsage(const std::string& events);

}  // namespace troupe::serving
