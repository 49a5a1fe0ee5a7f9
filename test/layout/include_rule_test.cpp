// test/layout/include_rule_test.cpp
//
// The layout rules of STYLE.md §2 over include/mmsparse: a lower folder never includes a higher one
// (core < backend < routing < dispatch < layers < autograd < train; testing/ and the umbrella
// headers at the top level may include anything), every header opens with "// mmsparse/<path>",
// and detail/ headers #error when included without their guard macro.
#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

namespace {

namespace fs = std::filesystem;

constexpr std::array<std::string_view, 7> layer_order = {
    "core", "backend", "routing", "dispatch", "layers", "autograd", "train"};
constexpr int rank_top = 100;  // testing/ and mmsparse.hpp: only the top may include them

struct Violation {
  std::string file;  // relative to the include root, e.g. "mmsparse/core/view.hpp"
  int line = 0;      // 1-based; 0 for a whole-file problem
  std::string text;  // the offending line
  std::string reason;
};

std::string describe(const Violation& v) {
  std::ostringstream os;
  os << "include/" << v.file << ':' << v.line << ": " << v.reason;
  if (!v.text.empty()) {
    os << "\n    " << v.text;
  }
  return os.str();
}

std::string order_text() {
  std::string s;
  for (auto name : layer_order) {
    s += (s.empty() ? "" : " < ") + std::string(name);
  }
  return s;
}

std::optional<int> folder_rank(std::string_view folder) {
  const auto it = std::find(layer_order.begin(), layer_order.end(), folder);
  if (it == layer_order.end()) {
    return std::nullopt;
  }
  return static_cast<int>(it - layer_order.begin());
}

// Where a header sits. `free`: may include anything (testing/, top-level umbrella headers).
// `rank`: its layer when it is included by someone else. `known`: its folder is in the order.
struct Place {
  std::string folder;
  bool free = false;
  bool known = true;
  int rank = 0;
};

// `rel` is relative to the include root and starts with "mmsparse/".
Place place_of(const std::string& rel) {
  const fs::path p(rel);
  std::vector<std::string> parts;
  for (const auto& part : p) {
    parts.push_back(part.string());
  }
  Place place;
  if (parts.size() == 2) {  // mmsparse/<name>.hpp: umbrella or module header
    const std::string stem = fs::path(parts[1]).stem().string();
    place.folder = "(top level)";
    place.free = true;
    place.rank = folder_rank(stem).value_or(rank_top);
    return place;
  }
  place.folder = parts.size() > 1 ? parts[1] : "";
  if (place.folder == "testing") {
    place.free = true;
    place.rank = rank_top;
  } else if (place.folder == "detail") {  // shared internals: the bottom layer
    place.rank = 0;
  } else if (auto r = folder_rank(place.folder)) {
    place.rank = *r;
  } else {
    place.known = false;
  }
  return place;
}

bool is_header(const fs::path& p) {
  const auto ext = p.extension().string();
  return ext == ".hpp" || ext == ".cuh" || ext == ".h";
}

bool in_detail(const std::string& rel) {
  return rel.find("/detail/") != std::string::npos;
}

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

std::string generic_relative(const fs::path& p, const fs::path& root) {
  return p.lexically_normal().lexically_relative(root.lexically_normal()).generic_string();
}

// Checks every header under <root>/mmsparse. `headers_seen` counts the headers walked.
std::vector<Violation> check_tree(const fs::path& root, int& headers_seen) {
  static const std::regex include_re(R"(^\s*#\s*include\s*([<"])([^>"]+)[>"])");
  static const std::regex guard_re(
      R"(^\s*#\s*(ifndef\s+MMSPARSE_\w+|if\s+!\s*defined\s*\(?\s*MMSPARSE_\w+))");
  static const std::regex error_re(R"(^\s*#\s*error\b)");

  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(root / "mmsparse")) {
    if (entry.is_regular_file() && is_header(entry.path())) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  headers_seen = static_cast<int>(files.size());

  std::vector<Violation> out;
  for (const auto& file : files) {
    const std::string rel = generic_relative(file, root);
    const Place from = place_of(rel);
    const auto lines = read_lines(file);

    const std::string expected_first = "// " + rel;
    std::string first = lines.empty() ? std::string() : lines.front();
    first.erase(first.find_last_not_of(" \t\r") + 1);
    if (first != expected_first) {
      out.push_back({rel, 1, first, "the first line must be \"" + expected_first + "\""});
    }
    if (!from.known) {
      out.push_back({rel,
                     0,
                     "",
                     "folder '" + from.folder + "' is not in the layer order (" + order_text() +
                         "; testing/ and detail/ aside): add it to STYLE.md §2 and this test"});
    }

    bool has_guard = false;
    bool has_error = false;
    for (std::size_t i = 0; i < lines.size(); ++i) {
      const std::string& line = lines[i];
      has_guard = has_guard || std::regex_search(line, guard_re);
      has_error = has_error || std::regex_search(line, error_re);
      std::smatch m;
      if (!std::regex_search(line, m, include_re)) {
        continue;
      }
      std::string target;
      if (m[1] == "<") {
        target = m[2];
        if (target.rfind("mmsparse/", 0) != 0) {
          continue;  // std or third-party
        }
      } else {  // "relative.hpp": resolve against the including header's folder
        const fs::path resolved = (file.parent_path() / std::string(m[2])).lexically_normal();
        const std::string r = generic_relative(resolved, root);
        if (r.rfind("mmsparse/", 0) != 0) {
          continue;
        }
        target = r;
      }
      if (from.free || !from.known) {
        continue;
      }
      const Place to = place_of(target);
      if (!to.known) {
        out.push_back({rel,
                       static_cast<int>(i + 1),
                       line,
                       "includes folder '" + to.folder + "', which is not in the layer order"});
      } else if (to.rank > from.rank) {
        const std::string to_name = to.folder == "(top level)" ? target : to.folder + "/";
        out.push_back({rel,
                       static_cast<int>(i + 1),
                       line,
                       from.folder + "/ may not include " + to_name + " (a lower folder never " +
                           "includes a higher one: " + order_text() + ")"});
      }
    }
    if (in_detail(rel) && !(has_guard && has_error)) {
      out.push_back({rel,
                     0,
                     "",
                     "a detail/ header must #error when included directly "
                     "(#if !defined(MMSPARSE_...) / #error ... / #endif)"});
    }
  }
  return out;
}

// A scratch include tree under the temp directory, removed on destruction.
class ScratchTree {
 public:
  ScratchTree() {
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    root_ = fs::temp_directory_path() / ("mmsparse_layout_" + std::to_string(stamp)) / "include";
    fs::create_directories(root_);
  }
  ScratchTree(const ScratchTree&) = delete;
  ScratchTree& operator=(const ScratchTree&) = delete;
  ~ScratchTree() {
    std::error_code ec;
    fs::remove_all(root_.parent_path(), ec);
  }

  void write(const std::string& rel, const std::string& text) const {
    const fs::path p = root_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  [[nodiscard]] const fs::path& root() const {
    return root_;
  }

 private:
  fs::path root_;
};

bool has_violation(const std::vector<Violation>& vs,
                   const std::string& file,
                   int line,
                   const std::string& reason_part) {
  return std::any_of(vs.begin(), vs.end(), [&](const Violation& v) {
    return v.file == file && v.line == line && v.reason.find(reason_part) != std::string::npos;
  });
}

}  // namespace

TEST_CASE("the include-rule checker finds each kind of violation", "[layout][cpu]") {
  ScratchTree tree;
  // Allowed: same folder, lower folders, std headers; testing/ and umbrellas include anything.
  tree.write("mmsparse/core/view.hpp",
             "// mmsparse/core/view.hpp\n#pragma once\n#include <vector>\n");
  tree.write("mmsparse/routing/plan.hpp",
             "// mmsparse/routing/plan.hpp\n#pragma once\n#include <mmsparse/core/view.hpp>\n"
             "#include <mmsparse/backend/concepts.hpp>\n#include \"concepts.hpp\"\n");
  tree.write("mmsparse/routing/concepts.hpp", "// mmsparse/routing/concepts.hpp\n#pragma once\n");
  tree.write("mmsparse/testing/oracle.hpp",
             "// mmsparse/testing/oracle.hpp\n#include <mmsparse/train/trainer.hpp>\n");
  tree.write("mmsparse/mmsparse.hpp",
             "// mmsparse/mmsparse.hpp\n#include <mmsparse/train/trainer.hpp>\n");
  tree.write("mmsparse/train/trainer.hpp",
             "// mmsparse/train/trainer.hpp\n#include <mmsparse/layers/sparse_ffn.hpp>\n"
             "#include <mmsparse/routing.hpp>\n");
  tree.write("mmsparse/detail/guarded.hpp",
             "// mmsparse/detail/guarded.hpp\n#if !defined(MMSPARSE_INTERNAL_INCLUDE)\n"
             "#error \"internal header\"\n#endif\n");
  // Violations.
  tree.write("mmsparse/core/bad.hpp",
             "// mmsparse/core/bad.hpp\n//\n// Reaches up.\n#pragma once\n"
             "#include <mmsparse/layers/sparse_ffn.hpp>\n");
  tree.write(
      "mmsparse/dispatch/relative.hpp",
      "// mmsparse/dispatch/relative.hpp\n#pragma once\n#include \"../train/trainer.hpp\"\n");
  tree.write("mmsparse/layers/uses_testing.hpp",
             "// mmsparse/layers/uses_testing.hpp\n#include <mmsparse/testing/oracle.hpp>\n"
             "#include <mmsparse/mmsparse.hpp>\n");
  tree.write("mmsparse/routing/wrong_name.hpp", "// mmsparse/routing/other.hpp\n#pragma once\n");
  tree.write("mmsparse/backend/no_comment.hpp", "#pragma once\n");
  tree.write("mmsparse/widgets/thing.hpp", "// mmsparse/widgets/thing.hpp\n#pragma once\n");
  tree.write("mmsparse/detail/open.hpp", "// mmsparse/detail/open.hpp\n#pragma once\n");

  int seen = 0;
  const auto vs = check_tree(tree.root(), seen);
  std::string all;
  for (const auto& v : vs) {
    all += describe(v) + "\n";
  }
  INFO("violations found in the scratch tree:\n" << all);
  CHECK(seen == 14);
  CHECK(has_violation(vs, "mmsparse/core/bad.hpp", 5, "core/ may not include layers/"));
  CHECK(has_violation(vs, "mmsparse/dispatch/relative.hpp", 3, "dispatch/ may not include train/"));
  CHECK(has_violation(vs, "mmsparse/layers/uses_testing.hpp", 2, "may not include testing/"));
  CHECK(has_violation(
      vs, "mmsparse/layers/uses_testing.hpp", 3, "may not include mmsparse/mmsparse.hpp"));
  CHECK(has_violation(vs, "mmsparse/routing/wrong_name.hpp", 1, "mmsparse/routing/wrong_name.hpp"));
  CHECK(has_violation(vs, "mmsparse/backend/no_comment.hpp", 1, "the first line must be"));
  CHECK(has_violation(vs, "mmsparse/widgets/thing.hpp", 0, "not in the layer order"));
  CHECK(has_violation(vs, "mmsparse/detail/open.hpp", 0, "must #error"));
  CHECK(vs.size() == 8);

  // The report names the file, the line and the include itself.
  const auto it = std::find_if(
      vs.begin(), vs.end(), [](const Violation& v) { return v.file == "mmsparse/core/bad.hpp"; });
  REQUIRE(it != vs.end());
  const std::string report = describe(*it);
  CHECK(report.find("include/mmsparse/core/bad.hpp:5:") != std::string::npos);
  CHECK(report.find("#include <mmsparse/layers/sparse_ffn.hpp>") != std::string::npos);
}

TEST_CASE("include/mmsparse obeys the include rule and names every header", "[layout][cpu]") {
  const fs::path root = fs::path(MMSPARSE_SOURCE_DIR) / "include";
  REQUIRE(fs::is_directory(root / "mmsparse" / "core"));
  int seen = 0;
  const auto vs = check_tree(root, seen);
  INFO("headers checked: " << seen);
  CHECK(seen > 0);
  for (const auto& v : vs) {
    FAIL_CHECK(describe(v));
  }
  CHECK(vs.empty());
}
