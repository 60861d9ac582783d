// Job spec parsing: the documented example reads into the expected JobSpec, what is left out takes
// its default, and every kind of bad spec is refused with file, line, field and what was wrong.
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "actors/training/job_spec.h"

namespace troupe::training {
namespace {

using runtime::ConfigError;

// A command that every Linux host has, found in PATH.
const std::string kMinimal = R"(name: tiny
entry:
  command: [sh, -c, "true"]
)";

// A spec directory holding an executable script, a file that is not executable and a working
// directory, removed after the test.
class JobSpecTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string templ = testing::TempDir() + "job_spec_test.XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr) << "mkdtemp " << templ;
    dir_ = std::filesystem::canonical(templ).string();
    Write("train.sh", "#!/bin/sh\nexit 0\n");
    ASSERT_EQ(chmod((dir_ + "/train.sh").c_str(), 0755), 0);
    Write("notes.txt", "not a program\n");
    std::filesystem::create_directory(dir_ + "/work");
    ASSERT_EQ(setenv("TROUPE_JOB_SPEC_TEST_HOME", "/home/tester", 1), 0);
    ASSERT_EQ(unsetenv("TROUPE_JOB_SPEC_TEST_UNSET"), 0);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ + "/" + name) << text;
  }

  std::vector<ConfigError> Errors(const std::string& yaml, JobSpec* spec = nullptr) {
    return ValidateJobSpecText(yaml, "job.yaml", dir_, spec);
  }

  // The spec is refused with an error at `line` naming `field`, whose message holds `what`.
  void ExpectError(const std::string& yaml, int line, const std::string& field, const std::string& what) {
    const std::vector<ConfigError> errors = Errors(yaml);
    ASSERT_FALSE(errors.empty()) << "accepted:\n" << yaml;
    std::string all;
    for (const auto& e : errors) {
      all += e.ToString() + "\n";
      if (e.file == "job.yaml" && e.line == line && e.column > 0 && e.field == field &&
          e.message.find(what) != std::string::npos) {
        return;
      }
    }
    ADD_FAILURE() << "no error at line " << line << " for " << field << " saying '" << what << "' in:\n" << all;
  }

  std::string dir_;
};

TEST_F(JobSpecTest, TheDocumentedExampleReadsIntoTheExpectedSpec) {
  // docs/jobs.md's example, with a program every host has for python3.
  const std::string yaml = R"(name: tiny-gpt            # required
tenant: research
priority: urgent
tags: [finetune, demo]
workers: 2
resources:
  slices: 1
  slice_memory: 8GiB
  compute_percent: 50
  cpus: 4
  memory: 2GiB
placement: spread
entry:
  command: [/bin/sh, train.py, --steps, "40"]
  env: {DATA: "${TROUPE_JOB_SPEC_TEST_HOME}/data", SEED: "1"}
  working_dir: work
checkpoints:
  keep: 5
  dir: ckpt
restart:
  max_user_failures: 2
  max_infra_failures: 7
  backoff: 2s
  max_backoff: 1m
step_watchdog: 10m
output_model: tiny-gpt-v2
)";
  JobSpec spec;
  const auto errors = Errors(yaml, &spec);
  ASSERT_TRUE(errors.empty()) << errors[0].ToString();
  EXPECT_EQ(spec.name, "tiny-gpt");
  EXPECT_EQ(spec.tenant, "research");
  EXPECT_EQ(spec.priority, "urgent");
  EXPECT_EQ(spec.tags, (std::vector<std::string>{"finetune", "demo"}));
  EXPECT_EQ(spec.workers, 2u);
  EXPECT_EQ(spec.resources.slices, 1u);
  EXPECT_EQ(spec.resources.slice_memory_bytes, 8ull << 30);
  EXPECT_EQ(spec.resources.compute_percent, 50u);
  EXPECT_EQ(spec.resources.cpus, 4u);
  EXPECT_EQ(spec.resources.host_memory_bytes, 2ull << 30);
  EXPECT_EQ(spec.placement, "spread");
  EXPECT_EQ(spec.entry.command, (std::vector<std::string>{"/bin/sh", "train.py", "--steps", "40"}));
  EXPECT_EQ(spec.entry.env, (std::map<std::string, std::string>{{"DATA", "/home/tester/data"}, {"SEED", "1"}}));
  EXPECT_EQ(spec.entry.working_dir, dir_ + "/work");
  EXPECT_EQ(spec.checkpoints.keep, 5u);
  EXPECT_EQ(spec.checkpoints.dir, dir_ + "/ckpt");
  EXPECT_EQ(spec.restart.max_user_failures, 2u);
  EXPECT_EQ(spec.restart.max_infra_failures, 7u);
  EXPECT_EQ(spec.restart.backoff_initial, std::chrono::seconds(2));
  EXPECT_EQ(spec.restart.backoff_max, std::chrono::minutes(1));
  EXPECT_EQ(spec.step_watchdog, std::chrono::minutes(10));
  EXPECT_EQ(spec.output_model, "tiny-gpt-v2");
}

TEST_F(JobSpecTest, WhatIsLeftOutTakesItsDefault) {
  JobSpec spec;
  const auto errors = Errors(kMinimal, &spec);
  ASSERT_TRUE(errors.empty()) << errors[0].ToString();
  const JobSpec defaults;
  EXPECT_EQ(spec.tenant, "default");
  EXPECT_EQ(spec.priority, "normal");
  EXPECT_TRUE(spec.tags.empty());
  EXPECT_EQ(spec.workers, 1u);
  EXPECT_EQ(spec.resources.slices, 0u);
  EXPECT_EQ(spec.resources.cpus, 1u);
  EXPECT_EQ(spec.resources.host_memory_bytes, 0u);
  EXPECT_EQ(spec.placement, "pack");
  EXPECT_TRUE(spec.entry.env.empty());
  EXPECT_EQ(spec.entry.working_dir, dir_) << "the spec file's directory";
  EXPECT_EQ(spec.checkpoints.keep, 3u);
  EXPECT_EQ(spec.checkpoints.dir, "");
  EXPECT_EQ(spec.restart.max_user_failures, defaults.restart.max_user_failures);
  EXPECT_EQ(spec.restart.max_infra_failures, defaults.restart.max_infra_failures);
  EXPECT_EQ(spec.restart.backoff_initial, std::chrono::seconds(1));
  EXPECT_EQ(spec.restart.backoff_max, std::chrono::seconds(30));
  EXPECT_EQ(spec.step_watchdog, std::chrono::minutes(5));
  EXPECT_EQ(spec.output_model, "");
}

TEST_F(JobSpecTest, AnUnknownKeyIsNamedWithItsLineAndTheKeysExpected) {
  ExpectError(kMinimal + "resources:\n  gpus: 1\n", 5, "resources.gpus",
              "unknown key (expected one of: compute_percent, cpus, memory, slice_memory, slices)");
  ExpectError(kMinimal + "replicas: 2\n", 4, "replicas", "unknown key");
  ExpectError("name: tiny\nentry:\n  command: [sh]\n  args: [x]\n", 4, "entry.args", "unknown key");
}

TEST_F(JobSpecTest, WorkersAreBetweenOneAndTheMaximum) {
  ExpectError(kMinimal + "workers: 0\n", 4, "workers", "must be at least 1");
  ExpectError(kMinimal + "workers: 4097\n", 4, "workers", "must be at most 4096");
  ExpectError(kMinimal + "workers: two\n", 4, "workers", "expected a whole number, got 'two'");
  ExpectError(kMinimal + "workers: [2]\n", 4, "workers", "expected a whole number");
}

TEST_F(JobSpecTest, ChoicesAndBoundsAreChecked) {
  ExpectError(kMinimal + "priority: high\n", 4, "priority", "expected one of urgent, normal; got 'high'");
  ExpectError(kMinimal + "placement: scatter\n", 4, "placement", "expected one of pack, spread");
  ExpectError(kMinimal + "resources:\n  compute_percent: 101\n", 5, "resources.compute_percent",
              "must be at most 100");
  ExpectError(kMinimal + "checkpoints:\n  keep: 0\n", 5, "checkpoints.keep", "must be at least 1");
  ExpectError("name: Tiny_GPT\nentry:\n  command: [sh]\n", 1, "name", "not a valid name");
  ExpectError("entry:\n  command: [sh]\n", 1, "name", "missing");
  ExpectError(kMinimal + "output_model: -model\n", 4, "output_model", "not a valid name");
  ExpectError(kMinimal + "tags: finetune\n", 4, "tags", "expected a list of strings");
  ExpectError(kMinimal + "restart:\n  backoff: 1m\n  max_backoff: 10s\n", 5, "restart.backoff",
              "must not be longer than max_backoff");
}

TEST_F(JobSpecTest, ABadSizeOrDurationIsRefused) {
  ExpectError(kMinimal + "resources:\n  memory: 2 gigs\n", 5, "resources.memory",
              "unknown size unit 'gigs'");
  ExpectError(kMinimal + "step_watchdog: 5 minutes\n", 4, "step_watchdog", "unknown duration unit");
  ExpectError(kMinimal + "step_watchdog: 48h\n", 4, "step_watchdog", "must be at most 24h");
}

TEST_F(JobSpecTest, TheCommandMustBeGivenAndRunnable) {
  ExpectError("name: tiny\nentry:\n  command: []\n", 3, "entry.command", "must not be empty");
  ExpectError("name: tiny\nentry:\n  env: {A: b}\n", 3, "entry.command", "missing");
  ExpectError("name: tiny\nentry:\n  command: ./missing.sh\n", 3, "entry.command", "expected a list of strings");
  ExpectError("name: tiny\nentry:\n  command: [./missing.sh]\n", 3, "entry.command",
              "no such file: " + dir_ + "/missing.sh");
  ExpectError("name: tiny\nentry:\n  command: [./notes.txt]\n", 3, "entry.command", "notes.txt is not executable");
  ExpectError("name: tiny\nentry:\n  command: [troupe-no-such-program-anywhere]\n", 3, "entry.command",
              "'troupe-no-such-program-anywhere' not found in PATH");
  // A path is taken relative to the working directory.
  ExpectError("name: tiny\nentry:\n  command: [./train.sh]\n  working_dir: work\n", 3, "entry.command",
              "no such file: " + dir_ + "/work/train.sh");
  EXPECT_TRUE(Errors("name: tiny\nentry:\n  command: [./train.sh]\n").empty());
  EXPECT_TRUE(Errors("name: tiny\nentry:\n  command: [../train.sh]\n  working_dir: work\n").empty());
}

TEST_F(JobSpecTest, PreloadNeedsAPythonScriptOrModuleCommandAndModuleNames) {
  JobSpec spec;
  ASSERT_TRUE(Errors("name: tiny\nentry:\n  command: [python3, -u, train.py]\n  preload: [torch, torch.distributed]\n",
                     &spec)
                  .empty());
  EXPECT_EQ(spec.entry.preload, std::vector<std::string>({"torch", "torch.distributed"}));
  EXPECT_TRUE(Errors("name: tiny\nentry:\n  command: [python3, -m, pkg.train]\n  preload: [torch]\n").empty());
  ExpectError("name: tiny\nentry:\n  command: [./train.sh]\n  preload: [torch]\n", 4, "entry.preload",
              "'./train.sh' is not a Python interpreter");
  ExpectError("name: tiny\nentry:\n  command: [python3, -O, train.py]\n  preload: [torch]\n", 4, "entry.preload",
              "the interpreter option '-O'");
  ExpectError("name: tiny\nentry:\n  command: [python3, t.py]\n  preload: [\"os; import x\"]\n", 4, "entry.preload",
              "not a Python module name");
  ExpectError("name: tiny\nentry:\n  command: [python3, t.py]\n  preload: torch\n", 4, "entry.preload",
              "expected a list of strings");
}

TEST_F(JobSpecTest, EnvValuesExpandVariablesFromTheEnvironment) {
  JobSpec spec;
  const auto errors = Errors(kMinimal + R"(  env:
    A: "${TROUPE_JOB_SPEC_TEST_HOME}/x"
    B: "$${TROUPE_JOB_SPEC_TEST_HOME}"
    C: "cost $5 ${TROUPE_JOB_SPEC_TEST_HOME}${TROUPE_JOB_SPEC_TEST_HOME}"
)",
                             &spec);
  ASSERT_TRUE(errors.empty()) << errors[0].ToString();
  EXPECT_EQ(spec.entry.env["A"], "/home/tester/x");
  EXPECT_EQ(spec.entry.env["B"], "${TROUPE_JOB_SPEC_TEST_HOME}") << "$${ is a literal ${";
  EXPECT_EQ(spec.entry.env["C"], "cost $5 /home/tester/home/tester");
}

TEST_F(JobSpecTest, AnUnsetOrUnterminatedVariableIsRefused) {
  ExpectError(kMinimal + "  env:\n    DATA: \"${TROUPE_JOB_SPEC_TEST_UNSET}/data\"\n", 5,
              "entry.env.DATA", "environment variable TROUPE_JOB_SPEC_TEST_UNSET is not set");
  ExpectError(kMinimal + "  env:\n    DATA: \"${HOME\"\n", 5, "entry.env.DATA", "unterminated ${");
  ExpectError(kMinimal + "  env:\n    DATA: \"${}\"\n", 5, "entry.env.DATA", "does not name a variable");
  ExpectError(kMinimal + "  env:\n    1BAD: x\n", 5, "entry.env.1BAD", "not a variable name");
  ExpectError(kMinimal + "  env: [A]\n", 4, "entry.env", "expected a mapping of keys");
}

TEST_F(JobSpecTest, AKeyGivenTwiceNamesBothLines) {
  ExpectError(kMinimal + "workers: 2\nworkers: 3\n", 5, "workers", "given twice, on line 4 and line 5");
  ExpectError(kMinimal + "  env:\n    A: x\n    A: y\n", 6, "entry.env.A", "given twice");
}

TEST_F(JobSpecTest, EveryProblemIsListedWithFileLineAndField) {
  const auto errors = Errors(std::string(kMinimal) +
                             "priority: high\nworkers: 0\nresources:\n  memory: lots\ncheckpoints:\n  keep: 0\n");
  ASSERT_EQ(errors.size(), 4u);
  EXPECT_EQ(errors[0].line, 4);
  EXPECT_EQ(errors[0].field, "priority");
  EXPECT_EQ(errors[1].ToString(), "job.yaml:5:10: workers: must be at least 1");
  EXPECT_EQ(errors[2].line, 7);
  EXPECT_EQ(errors[2].field, "resources.memory");
  EXPECT_EQ(errors[3].line, 9);
  EXPECT_EQ(errors[3].field, "checkpoints.keep");
}

TEST_F(JobSpecTest, NotYamlIsOneErrorWithItsPlace) {
  const auto errors = Errors("name: tiny\nentry: [unclosed\n");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].field, "(yaml)");
  EXPECT_GT(errors[0].line, 0);
}

TEST_F(JobSpecTest, RelativePathsAreMadeAbsoluteAgainstTheSpecDirectory) {
  JobSpec spec;
  // base_dir itself may be given with "..": the result is normal.
  const auto errors = ValidateJobSpecText(
      "name: tiny\nentry:\n  command: [sh]\n  working_dir: ./work/../work\ncheckpoints:\n  dir: ckpt/\n", "job.yaml",
      dir_ + "/work/..", &spec);
  ASSERT_TRUE(errors.empty()) << errors[0].ToString();
  EXPECT_EQ(spec.entry.working_dir, dir_ + "/work");
  EXPECT_EQ(spec.checkpoints.dir, dir_ + "/ckpt");
  ExpectError("name: tiny\nentry:\n  command: [sh]\n  working_dir: nowhere\n", 4, "entry.working_dir",
              "no such directory: " + dir_ + "/nowhere");
}

TEST_F(JobSpecTest, AFileIsReadBesideItsDirectory) {
  Write("spec.yaml", "name: tiny\nentry:\n  command: [./train.sh]\n  working_dir: .\n");
  auto spec = LoadJobSpec(dir_ + "/spec.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->entry.working_dir, dir_);

  Write("bad.yaml", "name: tiny\nworkers: 0\nentry:\n  command: [sh]\n");
  auto bad = LoadJobSpec(dir_ + "/bad.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(dir_ + "/bad.yaml:2:10: workers: must be at least 1"), std::string::npos)
      << bad.status();
}

TEST_F(JobSpecTest, AMissingOrHugeFileIsNamed) {
  const auto missing = ValidateJobSpec(dir_ + "/nope.yaml");
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0].file, dir_ + "/nope.yaml");
  EXPECT_NE(missing[0].message.find("cannot read job spec " + dir_ + "/nope.yaml"), std::string::npos)
      << missing[0].ToString();

  Write("huge.yaml", "name: tiny\n# " + std::string(kMaxJobSpecFileBytes, 'x') + "\n");
  const auto huge = ValidateJobSpec(dir_ + "/huge.yaml");
  ASSERT_EQ(huge.size(), 1u);
  EXPECT_NE(huge[0].message.find("longer than 1MiB"), std::string::npos) << huge[0].ToString();
}

// docs/jobs.md, "Actor workers": entry.actor names a registered worker type instead of a command.
TEST_F(JobSpecTest, AnActorEntryNamesTheWorkerTypeAndItsConfiguration) {
  JobSpec spec;
  const std::vector<ConfigError> errors = Errors(R"(name: linear
workers: 4
entry:
  actor: example-linear
  env: {STEPS: "40", HOME_DIR: "${TROUPE_JOB_SPEC_TEST_HOME}"}
)", &spec);
  ASSERT_TRUE(errors.empty()) << errors.front().ToString();
  EXPECT_EQ(spec.entry.actor, "example-linear");
  EXPECT_TRUE(spec.entry.command.empty());
  EXPECT_TRUE(spec.entry.working_dir.empty());
  EXPECT_EQ(spec.entry.env["STEPS"], "40");
  EXPECT_EQ(spec.entry.env["HOME_DIR"], "/home/tester");
}

TEST_F(JobSpecTest, AnActorEntryRefusesTheFieldsOfAProcessAndABadName) {
  ExpectError("name: tiny\nentry:\n  actor: example-linear\n  command: [sh]\n", 4, "entry.command",
              "not allowed with entry.actor");
  ExpectError("name: tiny\nentry:\n  actor: example-linear\n  working_dir: work\n", 4, "entry.working_dir",
              "give either command or actor");
  ExpectError("name: tiny\nentry:\n  actor: example-linear\n  preload: [torch]\n", 4, "entry.preload",
              "not allowed with entry.actor");
  ExpectError("name: tiny\nentry:\n  actor: Example_Linear\n", 3, "entry.actor", "not a valid name");
  ExpectError("name: tiny\nentry:\n  actor: \"\"\n", 3, "entry.actor", "must name an actor worker type");
  ExpectError("name: tiny\nentry:\n  actor: [a]\n", 3, "entry.actor", "");
  ExpectError("name: tiny\nentry:\n  env: {A: b}\n", 3, "entry.command", "or actor: NAME for actor workers");
}

// entry.backend (actors/training/worker_communicators.h): auto by default, gloo or nccl with
// entry.actor; refused with a command and for another name, at its line.
TEST_F(JobSpecTest, AnActorEntryTakesACollectivesBackend) {
  JobSpec spec;
  std::vector<ConfigError> errors = Errors("name: tiny\nentry:\n  actor: example-linear\n", &spec);
  ASSERT_TRUE(errors.empty()) << errors.front().ToString();
  EXPECT_EQ(spec.entry.backend, "auto");
  errors = Errors("name: tiny\nentry:\n  actor: example-linear\n  backend: gloo\n", &spec);
  ASSERT_TRUE(errors.empty()) << errors.front().ToString();
  EXPECT_EQ(spec.entry.backend, "gloo");
  errors = Errors("name: tiny\nentry:\n  actor: example-linear\n  backend: nccl\n", &spec);
  ASSERT_TRUE(errors.empty()) << errors.front().ToString();
  EXPECT_EQ(spec.entry.backend, "nccl");
  ExpectError("name: tiny\nentry:\n  actor: example-linear\n  backend: mpi\n", 4, "entry.backend",
              "expected one of auto, gloo, nccl; got 'mpi'");
  ExpectError("name: tiny\nentry:\n  command: [sh]\n  backend: gloo\n", 4, "entry.backend", "only with entry.actor");
}

}  // namespace
}  // namespace troupe::training
