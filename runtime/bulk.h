// Bulk data between nodes: a descriptor, then the bytes by the transport's rendezvous path
// straight into a buffer the receiver provides (a tensor's memory, an mmap of the destination
// file), never through a mailbox. docs/transport.md, "Bulk data".
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/buffer.h"
#include "common/status.h"
#include "transport/frame.h"

namespace troupe::runtime {

class Runtime;
using NodeId = transport::NodeId;

/// Frame type ids of the bulk path (range 1630-1649 is the bulk path's). Part of the wire
/// format: never renumber.
enum BulkWireType : uint32_t {
  kBulkOffer = 1630,   ///< JSON descriptor; request_id = transfer id
  kBulkAnswer = 1631,  ///< JSON status: the receiver accepted (ok) or refused the offer
  kBulkData = 1632,    ///< raw bytes; request_id = transfer id, span_id = offset of the chunk
  kBulkDone = 1633,    ///< JSON status: the bytes are where the receiver wanted them (ok) or not
  kBulkCancel = 1634,  ///< no payload: the sender gave up the transfer (request_id)
  kBulkFirst = 1630,
  kBulkLast = 1649,
};

/// What a transfer is. The sender fills kind, size and attrs; the endpoint sets transfer_id.
struct BulkDescriptor {
  uint64_t transfer_id = 0;
  /// In bytes.
  uint64_t size = 0;
  /// Selects the receiver's sink (BulkEndpoint::RegisterSink), e.g. "checkpoint-file".
  std::string kind;
  /// Free-form facts for the sink, e.g. job, attempt, step, rank, path.
  std::map<std::string, std::string> attrs;
};

/// Encoded descriptors above this are refused (InvalidArgument) before they are parsed.
inline constexpr size_t kMaxDescriptorBytes = 64 * 1024;

/// The descriptor as JSON ({"id","size","kind","attrs"}).
std::string EncodeDescriptor(const BulkDescriptor& descriptor);
/// InvalidArgument naming what is wrong for malformed input or input over kMaxDescriptorBytes.
StatusOr<BulkDescriptor> DecodeDescriptor(std::string_view json);
/// A status as JSON ({"code","message"}) and back (a malformed one decodes as Internal).
std::string EncodeStatus(const Status& status);
Status DecodeStatus(std::string_view json);

/// The receiver's limits, checked on the offer before any buffer is made. Rule: a peer may make
/// this node hold at most max_bytes_accepted bytes of unfinished transfers (the defaults fit a
/// 7B model's bf16 shard per rank of 8, ~1.75 GiB, in one transfer).
struct BulkLimits {
  /// A larger offer is refused with ResourceExhausted.
  uint64_t max_transfer_bytes = 16ull << 30;
  /// Accepted, unfinished transfers from all peers together; beyond it offers are refused with
  /// ResourceExhausted (send again later).
  uint64_t max_bytes_accepted = 32ull << 30;
  size_t max_transfers_accepted = 256;
};

/// StatusOr-free check of an offer of `size` bytes against `limits` when `accepted_bytes` in
/// `accepted_transfers` are held already: OK or ResourceExhausted naming the limit.
Status CheckOffer(const BulkLimits& limits, uint64_t size, uint64_t accepted_bytes, size_t accepted_transfers,
                  NodeId from);

struct BulkConfig {
  BulkLimits limits;
  /// The bytes go in frames of at most this many bytes (each one rendezvous transfer). Must not
  /// exceed the transport's max_frame_bytes (64 MiB by default) on either side.
  uint64_t chunk_bytes = 16ull << 20;
  /// Chunks of one transfer in flight at the sender. chunk_bytes * this must stay below the
  /// receiver's max_rndv_bytes_in_flight (256 MiB by default), or chunks are refused as busy.
  size_t chunks_in_flight = 4;
  /// The receiver fails an accepted transfer that makes no progress (no chunk starts or lands)
  /// for this long with DeadlineExceeded naming the transfer and its sender, frees its buffer
  /// (the sink's finish runs with the error) and tells the sender. 0: never. The rule is Envoy's
  /// stream idle timeout (HttpConnectionManager.stream_idle_timeout, 5 min by default), shorter
  /// here because an idle transfer pins its whole buffer (up to max_transfer_bytes), not a
  /// stream's window: a live sender lands a 16 MiB chunk in under 0.1 s on these VMs
  /// (bulk_bench), so 60 s is ~1000x that and still fails a stuck sender within a minute. A lost
  /// sender is found sooner, by the heartbeats (Unavailable).
  std::chrono::milliseconds stall_timeout{60000};
};

/// The receiver's stall rule (BulkConfig::stall_timeout): when a transfer whose last progress was
/// at `last_progress` fails; time_point::max() for a timeout of 0 or less (never), and for a
/// deadline beyond what a time_point holds.
std::chrono::steady_clock::time_point StallDeadline(std::chrono::steady_clock::time_point last_progress,
                                                    std::chrono::milliseconds stall_timeout);

/// Where an accepted transfer's bytes land: `data` has room for the descriptor's size (null
/// for size 0) and stays valid while `keep` lives (the endpoint holds `keep` until the last
/// chunk's receive has ended, even after a failure).
struct BulkSink {
  uint8_t* data = nullptr;
  std::shared_ptr<void> keep;
  /// Runs once, on the endpoint's worker thread, after the last byte landed (`received` OK) or
  /// the transfer failed (`received` the error: clean up). For OK its result is what the sender
  /// hears (e.g. an fsync's error); for an error the result is ignored.
  std::function<Status(const Status& received)> finish;
  /// Optional: runs on the endpoint's worker thread once the bytes [offset, offset + size) have
  /// landed in `data`, chunk by chunk in order, before finish (e.g. to write them to a file while
  /// the next chunk arrives). An error fails the transfer: finish runs with it, the sender hears it.
  std::function<Status(uint64_t offset, uint64_t size)> landed;
};

/// Makes the sink of an offer, on the endpoint's worker thread (it may block on file I/O). An
/// error refuses the offer and reaches the sender.
using SinkFactory = std::function<StatusOr<BulkSink>(NodeId from, const BulkDescriptor& descriptor)>;

/// How a file sink takes the bytes.
enum class FileSinkMode {
  /// Into a heap buffer of the file's size; each chunk is written to the file (pwrite at its
  /// offset) as soon as it landed and its writeback started (sync_file_range), so the disk works
  /// while the next chunk arrives and finish only waits for it (fdatasync): one copy, as `dd`
  /// does, but no page fault per 4 KiB page. The buffers are reused by later sinks (sizes rounded
  /// up to a power of two, at least 1 MiB; up to 1 GiB kept idle per process): a fresh buffer's
  /// first touch measured ~250 MB/s on the 2-core VMs (bulk_bench).
  kWrite,
  /// Straight into an mmap of the file (no copy). Every page then takes a write fault
  /// (page_mkwrite), which measured slower than kWrite on ext4 (bench/transport/bulk_bench).
  kMmap,
};

/// A sink into a new file at `path` (parents created 0755, file 0644, truncated, its blocks
/// reserved with posix_fallocate so a full disk refuses the offer: ResourceExhausted): kWrite
/// writes each chunk as it lands (BulkSink::landed); finish fdatasyncs the file and fsyncs its
/// directory; on failure the file is removed.
StatusOr<BulkSink> MakeFileSink(const std::string& path, uint64_t size, FileSinkMode mode = FileSinkMode::kWrite);

/// The bytes a sender sends: `data` stays valid while `keep` lives (the endpoint holds it until
/// the transfer completes).
struct BulkSource {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  std::shared_ptr<const void> keep;
  static BulkSource Of(Buffer buffer);
  /// A read-only mmap of the file at `path`. NotFound / Internal naming the path and errno.
  static StatusOr<BulkSource> MapFile(const std::string& path);
};

struct BulkStats {
  uint64_t transfers_sent = 0;      ///< completed OK at the sender
  uint64_t transfers_received = 0;  ///< completed OK at the receiver
  uint64_t transfers_failed = 0;    ///< either side
  uint64_t offers_refused = 0;      ///< refused by this receiver
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t bytes_accepted = 0;      ///< held now by accepted, unfinished transfers
};

/// The bulk path of one runtime: sends transfers and receives them into sinks. Attach one per
/// runtime (it installs the bridge's frame tap for types kBulkFirst..kBulkLast).
///
/// Protocol: offer (descriptor) -> answer (ok or refused: ResourceExhausted over the limits,
/// NotFound for an unknown kind, the sink's error) -> chunks (kBulkData, in order) -> done (the
/// sink's finish). A lost peer fails its transfers on both sides with Unavailable naming it,
/// within the runtime's failure-detection time (heartbeat_timeout).
///
/// Thread-safety: every method may be called from any thread; done callbacks run on the
/// transport's progress thread or the caller's (must not block). Destroy before the runtime.
class BulkEndpoint {
 public:
  using DoneCallback = std::function<void(const Status&)>;

  /// InvalidArgument for chunk_bytes 0 or chunks_in_flight 0.
  static StatusOr<std::unique_ptr<BulkEndpoint>> Attach(Runtime& runtime, BulkConfig config = {});
  /// Close().
  ~BulkEndpoint();
  /// Removes the tap, fails transfers in flight with Cancelled (their sinks' finish runs); later
  /// Sends complete at once with Cancelled. Call it before the runtime stops when others may
  /// still hold the endpoint (e.g. actor workers' checkpoint handles). Idempotent.
  void Close();
  BulkEndpoint(const BulkEndpoint&) = delete;
  BulkEndpoint& operator=(const BulkEndpoint&) = delete;

  /// Offers of `kind` go to `factory`. AlreadyExists if the kind has one.
  Status RegisterSink(const std::string& kind, SinkFactory factory);

  /// Sends `source` (descriptor.size is set to its size) to `peer`'s endpoint; `done` runs once
  /// with OK when the receiver's sink finished, or the error: Unavailable (peer lost, naming
  /// it), ResourceExhausted / NotFound / the sink's error (refused), DeadlineExceeded (after
  /// `timeout`, counted from the call), Cancelled (this endpoint went).
  void Send(NodeId peer, BulkDescriptor descriptor, BulkSource source, std::chrono::milliseconds timeout,
            DoneCallback done);
  /// Send() and wait for its result. Never call it from a progress-thread callback.
  Status SendAndWait(NodeId peer, BulkDescriptor descriptor, BulkSource source, std::chrono::milliseconds timeout);

  BulkStats stats() const;

 private:
  class Impl;
  explicit BulkEndpoint(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace troupe::runtime
