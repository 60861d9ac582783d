// The process backend's pure parts: server-sent events split into whole events, usage counts
// read from responses and streams.
#include <gtest/gtest.h>

#include "actors/serving/process_backend.h"

namespace troupe::serving {
namespace {

TEST(TakeWholeEvents, KeepsAPartialEventForLater) {
  std::string pending = "data: {\"a\":1}\n\ndata: {\"b\"";
  EXPECT_EQ(TakeWholeEvents(&pending), "data: {\"a\":1}\n\n");
  EXPECT_EQ(pending, "data: {\"b\"");
  pending += ":2}\n";
  EXPECT_EQ(TakeWholeEvents(&pending), "");  // one newline does not end an event
  pending += "\ndata: [DONE]\n\n";
  EXPECT_EQ(TakeWholeEvents(&pending), "data: {\"b\":2}\n\ndata: [DONE]\n\n");
  EXPECT_EQ(pending, "");
}

TEST(TakeWholeEvents, CarriageReturnsAndMultiLineEvents) {
  std::string pending = "event: x\r\ndata: 1\r\n\r\ndata: 2\n";
  EXPECT_EQ(TakeWholeEvents(&pending), "event: x\r\ndata: 1\r\n\r\n");
  EXPECT_EQ(pending, "data: 2\n");
  std::string empty;
  EXPECT_EQ(TakeWholeEvents(&empty), "");
}

TEST(TakeWholeEvents, EveryByteSplitGivesTheSameEvents) {
  const std::string stream = "data: {\"x\":\"a\\n\"}\n\ndata: {\"y\":2}\r\n\r\ndata: [DONE]\n\n";
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    std::string pending = stream.substr(0, cut);
    std::string out = TakeWholeEvents(&pending);
    pending += stream.substr(cut);
    out += TakeWholeEvents(&pending);
    EXPECT_EQ(out, stream) << "cut at " << cut;
    EXPECT_EQ(pending, "");
  }
}

TEST(ParseUsage, ReadsTheCounts) {
  auto usage = ParseUsage(R"({"id":"x","usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19}})");
  ASSERT_TRUE(usage.has_value());
  EXPECT_EQ(usage->prompt_tokens, 3u);
  EXPECT_EQ(usage->completion_tokens, 16u);
}

TEST(ParseUsage, NoneWhereThereIsNoUsableUsage) {
  EXPECT_FALSE(ParseUsage("not json").has_value());
  EXPECT_FALSE(ParseUsage("[1,2]").has_value());
  EXPECT_FALSE(ParseUsage(R"({"usage":null})").has_value());
  EXPECT_FALSE(ParseUsage(R"({"usage":{"prompt_tokens":1}})").has_value());
  EXPECT_FALSE(ParseUsage(R"({"usage":{"prompt_tokens":-1,"completion_tokens":2}})").has_value());
  EXPECT_FALSE(ParseUsage(R"({"usage":{"prompt_tokens":"1","completion_tokens":2}})").has_value());
  EXPECT_FALSE(ParseUsage(R"({"usage":{"prompt_tokens":1,"completion_tokens":4294967296}})").has_value());
}

TEST(StreamUsage, TheLastEventThatCarriesOne) {
  const std::string events =
      "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}\n\n"
      "data:{\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5}}\r\n\r\n"
      "data: [DONE]\n\n";
  auto usage = StreamUsage(events);
  ASSERT_TRUE(usage.has_value());
  EXPECT_EQ(usage->prompt_tokens, 2u);
  EXPECT_EQ(usage->completion_tokens, 5u);
  EXPECT_FALSE(StreamUsage("data: {\"choices\":[]}\n\ndata: [DONE]\n\n").has_value());
  EXPECT_FALSE(StreamUsage(": a comment\n\n").has_value());
}

TEST(ProcessBackendConfigFromSpec, CopiesTheSpec) {
  ProcessBackend spec;
  spec.command = {"vllm", "serve", "m"};
  spec.env = {{"B", "2"}, {"A", "1"}};
  spec.working_dir = "/srv";
  spec.port_env = "VLLM_PORT";
  spec.health_path = "/healthz";
  spec.ready_timeout = std::chrono::milliseconds(5000);
  ProcessBackendConfig config = ProcessBackendConfigFromSpec(spec);
  EXPECT_EQ(config.command, spec.command);
  EXPECT_EQ(config.env, (std::vector<std::string>{"A=1", "B=2"}));
  EXPECT_EQ(config.working_dir, "/srv");
  EXPECT_EQ(config.port_env, "VLLM_PORT");
  EXPECT_EQ(config.health_path, "/healthz");
  EXPECT_EQ(config.ready_timeout.count(), 5000);
}

}  // namespace
}  // namespace troupe::serving
