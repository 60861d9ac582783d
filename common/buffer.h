// Buffer: an owning, movable run of bytes with a custom release, used for frame payloads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace troupe {

/// Owns `size` bytes at `data` and releases them with its deleter when destroyed.
/// Frames move Buffers from producer to transport to consumer without copying the bytes.
/// Not thread-safe; hand it from thread to thread by moving.
class Buffer {
 public:
  using Deleter = std::function<void(uint8_t*, size_t)>;

  Buffer() = default;
  Buffer(uint8_t* data, size_t size, Deleter deleter)
      : data_(data), size_(size), deleter_(std::move(deleter)) {}
  // Moves and destruction are inline: a frame's payload is moved several times on its way, and
  // each move leaves an empty buffer whose destruction should cost a test, not a call.
  Buffer(Buffer&& other) noexcept : data_(other.data_), size_(other.size_), heap_(other.heap_) {
    if (other.deleter_) deleter_ = std::move(other.deleter_);
    other.Forget();
  }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (data_ != nullptr || deleter_) Reset();
  }

  /// A buffer of `size` uninitialised bytes on the heap: aligned to 16 bytes (malloc's
  /// alignment, enough for Cap'n Proto's 8-byte words), and to 64 (a cache line) from
  /// kCacheAlignedFrom bytes on. Small buffers take malloc's fast path: aligned_alloc costs
  /// five times as much, and every frame allocates one or two.
  static Buffer Allocate(size_t size);
  static constexpr size_t kCacheAlignedFrom = 1024;
  /// A heap copy of `bytes`.
  static Buffer CopyOf(const void* bytes, size_t size);
  static Buffer CopyOf(std::string_view bytes) { return CopyOf(bytes.data(), bytes.size()); }

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const {
    return {reinterpret_cast<const char*>(data_), size_};
  }

  /// Keeps only the first `size` bytes (no-op if it holds fewer). The rest stays allocated
  /// until the buffer is released: for a buffer filled in place beyond what it turned out to need.
  void Truncate(size_t size) {
    if (size < size_) size_ = size;
  }
  /// Releases the bytes now.
  void Reset();

 private:
  // Empties the buffer without releasing anything (its bytes now belong to another buffer).
  void Forget() {
    data_ = nullptr;
    size_ = 0;
    heap_ = false;
    if (deleter_) deleter_ = nullptr;
  }

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  // From Allocate: released with std::free. Such buffers (most payloads) carry no deleter, so
  // moving one, which a frame's buffer is several times on its way, copies three words.
  bool heap_ = false;
  Deleter deleter_;
};

}  // namespace troupe
