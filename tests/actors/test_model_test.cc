// The test backend's pure part: what it reads from OpenAI requests (and the errors a client
// sees), its deterministic words, its token schedule, and the responses' OpenAI shapes.
#include "actors/serving/test_model.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace troupe::serving {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

TestRequest Parse(const std::string& path, const std::string& body, const TestModelConfig& config = {}) {
  auto parsed = ParseTestRequest(path, body, config);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : TestRequest{};
}

Status ParseError(const std::string& path, const std::string& body) {
  return ParseTestRequest(path, body, TestModelConfig{}).status();
}

// The JSON objects of a stream's events, and whether it ended with [DONE].
std::vector<Json> Events(const std::string& stream, bool* done) {
  std::vector<Json> out;
  *done = false;
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t end = stream.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "an event without its blank line: " << stream.substr(pos);
    if (end == std::string::npos) break;
    std::string event = stream.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    std::string data = event.substr(6);
    EXPECT_FALSE(*done) << "an event after [DONE]: " << data;
    if (data == "[DONE]") {
      *done = true;
    } else {
      out.push_back(Json::parse(data));
    }
    pos = end + 2;
  }
  return out;
}

TEST(TestModel, ReadsChatAndCompletionRequests) {
  TestRequest chat = Parse(kChatPath, R"({"model":"m1","messages":[{"role":"system","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"hello there"},{"type":"image_url","image_url":{"url":"x"}}]}],
      "max_tokens":5,"temperature":0.7,"stream":true,"stream_options":{"include_usage":true}})");
  EXPECT_EQ(chat.kind, ApiKind::kChat);
  EXPECT_EQ(chat.model, "m1");
  EXPECT_EQ(chat.prompt, "be brief\nhello there");
  EXPECT_EQ(chat.prompt_tokens, 4u);
  EXPECT_EQ(chat.max_tokens, 5u);
  EXPECT_TRUE(chat.stream);
  EXPECT_TRUE(chat.include_usage);

  TestModelConfig config;
  config.model = "default-model";
  TestRequest completion = Parse(kCompletionPath, R"({"prompt":["one two  three"]})", config);
  EXPECT_EQ(completion.kind, ApiKind::kCompletion);
  EXPECT_EQ(completion.model, "default-model") << "no model in the body: the configured name";
  EXPECT_EQ(completion.prompt_tokens, 3u);
  EXPECT_EQ(completion.max_tokens, 16u) << "OpenAI's default for /v1/completions";
  EXPECT_FALSE(completion.stream);
  EXPECT_EQ(Parse(kChatPath, R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":7})").max_tokens,
            7u);
}

TEST(TestModel, BadBodiesNameTheFieldAndWhatItMustBe) {
  struct Case {
    std::string path, body, expect;
  };
  const std::vector<Case> cases = {
      {kChatPath, "{not json", "body: not JSON"},
      {kChatPath, "[1,2]", "body: must be a JSON object"},
      {kChatPath, R"({"model":"m"})", "messages: required"},
      {kChatPath, R"({"messages":[]})", "messages: must be a non-empty array"},
      {kChatPath, R"({"messages":[{"content":"x"}]})", "messages[0].role: required"},
      {kChatPath, R"({"messages":[{"role":"user","content":5}]})", "messages[0].content: must be a string"},
      {kChatPath, R"({"model":3,"messages":[{"role":"user","content":"x"}]})", "model: must be a string"},
      {kCompletionPath, R"({"model":"m"})", "prompt: required"},
      {kCompletionPath, R"({"prompt":{"a":1}})", "prompt: must be a string, got object of 1 elements"},
      {kCompletionPath, R"({"prompt":["a","b"]})", "prompt: the test model takes one prompt"},
      {kCompletionPath, R"({"prompt":"x","max_tokens":"ten"})",
       "max_tokens: must be an integer from 1 to 4096 (this model's limit), got string \"ten\""},
      {kCompletionPath, R"({"prompt":"x","max_tokens":0})", "max_tokens: must be an integer from 1 to 4096"},
      {kCompletionPath, R"({"prompt":"x","max_tokens":5000})", "max_tokens: must be an integer from 1 to 4096"},
      {kCompletionPath, R"({"prompt":"x","stream":"yes"})", "stream: must be true or false"},
      {kCompletionPath, R"({"prompt":"x","stream_options":{"include_usage":true}})",
       "stream_options: only allowed when stream is true"},
      {kCompletionPath, R"({"prompt":"x","n":2})", "n: the test model makes one choice"},
      {"/v1/embeddings", R"({"input":"x"})", "path '/v1/embeddings': the test model serves"},
  };
  for (const auto& c : cases) {
    Status s = ParseError(c.path, c.body);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.body << ": " << s;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << c.body << " gave: " << s.message();
  }
  // A deeply nested value is described, not printed (printing recurses).
  std::string deep = R"({"prompt":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_EQ(ParseError(kCompletionPath, deep).code(), StatusCode::kInvalidArgument);
}

TEST(TestModel, TheSamePromptGivesTheSameWordsAndAnotherPromptOthers) {
  TestRequest a = Parse(kCompletionPath, R"({"prompt":"tell me a story","max_tokens":20})");
  TestRequest b = Parse(kCompletionPath, R"({"prompt":"tell me a poem","max_tokens":20})");
  auto first = CompletionTokens(a, 0);
  ASSERT_EQ(first.size(), 20u);
  EXPECT_EQ(CompletionTokens(a, 0), first);
  EXPECT_NE(CompletionTokens(b, 0), first);
  EXPECT_NE(CompletionTokens(a, 1), first) << "the configured seed is mixed in";
  EXPECT_NE(first[0][0], ' ') << "the first word has no leading space";
  for (size_t k = 1; k < first.size(); ++k) EXPECT_EQ(first[k][0], ' ') << k;
}

TEST(TestModel, TokensFollowTheFirstTokenLatencyAndTheRate) {
  TestModelConfig config;
  config.first_token_latency = 50ms;
  config.tokens_per_second = 100;  // one every 10 ms
  EXPECT_EQ(TokenOffset(config, 0), 50ms);
  EXPECT_EQ(TokenOffset(config, 1), 60ms);
  EXPECT_EQ(TokenOffset(config, 10), 150ms);
  EXPECT_EQ(TokensDue(config, 49ms, 20), 0u);
  EXPECT_EQ(TokensDue(config, 50ms, 20), 1u);
  EXPECT_EQ(TokensDue(config, 59999us, 20), 1u);
  EXPECT_EQ(TokensDue(config, 60ms, 20), 2u);
  EXPECT_EQ(TokensDue(config, 10s, 20), 20u) << "never more than the total";
  EXPECT_EQ(TokensDue(config, 10s, 0), 0u);
  // A rate whose period is not a whole number of microseconds: due exactly when TokenOffset says.
  config.tokens_per_second = 3;
  for (uint32_t k = 1; k < 10; ++k) {
    EXPECT_EQ(TokensDue(config, TokenOffset(config, k), 100), k + 1) << k;
    EXPECT_EQ(TokensDue(config, TokenOffset(config, k) - 1us, 100), k) << k;
  }
  config.tokens_per_second = 1e300;  // extreme rates neither overflow nor let tokens out early
  EXPECT_EQ(TokensDue(config, 50ms + 1us, 8), 8u) << "every later token 1 us after the first (rounded up)";
  EXPECT_EQ(TokensDue(config, 49ms, 8), 0u);
  config.tokens_per_second = 1e-300;
  EXPECT_EQ(TokensDue(config, 10s, 8), 1u);
  EXPECT_GT(TokenOffset(config, 1), std::chrono::hours(24 * 300));
  config.tokens_per_second = 0;  // unpaced: all with the first
  EXPECT_EQ(TokenOffset(config, 7), 50ms);
  EXPECT_EQ(TokensDue(config, 50ms, 8), 8u);
}

TEST(TestModel, ResponsesHaveTheOpenAIShapes) {
  const ResponseMeta meta{ResponseId(ApiKind::kChat, 0xab), 1767225600};
  EXPECT_EQ(meta.id, "chatcmpl-00000000000000ab");
  TestRequest chat =
      Parse(kChatPath, R"({"model":"m","messages":[{"role":"user","content":"hi you"}],"max_tokens":3})");
  Json body = Json::parse(CompletionBody(chat, meta, {"a", " b", " c"}));
  EXPECT_EQ(body["id"], meta.id);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["created"], 1767225600);
  EXPECT_EQ(body["model"], "m");
  ASSERT_EQ(body["choices"].size(), 1u);
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "a b c");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 2);
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
  EXPECT_EQ(body["usage"]["total_tokens"], 5);

  TestRequest completion = Parse(kCompletionPath, R"({"prompt":"x","max_tokens":4})");
  body = Json::parse(CompletionBody(completion, {ResponseId(ApiKind::kCompletion, 1), 1}, {"a", " b"}));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["id"], "cmpl-0000000000000001");
  EXPECT_EQ(body["choices"][0]["text"], "a b");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop") << "fewer tokens than max_tokens (cancelled, cut)";
}

TEST(TestModel, ChatStreamsEndWithTheFinishChunkTheUsageAndDone) {
  TestRequest chat = Parse(kChatPath, R"({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2,
      "stream":true,"stream_options":{"include_usage":true}})");
  const ResponseMeta meta{"chatcmpl-1", 5};
  std::string stream = StreamTokenEvent(chat, meta, 0, "a") + StreamTokenEvent(chat, meta, 1, " b") +
                       StreamEndEvents(chat, meta, 2);
  bool done = false;
  auto events = Events(stream, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 4u);
  for (const auto& e : events) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], "chatcmpl-1");
  }
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(events[0]["choices"][0]["delta"]["content"], "a");
  EXPECT_TRUE(events[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(events[1]["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(events[2]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(events[2]["choices"][0]["delta"].empty());
  EXPECT_TRUE(events[3]["choices"].empty());
  EXPECT_EQ(events[3]["usage"]["completion_tokens"], 2);
  EXPECT_EQ(events[3]["usage"]["prompt_tokens"], 1);

  // Without include_usage: no usage chunk, and no usage field at all.
  TestRequest plain = Parse(kCompletionPath, R"({"prompt":"x","max_tokens":1,"stream":true})");
  events = Events(StreamTokenEvent(plain, meta, 0, "a") + StreamEndEvents(plain, meta, 1), &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0]["object"], "text_completion");
  EXPECT_EQ(events[0]["choices"][0]["text"], "a");
  EXPECT_FALSE(events[0].contains("usage"));
  EXPECT_EQ(events[1]["choices"][0]["finish_reason"], "length");
}

TEST(TestModel, TheProbeIsAOneTokenCompletion) {
  TestRequest probe = Parse(kCompletionPath, ProbeBody());
  EXPECT_EQ(probe.max_tokens, 1u);
  EXPECT_FALSE(probe.stream);
}

}  // namespace
}  // namespace troupe::serving
