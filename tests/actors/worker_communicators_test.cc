// Which collectives backend an actor worker's group uses (actors/training/worker_communicators.h):
// the rule, without a GPU or an actor system. The NCCL path itself: nccl_actor_worker_test (gpu).
#include <gtest/gtest.h>

#include "actors/training/worker_communicators.h"

namespace troupe::training {
namespace {

ActorWorkerStart Start(const std::string& backend, bool gpu, bool simulated = false) {
  ActorWorkerStart start;
  start.job = "linear";
  start.rank = 1;
  start.world_size = 4;
  start.backend = backend;
  if (gpu) start.gpu_index = 0;
  start.simulated = simulated;
  return start;
}

TEST(ChooseCollectivesBackend, AutoPicksNcclOnlyForARealGpuSliceWithNcclBuilt) {
  for (const std::string backend : {"", "auto"}) {
    EXPECT_EQ(*ChooseCollectivesBackend(Start(backend, /*gpu=*/true), /*nccl_built=*/true), CollectivesBackend::kNccl);
    EXPECT_EQ(*ChooseCollectivesBackend(Start(backend, true), false), CollectivesBackend::kGloo);
    EXPECT_EQ(*ChooseCollectivesBackend(Start(backend, false), true), CollectivesBackend::kGloo);
    EXPECT_EQ(*ChooseCollectivesBackend(Start(backend, true, /*simulated=*/true), true), CollectivesBackend::kGloo);
  }
}

TEST(ChooseCollectivesBackend, GlooWhenTheJobAsksForItEvenOnAGpu) {
  EXPECT_EQ(*ChooseCollectivesBackend(Start("gloo", true), true), CollectivesBackend::kGloo);
  EXPECT_EQ(*ChooseCollectivesBackend(Start("gloo", false), false), CollectivesBackend::kGloo);
}

TEST(ChooseCollectivesBackend, NcclWhenAskedOrFailedPreconditionNamingWhatIsMissing) {
  EXPECT_EQ(*ChooseCollectivesBackend(Start("nccl", true), true), CollectivesBackend::kNccl);
  auto no_slice = ChooseCollectivesBackend(Start("nccl", false), true);
  ASSERT_FALSE(no_slice.ok());
  EXPECT_EQ(no_slice.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(no_slice.status().message().find("resources.slices: 0"), std::string::npos) << no_slice.status();
  EXPECT_NE(no_slice.status().message().find("rank 1 of 4 of job 'linear'"), std::string::npos) << no_slice.status();
  auto simulated = ChooseCollectivesBackend(Start("nccl", true, true), true);
  ASSERT_FALSE(simulated.ok());
  EXPECT_NE(simulated.status().message().find("simulated"), std::string::npos) << simulated.status();
  auto not_built = ChooseCollectivesBackend(Start("nccl", true), false);
  ASSERT_FALSE(not_built.ok());
  EXPECT_EQ(not_built.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(not_built.status().message().find("built without NCCL"), std::string::npos) << not_built.status();
}

TEST(ChooseCollectivesBackend, RefusesAnUnknownBackend) {
  auto mpi = ChooseCollectivesBackend(Start("mpi", true), true);
  ASSERT_FALSE(mpi.ok());
  EXPECT_EQ(mpi.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mpi.status().message().find("'mpi'"), std::string::npos) << mpi.status();
}

TEST(CollectivesBackendName, NamesBoth) {
  EXPECT_EQ(CollectivesBackendName(CollectivesBackend::kGloo), "gloo");
  EXPECT_EQ(CollectivesBackendName(CollectivesBackend::kNccl), "nccl");
}

}  // namespace
}  // namespace troupe::training
