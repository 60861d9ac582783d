// The test backend: a deterministic in-process model that answers the OpenAI completions and
// chat completions API with made-up tokens at a configured pace (docs/serving.md, "Replicas and
// the test backend"). Pure functions: the replica actor (replica.h) does the pacing.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace troupe::serving {

/// The test backend's settings (a deployment version's `backend: test`).
struct TestModelConfig {
  /// The model name in responses when the request's body names none.
  std::string model = "troupe-test";
  /// Time from the start of a request to its first token (vLLM's TTFT: queueing and prefill).
  std::chrono::microseconds first_token_latency{0};
  /// Tokens per second after the first one (vLLM's inter-token latency is 1 s / this).
  /// 0: no pacing, every token comes with the first.
  double tokens_per_second = 0;
  /// Completion tokens when the body gives no max_tokens (OpenAI's /v1/completions default: 16).
  uint32_t default_max_tokens = 16;
  /// The most max_tokens a request may ask for (larger: InvalidArgument), which bounds the work
  /// and memory of one request.
  uint32_t max_tokens_limit = 4096;
  /// Mixed into every request's seed: another seed, other words for the same prompt.
  uint64_t seed = 0;
};

enum class ApiKind { kChat, kCompletion };

inline constexpr const char* kChatPath = "/v1/chat/completions";
inline constexpr const char* kCompletionPath = "/v1/completions";

/// What the test model reads from a request.
struct TestRequest {
  ApiKind kind = ApiKind::kCompletion;
  /// The body's `model`, or TestModelConfig::model.
  std::string model;
  /// The prompt text: `prompt`, or the chat messages' contents joined by newlines.
  std::string prompt;
  /// Whitespace-separated words of the prompt (the test model's tokenizer).
  uint32_t prompt_tokens = 0;
  uint32_t max_tokens = 0;
  bool stream = false;
  /// stream_options.include_usage: a last chunk carries the usage (OpenAI streams it only then).
  bool include_usage = false;
};

/// Parses an OpenAI request for the test model: `path` is kChatPath or kCompletionPath, `body`
/// its JSON. Read: model (string), messages (chat: a non-empty array of {role, content} with
/// content a string, null, or an array of {type: "text", text} parts) or prompt (completions: a
/// string or an array of one string), max_tokens or max_completion_tokens (an integer in
/// 1..config.max_tokens_limit), stream (bool), stream_options.include_usage (bool), n (1 only).
/// Anything else (temperature, top_p, ...) is ignored. Errors: InvalidArgument naming the field
/// and what it must be ("max_tokens: must be an integer from 1 to 4096, got \"ten\""), or the
/// path, so that an OpenAI client can show it.
StatusOr<TestRequest> ParseTestRequest(const std::string& path, const std::string& body,
                                       const TestModelConfig& config);

/// The completion's tokens: `request.max_tokens` words drawn from a fixed vocabulary by a
/// generator seeded from the model name, the prompt and `seed` (std::mt19937_64, whose sequence
/// the C++ standard fixes): the same request gives the same words on every machine. The first
/// word has no leading space, the others one.
std::vector<std::string> CompletionTokens(const TestRequest& request, uint64_t seed);

/// When token `k` (0-based) is due, from the start of the request:
/// first_token_latency + k / tokens_per_second (k = 0: first_token_latency).
std::chrono::microseconds TokenOffset(const TestModelConfig& config, uint32_t k);
/// How many of `total` tokens are due `elapsed` after the start (at most `total`).
uint32_t TokensDue(const TestModelConfig& config, std::chrono::microseconds elapsed, uint32_t total);

/// The response's identity: its `id` ("chatcmpl-..." or "cmpl-...") and `created` (Unix
/// seconds).
struct ResponseMeta {
  std::string id;
  int64_t created = 0;
};
/// The id of response `n` of `kind`: "chatcmpl-<16 hex digits>" or "cmpl-<16 hex digits>".
std::string ResponseId(ApiKind kind, uint64_t n);

/// The whole (non-streamed) response: a chat.completion or text_completion object with id,
/// object, created, model, choices (one: the text of `tokens`, finish_reason) and usage. The
/// finish_reason is "length" when `tokens` holds max_tokens tokens, else "stop".
std::string CompletionBody(const TestRequest& request, const ResponseMeta& meta,
                           const std::vector<std::string>& tokens);

/// The server-sent event of token `k` of a stream: "data: {...}\n\n" with a
/// chat.completion.chunk (delta.content; the first also delta.role "assistant") or a
/// text_completion chunk (text), finish_reason null.
std::string StreamTokenEvent(const TestRequest& request, const ResponseMeta& meta, uint32_t k,
                             const std::string& token);
/// The events that end a stream of `completion_tokens` tokens: the chunk with the finish_reason,
/// then (with include_usage) a chunk with empty choices and the usage, then "data: [DONE]\n\n".
std::string StreamEndEvents(const TestRequest& request, const ResponseMeta& meta, uint32_t completion_tokens);

/// The health probe's request (ReplicaRequest through the real path): one token of a one-word
/// prompt on /v1/completions.
std::string ProbeBody();

}  // namespace troupe::serving
