// Frames: the unit the transport moves between processes (an envelope header plus a payload).
#pragma once

#include <cstdint>

#include "common/buffer.h"

namespace troupe::transport {

/// A process's identity in the cluster. 0 is never a valid node id.
using NodeId = uint64_t;

/// The envelope version this build speaks. A frame of another version is refused.
inline constexpr uint16_t kEnvelopeVersion = 3;  // 2: batch frames; 3: unpacked envelopes

/// The addressing and routing fields of a frame. The transport reads only `dst_node`
/// (and fills `src_node`); everything else belongs to the layer above.
struct FrameHeader {
  NodeId src_node = 0;
  NodeId dst_node = 0;
  uint64_t src_actor = 0;
  uint64_t dst_actor = 0;
  uint64_t request_id = 0;
  uint32_t type_id = 0;
  uint32_t flags = 0;
  uint64_t trace_id_high = 0;
  uint64_t trace_id_low = 0;
  uint64_t span_id = 0;

  friend bool operator==(const FrameHeader& a, const FrameHeader& b) {
    return a.src_node == b.src_node && a.dst_node == b.dst_node && a.src_actor == b.src_actor &&
           a.dst_actor == b.dst_actor && a.request_id == b.request_id && a.type_id == b.type_id &&
           a.flags == b.flags && a.trace_id_high == b.trace_id_high &&
           a.trace_id_low == b.trace_id_low && a.span_id == b.span_id;
  }
};

/// A received or outgoing frame: header plus an owned payload.
struct Frame {
  FrameHeader header;
  Buffer payload;
};

}  // namespace troupe::transport
