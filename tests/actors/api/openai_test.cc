// The OpenAI layer: request validation, errors and their statuses, the model list, usage.
#include "actors/api/openai.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace troupe::api {
namespace {

using nlohmann::json;

CompletionRequest Chat(const std::string& body, uint32_t default_max = 256) {
  CompletionRequest r;
  auto e = ParseCompletionRequest(CompletionEndpoint::kChat, body, default_max, &r);
  EXPECT_FALSE(e) << e->Json();
  return r;
}

OpenAiError ChatError(const std::string& body, CompletionEndpoint endpoint = CompletionEndpoint::kChat) {
  CompletionRequest r;
  auto e = ParseCompletionRequest(endpoint, body, 256, &r);
  EXPECT_TRUE(e) << "accepted: " << body;
  return e.value_or(OpenAiError{});
}

TEST(OpenAiRequest, ChatFieldsAreRead) {
  auto r = Chat(R"({"model":"m1","stream":true,"stream_options":{"include_usage":true},"max_tokens":50,
                  "messages":[{"role":"system","content":"héllo"},
                              {"role":"user","content":[{"type":"text","text":"abc"},{"type":"image_url","image_url":{"url":"x"}}]},
                              {"role":"assistant","content":null,"tool_calls":[]}]})");
  EXPECT_EQ(r.model, "m1");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.max_tokens, 50u);
  const size_t image_part = json::parse(R"({"type":"image_url","image_url":{"url":"x"}})").dump().size();
  EXPECT_EQ(r.prompt_bytes, 6u /* héllo in UTF-8 */ + 3u + image_part);
  EXPECT_EQ(r.choices, 1u);
}

TEST(OpenAiRequest, MaxTokensDefaultsAndMaxCompletionTokensWins) {
  EXPECT_EQ(Chat(R"({"model":"m","messages":[{"role":"user","content":"x"}]})", 77).max_tokens, 77u);
  EXPECT_EQ(Chat(R"({"model":"m","max_tokens":null,"messages":[{"role":"user","content":"x"}]})", 77).max_tokens, 77u);
  EXPECT_EQ(Chat(R"({"model":"m","max_tokens":5,"max_completion_tokens":9,"messages":[{"role":"user","content":"x"}]})").max_tokens, 9u);
  auto r = Chat(R"({"model":"m","max_tokens":10,"n":3,"messages":[{"role":"user","content":"x"}]})");
  EXPECT_EQ(r.CompletionTokenBound(), 30u);
}

TEST(OpenAiRequest, PromptTokenEstimateRoundsUp) {
  CompletionRequest r;
  r.prompt_bytes = 10;
  EXPECT_EQ(r.PromptTokenEstimate(1), 10u);
  EXPECT_EQ(r.PromptTokenEstimate(3), 4u);
  EXPECT_EQ(r.PromptTokenEstimate(0), 10u) << "0 bytes per token is taken as 1";
  r.prompt_token_ids = 5;
  EXPECT_EQ(r.PromptTokenEstimate(4), 8u);
  r.prompt_bytes = uint64_t{1} << 40;
  EXPECT_EQ(r.PromptTokenEstimate(1), UINT32_MAX) << "saturates";
}

TEST(OpenAiRequest, CompletionPromptsOfEveryShape) {
  auto parse = [](const std::string& prompt) {
    CompletionRequest r;
    auto e = ParseCompletionRequest(CompletionEndpoint::kCompletions,
                                    R"({"model":"m","max_tokens":4,"prompt":)" + prompt + "}", 16, &r);
    EXPECT_FALSE(e) << prompt << ": " << (e ? e->Json() : "");
    return r;
  };
  EXPECT_EQ(parse(R"("hello")").prompt_bytes, 5u);
  auto list = parse(R"(["ab","cde"])");
  EXPECT_EQ(list.prompt_bytes, 5u);
  EXPECT_EQ(list.choices, 2u) << "each prompt of a list gets its own completion";
  EXPECT_EQ(list.CompletionTokenBound(), 8u);
  auto ids = parse("[1,2,3]");
  EXPECT_EQ(ids.prompt_token_ids, 3u);
  EXPECT_EQ(ids.choices, 1u);
  auto batches = parse("[[1,2],[3]]");
  EXPECT_EQ(batches.prompt_token_ids, 3u);
  EXPECT_EQ(batches.choices, 2u);
  for (const char* bad : {"[]", "1", R"(["a",1])", "[[1,\"x\"]]", "[[]]", "null"}) {
    auto e = ChatError(std::string(R"({"model":"m","prompt":)") + bad + "}", CompletionEndpoint::kCompletions);
    EXPECT_EQ(e.param, "prompt") << bad;
  }
  EXPECT_EQ(ChatError(R"({"model":"m"})", CompletionEndpoint::kCompletions).param, "prompt");
}

TEST(OpenAiRequest, BadBodiesNameTheField) {
  struct Case {
    const char* body;
    const char* param;  // "" : the body as a whole
  } cases[] = {
      {"not json", ""},
      {"[1,2]", ""},
      {"{\"model\":\"m\"", ""},
      {R"({"messages":[{"role":"user","content":"x"}]})", "model"},
      {R"({"model":"","messages":[{"role":"user","content":"x"}]})", "model"},
      {R"({"model":3,"messages":[{"role":"user","content":"x"}]})", "model"},
      {R"({"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]})", "stream"},
      {R"({"model":"m","stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]})", "stream_options"},
      {R"({"model":"m","stream":true,"stream_options":{"include_usage":1},"messages":[{"role":"user","content":"x"}]})",
       "stream_options.include_usage"},
      {R"({"model":"m","stream":true,"stream_options":[],"messages":[{"role":"user","content":"x"}]})", "stream_options"},
      {R"({"model":"m","max_tokens":"10","messages":[{"role":"user","content":"x"}]})", "max_tokens"},
      {R"({"model":"m","max_tokens":10.5,"messages":[{"role":"user","content":"x"}]})", "max_tokens"},
      {R"({"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]})", "max_tokens"},
      {R"({"model":"m","max_tokens":-3,"messages":[{"role":"user","content":"x"}]})", "max_tokens"},
      {R"({"model":"m","max_tokens":4294967296,"messages":[{"role":"user","content":"x"}]})", "max_tokens"},
      {R"({"model":"m","max_completion_tokens":false,"messages":[{"role":"user","content":"x"}]})", "max_completion_tokens"},
      {R"({"model":"m","n":0,"messages":[{"role":"user","content":"x"}]})", "n"},
      {R"({"model":"m"})", "messages"},
      {R"({"model":"m","messages":[]})", "messages"},
      {R"({"model":"m","messages":{}})", "messages"},
      {R"({"model":"m","messages":["hi"]})", "messages[0]"},
      {R"({"model":"m","messages":[{"content":"x"}]})", "messages[0].role"},
      {R"({"model":"m","messages":[{"role":"user","content":5}]})", "messages[0].content"},
      {R"({"model":"m","messages":[{"role":"user","content":["x"]}]})", "messages[0].content[0]"},
  };
  for (const auto& c : cases) {
    auto e = ChatError(c.body);
    EXPECT_EQ(e.http_status, 400u) << c.body;
    EXPECT_EQ(e.type, "invalid_request_error") << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
    auto j = json::parse(e.Json());
    EXPECT_EQ(j["error"]["param"].is_null(), std::string(c.param).empty()) << e.Json();
  }
  EXPECT_NE(ChatError("{\"model\": tru}").message.find("column"), std::string::npos) << "the parse error says where";
}

TEST(OpenAiRequest, DeepNestingAndBadUtf8AreRefused) {
  std::string deep = R"({"model":"m","messages":[{"role":"user","content":"x","extra":)";
  for (int i = 0; i < 100000; ++i) deep += '[';
  for (int i = 0; i < 100000; ++i) deep += ']';
  deep += "}]}";
  EXPECT_NE(ChatError(deep).message.find("deeper"), std::string::npos);
  EXPECT_EQ(ChatError("{\"model\":\"m\xff\",\"messages\":[]}").http_status, 400u);
}

TEST(OpenAiError, JsonShapeAndTypesByStatus) {
  auto e = OpenAiError::InvalidRequest("max_tokens must be an integer", "max_tokens");
  EXPECT_EQ(json::parse(e.Json()), json::parse(R"({"error":{"message":"max_tokens must be an integer",
      "type":"invalid_request_error","param":"max_tokens","code":null}})"));
  EXPECT_EQ(OpenAiError::ForStatus(401, "bad key").code, "invalid_api_key");
  EXPECT_EQ(OpenAiError::ForStatus(403, "no").code, "permission_denied");
  EXPECT_EQ(OpenAiError::ForStatus(404, "no model").code, "model_not_found");
  EXPECT_EQ(OpenAiError::ForStatus(429, "slow down").type, "rate_limit_exceeded");
  EXPECT_EQ(OpenAiError::ForStatus(429, "slow down").code, "rate_limit_exceeded");
  EXPECT_EQ(OpenAiError::ForStatus(413, "big").type, "invalid_request_error");
  for (unsigned s : {500u, 502u, 503u, 504u}) EXPECT_EQ(OpenAiError::ForStatus(s, "x").type, "server_error");
  EXPECT_EQ(OpenAiError::ForStatus(403, "x", "wrong_tenant").code, "wrong_tenant");
  EXPECT_NO_THROW(json::parse(OpenAiError::ForStatus(400, "bad \xff byte").Json())) << "invalid UTF-8 is replaced";
}

TEST(OpenAiError, ServingStatusesMapToHttp) {
  EXPECT_EQ(ErrorFromStatus(ResourceExhaustedError("queue full")).http_status, 503u);
  EXPECT_EQ(ErrorFromStatus(DeadlineExceededError("late")).http_status, 504u);
  EXPECT_EQ(ErrorFromStatus(UnavailableError("died")).http_status, 502u);
  EXPECT_EQ(ErrorFromStatus(FailedPreconditionError("draining")).http_status, 503u);
  EXPECT_EQ(ErrorFromStatus(InvalidArgumentError("body")).http_status, 400u);
  auto nf = ErrorFromStatus(NotFoundError("no deployment 'x'"));
  EXPECT_EQ(nf.http_status, 404u);
  EXPECT_EQ(nf.code, "model_not_found");
  EXPECT_EQ(nf.message, "no deployment 'x'");
  EXPECT_EQ(ErrorFromStatus(PermissionDeniedError("no")).http_status, 403u);
  EXPECT_EQ(ErrorFromStatus(InternalError("bug")).http_status, 500u);
  EXPECT_EQ(ErrorFromStatus(InternalError("bug")).type, "server_error");
}

TEST(OpenAiModels, ListJson) {
  auto j = json::parse(ModelListJson({{"chat", 1700000000, "acme"}, {"embed", 5, "system"}}));
  EXPECT_EQ(j, json::parse(R"({"object":"list","data":[
      {"id":"chat","object":"model","created":1700000000,"owned_by":"acme"},
      {"id":"embed","object":"model","created":5,"owned_by":"system"}]})"));
  EXPECT_EQ(json::parse(ModelListJson({})), json::parse(R"({"object":"list","data":[]})"));
}

TEST(OpenAiUsage, FromAWholeBody) {
  EXPECT_EQ(UsageFromBody(R"({"id":"x","usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}})"),
            (TokenUsage{12, 34}));
  EXPECT_FALSE(UsageFromBody(R"({"id":"x"})"));
  EXPECT_FALSE(UsageFromBody(R"({"usage":{"prompt_tokens":-1,"completion_tokens":3}})"));
  EXPECT_FALSE(UsageFromBody(R"({"usage":{"prompt_tokens":1.5,"completion_tokens":3}})"));
  EXPECT_FALSE(UsageFromBody(R"({"usage":{"prompt_tokens":5000000000,"completion_tokens":3}})"));
  EXPECT_FALSE(UsageFromBody("not json"));
}

TEST(OpenAiUsage, FromAStreamInPiecesOfAnySize) {
  const std::string stream =
      "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\n"
      ": a comment\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":9}}\n\n"
      "data: [DONE]\n\n";
  for (size_t piece : {1u, 3u, 17u, 1000u}) {
    StreamUsageScanner scanner;
    for (size_t i = 0; i < stream.size(); i += piece) scanner.Feed(std::string_view(stream).substr(i, piece));
    EXPECT_EQ(scanner.usage(), (TokenUsage{7, 9})) << "the last usage wins, pieces of " << piece;
    EXPECT_TRUE(scanner.done());
  }
  StreamUsageScanner none;
  none.Feed("data: {\"choices\":[]}\n\n");
  EXPECT_FALSE(none.usage());
  EXPECT_FALSE(none.done());
}

TEST(OpenAiUsage, AnOverlongLineIsSkippedNotKept) {
  StreamUsageScanner scanner;
  scanner.Feed("data: {\"usage\":");
  scanner.Feed(std::string(2 << 20, ' '));
  scanner.Feed("{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
  EXPECT_FALSE(scanner.usage());
  scanner.Feed("data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n");
  EXPECT_EQ(scanner.usage(), (TokenUsage{2, 3}));
}

}  // namespace
}  // namespace troupe::api
