// Tests of Status, StatusOr, Buffer and logging set-up.
#include <gtest/gtest.h>

#include <cstring>

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

TEST(Buffer, AllocatedBuffersAreAlignedAndMoveAcrossDeleterKinds) {
  for (size_t size : {size_t{1}, size_t{24}, Buffer::kCacheAlignedFrom - 1, Buffer::kCacheAlignedFrom, size_t{1} << 20}) {
    Buffer b = Buffer::Allocate(size);
    ASSERT_EQ(b.size(), size);
    auto address = reinterpret_cast<uintptr_t>(b.data());
    EXPECT_EQ(address % (size >= Buffer::kCacheAlignedFrom ? 64 : 16), 0u) << size;
    std::memset(b.data(), 0x5a, size);  // ASan: the whole size is ours
  }
  // A heap buffer assigned over one with a custom deleter (and back) releases each once.
  int releases = 0;
  Buffer custom(new uint8_t[8], 8, [&](uint8_t* d, size_t) { ++releases; delete[] d; });
  Buffer heap = Buffer::Allocate(16);
  Buffer moved = std::move(heap);
  EXPECT_TRUE(heap.empty());
  custom = std::move(moved);  // releases the custom bytes; now holds the heap ones
  EXPECT_EQ(releases, 1);
  EXPECT_EQ(custom.size(), 16u);
  Buffer other(new uint8_t[4], 4, [&](uint8_t* d, size_t) { ++releases; delete[] d; });
  custom = std::move(other);  // frees the heap bytes (std::free), keeps the deleter
  EXPECT_EQ(releases, 1);
  custom.Reset();
  EXPECT_EQ(releases, 2);
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
