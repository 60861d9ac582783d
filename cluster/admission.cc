// Admit-and-call codecs (admission.capnp).
#include "cluster/admission.h"

#include <algorithm>

#include "actors/api/wire_codecs.h"
#include "actors/serving/wire_codecs.h"
#include "cluster/admission.capnp.h"

namespace troupe::cluster {

std::chrono::milliseconds RouterReplyTimeout(int64_t deadline_unix_ms, int64_t now_unix_ms) {
  const int64_t left_ms = deadline_unix_ms == 0 ? 60000 : std::max<int64_t>(deadline_unix_ms - now_unix_ms, 0);
  return std::chrono::milliseconds(left_ms + 1000);
}

Status AddAdmissionCodecs(runtime::CodecRegistry& r) {
  RETURN_IF_ERROR((r.Add<AdmitAndInfer, wire::AdmitAndInfer>(
      kAdmitAndInfer, "cluster.AdmitAndInfer",
      [](const AdmitAndInfer& m, wire::AdmitAndInfer::Builder b, runtime::RefCodec& refs) {
        api::EncodeAdmit(m.admit, b.initAdmit());
        b.setDeploymentTenant(m.deployment_tenant);
        b.setReservation(m.reservation);
        refs.EncodeRef(m.router, b.initRouter());
        serving::EncodeInferenceRequest(m.request, b.initRequest(), refs);
      },
      [](wire::AdmitAndInfer::Reader in, runtime::RefCodec& refs) -> StatusOr<AdmitAndInfer> {
        AdmitAndInfer m;
        m.admit = api::DecodeAdmit(in.getAdmit());
        m.deployment_tenant = in.getDeploymentTenant();
        m.reservation = in.getReservation();
        m.router = refs.DecodeRef(in.getRouter());
        m.request = serving::DecodeInferenceRequest(in.getRequest(), refs);
        return m;
      })));
  return r.Add<AdmitAndInferReply, wire::AdmitAndInferReply>(
      kAdmitAndInferReply, "cluster.AdmitAndInferReply",
      [](const AdmitAndInferReply& m, wire::AdmitAndInferReply::Builder b, runtime::RefCodec&) {
        api::EncodeAdmitReply(m.admit, b.initAdmit());
        b.setDispatched(m.dispatched);
        serving::EncodeInferenceResponse(m.response, b.initResponse());
        b.setErrorCode(m.error_code);
        b.setErrorMessage(m.error_message);
      },
      [](wire::AdmitAndInferReply::Reader in, runtime::RefCodec&) -> StatusOr<AdmitAndInferReply> {
        AdmitAndInferReply m;
        m.admit = api::DecodeAdmitReply(in.getAdmit());
        m.dispatched = in.getDispatched();
        m.response = serving::DecodeInferenceResponse(in.getResponse());
        m.error_code = in.getErrorCode();
        m.error_message = in.getErrorMessage();
        return m;
      });
}

}  // namespace troupe::cluster
