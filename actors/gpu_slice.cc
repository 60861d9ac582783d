// GpuSlice.
#include "actors/gpu_slice.h"

#include "runtime/error.h"

namespace troupe::actors {

caf::behavior GpuSlice(caf::stateful_actor<GpuSliceState>* self, SliceInfo info, SliceListener listener) {
  self->state.status.info = std::move(info);
  auto free = [self, listener](const std::string& why) {
    auto& st = self->state;
    if (st.status.lease_id == 0) return;
    const uint64_t ended = st.status.lease_id;
    st.status.lease_id = 0;
    st.status.owner.clear();
    if (st.owner) self->demonitor(st.owner);
    st.owner = caf::actor_addr();
    if (listener) listener(st.status.info, ended, why);
  };
  self->set_down_handler([self, free](caf::down_msg& msg) {
    // The owner exited, or its node or process is gone: the slice comes back.
    if (msg.source != self->state.owner) return;
    free("owner gone: " + runtime::ToStatus(msg.reason).ToString());
  });
  return {
      [self, listener](SliceLease& lease) -> bool {
        auto& st = self->state;
        if (st.status.lease_id != 0) return st.status.lease_id == lease.lease_id;
        if (lease.watch_owner && !lease.owner.valid()) return false;
        st.status.lease_id = lease.lease_id;
        st.status.owner = lease.owner_name.empty() ? lease.owner.ToString() : lease.owner_name;
        if (lease.watch_owner) {
          st.owner = lease.owner.handle().address();
          // A monitor of an owner that is already gone fires at once: no lease outlives its owner.
          self->monitor(lease.owner.handle());
        }
        if (listener) listener(st.status.info, st.status.lease_id, "");
        return true;
      },
      [self, free](SliceRelease& release) -> bool {
        if (self->state.status.lease_id != release.lease_id || release.lease_id == 0) return false;
        free("released");
        return true;
      },
      [self](SliceQuery&) -> SliceStatus { return self->state.status; },
  };
}

}  // namespace troupe::actors
