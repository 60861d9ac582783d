#include "runtime/bulk.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/node_identity.h"
#include "runtime/runtime.h"

namespace troupe::runtime {

using transport::Frame;
using transport::FrameHeader;
using SteadyTime = std::chrono::steady_clock::time_point;

// ---- Pure parts ----------------------------------------------------------------------------

std::string EncodeDescriptor(const BulkDescriptor& d) {
  nlohmann::json j = {{"id", d.transfer_id}, {"size", d.size}, {"kind", d.kind}, {"attrs", d.attrs}};
  return j.dump();
}

StatusOr<BulkDescriptor> DecodeDescriptor(std::string_view json) {
  if (json.size() > kMaxDescriptorBytes) {
    return InvalidArgumentError("bulk descriptor of " + std::to_string(json.size()) + " bytes exceeds " +
                                std::to_string(kMaxDescriptorBytes));
  }
  auto j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return InvalidArgumentError("bulk descriptor is not a JSON object");
  BulkDescriptor d;
  auto id = j.find("id"), size = j.find("size"), kind = j.find("kind"), attrs = j.find("attrs");
  if (id == j.end() || !id->is_number_unsigned()) return InvalidArgumentError("bulk descriptor: no unsigned \"id\"");
  if (size == j.end() || !size->is_number_unsigned()) {
    return InvalidArgumentError("bulk descriptor: no unsigned \"size\"");
  }
  if (kind == j.end() || !kind->is_string()) return InvalidArgumentError("bulk descriptor: no string \"kind\"");
  d.transfer_id = id->get<uint64_t>();
  d.size = size->get<uint64_t>();
  d.kind = kind->get<std::string>();
  if (attrs != j.end()) {
    if (!attrs->is_object()) return InvalidArgumentError("bulk descriptor: \"attrs\" is not an object");
    for (auto it = attrs->begin(); it != attrs->end(); ++it) {
      if (!it->is_string()) return InvalidArgumentError("bulk descriptor: attr \"" + it.key() + "\" is not a string");
      d.attrs[it.key()] = it->get<std::string>();
    }
  }
  return d;
}

std::string EncodeStatus(const Status& status) {
  return nlohmann::json{{"code", static_cast<int>(status.code())}, {"message", status.message()}}.dump();
}

Status DecodeStatus(std::string_view json) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (!j.is_object() || !j.contains("code") || !j["code"].is_number_unsigned() || !j.contains("message") ||
      !j["message"].is_string() || j["code"].get<unsigned>() > static_cast<unsigned>(StatusCode::kInternal)) {
    return InternalError("malformed bulk status from peer");
  }
  auto code = static_cast<StatusCode>(j["code"].get<unsigned>());
  if (code == StatusCode::kOk) return OkStatus();
  return Status(code, j["message"].get<std::string>());
}

std::chrono::steady_clock::time_point StallDeadline(std::chrono::steady_clock::time_point last_progress,
                                                    std::chrono::milliseconds stall_timeout) {
  using TimePoint = std::chrono::steady_clock::time_point;
  if (stall_timeout.count() <= 0) return TimePoint::max();
  const auto timeout = std::chrono::duration_cast<TimePoint::duration>(stall_timeout);
  if (last_progress > TimePoint::max() - timeout) return TimePoint::max();
  return last_progress + timeout;
}

Status CheckOffer(const BulkLimits& limits, uint64_t size, uint64_t accepted_bytes, size_t accepted_transfers,
                  NodeId from) {
  const std::string what = "bulk transfer of " + std::to_string(size) + " bytes from " + DescribeNode(from);
  if (size > limits.max_transfer_bytes) {
    return ResourceExhaustedError(what + " refused: above max_transfer_bytes " +
                                  std::to_string(limits.max_transfer_bytes) + "; split it or raise the limit");
  }
  if (accepted_transfers >= limits.max_transfers_accepted) {
    return ResourceExhaustedError(what + " refused: " + std::to_string(accepted_transfers) +
                                  " transfers in progress (max_transfers_accepted); send again later");
  }
  if (accepted_bytes + size > limits.max_bytes_accepted) {
    return ResourceExhaustedError(what + " refused: " + std::to_string(accepted_bytes) +
                                  " bytes of transfers in progress, max_bytes_accepted " +
                                  std::to_string(limits.max_bytes_accepted) + "; send again later");
  }
  return OkStatus();
}

// ---- Files ----------------------------------------------------------------------------------

namespace {

Status ErrnoStatus(const std::string& what, const std::string& path, int err) {
  std::string m = what + " " + path + ": " + std::strerror(err);
  if (err == ENOSPC || err == EDQUOT) return ResourceExhaustedError(m);
  if (err == ENOENT) return NotFoundError(m);
  if (err == EIO || err == ESTALE) return UnavailableError(m);
  return InternalError(m);
}

struct Mapping {
  int fd = -1;
  uint8_t* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr != nullptr) munmap(addr, size);
    if (fd >= 0) close(fd);
  }
};

Status FsyncPath(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  return rc == 0 ? OkStatus() : ErrnoStatus("cannot fsync", path, err);
}

// Receive buffers of file sinks, kept for the next transfer: on these VMs a fresh buffer's first
// touch costs a page fault per 4 KiB page, measured at ~250 MB/s (bulk_bench: 1 s to receive 256
// MiB into new memory, 30 ms into used memory), so buffers are reused. Sizes are rounded up to a
// power of two (at least 1 MiB); at most kIdleBytes wait idle, the rest are freed.
class BufferPool {
 public:
  static constexpr uint64_t kIdleBytes = 1ull << 30;

  std::shared_ptr<Buffer> Take(uint64_t size) {
    uint64_t rounded = uint64_t{1} << 20;
    while (rounded < size) rounded <<= 1;
    Buffer buffer;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = idle_.find(rounded);
      if (it != idle_.end() && !it->second.empty()) {
        buffer = std::move(it->second.back());
        it->second.pop_back();
        idle_bytes_ -= rounded;
      }
    }
    if (buffer.data() == nullptr) buffer = Buffer::Allocate(rounded);
    auto* raw = new Buffer(std::move(buffer));
    return std::shared_ptr<Buffer>(raw, [this](Buffer* b) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (b->data() != nullptr && idle_bytes_ + b->size() <= kIdleBytes) {
          idle_bytes_ += b->size();
          idle_[b->size()].push_back(std::move(*b));
        }
      }
      delete b;
    });
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, std::vector<Buffer>> idle_;
  uint64_t idle_bytes_ = 0;
};

BufferPool& ReceiveBuffers() {
  static auto* pool = new BufferPool();  // never destroyed: sinks may outlive static destruction
  return *pool;
}

}  // namespace

StatusOr<BulkSink> MakeFileSink(const std::string& path, uint64_t size, FileSinkMode mode) {
  std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) {
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) return ErrnoStatus("cannot create the directory of", path, ec.value());
  }
  auto map = std::make_shared<Mapping>();
  map->fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (map->fd < 0) return ErrnoStatus("cannot create", path, errno);
  auto remove = [path] { unlink(path.c_str()); };
  std::shared_ptr<Buffer> heap;
  if (size > 0) {
    // Reserve the blocks now, so a full disk refuses the offer before any byte moves.
    if (int err = posix_fallocate(map->fd, 0, static_cast<off_t>(size)); err != 0) {
      remove();
      return ErrnoStatus("cannot allocate " + std::to_string(size) + " bytes for", path, err);
    }
    if (mode == FileSinkMode::kMmap) {
      void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, map->fd, 0);
      if (addr == MAP_FAILED) {
        int err = errno;
        remove();
        return ErrnoStatus("cannot mmap", path, err);
      }
      map->addr = static_cast<uint8_t*>(addr);
      map->size = size;
    } else {
      heap = ReceiveBuffers().Take(size);
      if (heap->data() == nullptr) {
        remove();
        return ResourceExhaustedError("cannot allocate a " + std::to_string(size) + "-byte buffer for " + path);
      }
    }
  }
  BulkSink sink;
  sink.data = heap ? heap->data() : map->addr;
  sink.keep = heap ? std::shared_ptr<void>(heap) : std::shared_ptr<void>(map);
  if (heap) {
    // Each chunk goes to the file as it lands, its writeback started at once: the disk writes
    // while the next chunk arrives, and finish's fdatasync only waits for the tail.
    sink.landed = [map, heap, path](uint64_t offset, uint64_t size) -> Status {
      for (uint64_t done = 0; done < size;) {
        ssize_t n = pwrite(map->fd, heap->data() + offset + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return ErrnoStatus("cannot write", path, n < 0 ? errno : EIO);
        done += static_cast<uint64_t>(n);
      }
      // A hint: an error here only means the fdatasync does all the work.
      (void)sync_file_range(map->fd, static_cast<off_t>(offset), static_cast<off_t>(size), SYNC_FILE_RANGE_WRITE);
      return OkStatus();
    };
  }
  sink.finish = [map, path, remove](const Status& received) -> Status {
    if (!received.ok()) {
      remove();
      return OkStatus();
    }
    if (fdatasync(map->fd) != 0) {
      int err = errno;
      remove();
      return ErrnoStatus("cannot fdatasync", path, err);
    }
    std::string dir = std::filesystem::path(path).parent_path().string();
    return FsyncPath(dir.empty() ? "." : dir);
  };
  return sink;
}

BulkSource BulkSource::Of(Buffer buffer) {
  auto owned = std::make_shared<Buffer>(std::move(buffer));
  BulkSource s;
  s.data = owned->data();
  s.size = owned->size();
  s.keep = owned;
  return s;
}

StatusOr<BulkSource> BulkSource::MapFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus("cannot stat", path, err);
  }
  auto map = std::make_shared<Mapping>();
  map->fd = fd;
  if (st.st_size > 0) {
    void* addr = mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) return ErrnoStatus("cannot mmap", path, errno);
    map->addr = static_cast<uint8_t*>(addr);
    map->size = st.st_size;
  }
  BulkSource s;
  s.data = map->addr;
  s.size = map->size;
  s.keep = map;
  return s;
}

// ---- The endpoint ---------------------------------------------------------------------------

class BulkEndpoint::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(Runtime& runtime, BulkConfig config)
      : transport_(runtime.transport()), bridge_(runtime.bridge()), self_(runtime.node_id()), config_(config) {
    // Transfer ids start at a value of this incarnation, so a restarted sender never reuses one
    // a receiver may still hold.
    next_id_ = (uint64_t{runtime.incarnation()} << 32) | 1;
  }

  void Start() {
    worker_ = std::thread([this] { WorkerLoop(); });
    auto tap = std::make_shared<FrameTap>();
    tap->first_type = kBulkFirst;
    tap->last_type = kBulkLast;
    std::weak_ptr<Impl> weak = shared_from_this();
    tap->allocate = [weak](const FrameHeader& h, size_t size) {
      auto self = weak.lock();
      return self ? self->Allocate(h, size) : Buffer();
    };
    tap->on_frame = [weak](NodeId peer, Frame frame) {
      if (auto self = weak.lock()) self->OnFrame(peer, std::move(frame));
    };
    tap->on_peer_failed = [weak](NodeId peer, const Status& why) {
      if (auto self = weak.lock()) self->OnPeerFailed(peer, why);
    };
    bridge_.SetFrameTap(std::move(tap));
  }

  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      closed_ = true;
    }
    bridge_.SetFrameTap(nullptr);
    std::vector<std::pair<DoneCallback, Status>> done;
    std::vector<In> ins;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, out] : out_) {
        done.emplace_back(std::move(out.done), CancelledError("bulk transfer " + std::to_string(id) + " to " +
                                                              DescribeNode(out.peer) + ": the endpoint stopped"));
      }
      out_.clear();
      for (auto& [key, in] : in_) ins.push_back(std::move(in));
      in_.clear();
      accepted_bytes_ = 0;
      stopping_ = true;  // with the clearing: a Send from now on is cancelled at once
    }
    for (auto& [cb, s] : done) Complete(cb, s);
    for (auto& in : ins) {
      if (in.ready) in.sink.finish(CancelledError("bulk endpoint stopped")).IgnoreError();
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  Status RegisterSink(const std::string& kind, SinkFactory factory) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!sinks_.emplace(kind, std::move(factory)).second) {
      return AlreadyExistsError("bulk sink for kind '" + kind + "' is registered already");
    }
    return OkStatus();
  }

  void Send(NodeId peer, BulkDescriptor descriptor, BulkSource source, std::chrono::milliseconds timeout,
            DoneCallback done) {
    const uint64_t id = next_id_.fetch_add(1);
    descriptor.transfer_id = id;
    descriptor.size = source.size;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) {
        lock.unlock();
        Complete(done, CancelledError("bulk endpoint stopped"));
        return;
      }
      Out out;
      out.peer = peer;
      out.kind = descriptor.kind;
      out.source = std::move(source);
      out.done = std::move(done);
      out.deadline = std::chrono::steady_clock::now() + timeout;
      out_.emplace(id, std::move(out));
    }
    cv_.notify_all();  // a new deadline
    FrameHeader header;
    header.dst_node = peer;
    header.type_id = kBulkOffer;
    header.request_id = id;
    SendControl(peer, header, EncodeDescriptor(descriptor), id);
  }

  BulkStats stats() const {
    BulkStats s;
    s.transfers_sent = transfers_sent_;
    s.transfers_received = transfers_received_;
    s.transfers_failed = transfers_failed_;
    s.offers_refused = offers_refused_;
    s.bytes_sent = bytes_sent_;
    s.bytes_received = bytes_received_;
    std::lock_guard<std::mutex> lock(mu_);
    s.bytes_accepted = accepted_bytes_;
    return s;
  }

 private:
  struct Out {
    NodeId peer = 0;
    std::string kind;
    BulkSource source;
    DoneCallback done;
    SteadyTime deadline;
    uint64_t next_offset = 0;
    size_t in_flight = 0;
    bool accepted = false;
  };
  struct In {
    BulkDescriptor descriptor;
    BulkSink sink;
    bool ready = false;  // the sink exists and the offer was accepted
    uint64_t allocated = 0;
    uint64_t received = 0;
    SteadyTime last_progress;  // accepted, or a chunk started or landed (the stall rule)
    // The first error of the sink's `landed` (set and read on the worker thread only).
    std::shared_ptr<Status> landed_error = std::make_shared<Status>();
  };
  using InKey = std::pair<NodeId, uint64_t>;
  struct InKeyHash {
    size_t operator()(const InKey& k) const { return std::hash<uint64_t>()(k.first * 0x9E3779B97F4A7C15ull ^ k.second); }
  };

  static void Complete(const DoneCallback& done, const Status& status) {
    if (done) done(status);
  }

  std::string Describe(uint64_t id, const Out& out) const {
    return "bulk transfer " + std::to_string(id) + " (" + out.kind + ", " + std::to_string(out.source.size) +
           " bytes) to " + DescribeNode(out.peer);
  }

  // Sends a small control frame; for the sender's own frames (`id` != 0) a failure fails the transfer.
  void SendControl(NodeId peer, FrameHeader header, const std::string& body, uint64_t fail_id) {
    std::weak_ptr<Impl> weak = shared_from_this();
    auto cb = [weak, fail_id, peer](const Status& s) {
      if (s.ok()) return;
      auto self = weak.lock();
      if (!self) return;
      if (fail_id != 0) {
        self->FailOut(fail_id, s);
      } else {
        spdlog::warn("bulk: cannot answer {}: {}", DescribeNode(peer), s.ToString());
      }
    };
    Status s = transport_.Send(peer, header, Buffer::CopyOf(body), cb);
    if (!s.ok()) cb(s);
  }

  void Reply(NodeId peer, uint32_t type, uint64_t id, const Status& status) {
    FrameHeader header;
    header.dst_node = peer;
    header.type_id = type;
    header.request_id = id;
    SendControl(peer, header, EncodeStatus(status), 0);
  }

  // Completes the sender's transfer `id` with `status` (wrapped to name it); false if it is gone.
  bool FailOut(uint64_t id, const Status& status, bool tell_peer = false) {
    Out out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = out_.find(id);
      if (it == out_.end()) return false;
      out = std::move(it->second);
      out_.erase(it);
    }
    ++transfers_failed_;
    Status wrapped(status.code(), Describe(id, out) + ": " + status.message());
    spdlog::debug("bulk: {}", wrapped.ToString());
    if (tell_peer) {
      FrameHeader header;
      header.dst_node = out.peer;
      header.type_id = kBulkCancel;
      header.request_id = id;
      SendControl(out.peer, header, "", 0);
    }
    Complete(out.done, wrapped);
    return true;
  }

  void Pump(uint64_t id) {
    struct Chunk {
      uint64_t offset, size;
    };
    std::vector<Chunk> chunks;
    NodeId peer = 0;
    BulkSource source;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = out_.find(id);
      if (it == out_.end()) return;
      Out& out = it->second;
      while (out.in_flight < config_.chunks_in_flight && out.next_offset < out.source.size) {
        uint64_t n = std::min<uint64_t>(config_.chunk_bytes, out.source.size - out.next_offset);
        chunks.push_back({out.next_offset, n});
        out.next_offset += n;
        ++out.in_flight;
      }
      peer = out.peer;
      source = out.source;
    }
    std::weak_ptr<Impl> weak = shared_from_this();
    for (const auto& c : chunks) {
      FrameHeader header;
      header.dst_node = peer;
      header.type_id = kBulkData;
      header.request_id = id;
      header.span_id = c.offset;
      // A view of the source: the transport reads the bytes from where they are.
      Buffer view(const_cast<uint8_t*>(source.data + c.offset), c.size, [keep = source.keep](uint8_t*, size_t) {});
      auto cb = [weak, id, c](const Status& s) {
        auto self = weak.lock();
        if (!self) return;
        if (!s.ok()) {
          self->FailOut(id, Status(s.code(), "chunk at offset " + std::to_string(c.offset) + ": " + s.message()));
          return;
        }
        self->bytes_sent_ += c.size;
        {
          std::lock_guard<std::mutex> lock(self->mu_);
          auto it = self->out_.find(id);
          if (it == self->out_.end()) return;
          --it->second.in_flight;
        }
        self->Pump(id);
      };
      Status s = transport_.Send(peer, header, std::move(view), cb);
      if (!s.ok()) {
        FailOut(id, s);
        return;
      }
    }
  }

  // ---- Progress thread ----

  Buffer Allocate(const FrameHeader& h, size_t size) {
    if (h.type_id != kBulkData) return Buffer::Allocate(size);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_.find({h.src_node, h.request_id});
    if (it == in_.end() || !it->second.ready) {
      spdlog::warn("bulk: {} bytes of unknown or unaccepted transfer {} from {} refused", size, h.request_id,
                   DescribeNode(h.src_node));
      return Buffer();
    }
    In& in = it->second;
    if (h.span_id != in.allocated || in.allocated + size > in.descriptor.size) {
      spdlog::warn("bulk: chunk of {} bytes at offset {} of transfer {} from {} does not follow byte {} of {}; refused",
                   size, h.span_id, h.request_id, DescribeNode(h.src_node), in.allocated, in.descriptor.size);
      return Buffer();
    }
    in.allocated += size;
    in.last_progress = std::chrono::steady_clock::now();
    return Buffer(in.sink.data + h.span_id, size, [keep = in.sink.keep](uint8_t*, size_t) {});
  }

  void OnFrame(NodeId peer, Frame frame) {
    const FrameHeader& h = frame.header;
    switch (h.type_id) {
      case kBulkOffer:
        OnOffer(peer, h.request_id, frame.payload.view());
        return;
      case kBulkAnswer: {
        Status s = DecodeStatus(frame.payload.view());
        if (!s.ok()) {
          FailOut(h.request_id, Status(s.code(), "refused by the receiver: " + s.message()));
          return;
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          auto it = out_.find(h.request_id);
          if (it == out_.end() || it->second.peer != peer) return;
          it->second.accepted = true;
        }
        Pump(h.request_id);
        return;
      }
      case kBulkData:
        OnData(peer, h.request_id, h.span_id, frame.payload.size());
        return;
      case kBulkDone:
        OnDone(peer, h.request_id, DecodeStatus(frame.payload.view()));
        return;
      case kBulkCancel:
        DropIn(peer, h.request_id, CancelledError("the sender cancelled the transfer"));
        return;
      default:
        spdlog::warn("bulk: unknown frame type {} from {}", h.type_id, DescribeNode(peer));
    }
  }

  void OnOffer(NodeId peer, uint64_t id, std::string_view body) {
    auto d = DecodeDescriptor(body);
    if (!d.ok()) {
      ++offers_refused_;
      Reply(peer, kBulkAnswer, id, d.status());
      return;
    }
    d->transfer_id = id;
    SinkFactory factory;
    Status check;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto sink = sinks_.find(d->kind);
      if (sink == sinks_.end()) {
        check = NotFoundError("no bulk sink for kind '" + d->kind + "' on " + DescribeNode(self_));
      } else if (in_.count({peer, id}) != 0) {
        check = AlreadyExistsError("bulk transfer " + std::to_string(id) + " is in progress already");
      } else {
        check = CheckOffer(config_.limits, d->size, accepted_bytes_, in_.size(), peer);
      }
      if (check.ok()) {
        factory = sink->second;
        accepted_bytes_ += d->size;
        In in;
        in.descriptor = *d;
        in_.emplace(InKey{peer, id}, std::move(in));
      }
    }
    if (!check.ok()) {
      ++offers_refused_;
      spdlog::info("bulk: {}", check.ToString());
      Reply(peer, kBulkAnswer, id, check);
      return;
    }
    std::weak_ptr<Impl> weak = shared_from_this();
    Post([weak, factory, peer, descriptor = *d] {
      auto self = weak.lock();
      if (!self) return;
      auto sink = factory(peer, descriptor);
      const uint64_t id = descriptor.transfer_id;
      if (!sink.ok()) {
        ++self->offers_refused_;
        self->DropIn(peer, id, sink.status());
        self->Reply(peer, kBulkAnswer, id, sink.status());
        return;
      }
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        auto it = self->in_.find({peer, id});
        if (it == self->in_.end()) {  // the peer went or cancelled meanwhile
          sink->finish(CancelledError("transfer dropped before it started")).IgnoreError();
          return;
        }
        it->second.sink = std::move(*sink);
        it->second.ready = true;
        it->second.last_progress = std::chrono::steady_clock::now();
      }
      self->Reply(peer, kBulkAnswer, id, OkStatus());
      if (descriptor.size == 0) self->OnData(peer, id, 0, 0);
    });
  }

  // The chunk [offset, offset + bytes) of (peer, id) landed: the sink's `landed` runs for it on
  // the worker, and after the last one its finish.
  void OnData(NodeId peer, uint64_t id, uint64_t offset, size_t bytes) {
    std::weak_ptr<Impl> weak = shared_from_this();
    In in;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto it = in_.find({peer, id});
      if (it == in_.end()) return;
      In& current = it->second;
      current.received += bytes;
      current.last_progress = std::chrono::steady_clock::now();
      if (current.sink.landed && bytes > 0) {
        // Posted under the lock, so the chunks' tasks keep their order, and finish comes after.
        PostLocked([weak, peer, id, offset, bytes, landed = current.sink.landed, error = current.landed_error] {
          if (!error->ok()) return;
          Status s = landed(offset, bytes);
          if (s.ok()) return;
          *error = s;
          if (auto self = weak.lock()) self->FailIn(peer, id, s);
        });
      }
      if (current.received < current.descriptor.size) {
        lock.unlock();
        cv_.notify_all();
        return;
      }
      in = std::move(current);
      in_.erase(it);
      accepted_bytes_ -= in.descriptor.size;
    }
    bytes_received_ += in.descriptor.size;
    auto shared_in = std::make_shared<In>(std::move(in));
    Post([weak, peer, id, shared_in] {
      const Status& landed = *shared_in->landed_error;
      Status s = landed.ok() ? shared_in->sink.finish(OkStatus()) : landed;
      if (!landed.ok()) shared_in->sink.finish(landed).IgnoreError();
      auto self = weak.lock();
      if (!self) return;
      if (s.ok()) {
        ++self->transfers_received_;
      } else {
        ++self->transfers_failed_;
      }
      self->Reply(peer, kBulkDone, id, s);
    });
  }

  void OnDone(NodeId peer, uint64_t id, const Status& status) {
    if (!status.ok()) {
      FailOut(id, Status(status.code(), "the receiver failed: " + status.message()));
      return;
    }
    Out out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = out_.find(id);
      if (it == out_.end() || it->second.peer != peer) return;
      out = std::move(it->second);
      out_.erase(it);
    }
    ++transfers_sent_;
    Complete(out.done, OkStatus());
  }

  // Takes the receiver's transfer (peer, id) out of the table as a failed one; null if gone.
  std::shared_ptr<In> TakeFailedIn(NodeId peer, uint64_t id) {
    std::shared_ptr<In> in;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = in_.find({peer, id});
      if (it == in_.end()) return nullptr;
      in = std::make_shared<In>(std::move(it->second));
      in_.erase(it);
      accepted_bytes_ -= in->descriptor.size;
    }
    ++transfers_failed_;
    return in;
  }

  // Forgets the receiver's transfer (peer, id) and runs its sink's cleanup on the worker.
  void DropIn(NodeId peer, uint64_t id, const Status& why) {
    std::shared_ptr<In> in = TakeFailedIn(peer, id);
    if (in && in->ready) Post([in, why] { in->sink.finish(why).IgnoreError(); });
  }

  // The receiver fails its transfer (peer, id): its buffer is let go, the sink cleans up, and
  // then the sender hears `why`.
  void FailIn(NodeId peer, uint64_t id, const Status& why) {
    std::shared_ptr<In> in = TakeFailedIn(peer, id);
    if (!in) return;
    spdlog::warn("bulk: {}", why.ToString());
    std::weak_ptr<Impl> weak = shared_from_this();
    Post([weak, in, peer, id, why]() mutable {
      if (in->ready) in->sink.finish(why).IgnoreError();
      in.reset();  // the buffer goes back before the sender hears
      if (auto self = weak.lock()) self->Reply(peer, kBulkDone, id, why);
    });
  }

  void OnPeerFailed(NodeId peer, const Status& why) {
    std::vector<uint64_t> outs;
    std::vector<uint64_t> ins;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, out] : out_) {
        if (out.peer == peer) outs.push_back(id);
      }
      for (auto& [key, in] : in_) {
        if (key.first == peer) ins.push_back(key.second);
      }
    }
    Status lost = UnavailableError(why.message());
    for (uint64_t id : outs) FailOut(id, lost);
    for (uint64_t id : ins) DropIn(peer, id, lost);
  }

  // ---- Worker thread: sink factories and finishes (file I/O), deadlines ----

  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      PostLocked(std::move(task));
    }
    cv_.notify_all();
  }
  // Post with mu_ held; the caller notifies cv_ once it has let go of mu_.
  void PostLocked(std::function<void()> task) {
    if (stopping_) return;
    tasks_.push_back(std::move(task));
  }

  void WorkerLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (!tasks_.empty()) {
        auto task = std::move(tasks_.front());
        tasks_.pop_front();
        lock.unlock();
        task();
        lock.lock();
        continue;
      }
      if (stopping_) return;
      auto now = std::chrono::steady_clock::now();
      SteadyTime next = SteadyTime::max();
      std::vector<uint64_t> expired;
      for (auto& [id, out] : out_) {
        if (out.deadline <= now) {
          expired.push_back(id);
        } else {
          next = std::min(next, out.deadline);
        }
      }
      // Receiving transfers whose sender stalled (BulkConfig::stall_timeout).
      std::vector<std::pair<InKey, Status>> stalled;
      for (auto& [key, in] : in_) {
        if (!in.ready) continue;  // the sink is being made here: not the sender's doing
        const SteadyTime deadline = StallDeadline(in.last_progress, config_.stall_timeout);
        if (deadline > now) {
          next = std::min(next, deadline);
          continue;
        }
        stalled.emplace_back(key, DeadlineExceededError(
            "bulk transfer " + std::to_string(key.second) + " (" + in.descriptor.kind + ", " +
            std::to_string(in.received) + " of " + std::to_string(in.descriptor.size) + " bytes) from " +
            DescribeNode(key.first) + " failed on the receiver: no chunk for " +
            std::to_string(config_.stall_timeout.count()) +
            " ms (stall_timeout); its buffer is freed, send it again"));
      }
      if (!expired.empty() || !stalled.empty()) {
        lock.unlock();
        for (uint64_t id : expired) {
          FailOut(id, DeadlineExceededError("not done within its timeout"), /*tell_peer=*/true);
        }
        for (const auto& [key, why] : stalled) FailIn(key.first, key.second, why);
        lock.lock();
        continue;
      }
      if (next == SteadyTime::max()) {
        cv_.wait(lock);
      } else {
        cv_.wait_until(lock, next);
      }
    }
  }

  transport::Transport& transport_;
  Bridge& bridge_;
  const NodeId self_;
  const BulkConfig config_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> transfers_sent_{0}, transfers_received_{0}, transfers_failed_{0}, offers_refused_{0},
      bytes_sent_{0}, bytes_received_{0};

  mutable std::mutex mu_;  // guards everything below; never held while calling the transport or a callback
  std::unordered_map<std::string, SinkFactory> sinks_;
  std::unordered_map<uint64_t, Out> out_;
  std::unordered_map<InKey, In, InKeyHash> in_;
  uint64_t accepted_bytes_ = 0;
  std::deque<std::function<void()>> tasks_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool closed_ = false;  // Shutdown has begun
  std::thread worker_;
};

StatusOr<std::unique_ptr<BulkEndpoint>> BulkEndpoint::Attach(Runtime& runtime, BulkConfig config) {
  if (config.chunk_bytes == 0) return InvalidArgumentError("bulk: chunk_bytes must be > 0");
  if (config.chunks_in_flight == 0) return InvalidArgumentError("bulk: chunks_in_flight must be > 0");
  auto impl = std::make_shared<Impl>(runtime, config);
  impl->Start();
  return std::unique_ptr<BulkEndpoint>(new BulkEndpoint(std::move(impl)));
}

BulkEndpoint::BulkEndpoint(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
BulkEndpoint::~BulkEndpoint() { impl_->Shutdown(); }
void BulkEndpoint::Close() { impl_->Shutdown(); }

Status BulkEndpoint::RegisterSink(const std::string& kind, SinkFactory factory) {
  return impl_->RegisterSink(kind, std::move(factory));
}

void BulkEndpoint::Send(NodeId peer, BulkDescriptor descriptor, BulkSource source, std::chrono::milliseconds timeout,
                        DoneCallback done) {
  impl_->Send(peer, std::move(descriptor), std::move(source), timeout, std::move(done));
}

Status BulkEndpoint::SendAndWait(NodeId peer, BulkDescriptor descriptor, BulkSource source,
                                 std::chrono::milliseconds timeout) {
  auto promise = std::make_shared<std::promise<Status>>();
  auto future = promise->get_future();
  Send(peer, std::move(descriptor), std::move(source), timeout,
       [promise](const Status& s) { promise->set_value(s); });
  return future.get();  // bounded: the endpoint's deadline completes it
}

BulkStats BulkEndpoint::stats() const { return impl_->stats(); }

}  // namespace troupe::runtime
