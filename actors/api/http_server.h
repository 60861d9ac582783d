// HttpServer: the API gateway's asynchronous HTTP/1.1 server (Boost.Beast on Asio), with
// keep-alive, streamed (chunked, server-sent events) responses and limits against hostile
// clients (docs/gateway.md "The HTTP server"). It knows nothing of actors: a handler answers.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace troupe::api {

/// Header fields as (name, value) pairs, in order; names may repeat.
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

/// One request, read whole (head and body) before the handler sees it.
struct HttpRequest {
  std::string method;  ///< "GET", "POST" ...
  std::string target;  ///< as sent: "/v1/models?x=1"
  std::string body;    ///< the decoded body (a chunked request body arrives de-chunked)
  HttpHeaders headers;  ///< names lower-cased, values as sent
  std::string remote;   ///< the peer, "127.0.0.1:53412"

  /// The first value of header `name` (any case), or "" if absent.
  std::string Header(std::string_view name) const;
  /// The target without its query: "/v1/models".
  std::string_view Path() const;
};

/// The answer to one request: either Respond once, or StartStream, Write* and End. One per
/// request, created by the server and handed to the handler.
///
/// Thread-safe: the handler may keep it and answer later from any thread; calls are queued onto
/// the connection's strand in the order they are made. Calls that do not fit the state (a second
/// Respond, Write before StartStream, anything after End or after the client is gone) do nothing.
///
/// A disconnect is noticed promptly even while the handler writes nothing: the server keeps a
/// read pending on the socket from the moment the request is read until the response ended. A
/// client that closes its socket (FIN or RST) is gone; as nginx does for proxied requests
/// ("client prematurely closed connection", 499), a half-close (shutdown of the client's write
/// side) while its response is pending counts as gone too. A write that fails or does not
/// complete within the write timeout (a client that stopped reading) also closes it.
class HttpResponder {
 public:
  virtual ~HttpResponder() = default;
  /// A whole response: status, extra headers (content-type among them; content-length and
  /// connection are the server's), body.
  virtual void Respond(unsigned status, HttpHeaders headers, std::string body) = 0;
  /// Starts a streamed response with chunked transfer encoding. For server-sent events pass
  /// content-type text/event-stream and cache-control no-cache.
  virtual void StartStream(unsigned status, HttpHeaders headers) = 0;
  /// One chunk (empty data is skipped), written to the socket as soon as the previous write
  /// finished: each server-sent event reaches the client as it is written.
  virtual void Write(std::string data) = 0;
  /// Ends the streamed response (the last chunk).
  virtual void End() = 0;
  /// `on_close` is called once, on an io thread (or at once, on the caller's thread, if the
  /// connection is already gone), if the client disconnects, the connection fails or the server
  /// stops before the response ended; never after the response ended. A later call replaces
  /// an earlier callback. Use it to cancel the request's work.
  virtual void OnClose(std::function<void()> on_close) = 0;
  /// True once nothing more can be sent: Respond or End was called, the response ended, or the
  /// client is gone.
  virtual bool closed() const = 0;
};

/// Called on an io thread for each request read; must not block (answer later from elsewhere).
using HttpHandler = std::function<void(HttpRequest, std::shared_ptr<HttpResponder>)>;

/// Where the server listens and what it allows. Defaults are the gateway's (cluster/config.h
/// GatewaySpec), except where a field says otherwise.
struct HttpServerConfig {
  std::string host = "127.0.0.1";  ///< an address to bind, IPv4 or IPv6 literal
  uint16_t port = 0;                ///< 0: any free port (HttpServer::port() says which)
  uint32_t io_threads = 1;          ///< threads running the connections (at least 1)
  /// Largest request body, bytes (after de-chunking); larger: 413 and the connection closes.
  uint64_t max_body_bytes = 1 << 20;
  /// Largest request head (request line and header fields), bytes; larger: 431 and close.
  uint64_t max_header_bytes = 16 << 10;
  /// A request's head and body must arrive within this from its first byte, or 408 and close
  /// (slowloris). The same bound applies to writing an error response to a closing client.
  std::chrono::milliseconds read_timeout{10000};
  /// A keep-alive connection with no request for this long is closed (no response).
  std::chrono::milliseconds idle_timeout{60000};
  /// One write to the client must complete within this, or the client is treated as gone
  /// (one that stopped reading a stream). 60 s is nginx's send_timeout default.
  std::chrono::milliseconds write_timeout{60000};
  /// Stop() waits this long for responses in flight to end before it closes their connections.
  std::chrono::milliseconds stop_grace{10000};
  /// Connections open at once; more are accepted and closed at once (0: unlimited).
  uint32_t max_connections = 10000;
};

/// Parses "host:port" or "[v6]:port" (port 0 allowed) into config's host and port.
Status ParseListenAddress(std::string_view listen, HttpServerConfig* config);

/// Counters since Start; a snapshot (each field read atomically, not all at one instant).
struct HttpServerStats {
  uint64_t connections_open = 0;
  uint64_t connections_accepted = 0;
  uint64_t connections_refused = 0;  ///< over max_connections
  uint64_t requests = 0;             ///< read whole and passed to the handler
  uint64_t bad_request = 0;          ///< 400: malformed request line, header or chunk
  uint64_t body_too_large = 0;       ///< 413
  uint64_t header_too_large = 0;     ///< 431
  uint64_t read_timeout = 0;         ///< 408
  uint64_t idle_closed = 0;          ///< keep-alive connections closed by the idle timeout
  uint64_t client_gone = 0;          ///< responses not ended when the client went (OnClose)
  uint64_t write_timeout = 0;        ///< clients that stopped reading (or fell 64 MiB behind)
};

/// The server: an acceptor and its connections on `io_threads` threads, each connection on a
/// strand of its own. Start it, read port(), Stop() it (the destructor stops it too).
///
/// Lifecycle: running (after Start) -> draining (Stop: no new connections, idle ones closed,
/// responses in flight get stop_grace to end) -> stopped (every connection closed, threads
/// joined). A request is read only after the previous response on its connection ended (no
/// pipelining: bytes that arrive early wait in the buffer). Bad input never reaches the handler:
/// the server answers it itself with an OpenAI-style JSON error and closes the connection:
/// malformed request (400), body over max_body_bytes (413), head over max_header_bytes (431),
/// request not read within read_timeout (408).
class HttpServer {
 public:
  /// Binds and starts serving. Errors: InvalidArgument for a bad host or config, Unavailable
  /// when the address cannot be bound (in use, not local).
  static StatusOr<std::unique_ptr<HttpServer>> Start(HttpServerConfig config, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// The bound port (the real one when the config said 0).
  uint16_t port() const;
  /// Drains and stops (see the class comment); returns within stop_grace plus the time the io
  /// threads take to finish their current handlers. Idempotent; not from an io thread.
  void Stop();
  HttpServerStats stats() const;

  struct Impl;

 private:
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace troupe::api
