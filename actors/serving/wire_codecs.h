// The serving protocol's Cap'n Proto encoders and decoders of InferenceRequest and
// InferenceResponse, for protocols that carry them inside messages of their own
// (cluster/admission.capnp); messages.cc uses them for the messages themselves.
#pragma once

#include "actors/serving/messages.h"
#include "actors/serving/serving.capnp.h"
#include "runtime/codec.h"

namespace troupe::serving {

void EncodeInferenceRequest(const InferenceRequest& m, wire::InferenceRequest::Builder b, runtime::RefCodec& refs);
InferenceRequest DecodeInferenceRequest(wire::InferenceRequest::Reader in, runtime::RefCodec& refs);
void EncodeInferenceResponse(const InferenceResponse& m, wire::InferenceResponse::Builder b);
InferenceResponse DecodeInferenceResponse(wire::InferenceResponse::Reader in);

}  // namespace troupe::serving
