// Batch framing: several data frames in one message (FrameKind::kBatch), written and split without UCX.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "transport/envelope.h"
#include "transport/frame.h"

namespace troupe::transport {

// A batch is a run of records, each
//   u32 envelope size | envelope (a data envelope) | u32 payload size | payload
// with the sizes little-endian and nothing between records or after the last one. It travels
// as the payload of a message whose own envelope has kind kBatch (docs/transport.md, "Batching").

/// Sending: data frames queued for one peer in the same progress turn travel as one batch (one
/// UCX send, one syscall over TCP) when their payloads are at most kMaxBatchedPayload bytes and
/// the batch stays within kMaxBatchBytes and kMaxBatchFrames (below UCX's rendezvous threshold:
/// batches go eagerly).
inline constexpr size_t kMaxBatchedPayload = 2048;
inline constexpr size_t kMaxBatchBytes = 8192;
inline constexpr size_t kMaxBatchFrames = 64;
/// Largest batch a receiver accepts, in bytes (a peer with other limits may send bigger ones).
inline constexpr size_t kMaxBatchBytesAccepted = 256 * 1024;

/// Appends one record (an encoded data envelope and `payload_size` bytes at `payload`) to `batch`.
void AppendBatchRecord(const EncodedEnvelope& envelope, const uint8_t* payload, size_t payload_size,
                       std::string* batch);

/// One record of a received batch. `payload` points into the batch's bytes, which must outlive it.
struct BatchRecord {
  /// The record envelope's header as the sender wrote it (src_node is the sender's claim).
  FrameHeader header;
  const uint8_t* payload = nullptr;
  size_t payload_size = 0;
  /// Byte offset of the record (its envelope size field) in the batch.
  size_t offset = 0;
  /// The payload is above the reader's max_frame_bytes: the frame is to be dropped, and the
  /// records after it still count (its size was read, so the next record is found).
  bool oversized = false;
};

/// Reads the records of an untrusted batch one at a time, in order, without allocating. Every
/// size is checked against what is left before it is used; the first fault ends the batch (no
/// later record can be found) and status() names it and its byte offset. The transport delivers
/// each record as it is read: the frames before a fault are delivered, and a handler that closes
/// the connection stops the rest.
class BatchReader {
 public:
  /// `bytes` (`size` bytes) must outlive the reader and its records. Payloads above
  /// `max_frame_bytes` are returned with `oversized` set.
  BatchReader(const uint8_t* bytes, size_t size, size_t max_frame_bytes)
      : bytes_(bytes), size_(size), max_frame_bytes_(max_frame_bytes) {}

  /// Reads the next record into `*record`. False at the end of the batch or at a fault; then
  /// status() tells which.
  bool Next(BatchRecord* record);

  /// Ok so far (and at the end of a well-formed batch); after a fault, InvalidArgument with
  /// what was wrong, which record (counted from 0) and at which byte offset.
  const Status& status() const { return status_; }

 private:
  bool Fault(size_t at, const std::string& what);

  const uint8_t* bytes_;
  size_t size_;
  size_t max_frame_bytes_;
  size_t pos_ = 0;
  size_t index_ = 0;  // records read so far
  Status status_;
};

/// What SplitBatch found: the records before the first fault (all of them in a well-formed
/// batch), and that fault (Ok if none; see BatchReader::status()).
struct SplitBatchResult {
  std::vector<BatchRecord> records;
  Status status;
};

/// Splits a whole batch (`size` bytes at `bytes`, which must outlive the records) into its
/// records; payloads above `max_frame_bytes` are kept with `oversized` set. Never crashes on
/// untrusted input.
SplitBatchResult SplitBatch(const uint8_t* bytes, size_t size, size_t max_frame_bytes);

}  // namespace troupe::transport
