// The test backend's pure part: request parsing, the token schedule, OpenAI-shaped responses.
#include "actors/serving/test_model.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>

namespace troupe::serving {

namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// What a JSON value is, for messages ("got string \"ten\""). Arrays and objects are not printed:
// dump() recurses, and a client's deeply nested value must not exhaust the stack.
std::string Describe(const Json& v) {
  if (v.is_structured()) return std::string(v.type_name()) + " of " + std::to_string(v.size()) + " elements";
  std::string text = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return std::string(v.type_name()) + " " + text;
}

uint32_t CountWords(const std::string& text) {
  uint32_t words = 0;
  bool in_word = false;
  for (unsigned char c : text) {
    const bool space = std::isspace(c) != 0;
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

// FNV-1a, 64 bits: a stable hash (std::hash may differ between standard libraries).
uint64_t Fnv1a(const std::string& text, uint64_t hash = 14695981039346656037ull) {
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

StatusOr<std::string> ChatContent(const Json& content, size_t i) {
  const std::string field = "messages[" + std::to_string(i) + "].content";
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    return InvalidArgumentError(field + ": must be a string or an array of content parts, got " + Describe(content));
  }
  std::string text;
  for (size_t p = 0; p < content.size(); ++p) {
    const Json& part = content[p];
    const std::string part_field = field + "[" + std::to_string(p) + "]";
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return InvalidArgumentError(part_field + ": must be an object with a string `type`, got " + Describe(part));
    }
    if (part["type"] != "text") continue;  // images and the like: no words for the test model
    if (!part.contains("text") || !part["text"].is_string()) {
      return InvalidArgumentError(part_field + ".text: must be a string");
    }
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

StatusOr<std::string> ChatPrompt(const Json& body) {
  if (!body.contains("messages")) return InvalidArgumentError("messages: required for /v1/chat/completions");
  const Json& messages = body["messages"];
  if (!messages.is_array() || messages.empty()) {
    return InvalidArgumentError("messages: must be a non-empty array of {role, content}, got " + Describe(messages));
  }
  std::string prompt;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return InvalidArgumentError(field + ": must be an object {role, content}, got " + Describe(m));
    if (!m.contains("role") || !m["role"].is_string()) {
      return InvalidArgumentError(field + ".role: required, a string (system, user, assistant, tool)");
    }
    ASSIGN_OR_RETURN(std::string content, ChatContent(m.contains("content") ? m["content"] : Json(), i));
    if (!prompt.empty()) prompt += "\n";
    prompt += content;
  }
  return prompt;
}

StatusOr<std::string> CompletionPrompt(const Json& body) {
  if (!body.contains("prompt")) return InvalidArgumentError("prompt: required for /v1/completions");
  const Json& prompt = body["prompt"];
  if (prompt.is_string()) return prompt.get<std::string>();
  if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) return prompt[0].get<std::string>();
  if (prompt.is_array() && prompt.size() > 1) {
    return InvalidArgumentError("prompt: the test model takes one prompt, got an array of " +
                                std::to_string(prompt.size()));
  }
  return InvalidArgumentError("prompt: must be a string, got " + Describe(prompt));
}

StatusOr<uint32_t> MaxTokens(const Json& body, const TestModelConfig& config) {
  const char* field = body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (!body.contains(field) || body[field].is_null()) return config.default_max_tokens;
  const Json& v = body[field];
  const bool in_range = v.is_number_integer() && v.get<int64_t>() >= 1 &&
                        v.get<int64_t>() <= static_cast<int64_t>(config.max_tokens_limit);
  if (!in_range) {
    return InvalidArgumentError(fmt::format("{}: must be an integer from 1 to {} (this model's limit), got {}", field,
                                            config.max_tokens_limit, Describe(v)));
  }
  return static_cast<uint32_t>(v.get<int64_t>());
}

OrderedJson Usage(const TestRequest& request, uint32_t completion_tokens) {
  return OrderedJson{{"prompt_tokens", request.prompt_tokens},
                     {"completion_tokens", completion_tokens},
                     {"total_tokens", request.prompt_tokens + completion_tokens}};
}

const char* FinishReason(const TestRequest& request, uint32_t completion_tokens) {
  return completion_tokens >= request.max_tokens ? "length" : "stop";
}

std::string Dump(const OrderedJson& j) { return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace); }

OrderedJson ChunkHead(const TestRequest& request, const ResponseMeta& meta) {
  return OrderedJson{{"id", meta.id},
                     {"object", request.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
                     {"created", meta.created},
                     {"model", request.model}};
}

std::string Event(const OrderedJson& j) { return "data: " + Dump(j) + "\n\n"; }

// The test model's words: short, common, and all ASCII (any client can print them).
constexpr const char* kVocabulary[] = {
    "the",   "a",     "model", "token", "replica", "router", "serves", "quickly", "and",   "of",     "to",
    "in",    "is",    "that",  "for",   "it",      "with",   "as",     "on",      "be",    "at",     "by",
    "this",  "from",  "or",    "an",    "will",    "can",    "all",    "each",    "which", "their",  "time",
    "data",  "cloud", "GPU",   "slice", "load",    "scale",  "fast",   "stable",  "queue", "answer", "test",
    "word",  "text",  "light", "river", "stone",   "green",  "blue",   "north",   "south", "small",  "large",
    "early", "late",  "new",   "old",   "first",   "last",   "next",   "same",    "other",
};

}  // namespace

StatusOr<TestRequest> ParseTestRequest(const std::string& path, const std::string& body,
                                       const TestModelConfig& config) {
  TestRequest out;
  if (path == kChatPath) {
    out.kind = ApiKind::kChat;
  } else if (path == kCompletionPath) {
    out.kind = ApiKind::kCompletion;
  } else {
    return InvalidArgumentError("path '" + path + "': the test model serves " + kChatPath + " and " +
                                kCompletionPath);
  }
  Json j;
  try {
    j = Json::parse(body);
  } catch (const Json::parse_error& e) {
    return InvalidArgumentError(std::string("body: not JSON: ") + e.what());
  }
  if (!j.is_object()) return InvalidArgumentError("body: must be a JSON object, got " + Describe(j));
  if (j.contains("model")) {
    if (!j["model"].is_string()) return InvalidArgumentError("model: must be a string, got " + Describe(j["model"]));
    out.model = j["model"].get<std::string>();
  }
  if (out.model.empty()) out.model = config.model;
  if (out.kind == ApiKind::kChat) {
    ASSIGN_OR_RETURN(out.prompt, ChatPrompt(j));
  } else {
    ASSIGN_OR_RETURN(out.prompt, CompletionPrompt(j));
  }
  out.prompt_tokens = CountWords(out.prompt);
  ASSIGN_OR_RETURN(out.max_tokens, MaxTokens(j, config));
  if (j.contains("stream") && !j["stream"].is_null()) {
    if (!j["stream"].is_boolean()) {
      return InvalidArgumentError("stream: must be true or false, got " + Describe(j["stream"]));
    }
    out.stream = j["stream"].get<bool>();
  }
  if (j.contains("stream_options") && !j["stream_options"].is_null()) {
    const Json& options = j["stream_options"];
    if (!options.is_object()) {
      return InvalidArgumentError("stream_options: must be an object, got " + Describe(options));
    }
    if (!out.stream) return InvalidArgumentError("stream_options: only allowed when stream is true");
    if (options.contains("include_usage")) {
      if (!options["include_usage"].is_boolean()) {
        return InvalidArgumentError("stream_options.include_usage: must be true or false, got " +
                                    Describe(options["include_usage"]));
      }
      out.include_usage = options["include_usage"].get<bool>();
    }
  }
  if (j.contains("n") && !j["n"].is_null() && j["n"] != 1) {
    return InvalidArgumentError("n: the test model makes one choice (n: 1), got " + Describe(j["n"]));
  }
  return out;
}

std::vector<std::string> CompletionTokens(const TestRequest& request, uint64_t seed) {
  std::mt19937_64 gen(Fnv1a(request.prompt, Fnv1a(request.model)) ^ seed);
  constexpr size_t kWords = sizeof(kVocabulary) / sizeof(kVocabulary[0]);
  std::vector<std::string> tokens;
  tokens.reserve(request.max_tokens);
  for (uint32_t k = 0; k < request.max_tokens; ++k) {
    const char* word = kVocabulary[gen() % kWords];
    tokens.push_back(k == 0 ? std::string(word) : " " + std::string(word));
  }
  return tokens;
}

std::chrono::microseconds TokenOffset(const TestModelConfig& config, uint32_t k) {
  if (k == 0 || config.tokens_per_second <= 0) return config.first_token_latency;
  // At most a year: a rate near zero must not overflow the conversion.
  constexpr double kMaxUs = 365.0 * 24 * 3600 * 1e6;
  const double us = std::min(kMaxUs, std::ceil(static_cast<double>(k) * 1e6 / config.tokens_per_second));
  return config.first_token_latency + std::chrono::microseconds(static_cast<int64_t>(us));
}

uint32_t TokensDue(const TestModelConfig& config, std::chrono::microseconds elapsed, uint32_t total) {
  if (total == 0 || elapsed < config.first_token_latency) return 0;
  if (config.tokens_per_second <= 0) return total;
  const double after_first = static_cast<double>((elapsed - config.first_token_latency).count());
  // Token k is due at ceil(k * 1e6 / rate) us after the first: the largest such k, then checked
  // against TokenOffset so that rounding never lets a token out early.
  const double whole = std::floor(after_first * config.tokens_per_second / 1e6);
  if (!(whole < static_cast<double>(total))) return total;  // (a huge rate: also inf)
  uint64_t k = static_cast<uint64_t>(whole);
  while (k > 0 && TokenOffset(config, static_cast<uint32_t>(k)) > elapsed) --k;
  while (k + 1 < total && TokenOffset(config, static_cast<uint32_t>(k + 1)) <= elapsed) ++k;
  return static_cast<uint32_t>(k + 1);
}

std::string ResponseId(ApiKind kind, uint64_t n) {
  return fmt::format("{}-{:016x}", kind == ApiKind::kChat ? "chatcmpl" : "cmpl", n);
}

std::string CompletionBody(const TestRequest& request, const ResponseMeta& meta,
                           const std::vector<std::string>& tokens) {
  std::string text;
  for (const auto& t : tokens) text += t;
  const auto n = static_cast<uint32_t>(tokens.size());
  OrderedJson choice;
  if (request.kind == ApiKind::kChat) {
    choice = OrderedJson{{"index", 0},
                         {"message", OrderedJson{{"role", "assistant"}, {"content", text}}},
                         {"logprobs", nullptr},
                         {"finish_reason", FinishReason(request, n)}};
  } else {
    choice = OrderedJson{
        {"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReason(request, n)}};
  }
  OrderedJson out{{"id", meta.id},
                  {"object", request.kind == ApiKind::kChat ? "chat.completion" : "text_completion"},
                  {"created", meta.created},
                  {"model", request.model},
                  {"choices", OrderedJson::array({choice})},
                  {"usage", Usage(request, n)}};
  return Dump(out);
}

std::string StreamTokenEvent(const TestRequest& request, const ResponseMeta& meta, uint32_t k,
                             const std::string& token) {
  OrderedJson chunk = ChunkHead(request, meta);
  OrderedJson choice;
  if (request.kind == ApiKind::kChat) {
    OrderedJson delta = k == 0 ? OrderedJson{{"role", "assistant"}, {"content", token}}
                               : OrderedJson{{"content", token}};
    choice = OrderedJson{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  } else {
    choice = OrderedJson{{"text", token}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  }
  chunk["choices"] = OrderedJson::array({choice});
  // OpenAI: with include_usage every chunk has "usage": null, and the last one the counts.
  if (request.include_usage) chunk["usage"] = nullptr;
  return Event(chunk);
}

std::string StreamEndEvents(const TestRequest& request, const ResponseMeta& meta, uint32_t completion_tokens) {
  OrderedJson last = ChunkHead(request, meta);
  OrderedJson choice;
  if (request.kind == ApiKind::kChat) {
    choice = OrderedJson{{"index", 0},
                         {"delta", OrderedJson::object()},
                         {"logprobs", nullptr},
                         {"finish_reason", FinishReason(request, completion_tokens)}};
  } else {
    choice = OrderedJson{
        {"text", ""}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReason(request, completion_tokens)}};
  }
  last["choices"] = OrderedJson::array({choice});
  if (request.include_usage) last["usage"] = nullptr;
  std::string out = Event(last);
  if (request.include_usage) {
    OrderedJson usage = ChunkHead(request, meta);
    usage["choices"] = OrderedJson::array();
    usage["usage"] = Usage(request, completion_tokens);
    out += Event(usage);
  }
  return out + "data: [DONE]\n\n";
}

std::string ProbeBody() { return R"({"prompt":"ping","max_tokens":1})"; }

}  // namespace troupe::serving
