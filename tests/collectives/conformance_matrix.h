// The conformance matrix both communicators' tests run (gloo_communicator_test on CPUs,
// nccl_communicator_test on GPUs; docs/collectives.md, "Conformance"): which world sizes, dtypes,
// reduce ops and sizes every op is checked at against a reference computed on the host.
#pragma once

#include <cstddef>

#include "collectives/communicator.h"

namespace troupe::collectives::conformance {

// World sizes 1-4: one rank (no peer: every op is a copy or nothing), two (one link), three (the
// ring's blocks never divide a power-of-two size evenly) and four.
constexpr int kWorldSizes[] = {1, 2, 3, 4};

constexpr DataType kTypes[] = {DataType::kFloat32, DataType::kFloat16, DataType::kBFloat16,
                               DataType::kFloat64, DataType::kInt32,   DataType::kInt64};
constexpr ReduceOp kOps[] = {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kMax};

// Elements per rank at which every op runs for every dtype and reduce op (allgather and
// reduce-scatter: count per rank, so world size x count in all). 0: an empty op completes OK,
// in order; 7: not divisible by 2, 3 or 4, so the ring's blocks are uneven at every world size.
constexpr size_t kCounts[] = {0, 1, 7, 1023};

// An odd size in the megabyte range, float32 only (the small counts cover the dtypes): 2^18 + 3
// elements (1 MiB + 12 bytes) per rank, not divisible by 2, 3 or 4, so every segment and block
// of Gloo's ring allreduce and of the reduce-scatter ring is uneven. Cheap enough for the
// sanitizer builds.
constexpr size_t kOddMidCount = (size_t{1} << 18) + 3;

// The largest size of the matrix: 64 MiB, as nccl-tests size an op (the size of the op's
// largest buffer): allreduce and broadcast move 64 MiB a rank; allgather gathers into 64 MiB
// (64 MiB / world size from each rank) and reduce-scatter reduces 64 MiB (blocks of 64 MiB /
// world size). Where 64 MiB does not divide into world size whole elements (world 3) the blocks
// are rounded down: the interface takes a count per rank, so a split into unequal blocks cannot
// be asked for (as with ncclReduceScatter's recvcount); a caller pads instead.
constexpr size_t kLargeBytes = size_t{64} << 20;

// Elements per rank of an allreduce or broadcast of kLargeBytes of `type`.
inline size_t LargeCount(DataType type) { return kLargeBytes / SizeOf(type); }
// Elements per rank (each rank's block) of an allgather or reduce-scatter of kLargeBytes.
inline size_t LargeBlockCount(DataType type, int world) {
  return LargeCount(type) / static_cast<size_t>(world);
}

}  // namespace troupe::collectives::conformance
