// Admit-and-call codecs (admission.capnp).
#include "cluster/admission.h"

#include "actors/api/wire_codecs.h"
#include "actors/serving/wire_codecs.h"
#include "cluster/admission.capnp.h"

namespace troupe::cluster {

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
