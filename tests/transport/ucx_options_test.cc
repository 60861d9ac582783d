// Tests of how UCX settings are resolved from config, environment and defaults.
#include "transport/ucx_options.h"

#include <gtest/gtest.h>

#include <map>

#include "transport/address.h"

namespace troupe::transport {
namespace {

std::function<const char*(const char*)> Env(std::map<std::string, std::string> vars) {
  auto held = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [held](const char* name) -> const char* {
    auto it = held->find(name);
    return it == held->end() ? nullptr : it->second.c_str();
  };
}

std::map<std::string, UcxSetting> ByName(const std::vector<UcxSetting>& settings) {
  std::map<std::string, UcxSetting> out;
  for (const auto& s : settings) out[s.name] = s;
  return out;
}

TEST(UcxOptions, TcpIsAlwaysAllowed) {
  EXPECT_EQ(EnsureTcpAllowed("shm"), "shm,tcp");
  EXPECT_EQ(EnsureTcpAllowed("rc,sm"), "rc,sm,tcp");
  EXPECT_EQ(EnsureTcpAllowed("tcp"), "tcp");
  EXPECT_EQ(EnsureTcpAllowed("all"), "all");
  EXPECT_EQ(EnsureTcpAllowed("^tcp,rc"), "^rc");
  EXPECT_EQ(EnsureTcpAllowed("^tcp"), "all");
  EXPECT_EQ(EnsureTcpAllowed("^ib"), "^ib");
}

TEST(UcxOptions, DefaultsKeepSharedMemoryWithErrorHandling) {
  UcxTransportConfig config;
  auto settings = ResolveUcxSettings(config, Env({}));
  ASSERT_TRUE(settings.ok());
  auto by = ByName(*settings);
  EXPECT_EQ(by["POSIX_ERROR_HANDLING"].value, "y");
  EXPECT_EQ(by["SYSV_ERROR_HANDLING"].value, "y");
  EXPECT_EQ(by["RNDV_THRESH"].value, kDefaultRndvThresh);
  EXPECT_EQ(by["POSIX_FIFO_ELEM_SIZE"].value, kDefaultShmFifoElemSize);
  EXPECT_EQ(by["SYSV_FIFO_ELEM_SIZE"].value, kDefaultShmFifoElemSize);
  EXPECT_TRUE(by["POSIX_FIFO_ELEM_SIZE"].via_environment);
  EXPECT_EQ(by["KEEPALIVE_INTERVAL"].value, "100ms");
  EXPECT_FALSE(by["KEEPALIVE_INTERVAL"].via_environment);
  EXPECT_EQ(by.count("TLS"), 0u) << "no TLS set anywhere keeps UCX's own default";
}

TEST(UcxOptions, EnvironmentWinsOverDefaultsAndConfigWinsOverEnvironment) {
  UcxTransportConfig config;
  auto by = ByName(*ResolveUcxSettings(config, Env({{"UCX_TLS", "shm"}, {"UCX_RNDV_THRESH", "1M"},
                                                   {"UCX_POSIX_ERROR_HANDLING", "n"},
                                                   {"UCX_SYSV_FIFO_ELEM_SIZE", "512"}})));
  EXPECT_EQ(by["TLS"].value, "shm,tcp");
  EXPECT_EQ(by.count("RNDV_THRESH"), 0u) << "the environment's value is left to UCX";
  EXPECT_EQ(by.count("POSIX_ERROR_HANDLING"), 0u);
  EXPECT_EQ(by.count("SYSV_FIFO_ELEM_SIZE"), 0u);
  EXPECT_EQ(by["POSIX_FIFO_ELEM_SIZE"].value, kDefaultShmFifoElemSize);

  config.ucx_tls = "posix,sysv";
  config.rndv_thresh = "64K";
  config.ucx_options["UCX_ZCOPY_THRESH"] = "32K";
  by = ByName(*ResolveUcxSettings(config, Env({{"UCX_TLS", "shm"}})));
  EXPECT_EQ(by["TLS"].value, "posix,sysv,tcp");
  EXPECT_EQ(by["RNDV_THRESH"].value, "64K");
  EXPECT_EQ(by["ZCOPY_THRESH"].value, "32K");
}

TEST(UcxOptions, BusyPollOnlyWhereCoresOutnumberTheSpinningProcesses) {
  using std::chrono::microseconds;
  // The default: poll 200 us on a host with cores to spare, sleep at once on a small one.
  EXPECT_EQ(UcxTransportConfig{}.busy_poll, kBusyPollAuto);
  EXPECT_EQ(ResolveBusyPoll(kBusyPollAuto, 2), microseconds(0));
  EXPECT_EQ(ResolveBusyPoll(kBusyPollAuto, kBusyPollMinCores - 1), microseconds(0));
  EXPECT_EQ(ResolveBusyPoll(kBusyPollAuto, kBusyPollMinCores), microseconds(200));
  EXPECT_EQ(ResolveBusyPoll(kBusyPollAuto, 64), microseconds(200));
  // An explicit value wins on any host; a negative one means none.
  EXPECT_EQ(ResolveBusyPoll(microseconds(50), 2), microseconds(50));
  EXPECT_EQ(ResolveBusyPoll(microseconds(0), 64), microseconds(0));
  EXPECT_EQ(ResolveBusyPoll(microseconds(-7), 64), microseconds(0));
}

TEST(UcxOptions, EmptyOptionNameIsRefused) {
  UcxTransportConfig config;
  config.ucx_options["UCX_"] = "1";
  EXPECT_EQ(ResolveUcxSettings(config, Env({})).status().code(), StatusCode::kInvalidArgument);
}

TEST(Address, ParsesHostPortAndRejectsGarbageWithTheInput) {
  auto a = ParseSocketAddress("127.0.0.1:4000");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(FormatSocketAddress(reinterpret_cast<const sockaddr*>(&a->storage)), "127.0.0.1:4000");
  auto v6 = ParseSocketAddress("[::1]:5");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(FormatSocketAddress(reinterpret_cast<const sockaddr*>(&v6->storage)), "[::1]:5");
  for (const char* bad : {"127.0.0.1", "127.0.0.1:99999", ":80", "127.0.0.1:x", "[::1"}) {
    auto r = ParseSocketAddress(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status();
  }
  EXPECT_TRUE(ParseSocketAddress("127.0.0.1", 7).ok());
}

}  // namespace
}  // namespace troupe::transport

namespace troupe::transport {
namespace {

TEST(UcxOptions, TransportLevelSettingsGoThroughTheEnvironment) {
  UcxTransportConfig config;
  config.ucx_options["TCP_KEEPINTVL"] = "1s";
  auto by = ByName(*ResolveUcxSettings(config, Env({})));
  EXPECT_TRUE(by["POSIX_ERROR_HANDLING"].via_environment);
  EXPECT_TRUE(by["TCP_KEEPINTVL"].via_environment);
  EXPECT_FALSE(by["RNDV_THRESH"].via_environment);
}

}  // namespace
}  // namespace troupe::transport
