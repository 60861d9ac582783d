// The api protocol's codecs (api.capnp).
#include "actors/api/messages.h"

#include "actors/api/api.capnp.h"
#include "actors/api/wire_codecs.h"

namespace troupe::api {

namespace {

using runtime::RefCodec;

kj::ArrayPtr<const kj::byte> Bytes(const std::string& s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string String(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

}  // namespace

void EncodeAdmit(const Admit& m, wire::Admit::Builder b) {
  b.setApiKey(m.api_key);
  b.setDeployment(m.deployment);
  b.setAction(m.action);
  b.setPromptTokens(m.prompt_tokens);
  b.setMaxTokens(m.max_tokens);
}

Admit DecodeAdmit(wire::Admit::Reader in) {
  return Admit{in.getApiKey(), in.getDeployment(), in.getAction(), in.getPromptTokens(), in.getMaxTokens()};
}

void EncodeAdmitReply(const AdmitReply& m, wire::AdmitReply::Builder b) {
  b.setAdmitted(m.admitted);
  b.setHttpStatus(m.http_status);
  b.setErrorType(m.error_type);
  b.setMessage(m.message);
  b.setRetryAfterS(m.retry_after_s);
  b.setReservation(m.reservation);
  b.setKeyId(m.key_id);
  b.setTenant(m.tenant);
  auto deployments = b.initDeployments(static_cast<unsigned>(m.deployments.size()));
  for (unsigned i = 0; i < m.deployments.size(); ++i) deployments.set(i, m.deployments[i]);
  auto headers = b.initHeaders(static_cast<unsigned>(m.headers.size()));
  for (unsigned i = 0; i < m.headers.size(); ++i) {
    headers[i].setName(m.headers[i].first);
    headers[i].setValue(m.headers[i].second);
  }
}

AdmitReply DecodeAdmitReply(wire::AdmitReply::Reader in) {
  AdmitReply m;
  m.admitted = in.getAdmitted();
  m.http_status = in.getHttpStatus();
  m.error_type = in.getErrorType();
  m.message = in.getMessage();
  m.retry_after_s = in.getRetryAfterS();
  m.reservation = in.getReservation();
  m.key_id = in.getKeyId();
  m.tenant = in.getTenant();
  for (auto d : in.getDeployments()) m.deployments.emplace_back(d);
  for (auto h : runtime::CheckedList(in.getHeaders())) m.headers.emplace_back(h.getName(), h.getValue());
  return m;
}

Status AddApiCodecs(runtime::CodecRegistry& r) {
  RETURN_IF_ERROR((r.Add<Admit, wire::Admit>(
      kAdmit, "api.Admit", [](const Admit& m, wire::Admit::Builder b, RefCodec&) { EncodeAdmit(m, b); },
      [](wire::Admit::Reader in, RefCodec&) -> StatusOr<Admit> { return DecodeAdmit(in); })));
  RETURN_IF_ERROR((r.Add<AdmitReply, wire::AdmitReply>(
      kAdmitReply, "api.AdmitReply",
      [](const AdmitReply& m, wire::AdmitReply::Builder b, RefCodec&) { EncodeAdmitReply(m, b); },
      [](wire::AdmitReply::Reader in, RefCodec&) -> StatusOr<AdmitReply> { return DecodeAdmitReply(in); })));
  RETURN_IF_ERROR((r.Add<Settle, wire::Settle>(
      kSettle, "api.Settle",
      [](const Settle& m, wire::Settle::Builder b, RefCodec&) {
        b.setReservation(m.reservation);
        b.setDeployment(m.deployment);
        b.setPromptTokens(m.prompt_tokens);
        b.setCompletionTokens(m.completion_tokens);
        b.setError(m.error);
      },
      [](wire::Settle::Reader in, RefCodec&) -> StatusOr<Settle> {
        return Settle{in.getReservation(), in.getDeployment(), in.getPromptTokens(), in.getCompletionTokens(),
                      in.getError()};
      })));
  RETURN_IF_ERROR((r.Add<ApiCommand, wire::ApiCommand>(
      kApiCommand, "api.ApiCommand",
      [](const ApiCommand& m, wire::ApiCommand::Builder b, RefCodec&) {
        b.setOp(m.op);
        b.setName(m.name);
        b.setBody(Bytes(m.body));
        b.setApiKey(m.api_key);
        b.setCaller(m.caller);
      },
      [](wire::ApiCommand::Reader in, RefCodec&) -> StatusOr<ApiCommand> {
        return ApiCommand{in.getOp(), in.getName(), String(in.getBody()), in.getApiKey(), in.getCaller()};
      })));
  return r.Add<ApiCommandReply, wire::ApiCommandReply>(
      kApiCommandReply, "api.ApiCommandReply",
      [](const ApiCommandReply& m, wire::ApiCommandReply::Builder b, RefCodec&) { b.setJson(Bytes(m.json)); },
      [](wire::ApiCommandReply::Reader in, RefCodec&) -> StatusOr<ApiCommandReply> {
        return ApiCommandReply{String(in.getJson())};
      });
}

}  // namespace troupe::api
