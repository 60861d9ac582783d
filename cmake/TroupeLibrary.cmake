# troupe_add_library(NAME SOURCES ... DEPS ...): the one way a top-level folder becomes a
# library target `troupe_NAME` with the alias `troupe::NAME`, headers included by repo path.
set(TROUPE_WARNING_FLAGS -Wall -Wextra -Wpedantic -Wno-unused-parameter)
if(TROUPE_WERROR)
  list(APPEND TROUPE_WARNING_FLAGS -Werror)
endif()

if(TROUPE_ASAN)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer)
  # -no-pie: a position-independent ASan/UBSan executable carries ~6 million relative
  # relocations (UBSan's per-check data), and applying them at every start (each head, node
  # and test process) cost 0.5 s of the troupe binary's 0.9 s start; without PIE they are
  # resolved at link time (measured: `troupe --help` 0.91 s -> 0.39 s). No target is a
  # shared library, so this reaches executables only.
  add_link_options(-fsanitize=address,undefined -no-pie)
elseif(TROUPE_FUZZ)
  # Everything is instrumented for coverage; only the fuzz targets link libFuzzer's main.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
elseif(TROUPE_TSAN)
  # -Wno-tsan: Boost.Asio (the serving process backend's HTTP client) uses
  # std::atomic_thread_fence, which GCC warns TSan cannot model; with -Werror that stopped the
  # TSan build. The tests that run that code start actor systems (label caf): they run under
  # TSan against a CAF built with it (TROUPE_CAF_TSAN), and no report has come from those fences.
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer -Wno-tsan)
  add_link_options(-fsanitize=thread)
endif()

function(troupe_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(troupe_${name} ${ARG_SOURCES})
  add_library(troupe::${name} ALIAS troupe_${name})
  target_include_directories(troupe_${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_compile_options(troupe_${name} PRIVATE ${TROUPE_WARNING_FLAGS})
  target_link_libraries(troupe_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

# troupe_add_executable(NAME SOURCES ... DEPS ...): a binary with the house warning flags.
function(troupe_add_executable name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE ${TROUPE_WARNING_FLAGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
endfunction()
