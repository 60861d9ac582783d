// ProcessServerBackend: the server as a child process, HTTP to it with Boost.Beast.
#include "actors/serving/process_backend.h"

#include <sys/wait.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <limits>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "actors/serving/test_model.h"
#include "common/child_process.h"
#include "common/free_port.h"
#include "common/rotating_log.h"

namespace troupe::serving {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;
namespace fs = std::filesystem;

namespace {

constexpr std::chrono::milliseconds kOutputPoll{20};
// The server's last lines kept for the error when it exits.
constexpr size_t kTailLines = 8;

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "ended with wait status " + std::to_string(status);
}

std::optional<uint32_t> Count(const nlohmann::json& usage, const char* field) {
  auto it = usage.find(field);
  if (it == usage.end() || !it->is_number_integer()) return std::nullopt;
  const auto v = it->get<int64_t>();
  if (v < 0 || v > int64_t{UINT32_MAX}) return std::nullopt;
  return static_cast<uint32_t>(v);
}

}  // namespace

std::string TakeWholeEvents(std::string* pending) {
  size_t end = 0;
  for (size_t i = 0; i < pending->size(); ++i) {
    if ((*pending)[i] != '\n') continue;
    // An event ends at a blank line: "\n\n" or "\n\r\n".
    if (i + 1 < pending->size() && (*pending)[i + 1] == '\n') {
      end = i + 2;
      ++i;
    } else if (i + 2 < pending->size() && (*pending)[i + 1] == '\r' && (*pending)[i + 2] == '\n') {
      end = i + 3;
      i += 2;
    }
  }
  std::string whole = pending->substr(0, end);
  pending->erase(0, end);
  return whole;
}

std::optional<Usage> ParseUsage(const std::string& json_body) {
  auto json = nlohmann::json::parse(json_body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return std::nullopt;
  auto it = json.find("usage");
  if (it == json.end() || !it->is_object()) return std::nullopt;
  auto prompt = Count(*it, "prompt_tokens");
  auto completion = Count(*it, "completion_tokens");
  if (!prompt || !completion) return std::nullopt;
  return Usage{*prompt, *completion};
}

std::optional<Usage> StreamUsage(const std::string& events) {
  std::optional<Usage> last;
  size_t pos = 0;
  while (pos < events.size()) {
    size_t eol = events.find('\n', pos);
    if (eol == std::string::npos) eol = events.size();
    std::string_view line(events.data() + pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.rfind("data:", 0) == 0) {
      line.remove_prefix(5);
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      if (line != "[DONE]") {
        if (auto usage = ParseUsage(std::string(line))) last = usage;
      }
    }
    pos = eol + 1;
  }
  return last;
}

ProcessBackendConfig ProcessBackendConfigFromSpec(const ProcessBackend& spec) {
  ProcessBackendConfig config;
  config.command = spec.command;
  for (const auto& [name, value] : spec.env) config.env.push_back(name + "=" + value);
  config.working_dir = spec.working_dir;
  config.port_env = spec.port_env;
  config.health_path = spec.health_path;
  config.ready_timeout = spec.ready_timeout;
  return config;
}

// Everything lives here, shared with the threads' handlers; the io thread owns `calls` and the
// start state, the watcher thread owns the child.
struct ProcessServerBackend::Impl : std::enable_shared_from_this<ProcessServerBackend::Impl> {
  // kProbe: a HealthProbe's GET health_path; kProbeRequest: its second step, a one-token
  // completion through the request path.
  enum class Kind { kRequest, kProbe, kProbeRequest, kHealthPoll };

  // One HTTP exchange on a connection of its own.
  struct Call {
    Call(asio::io_context& io, uint64_t seq, Kind kind) : seq(seq), kind(kind), socket(io) {}
    uint64_t seq;
    Kind kind;
    bool stream = false;
    bool over = false;  // cancelled, failed or finished: handlers do nothing more
    tcp::socket socket;
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> request;
    http::response_parser<http::buffer_body> parser;
    char data[16384];
    bool streaming = false;  // streamed and answered 200: events go to chunk()
    std::string pending;     // streaming: the part of an event read so far
    bool done_seen = false;  // streaming: "data: [DONE]" came
    std::string body;        // not streaming: the body so far
    std::optional<Usage> usage;
  };

  Impl(std::string name, ProcessBackendConfig config, BackendEvents events)
      : name(std::move(name)), config(std::move(config)), events(std::move(events)), work(io.get_executor()) {}

  const std::string name;
  const ProcessBackendConfig config;
  const BackendEvents events;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::thread io_thread;
  std::thread watcher;
  std::atomic<bool> stopping{false};
  std::atomic<uint16_t> port{0};
  std::string log_path;

  // io thread only:
  std::map<uint64_t, std::shared_ptr<Call>> calls;
  bool ready_told = false;
  bool exited = false;
  std::chrono::steady_clock::time_point start_time;
  std::unique_ptr<asio::steady_timer> poll_timer;
  std::string last_health;  // what the last health poll got, for the ready timeout's error
  uint64_t next_poll_seq = 0;

  std::string Where() const { return "replica '" + name + "'"; }
  std::string Server() const { return "its server (127.0.0.1:" + std::to_string(port.load()) + ")"; }

  // ---- the child (watcher thread) ----

  void Watch() {
    SpawnOptions options;
    options.env = config.env;
    options.drop_env_prefixes = config.drop_env_prefixes;
    options.env.push_back(config.port_env + "=" + std::to_string(port.load()));
    options.merge_stderr = true;
    options.group_dies_with_parent = true;
    options.working_dir = config.working_dir;
    auto spawned = ChildProcess::Spawn(config.command, options);
    if (!spawned.ok()) {
      Status error = UnavailableError(Where() + ": cannot start its server `" + config.command[0] +
                                      "`: " + spawned.status().message() + "; check the command of the process backend");
      asio::post(io, [self = shared_from_this(), error] { self->OnExit(error); });
      return;
    }
    std::unique_ptr<ChildProcess> child = std::move(*spawned);
    spdlog::info("{}: started its server (pid {}, port {}), log {}", Where(), child->pid(), port.load(), log_path);
    RotatingLog log(log_path, config.max_log_bytes, config.log_files_kept);
    std::deque<std::string> tail;
    bool eof = false;
    while (!stopping) {
      if (!eof) {
        auto line = child->ReadLine(kOutputPoll);
        if (line.ok()) {
          log.Write(*line);
          tail.push_back(*line);
          if (tail.size() > kTailLines) tail.pop_front();
          continue;
        }
        if (line.status().code() == StatusCode::kUnavailable) eof = true;
      }
      if (!child->AwaitExit(eof ? kOutputPoll : std::chrono::milliseconds(0)).ok()) continue;
      while (true) {  // what it wrote last
        auto line = child->ReadLine(std::chrono::milliseconds(0));
        if (!line.ok()) break;
        log.Write(*line);
        tail.push_back(*line);
        if (tail.size() > kTailLines) tail.pop_front();
      }
      auto status = child->Wait(std::chrono::milliseconds(1000));
      std::string how = status.ok() ? DescribeExit(*status) : "exited";
      std::string text = Where() + ": its server (pid " + std::to_string(child->pid()) + ") " + how;
      if (!tail.empty()) {
        text += "; its last lines:";
        for (const auto& l : tail) text += "\n  " + l;
      }
      text += "\n(the whole log: " + log_path + ")";
      asio::post(io, [self = shared_from_this(), error = UnavailableError(text)] { self->OnExit(error); });
      return;
    }
    // Stopped: the destructor of `child` kills its whole group and reaps it.
  }

  // ---- HTTP (io thread) ----

  void OnExit(const Status& error) {
    if (exited) return;
    exited = true;
    if (poll_timer) poll_timer->cancel();
    std::map<uint64_t, std::shared_ptr<Call>> held;
    held.swap(calls);
    for (auto& [seq, call] : held) {
      call->over = true;
      error_code ignored;
      call->socket.close(ignored);
      if (call->kind != Kind::kHealthPoll) events.done(seq, error);
    }
    if (!ready_told) {
      ready_told = true;
      events.ready(error);
    } else {
      events.failed(error);
    }
  }

  void StartPolling() {
    start_time = std::chrono::steady_clock::now();
    poll_timer = std::make_unique<asio::steady_timer>(io);
    Poll();
  }

  void Poll() {
    if (ready_told || exited) return;
    const auto waited = std::chrono::steady_clock::now() - start_time;
    if (waited >= config.ready_timeout) {
      ready_told = true;
      events.ready(DeadlineExceededError(
          Where() + ": " + Server() + " did not answer GET " + config.health_path + " with 200 within the ready timeout (" +
          std::to_string(config.ready_timeout.count()) + " ms; last: " + (last_health.empty() ? "nothing" : last_health) +
          "); its log: " + log_path + ". Raise ready_timeout if the model loads slowly"));
      return;
    }
    // A poll's own seq space (high bit): never a replica's.
    StartCall(std::make_shared<Call>(io, (uint64_t{1} << 63) | next_poll_seq++, Kind::kHealthPoll), http::verb::get,
              config.health_path, "");
  }

  void SchedulePoll() {
    if (ready_told || exited) return;
    poll_timer->expires_after(config.health_poll_interval);
    poll_timer->async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) self->Poll();
    });
  }

  void StartCall(std::shared_ptr<Call> call, http::verb verb, const std::string& target, const std::string& body) {
    if (exited) {
      if (call->kind != Kind::kHealthPoll) {
        events.done(call->seq, UnavailableError(Where() + ": its server has exited; the request did not start"));
      }
      return;
    }
    call->request.method(verb);
    call->request.target(target);
    call->request.version(11);
    call->request.set(http::field::host, "127.0.0.1:" + std::to_string(port.load()));
    call->request.set(http::field::connection, "close");
    if (verb == http::verb::post) {
      call->request.set(http::field::content_type, "application/json");
      call->request.set(http::field::accept, call->stream ? "text/event-stream" : "application/json");
      call->request.body() = body;
    }
    call->request.prepare_payload();
    // Not boost::none: Boost 1.74 compares a Content-Length with the disengaged optional and
    // refuses every body (error::body_limit). Bodies that are not streamed are bounded by
    // max_body_bytes as they are read.
    call->parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    calls[call->seq] = call;
    tcp::endpoint endpoint(asio::ip::make_address_v4("127.0.0.1"), port.load());
    call->socket.async_connect(endpoint, [self = shared_from_this(), call](error_code ec) {
      if (call->over) return;
      if (ec) return self->Broken(call, "cannot connect: " + ec.message());
      http::async_write(call->socket, call->request, [self, call](error_code ec, size_t) {
        if (call->over) return;
        if (ec) return self->Broken(call, "cannot send the request: " + ec.message());
        http::async_read_header(call->socket, call->buffer, call->parser, [self, call](error_code ec, size_t) {
          if (call->over) return;
          if (ec) return self->Broken(call, "no response header: " + ec.message());
          call->streaming = call->stream && call->parser.get().result_int() == 200;
          self->ReadBody(call);
        });
      });
    });
  }

  void ReadBody(const std::shared_ptr<Call>& call) {
    if (call->parser.is_done()) return Finish(call);
    call->parser.get().body().data = call->data;
    call->parser.get().body().size = sizeof call->data;
    http::async_read_some(call->socket, call->buffer, call->parser, [self = shared_from_this(), call](error_code ec,
                                                                                                       size_t) {
      if (call->over) return;
      if (ec == http::error::need_buffer) ec = {};
      if (ec) return self->Broken(call, "the response broke off: " + ec.message());
      const size_t n = sizeof call->data - call->parser.get().body().size;
      if (call->streaming) {
        call->pending.append(call->data, n);
        std::string whole = TakeWholeEvents(&call->pending);
        if (!whole.empty()) {
          if (auto usage = StreamUsage(whole)) call->usage = usage;
          call->done_seen = call->done_seen || whole.find("data: [DONE]") != std::string::npos ||
                            whole.find("data:[DONE]") != std::string::npos;
          self->events.chunk(call->seq, std::move(whole));
        }
      } else {
        if (call->body.size() + n > self->config.max_body_bytes) {
          return self->End(call, ResourceExhaustedError(
                                     self->Where() + ": the response of " + self->Server() + " exceeds " +
                                     std::to_string(self->config.max_body_bytes) + " bytes (max_body_bytes)"));
        }
        call->body.append(call->data, n);
      }
      self->ReadBody(call);
    });
  }

  // A connection failed: the request fails Unavailable (a poll only notes it and polls again).
  void Broken(const std::shared_ptr<Call>& call, const std::string& what) {
    if (call->kind == Kind::kHealthPoll) {
      last_health = what;
      Forget(call);
      SchedulePoll();
      return;
    }
    End(call, UnavailableError(Where() + ": " + Server() + ": " + what + "; its log: " + log_path));
  }

  void Forget(const std::shared_ptr<Call>& call) {
    call->over = true;
    error_code ignored;
    call->socket.close(ignored);
    calls.erase(call->seq);
  }

  void End(const std::shared_ptr<Call>& call, StatusOr<BackendResponse> result) {
    Forget(call);
    events.done(call->seq, std::move(result));
  }

  void Finish(const std::shared_ptr<Call>& call) {
    const uint32_t status = call->parser.get().result_int();
    if (call->kind == Kind::kHealthPoll) {
      Forget(call);
      if (status == 200) {
        ready_told = true;
        spdlog::info("{}: its server is ready ({} ms after its start)", Where(),
                     std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start_time)
                         .count());
        events.ready(OkStatus());
      } else {
        last_health = "HTTP " + std::to_string(status);
        SchedulePoll();
      }
      return;
    }
    BackendResponse response;
    response.http_status = status;
    // A body without Content-Length or chunking ends when the connection closes, which is also
    // what a killed server does: such a stream must have ended with [DONE], such a body must be
    // JSON, or it broke off.
    const bool to_eof = !call->parser.content_length() && !call->parser.chunked();
    if (call->streaming) {
      if (!call->pending.empty()) {  // a last event without its blank line
        if (auto usage = StreamUsage(call->pending)) call->usage = usage;
        call->done_seen = call->done_seen || call->pending.find("[DONE]") != std::string::npos;
        events.chunk(call->seq, std::move(call->pending));
      }
      if (to_eof && !call->done_seen) {
        return Broken(call, "the stream ended without \"data: [DONE]\" (the server closed it mid-way)");
      }
    } else {
      if (to_eof && call->kind == Kind::kRequest && status == 200 && !nlohmann::json::accept(call->body)) {
        return Broken(call, "the response ended before its JSON did (the server closed it mid-way)");
      }
      call->usage = ParseUsage(call->body);
      response.body = std::move(call->body);
    }
    if (call->kind == Kind::kProbe && status != 200) {
      return End(call, UnavailableError(Where() + ": health check GET " + config.health_path + " of " + Server() +
                                        " answered HTTP " + std::to_string(status)));
    }
    if (call->kind == Kind::kProbe) {
      // The health endpoint answers; now the request path (a server can answer /health while its
      // completions hang: Ray Serve's pings pass then). Same sequence number: a Cancel (the
      // probe's timeout) finds this call.
      Forget(call);
      StartCall(std::make_shared<Call>(io, call->seq, Kind::kProbeRequest), http::verb::post, kCompletionPath,
                ProbeBody());
      return;
    }
    if (call->kind == Kind::kProbeRequest && status >= 500) {
      // A 4xx passes: the path answered, only our body was refused (a server that wants `model`).
      return End(call, UnavailableError(Where() + ": health check POST " + std::string(kCompletionPath) +
                                        " (one token) of " + Server() + " answered HTTP " + std::to_string(status) +
                                        ": " + response.body.substr(0, 200)));
    }
    if (call->usage) {
      response.prompt_tokens = call->usage->prompt_tokens;
      response.completion_tokens = call->usage->completion_tokens;
    }
    End(call, std::move(response));
  }
};

ProcessServerBackend::ProcessServerBackend(std::string name, ProcessBackendConfig config, BackendEvents events)
    : impl_(std::make_shared<Impl>(std::move(name), std::move(config), std::move(events))) {
  std::string path = impl_->config.log_path;
  if (path.empty()) {
    std::string file = impl_->name;
    for (char& c : file) {
      if (c == '/') c = '_';
    }
    std::error_code ec;
    path = (fs::temp_directory_path(ec) / "troupe-serving" / (file + ".log")).string();
  }
  impl_->log_path = path;
}

ProcessServerBackend::~ProcessServerBackend() {
  // The watcher first: its child's destructor kills the whole group, and it posts nothing once
  // stopping. Then every connection and timer is closed on the io thread, whose run() returns
  // when their handlers have run (none then holds the Impl).
  impl_->stopping = true;
  if (impl_->watcher.joinable()) impl_->watcher.join();
  if (impl_->io_thread.joinable()) {
    asio::post(impl_->io, [impl = impl_.get()] {
      impl->exited = true;
      for (auto& [seq, call] : impl->calls) {
        call->over = true;
        error_code ignored;
        call->socket.close(ignored);
      }
      impl->calls.clear();
      if (impl->poll_timer) impl->poll_timer->cancel();
    });
    impl_->work.reset();
    impl_->io_thread.join();
  }
}

void ProcessServerBackend::Start() {
  Impl& impl = *impl_;
  impl.io_thread = std::thread([impl = impl_] { impl->io.run(); });
  auto fail = [this](Status error) {
    asio::post(impl_->io, [impl = impl_, error] { impl->OnExit(error); });
  };
  if (impl.config.command.empty()) {
    return fail(InvalidArgumentError(impl.Where() + ": the process backend has no command"));
  }
  std::error_code ec;
  if (!impl.config.working_dir.empty() && !fs::is_directory(impl.config.working_dir, ec)) {
    return fail(UnavailableError(impl.Where() + ": the working directory " + impl.config.working_dir +
                                 " of its server does not exist on this node"));
  }
  fs::create_directories(fs::path(impl.log_path).parent_path(), ec);
  if (ec) {
    return fail(InternalError(impl.Where() + ": cannot make the directory of its log " + impl.log_path + ": " +
                              ec.message()));
  }
  auto port = PickFreePort("127.0.0.1");
  if (!port.ok()) return fail(UnavailableError(impl.Where() + ": " + port.status().message()));
  impl.port = *port;
  asio::post(impl.io, [impl = impl_] { impl->StartPolling(); });
  impl.watcher = std::thread([impl = impl_] { impl->Watch(); });
}

void ProcessServerBackend::Send(uint64_t seq, const std::string& path, const std::string& body, bool stream) {
  asio::post(impl_->io, [impl = impl_, seq, path, body, stream] {
    auto call = std::make_shared<Impl::Call>(impl->io, seq, Impl::Kind::kRequest);
    call->stream = stream;
    impl->StartCall(std::move(call), http::verb::post, path, body);
  });
}

void ProcessServerBackend::Probe(uint64_t seq) {
  asio::post(impl_->io, [impl = impl_, seq] {
    impl->StartCall(std::make_shared<Impl::Call>(impl->io, seq, Impl::Kind::kProbe), http::verb::get,
                    impl->config.health_path, "");
  });
}

void ProcessServerBackend::Cancel(uint64_t seq) {
  asio::post(impl_->io, [impl = impl_, seq] {
    auto it = impl->calls.find(seq);
    if (it != impl->calls.end()) impl->Forget(it->second);
  });
}

uint16_t ProcessServerBackend::port() const { return impl_->port.load(); }

const std::string& ProcessServerBackend::log_path() const { return impl_->log_path; }

}  // namespace troupe::serving
