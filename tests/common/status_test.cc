// Tests of Status, StatusOr, Buffer and logging set-up.
#include <gtest/gtest.h>

#include "common/buffer.h"
#include "common/logging.h"
#include "common/json.h"
#include "common/status.h"

namespace troupe {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd: " + std::to_string(x));
  return x / 2;
}

Status Quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int half, Half(x));
  ASSIGN_OR_RETURN(*out, Half(half));
  return OkStatus();
}

TEST(Status, OkAndErrorsPrintTheirCode) {
  EXPECT_TRUE(OkStatus().ok());
  EXPECT_EQ(OkStatus().ToString(), "ok");
  Status s = UnavailableError("node 3 lost");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.ToString(), "unavailable: node 3 lost");
}

TEST(StatusOr, AssignOrReturnPropagatesTheFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd: 3");
}

TEST(Buffer, MoveTransfersOwnershipAndReleasesOnce) {
  int releases = 0;
  auto* bytes = new uint8_t[4]{1, 2, 3, 4};
  {
    Buffer a(bytes, 4, [&](uint8_t* d, size_t) { ++releases; delete[] d; });
    Buffer b = std::move(a);
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(b.size(), 4u);
    EXPECT_EQ(b.data()[3], 4);
  }
  EXPECT_EQ(releases, 1);
}

TEST(Buffer, CopyOfHoldsTheSameBytes) {
  Buffer b = Buffer::CopyOf(std::string_view("hello"));
  EXPECT_EQ(b.view(), "hello");
  EXPECT_TRUE(Buffer::Allocate(0).empty());
}

TEST(Logging, RejectsUnknownLevelsByName) {
  EXPECT_TRUE(InitLogging("warn").ok());
  EXPECT_TRUE(InitLogging("off").ok());
  Status s = InitLogging("loud");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("loud"), std::string::npos);
  EXPECT_TRUE(InitLogging("warn").ok());
}

}  // namespace
}  // namespace troupe

TEST(JsonQuote, EscapesWhatJsonRequires) {
  EXPECT_EQ(troupe::JsonQuote("plain"), "\"plain\"");
  EXPECT_EQ(troupe::JsonQuote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(troupe::JsonQuote(std::string("x\ny\x01", 4)), "\"x\\u000ay\\u0001\"");
}
