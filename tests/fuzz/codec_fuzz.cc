// Fuzz target: every registered payload decoder (the runtime's own types, the cluster protocol's,
// the serving protocol's, the api protocol's, the gateway's admit-and-call, the training protocol's
// with its actor workers, and the collectives' rendezvous store) on arbitrary bytes. The first two input bytes
// choose the type id among those registered; the rest is the payload. A decoder must return a
// message or InvalidArgument.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "actors/api/messages.h"
#include "actors/serving/messages.h"
#include "actors/training/messages.h"
#include "cluster/admission.h"
#include "cluster/messages.h"
#include "common/buffer.h"
#include "runtime/codec.h"
#include "tests/fakes/fake_ref_codec.h"

namespace {

struct Registry {
  troupe::runtime::CodecRegistry codecs;
  std::vector<uint32_t> type_ids;

  Registry() {
    if (!codecs.AddRuntimeTypes().ok() || !troupe::cluster::AddClusterCodecs(codecs).ok() ||
        !troupe::serving::AddServingCodecs(codecs).ok() || !troupe::api::AddApiCodecs(codecs).ok() ||
        !troupe::cluster::AddAdmissionCodecs(codecs).ok() ||
        !troupe::training::AddTrainingCodecs(codecs).ok()) {  // with the rendezvous store's
      __builtin_trap();
    }
    for (uint32_t id = 0; id < 100000; ++id) {
      if (codecs.Has(id)) type_ids.push_back(id);
    }
    if (type_ids.empty()) __builtin_trap();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Registry registry;
  static troupe::testing::FakeRefCodec refs;
  if (size < 2) return 0;
  const uint32_t pick = (uint32_t{data[0]} << 8 | data[1]) % registry.type_ids.size();
  // A copy: the bridge hands decoders word-aligned buffers it owns.
  troupe::Buffer payload = troupe::Buffer::CopyOf(data + 2, size - 2);
  auto decoded = registry.codecs.Decode(registry.type_ids[pick], payload, refs);
  if (decoded.ok()) {
    // What decodes must encode again.
    auto encoded = registry.codecs.Encode(*decoded, refs);
    if (!encoded.ok()) __builtin_trap();
  }
  return 0;
}
