// BenchReport: the results table every benchmark prints (its figure beside a baseline measured in
// the same run, the ratio, the target and whether it was met) and the same rows as JSON for
// scripts (`--json PATH`). Header-only; benchmarks include it by repository path.
#pragma once

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace troupe::bench {

/// One row: `value` (troupe's figure) beside `baseline` (its name and value, same run), and a
/// target ("" for none) with whether it was met.
struct ReportRow {
  std::string metric, unit;
  double value = 0, baseline = 0;
  std::string baseline_name, target;
  bool met = false;
  double Ratio() const { return baseline > 0 ? value / baseline : 0; }
};

/// Prints `rows` as a table whose value column is headed `column` (e.g. "gateway").
inline void PrintReport(const std::string& column, const std::vector<ReportRow>& rows) {
  std::printf("\n%-22s %-6s %12s  %-32s %12s %8s %10s %4s\n", "metric", "unit", column.c_str(), "baseline", "value",
              "ratio", "target", "met");
  for (const auto& r : rows) {
    std::printf("%-22s %-6s %12.2f  %-32s %12.2f %8.3f %10s %4s\n", r.metric.c_str(), r.unit.c_str(), r.value,
                r.baseline_name.c_str(), r.baseline, r.Ratio(), r.target.c_str(),
                r.target.empty() ? "" : (r.met ? "yes" : "no"));
  }
}

/// Writes `json` (indented) to `path`; false, with a line on stderr naming `program` and the path,
/// if it cannot be written.
template <class Json>
inline bool WriteJsonFile(const std::string& path, const Json& json, const std::string& program) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  if (!out) {
    std::cerr << program << ": cannot write " << path << "\n";
    return false;
  }
  return true;
}

/// Writes {"benchmark", "quick", "rows": [...]} to `path`; false (and a line on stderr) if it
/// cannot be written.
inline bool WriteReportJson(const std::string& path, const std::string& benchmark, bool quick,
                            const std::vector<ReportRow>& rows) {
  nlohmann::ordered_json report = {{"benchmark", benchmark}, {"quick", quick}, {"rows", nlohmann::ordered_json::array()}};
  for (const auto& r : rows) {
    report["rows"].push_back({{"metric", r.metric},
                              {"unit", r.unit},
                              {"troupe", r.value},
                              {"baseline", r.baseline_name},
                              {"baseline_value", r.baseline},
                              {"ratio", r.Ratio()},
                              {"target", r.target},
                              {"met", r.target.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(r.met)}});
  }
  return WriteJsonFile(path, report, benchmark + "_bench");
}

}  // namespace troupe::bench
