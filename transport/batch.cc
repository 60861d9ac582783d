// Batch framing: writing records and reading them back from untrusted bytes.
#include "transport/batch.h"

namespace troupe::transport {
namespace {

constexpr size_t kSizeBytes = 4;

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

}  // namespace

void AppendBatchRecord(const EncodedEnvelope& envelope, const uint8_t* payload, size_t payload_size,
                       std::string* batch) {
  PutU32(*batch, static_cast<uint32_t>(envelope.size));
  batch->append(reinterpret_cast<const char*>(envelope.bytes), envelope.size);
  PutU32(*batch, static_cast<uint32_t>(payload_size));
  if (payload_size > 0) batch->append(reinterpret_cast<const char*>(payload), payload_size);
}

bool BatchReader::Fault(size_t at, const std::string& what) {
  status_ = InvalidArgumentError("record " + std::to_string(index_) + " at byte " + std::to_string(at) + ": " + what);
  pos_ = size_;  // nothing after a fault can be found
  return false;
}

bool BatchReader::Next(BatchRecord* record) {
  if (pos_ >= size_) return false;
  const size_t start = pos_;
  size_t left = size_ - pos_;
  const uint8_t* p = bytes_ + pos_;
  auto truncated = [&](const char* field) {
    return Fault(start, "truncated: " + std::to_string(left) + " byte(s) left where the 4-byte " + field +
                            " size belongs");
  };
  if (left < kSizeBytes) return truncated("envelope");
  const uint32_t env_size = GetU32(p);
  p += kSizeBytes;
  left -= kSizeBytes;
  if (env_size > left) {
    return Fault(start, "envelope size " + std::to_string(env_size) + " beyond the batch (" + std::to_string(left) +
                            " bytes left)");
  }
  if (env_size > kMaxEnvelopeBytes) {
    return Fault(start, "envelope size " + std::to_string(env_size) + " above the " +
                            std::to_string(kMaxEnvelopeBytes) + "-byte envelope limit");
  }
  auto env = DecodeEnvelope(p, env_size);
  if (!env.ok()) return Fault(start, env.status().message());
  if (env->kind != FrameKind::kData) {
    return Fault(start, "not a data frame (kind " + std::to_string(static_cast<int>(env->kind)) + ")");
  }
  p += env_size;
  left -= env_size;
  if (left < kSizeBytes) return truncated("payload");
  const uint32_t payload_size = GetU32(p);
  p += kSizeBytes;
  left -= kSizeBytes;
  if (payload_size > left) {
    return Fault(start, "payload size " + std::to_string(payload_size) + " beyond the batch (" +
                            std::to_string(left) + " bytes left)");
  }
  record->header = env->header;
  record->payload = p;
  record->payload_size = payload_size;
  record->offset = start;
  record->oversized = payload_size > max_frame_bytes_;
  pos_ = static_cast<size_t>(p - bytes_) + payload_size;
  ++index_;
  return true;
}

SplitBatchResult SplitBatch(const uint8_t* bytes, size_t size, size_t max_frame_bytes) {
  SplitBatchResult result;
  BatchReader reader(bytes, size, max_frame_bytes);
  BatchRecord record;
  while (reader.Next(&record)) result.records.push_back(record);
  result.status = reader.status();
  return result;
}

}  // namespace troupe::transport
