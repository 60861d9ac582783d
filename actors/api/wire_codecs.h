// The api protocol's Cap'n Proto encoders and decoders of Admit and AdmitReply, for protocols
// that carry them inside messages of their own (cluster/admission.capnp); messages.cc uses
// them for the messages themselves.
#pragma once

#include "actors/api/api.capnp.h"
#include "actors/api/messages.h"

namespace troupe::api {

void EncodeAdmit(const Admit& m, wire::Admit::Builder b);
Admit DecodeAdmit(wire::Admit::Reader in);
void EncodeAdmitReply(const AdmitReply& m, wire::AdmitReply::Builder b);
/// Throws kj::Exception on a list longer than its bytes allow (the codec registry turns it into
/// InvalidArgument).
AdmitReply DecodeAdmitReply(wire::AdmitReply::Reader in);

}  // namespace troupe::api
