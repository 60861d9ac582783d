// The OpenAI API's request validation, errors, model list and usage, over nlohmann-json.
#include "actors/api/openai.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <limits>

namespace troupe::api {

using nlohmann::json;

namespace {

// Deeper bodies are refused before anything walks them (nlohmann's dump and our walks recurse).
constexpr int kMaxDepth = 64;

uint32_t Saturate(uint64_t v) {
  return v > std::numeric_limits<uint32_t>::max() ? std::numeric_limits<uint32_t>::max() : static_cast<uint32_t>(v);
}

const char* TypeName(const json& v) { return v.type_name(); }

// An optional positive integer field below 2^32: absent or null leaves *out.
std::optional<OpenAiError> PositiveInt(const json& body, const char* field, uint32_t* out, bool* given = nullptr) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) {
    return OpenAiError::InvalidRequest(fmt::format("'{}' must be an integer, not {}", field, TypeName(*it)), field);
  }
  const bool in_range = it->is_number_unsigned() ? it->get<uint64_t>() >= 1 && it->get<uint64_t>() <= UINT32_MAX
                                                 : it->get<int64_t>() >= 1 && it->get<int64_t>() <= int64_t{UINT32_MAX};
  if (!in_range) {
    return OpenAiError::InvalidRequest(fmt::format("'{}' must be at least 1 and below 2^32, got {}", field, it->dump()), field);
  }
  *out = static_cast<uint32_t>(it->get<uint64_t>());
  if (given) *given = true;
  return std::nullopt;
}

std::optional<OpenAiError> OptionalBool(const json& object, const char* field, const std::string& param, bool* out) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) {
    return OpenAiError::InvalidRequest(fmt::format("'{}' must be a boolean, not {}", param, TypeName(*it)), param);
  }
  *out = it->get<bool>();
  return std::nullopt;
}

std::optional<OpenAiError> ParseMessages(const json& body, CompletionRequest* out) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty()) {
    return OpenAiError::InvalidRequest("'messages' must be a non-empty array of messages", "messages");
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) return OpenAiError::InvalidRequest(fmt::format("'{}' must be an object, not {}", param, TypeName(m)), param);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return OpenAiError::InvalidRequest(fmt::format("'{}.role' must be a string", param), param + ".role");
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) continue;  // an assistant message with tool calls
    if (content->is_string()) {
      out->prompt_bytes += content->get_ref<const std::string&>().size();
      continue;
    }
    if (!content->is_array()) {
      return OpenAiError::InvalidRequest(fmt::format("'{}.content' must be a string or an array of parts, not {}", param, TypeName(*content)),
                                         param + ".content");
    }
    for (size_t j = 0; j < content->size(); ++j) {
      const json& part = (*content)[j];
      const std::string part_param = fmt::format("{}.content[{}]", param, j);
      if (!part.is_object()) {
        return OpenAiError::InvalidRequest(fmt::format("'{}' must be an object, not {}", part_param, TypeName(part)), part_param);
      }
      auto text = part.find("text");
      if (text != part.end() && text->is_string()) {
        out->prompt_bytes += text->get_ref<const std::string&>().size();
      } else {
        // An image or audio part: its JSON size stands in (the backend's count settles it).
        out->prompt_bytes += part.dump().size();
      }
    }
  }
  return std::nullopt;
}

std::optional<OpenAiError> ParsePrompt(const json& body, CompletionRequest* out) {
  auto it = body.find("prompt");
  const auto bad = [] {
    return OpenAiError::InvalidRequest(
        "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids",
        "prompt");
  };
  if (it == body.end()) return bad();
  if (it->is_string()) {
    out->prompt_bytes = it->get_ref<const std::string&>().size();
    return std::nullopt;
  }
  if (!it->is_array() || it->empty()) return bad();
  const json& first = it->front();
  uint32_t prompts = 0;
  for (const json& p : *it) {
    if (first.is_string() && p.is_string()) {
      out->prompt_bytes += p.get_ref<const std::string&>().size();
      ++prompts;
    } else if (first.is_number_integer() && p.is_number_integer()) {
      ++out->prompt_token_ids;
      prompts = 1;
    } else if (first.is_array() && p.is_array() && !p.empty()) {
      for (const json& t : p) {
        if (!t.is_number_integer()) return bad();
      }
      out->prompt_token_ids += p.size();
      ++prompts;
    } else {
      return bad();
    }
  }
  out->choices = Saturate(uint64_t{out->choices} * prompts);
  return std::nullopt;
}

}  // namespace

std::string OpenAiError::Json() const {
  json error = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  if (!code.empty()) error["code"] = code;
  return json{{"error", std::move(error)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

OpenAiError OpenAiError::ForStatus(unsigned http_status, std::string message, std::string code, std::string param) {
  OpenAiError e;
  e.http_status = http_status;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  if (http_status == 429) {
    e.type = "rate_limit_exceeded";
    if (e.code.empty()) e.code = "rate_limit_exceeded";
  } else if (http_status >= 500) {
    e.type = "server_error";
  } else {
    e.type = "invalid_request_error";
    if (e.code.empty()) {
      if (http_status == 401) e.code = "invalid_api_key";
      if (http_status == 403) e.code = "permission_denied";
      if (http_status == 404) e.code = "model_not_found";
    }
  }
  return e;
}

OpenAiError OpenAiError::InvalidRequest(std::string message, std::string param) {
  return ForStatus(400, std::move(message), "", std::move(param));
}

OpenAiError ErrorFromStatus(const Status& status) {
  unsigned http = 500;
  switch (status.code()) {
    case StatusCode::kResourceExhausted: http = 503; break;
    case StatusCode::kDeadlineExceeded: http = 504; break;
    case StatusCode::kUnavailable: http = 502; break;
    case StatusCode::kFailedPrecondition: http = 503; break;
    case StatusCode::kInvalidArgument: http = 400; break;
    case StatusCode::kNotFound: http = 404; break;
    case StatusCode::kPermissionDenied: http = 403; break;
    case StatusCode::kCancelled: http = 503; break;
    default: http = 500; break;
  }
  return OpenAiError::ForStatus(http, status.message());
}

uint32_t CompletionRequest::PromptTokenEstimate(uint32_t bytes_per_token) const {
  const uint64_t per = bytes_per_token == 0 ? 1 : bytes_per_token;
  return Saturate(prompt_token_ids + (prompt_bytes + per - 1) / per);
}

uint32_t CompletionRequest::CompletionTokenBound() const { return Saturate(uint64_t{max_tokens} * choices); }

std::optional<OpenAiError> ParseCompletionRequest(CompletionEndpoint endpoint, std::string_view body,
                                                  uint32_t default_max_tokens, CompletionRequest* out) {
  *out = CompletionRequest{};
  out->endpoint = endpoint;
  bool too_deep = false;
  json::parser_callback_t depth_guard = [&too_deep](int depth, json::parse_event_t event, json&) {
    if (depth > kMaxDepth) too_deep = true;
    return !too_deep;
  };
  json doc;
  try {
    doc = json::parse(body.begin(), body.end(), depth_guard);
  } catch (const json::exception& e) {
    // nlohmann's messages name the byte: "parse error at line 1, column 9: ...".
    return OpenAiError::InvalidRequest(fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (too_deep) {
    return OpenAiError::InvalidRequest(fmt::format("the request body nests JSON deeper than {} levels", kMaxDepth));
  }
  if (!doc.is_object()) {
    return OpenAiError::InvalidRequest(fmt::format("the request body must be a JSON object, not {}", TypeName(doc)));
  }
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_string() || model->get_ref<const std::string&>().empty()) {
    return OpenAiError::InvalidRequest("'model' must be a non-empty string naming the deployment", "model");
  }
  out->model = model->get<std::string>();
  if (auto e = OptionalBool(doc, "stream", "stream", &out->stream)) return e;
  auto options = doc.find("stream_options");
  if (options != doc.end() && !options->is_null()) {
    if (!options->is_object()) {
      return OpenAiError::InvalidRequest(fmt::format("'stream_options' must be an object, not {}", TypeName(*options)),
                                         "stream_options");
    }
    if (!out->stream) {
      return OpenAiError::InvalidRequest("'stream_options' is only allowed when 'stream' is true", "stream_options");
    }
    if (auto e = OptionalBool(*options, "include_usage", "stream_options.include_usage", &out->include_usage)) return e;
  }
  out->max_tokens = default_max_tokens;
  bool completion_given = false;
  if (auto e = PositiveInt(doc, "max_completion_tokens", &out->max_tokens, &completion_given)) return e;
  uint32_t legacy = 0;
  bool legacy_given = false;
  if (auto e = PositiveInt(doc, "max_tokens", &legacy, &legacy_given)) return e;
  if (legacy_given && !completion_given) out->max_tokens = legacy;
  if (auto e = PositiveInt(doc, "n", &out->choices)) return e;
  return endpoint == CompletionEndpoint::kChat ? ParseMessages(doc, out) : ParsePrompt(doc, out);
}

std::string ModelListJson(const std::vector<ModelEntry>& models) {
  json data = json::array();
  for (const auto& m : models) {
    data.push_back({{"id", m.id}, {"object", "model"}, {"created", m.created_unix_s}, {"owned_by", m.owned_by}});
  }
  return json{{"object", "list"}, {"data", std::move(data)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<TokenUsage> UsageFromBody(std::string_view body) {
  json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) return std::nullopt;
  auto usage = doc.find("usage");
  if (usage == doc.end() || !usage->is_object()) return std::nullopt;
  TokenUsage out;
  for (auto [field, slot] : {std::pair{"prompt_tokens", &out.prompt_tokens}, std::pair{"completion_tokens", &out.completion_tokens}}) {
    auto it = usage->find(field);
    if (it == usage->end() || !it->is_number_integer()) return std::nullopt;
    if (it->is_number_unsigned() ? it->get<uint64_t>() > UINT32_MAX : (it->get<int64_t>() < 0 || it->get<int64_t>() > int64_t{UINT32_MAX})) {
      return std::nullopt;
    }
    *slot = static_cast<uint32_t>(it->get<uint64_t>());
  }
  return out;
}

namespace {
constexpr size_t kMaxSseLine = 1 << 20;
}  // namespace

void StreamUsageScanner::Feed(std::string_view data) {
  while (!data.empty()) {
    const size_t eol = data.find('\n');
    if (eol == std::string_view::npos) {
      if (!skipping_) partial_.append(data);
      if (partial_.size() > kMaxSseLine) {
        partial_.clear();
        skipping_ = true;
      }
      return;
    }
    if (!skipping_) {
      if (partial_.empty()) {
        Line(data.substr(0, eol));
      } else {
        partial_.append(data.substr(0, eol));
        Line(partial_);
      }
    }
    partial_.clear();
    skipping_ = false;
    data.remove_prefix(eol + 1);
  }
}

void StreamUsageScanner::Line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.substr(0, 5) != "data:") return;
  line.remove_prefix(5);
  if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (line == "[DONE]") {
    done_ = true;
    return;
  }
  if (line.find("\"usage\"") == std::string_view::npos) return;
  if (auto usage = UsageFromBody(line)) usage_ = usage;
}

}  // namespace troupe::api
