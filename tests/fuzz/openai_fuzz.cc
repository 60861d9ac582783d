// Fuzz target: the gateway's OpenAI layer on arbitrary request and response bytes
// (actors/api/openai.h). The first byte picks what reads the rest: even, a request body
// (bit 1: /v1/completions, else chat); odd, a response (bit 1: a stream fed in pieces of
// (byte >> 2) + 1 bytes, else a whole body). Nothing may throw, abort or read outside its
// input, and every refusal must be a 400 whose JSON names an error.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "actors/api/openai.h"

using troupe::api::CompletionEndpoint;
using troupe::api::CompletionRequest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((mode & 1) == 0) {
    const auto endpoint = (mode & 2) ? CompletionEndpoint::kCompletions : CompletionEndpoint::kChat;
    CompletionRequest request;
    auto error = troupe::api::ParseCompletionRequest(endpoint, rest, 16, &request);
    if (error) {
      auto json = nlohmann::json::parse(error->Json(), nullptr, false);
      if (error->http_status != 400 || !json.is_object() || !json["error"].is_object()) __builtin_trap();
    } else {
      if (request.model.empty() || request.max_tokens == 0 || request.choices == 0) __builtin_trap();
      if (request.PromptTokenEstimate(1) < std::min<uint64_t>(request.prompt_bytes, UINT32_MAX)) __builtin_trap();
    }
    return 0;
  }
  if (mode & 2) {
    const size_t piece = (mode >> 2) + 1;
    troupe::api::StreamUsageScanner scanner;
    for (size_t i = 0; i < rest.size(); i += piece) scanner.Feed(rest.substr(i, piece));
  } else {
    (void)troupe::api::UsageFromBody(rest);
  }
  return 0;
}
