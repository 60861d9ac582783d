# Finds troupe's third-party dependencies: Debian bookworm packages, nothing vendored.
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(CapnProto REQUIRED)
find_package(ucx REQUIRED)
find_package(OpenSSL REQUIRED)
# Header-only: CLI11 parses the troupe command line, nlohmann-json writes and reads JSON.
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)
# Header-only: Boost.Beast (with Boost.Asio) is troupe's HTTP, client and server (Debian libboost-dev).
find_package(Boost 1.74 REQUIRED)
if(TROUPE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
# Google Benchmark times the benchmarks of pure functions (the scheduler's placement).
if(TROUPE_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# CUDA and NCCL are optional: GPU paths build when they are found, everything else always.
set(TROUPE_CUDA_ROOT "/usr/local/cuda" CACHE PATH "Where to look for CUDA and NCCL")
find_path(TROUPE_CUDA_INCLUDE_DIR cuda_runtime_api.h HINTS ${TROUPE_CUDA_ROOT}/include NO_DEFAULT_PATH)
find_library(TROUPE_CUDART_LIBRARY cudart HINTS ${TROUPE_CUDA_ROOT}/lib64 NO_DEFAULT_PATH)
find_path(TROUPE_NCCL_INCLUDE_DIR nccl.h HINTS ${TROUPE_CUDA_ROOT}/include NO_DEFAULT_PATH)
find_library(TROUPE_NCCL_LIBRARY nccl HINTS ${TROUPE_CUDA_ROOT}/lib64 NO_DEFAULT_PATH)
if(TROUPE_CUDA_INCLUDE_DIR AND TROUPE_CUDART_LIBRARY AND TROUPE_NCCL_INCLUDE_DIR AND TROUPE_NCCL_LIBRARY)
  set(TROUPE_HAVE_CUDA ON)
  message(STATUS "troupe: CUDA and NCCL found in ${TROUPE_CUDA_ROOT}: GPU paths are built")
  add_library(troupe_cuda INTERFACE)
  target_include_directories(troupe_cuda SYSTEM INTERFACE ${TROUPE_CUDA_INCLUDE_DIR} ${TROUPE_NCCL_INCLUDE_DIR})
  target_link_libraries(troupe_cuda INTERFACE ${TROUPE_CUDART_LIBRARY} ${TROUPE_NCCL_LIBRARY})
  target_compile_definitions(troupe_cuda INTERFACE TROUPE_HAVE_CUDA=1)
  add_library(troupe::cuda ALIAS troupe_cuda)
else()
  set(TROUPE_HAVE_CUDA OFF)
  message(STATUS "troupe: CUDA/NCCL not found under ${TROUPE_CUDA_ROOT}: GPU paths are NOT built")
endif()

# CAF 0.17.6 (Debian libcaf-dev) ships no CMake config: import its libraries by hand.
# TROUPE_CAF_ROOT, when set, is where the libraries are taken from: the ThreadSanitizer pass links a copy
# of Debian's CAF source built with TSan there (scripts/caf_tsan.sh), so that TSan sees the
# synchronisation inside CAF's mailboxes and scheduler.
if(TROUPE_CAF_ROOT)
  set(caf_search HINTS ${TROUPE_CAF_ROOT} NO_DEFAULT_PATH)
endif()
find_library(TROUPE_CAF_CORE_LIB caf_core ${caf_search} PATH_SUFFIXES lib REQUIRED)
find_library(TROUPE_CAF_IO_LIB caf_io ${caf_search} PATH_SUFFIXES lib REQUIRED)
# The headers are always the system's (Debian's libcaf-dev): scripts/caf_tsan.sh builds the same
# source with the same options.
find_path(TROUPE_CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
if(TROUPE_CAF_TSAN)
  # A CAF without TSan's instrumentation would make every actor hand-off look like a race.
  file(STRINGS ${TROUPE_CAF_CORE_LIB} caf_tsan_symbol LIMIT_COUNT 1 REGEX "__tsan_func_entry")
  if(NOT caf_tsan_symbol)
    message(FATAL_ERROR "TROUPE_CAF_TSAN: ${TROUPE_CAF_CORE_LIB} is not built with ThreadSanitizer "
                        "(no __tsan_func_entry); build one with scripts/caf_tsan.sh")
  endif()
  message(STATUS "troupe: CAF from ${TROUPE_CAF_CORE_LIB}, built with ThreadSanitizer: the caf tests are built")
endif()
# SHARED for a CAF of TROUPE_CAF_ROOT: CMake then puts its folder in the binaries' run path, so
# they load it rather than the system's library of the same soname.
set(caf_lib_type UNKNOWN)
if(TROUPE_CAF_ROOT)
  set(caf_lib_type SHARED)
endif()
foreach(lib core io)
  string(TOUPPER ${lib} LIB)
  add_library(troupe::caf_${lib} ${caf_lib_type} IMPORTED)
  set_target_properties(troupe::caf_${lib} PROPERTIES
    IMPORTED_LOCATION ${TROUPE_CAF_${LIB}_LIB}
    INTERFACE_INCLUDE_DIRECTORIES ${TROUPE_CAF_INCLUDE_DIR})
endforeach()
set_property(TARGET troupe::caf_io PROPERTY INTERFACE_LINK_LIBRARIES troupe::caf_core)
