// The OpenAI API as the gateway speaks it: request bodies parsed and validated, errors in
// OpenAI's JSON shape with their HTTP status, the model list, usage counts read off responses
// (docs/gateway.md "The OpenAI API"). JSON through nlohmann-json; no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace troupe::api {

/// An error as OpenAI sends it: HTTP status plus
/// `{"error":{"message":...,"type":...,"param":...,"code":...}}` (empty param/code: null).
struct OpenAiError {
  unsigned http_status = 500;
  std::string type;
  std::string message;
  std::string param;
  std::string code;

  /// The JSON body.
  std::string Json() const;

  /// An error for `http_status` with OpenAI's type for it: 4xx invalid_request_error (401
  /// code invalid_api_key, 403 code permission_denied, 404 code model_not_found unless `code`
  /// says otherwise), 429 rate_limit_exceeded (type and code), 5xx server_error.
  static OpenAiError ForStatus(unsigned http_status, std::string message, std::string code = "",
                               std::string param = "");
  /// 400 invalid_request_error naming the field `param` (empty: the body as a whole).
  static OpenAiError InvalidRequest(std::string message, std::string param = "");
};

/// The HTTP status and OpenAI error for a Status of the serving path (actors/serving/messages.h,
/// "Errors"): ResourceExhausted 503 (router queue full), DeadlineExceeded 504, Unavailable 502
/// (the replica died, or none exists), FailedPrecondition 503 (refused before it started, after
/// the router's retry), InvalidArgument 400, NotFound 404 model_not_found, PermissionDenied 403,
/// Cancelled 503, anything else 500. The message is the Status's.
OpenAiError ErrorFromStatus(const Status& status);

/// Which endpoint a body was sent to.
enum class CompletionEndpoint { kChat, kCompletions };

/// What the gateway needs of a completion request (the body itself goes on unchanged).
struct CompletionRequest {
  CompletionEndpoint endpoint = CompletionEndpoint::kChat;
  std::string model;
  bool stream = false;
  /// stream_options.include_usage: the client asked for the usage chunk.
  bool include_usage = false;
  /// max_completion_tokens, else max_tokens, else the default passed to the parser.
  uint32_t max_tokens = 0;
  /// Choices asked for: n, times the number of prompts of a list prompt (/v1/completions).
  uint32_t choices = 1;
  /// UTF-8 bytes of every message content (text parts' text; other parts' JSON) or prompt string.
  uint64_t prompt_bytes = 0;
  /// Tokens given as token ids (/v1/completions prompt of integers).
  uint64_t prompt_token_ids = 0;

  /// The prompt's token count, an upper bound for byte-level BPE when bytes_per_token is 1:
  /// prompt_token_ids + ceil(prompt_bytes / bytes_per_token) (bytes_per_token 0 is taken as 1),
  /// saturated at UINT32_MAX.
  uint32_t PromptTokenEstimate(uint32_t bytes_per_token) const;
  /// The completion tokens the request may produce: max_tokens * choices, saturated.
  uint32_t CompletionTokenBound() const;
};

/// Parses and validates a body of POST /v1/chat/completions or /v1/completions. Errors (400
/// invalid_request_error, param naming the field): not JSON or not an object, nesting deeper
/// than 64, model missing or not a non-empty string, stream / stream_options.include_usage not
/// booleans, stream_options without stream, max_tokens / max_completion_tokens / n not integers
/// in [1, 2^32), messages missing, empty or malformed (each an object with a string role and a
/// content that is a string, null or an array of parts), prompt missing or not a string, an
/// array of strings, of token ids or of arrays of token ids.
std::optional<OpenAiError> ParseCompletionRequest(CompletionEndpoint endpoint, std::string_view body,
                                                  uint32_t default_max_tokens,
                                                  CompletionRequest* out);

/// One entry of GET /v1/models.
struct ModelEntry {
  std::string id;
  int64_t created_unix_s = 0;
  std::string owned_by;
};
/// `{"object":"list","data":[{"id":..,"object":"model","created":..,"owned_by":..}, ...]}`.
std::string ModelListJson(const std::vector<ModelEntry>& models);

/// Token counts of a response's `usage`.
struct TokenUsage {
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  friend bool operator==(const TokenUsage& a, const TokenUsage& b) {
    return a.prompt_tokens == b.prompt_tokens && a.completion_tokens == b.completion_tokens;
  }
};

/// The usage of a whole (not streamed) response body; nullopt if it has none (or counts that
/// are not integers in [0, 2^32)).
std::optional<TokenUsage> UsageFromBody(std::string_view body);

/// Reads the server-sent events of a streamed response as they pass, in pieces of any size,
/// and keeps the usage of the last event that had one (OpenAI sends it in the last chunk before
/// `data: [DONE]` when stream_options.include_usage is set). Only lines that mention "usage"
/// are parsed as JSON. Lines longer than 1 MiB are skipped. Not thread-safe.
class StreamUsageScanner {
 public:
  void Feed(std::string_view data);
  const std::optional<TokenUsage>& usage() const { return usage_; }
  /// `data: [DONE]` was seen.
  bool done() const { return done_; }

 private:
  void Line(std::string_view line);
  std::string partial_;
  bool skipping_ = false;
  std::optional<TokenUsage> usage_;
  bool done_ = false;
};

}  // namespace troupe::api
