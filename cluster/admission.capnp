# The gateway's admit-and-call message to the head's api actor (type ids 1570-1571,
# cluster/admission.h): an api::Admit and the serving::InferenceRequest it admits, in one.
@0x94b13aa5b1cfc539;

$import "/capnp/c++.capnp".namespace("troupe::cluster::wire");
using Rt = import "/runtime/messages.capnp";
using Api = import "/actors/api/api.capnp";
using Sv = import "/actors/serving/serving.capnp";

struct AdmitAndInfer {
  admit @0 :Api.Admit;
  deploymentTenant @1 :Text;      # the tenant of the deployment, as the gateway's route knows it
  reservation @2 :UInt64;         # nonzero: one the sender holds already (no new admission)
  router @3 :Rt.ActorAddress;     # the deployment's router (on the head)
  request @4 :Sv.InferenceRequest;
}

struct AdmitAndInferReply {
  admit @0 :Api.AdmitReply;
  dispatched @1 :Bool;            # the request went to the router
  response @2 :Sv.InferenceResponse;
  errorCode @3 :UInt32;           # troupe::StatusCode; 0: `response` is the router's reply
  errorMessage @4 :Text;
}
