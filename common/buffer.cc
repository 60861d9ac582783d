// Buffer allocation and release.
#include "common/buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace troupe {

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = other.data_;
    size_ = other.size_;
    heap_ = other.heap_;
    if (other.deleter_) deleter_ = std::move(other.deleter_);
    other.Forget();
  }
  return *this;
}

void Buffer::Reset() {
  if (data_ != nullptr) {
    if (heap_) {
      std::free(data_);
    } else if (deleter_) {
      deleter_(data_, size_);
    }
  }
  data_ = nullptr;
  size_ = 0;
  heap_ = false;
  if (deleter_) deleter_ = nullptr;
}

Buffer Buffer::Allocate(size_t size) {
  if (size == 0) return Buffer();
  void* p = nullptr;
  if (size < kCacheAlignedFrom) {
    p = std::malloc(size);
  } else {
    constexpr size_t kAlign = 64;
    p = std::aligned_alloc(kAlign, (size + kAlign - 1) / kAlign * kAlign);
  }
  if (p == nullptr) throw std::bad_alloc();
  Buffer b;
  b.data_ = static_cast<uint8_t*>(p);
  b.size_ = size;
  b.heap_ = true;
  return b;
}

Buffer Buffer::CopyOf(const void* bytes, size_t size) {
  Buffer b = Allocate(size);
  if (size > 0) std::memcpy(b.data(), bytes, size);
  return b;
}

}  // namespace troupe
