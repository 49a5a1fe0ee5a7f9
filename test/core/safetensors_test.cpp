#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <unistd.h>
#include <vector>

#include <catch2/catch.hpp>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/rng.hpp>
#include <mmsparse/core/safetensors.hpp>
#include <mmsparse/core/tensor.hpp>

namespace mm = mmsparse;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A fresh directory per test case, removed at the end.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("mmsparse_safetensors_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  [[nodiscard]] std::string file(const std::string& name) const {
    return (path / name).string();
  }
};

// An independent writer: the 8-byte length (or `length` when given), the header text, the data.
void write_raw(const std::string& path,
               const std::string& header,
               const std::string& data,
               std::int64_t length = -1) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::uint64_t n = length < 0 ? header.size() : static_cast<std::uint64_t>(length);
  for (int i = 0; i < 8; ++i) {
    out.put(static_cast<char>(n & 0xffu));
    n >>= 8;
  }
  out << header << data;
}

std::string bytes_of_floats(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// Two F32 tensors "a" [2, 2] and "b" [3], tiling 28 bytes.
const std::string kGoodHeader = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                                R"("b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
const std::string kGoodData = bytes_of_floats({1, 2, 3, 4, 5, 6, 7});

// Runs `load` into fresh destinations for "a" [2, 2] and "b" [3] pre-filled with a sentinel,
// requires an Error whose message contains every part, and that nothing was written.
void expect_load_error(const std::string& path,
                       const std::vector<std::string>& parts,
                       const std::string& b_name = "b") {
  mm::Tensor<float> a(2, 2);
  mm::Tensor<float> b(3, 1);
  a.fill(-9.0f);
  b.fill(-9.0f);
  std::string message;
  try {
    mm::load_into(path, {{"a", a.view()}, {b_name, b.span()}});
  } catch (const mm::Error& e) {
    message = e.what();
  }
  INFO("message: " << message);
  REQUIRE(!message.empty());
  for (const auto& p : parts) {
    REQUIRE_THAT(message, Contains(p));
  }
  for (std::int64_t i = 0; i < 4; ++i) {
    REQUIRE(a.data()[i] == -9.0f);
  }
  for (std::int64_t i = 0; i < 3; ++i) {
    REQUIRE(b.data()[i] == -9.0f);
  }
}

}  // namespace

TEST_CASE("safetensors round trip of several dtypes and shapes", "[core][cpu]") {
  TempDir dir("roundtrip");
  const std::string path = dir.file("model.safetensors");
  mm::Rng rng(1);
  auto big = rng.normal_tensor<float>(4, 9);
  const mm::View<float> strided = big.view().col_block(2, 5);  // [4, 5], stride 9
  auto f64 = rng.normal_tensor<double>(7, 1);
  mm::Tensor<mm::bf16> h(2, 4);
  for (std::int64_t i = 0; i < h.size(); ++i) {
    h.data()[i] = mm::bf16(static_cast<float>(rng.normal()));
  }
  mm::Tensor<std::int32_t> ids(6, 1);
  for (std::int64_t i = 0; i < 6; ++i) {
    ids.data()[i] = static_cast<std::int32_t>(rng.integer(-1000, 1000));
  }
  auto cube = rng.normal_tensor<float>(3, 4);
  mm::Tensor<float> empty(0, 4);

  mm::save_safetensors(path,
                       {{"layers.0.wq", mm::View<const float>(strided)},
                        {"f64", f64.view()},
                        {"bf16", h.view()},
                        {"ids", ids.span()},
                        {"cube", cube.view(), {2, 3, 2}},
                        {"empty", empty.view()}},
                       {{"format", "mmsparse"}, {"step", "12"}});

  const mm::SafetensorsFile file(path);
  REQUIRE(file.names() ==
          std::vector<std::string>{"layers.0.wq", "f64", "bf16", "ids", "cube", "empty"});
  REQUIRE(file.dtype("bf16") == mm::SafetensorsDtype::bf16);
  REQUIRE(file.dtype("ids") == mm::SafetensorsDtype::i32);
  REQUIRE(file.shape("layers.0.wq") == std::vector<std::int64_t>{4, 5});
  REQUIRE(file.shape("ids") == std::vector<std::int64_t>{6});
  REQUIRE(file.shape("cube") == std::vector<std::int64_t>{2, 3, 2});
  REQUIRE(file.shape("empty") == std::vector<std::int64_t>{0, 4});
  REQUIRE(file.metadata().at("step") == "12");
  // The data section starts 8-byte aligned.
  std::ifstream raw(path, std::ios::binary);
  std::uint64_t n = 0;
  raw.read(reinterpret_cast<char*>(&n), 8);
  REQUIRE(n % 8 == 0);

  mm::Tensor<float> wq(4, 5);
  mm::Tensor<double> f64b(7, 1);
  mm::Tensor<mm::bf16> hb(2, 4);
  mm::Tensor<std::int32_t> idsb(6, 1);
  mm::Tensor<float> cubeb(3, 4);
  mm::load_into(path,
                {{"ids", idsb.span()},
                 {"cube", cubeb.view(), {2, 3, 2}},
                 {"bf16", hb.view()},
                 {"f64", f64b.view()},
                 {"layers.0.wq", wq.view()}});
  for (std::int64_t i = 0; i < 4; ++i) {
    for (std::int64_t j = 0; j < 5; ++j) {
      REQUIRE(wq(i, j) == strided(i, j));
    }
  }
  for (std::int64_t i = 0; i < 7; ++i) {
    REQUIRE(f64b.data()[i] == f64.data()[i]);
  }
  for (std::int64_t i = 0; i < 8; ++i) {
    REQUIRE(hb.data()[i].bits == h.data()[i].bits);
  }
  for (std::int64_t i = 0; i < 6; ++i) {
    REQUIRE(idsb.data()[i] == ids.data()[i]);
  }
  for (std::int64_t i = 0; i < 12; ++i) {
    REQUIRE(cubeb.data()[i] == cube.data()[i]);
  }
  // read_into a strided destination.
  mm::Tensor<float> wide(4, 8);
  wide.fill(0.5f);
  file.read_into("layers.0.wq", wide.view().col_block(1, 5));
  REQUIRE(wide(3, 0) == 0.5f);
  REQUIRE(wide(3, 6) == 0.5f);
  REQUIRE(wide(2, 3) == strided(2, 2));
  // Saving again replaces the file.
  mm::save_safetensors(path, {{"only", f64.view()}});
  REQUIRE(mm::SafetensorsFile(path).names() == std::vector<std::string>{"only"});
  REQUIRE(!fs::exists(path + ".tmp"));
}

TEST_CASE("safetensors reads a file written by an independent Python writer", "[core][cpu]") {
  // test/data/reference.safetensors comes from test/data/make_reference_safetensors.py
  // (Python's struct + json only); the values are recomputed here from the same formulas.
  const std::string path = std::string(MMSPARSE_SOURCE_DIR) + "/test/data/reference.safetensors";
  const mm::SafetensorsFile file(path);
  REQUIRE(file.names() == std::vector<std::string>{
                              "f32_matrix", "f64_vector", "bf16_matrix", "empty_rows", "i32_cube"});
  REQUIRE(file.metadata().at("format") == "pt");
  REQUIRE(file.metadata().at("source") == "make_reference_safetensors.py");
  REQUIRE(file.shape("i32_cube") == std::vector<std::int64_t>{2, 2, 2});

  mm::Tensor<float> f32(3, 4);
  mm::Tensor<double> f64(5, 1);
  mm::Tensor<mm::bf16> h(2, 3);
  mm::Tensor<std::int32_t> cube(2, 4);
  mm::Tensor<float> empty(0, 3);
  mm::load_into(path,
                {{"f32_matrix", f32.view()},
                 {"f64_vector", f64.span()},
                 {"bf16_matrix", h.view()},
                 {"i32_cube", cube.view(), {2, 2, 2}},
                 {"empty_rows", empty.view()}});
  for (int i = 0; i < 12; ++i) {
    REQUIRE(f32.data()[i] == static_cast<float>(i * 0.25 - 1.5));
  }
  for (int i = 0; i < 5; ++i) {
    REQUIRE(f64.data()[i] == std::sin(static_cast<double>(i + 1)));
  }
  for (int i = 0; i < 6; ++i) {
    REQUIRE(static_cast<float>(h.data()[i]) == static_cast<float>((i - 2.5) * 0.375));
  }
  for (int i = 0; i < 8; ++i) {
    REQUIRE(cube.data()[i] == i * 7 - 20);
  }
}

TEST_CASE("safetensors rejects corrupt files before writing anything", "[core][cpu]") {
  TempDir dir("corrupt");
  const std::string path = dir.file("bad.safetensors");

  SECTION("a valid file loads (the baseline of the cases below)") {
    write_raw(path, kGoodHeader, kGoodData);
    mm::Tensor<float> a(2, 2);
    mm::Tensor<float> b(3, 1);
    mm::load_into(path, {{"a", a.view()}, {"b", b.span()}});
    REQUIRE(a(1, 1) == 4.0f);
    REQUIRE(b.data()[2] == 7.0f);
  }
  SECTION("truncated data") {
    write_raw(path, kGoodHeader, kGoodData.substr(0, 20));
    expect_load_error(path, {path, "tensor 'b' data_offsets", "data section of 20 bytes"});
  }
  SECTION("truncated inside the length field") {
    std::ofstream(path, std::ios::binary) << "abc";
    expect_load_error(path, {path, "header length", "3 bytes"});
  }
  SECTION("a header length larger than the file") {
    write_raw(path, kGoodHeader, kGoodData, 1 << 20);
    expect_load_error(path,
                      {path,
                       "header length",
                       "at most " + std::to_string(kGoodHeader.size() + 28),
                       "got 1048576"});
  }
  SECTION("a header length that cuts the JSON") {
    write_raw(path, kGoodHeader, kGoodData, static_cast<std::int64_t>(kGoodHeader.size()) - 5);
    expect_load_error(path, {path, "header: expected well-formed JSON"});
  }
  SECTION("garbage JSON") {
    write_raw(path, "{\"a\": [1, 2,, }", kGoodData);
    expect_load_error(path, {path, "header: expected well-formed JSON", "parse error"});
  }
  SECTION("a header that is not an object") {
    write_raw(path, "[1,2]", kGoodData);
    expect_load_error(path, {path, "header: expected a JSON object", "array"});
  }
  SECTION("offsets beyond the data section") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[24,36]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(
        path, {path, "tensor 'b' data_offsets", "inside the data section of 28", "[24,36]"});
  }
  SECTION("overlapping offsets") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}})";
    write_raw(path, header, kGoodData.substr(0, 24));
    expect_load_error(path, {path, "tensor 'b' data_offsets", "after tensor 'a'", "overlaps"});
  }
  SECTION("offsets that leave a hole") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[20,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'b' data_offsets", "starting at 16", "20"});
  }
  SECTION("begin after end") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'a' data_offsets", "begin <= end"});
  }
  SECTION("a size that disagrees with shape and dtype") {
    const std::string header = R"({"a":{"dtype":"F64","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'a' data_offsets", "32 bytes", "F64", "got 16 bytes"});
  }
  SECTION("an unknown dtype") {
    const std::string header = R"({"a":{"dtype":"F17","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'a' dtype", "\"F17\""});
  }
  SECTION("a negative dim") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'a' shape", "non-negative"});
  }
  SECTION("a missing field") {
    const std::string header = R"({"a":{"dtype":"F32","data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'a' shape", "none"});
  }
  SECTION("a duplicate name") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("a":{"dtype":"F32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "tensor 'a' name", "duplicate"});
  }
  SECTION("metadata that is not strings") {
    const std::string header = R"({"__metadata__":{"step":12},)" + kGoodHeader.substr(1);
    write_raw(path, header, kGoodData);
    expect_load_error(path, {path, "__metadata__[step]", "a string"});
  }
  SECTION("the wrong dtype requested") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"I32","shape":[3],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {"[load_into] ", path, "tensor 'b' dtype", "expected F32, got I32"});
  }
  SECTION("the wrong shape requested") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F32","shape":[3,1],"data_offsets":[16,28]}})";
    write_raw(path, header, kGoodData);
    expect_load_error(path, {"[load_into] ", path, "tensor 'b' shape", "expected [3], got [3, 1]"});
  }
  SECTION("an unknown tensor requested") {
    write_raw(path, kGoodHeader, kGoodData);
    expect_load_error(path, {"[load_into] ", path, "tensor 'c' name", "no such tensor"}, "c");
  }
  SECTION("a missing file") {
    expect_load_error(dir.file("missing.safetensors"), {"missing.safetensors", "file"});
  }
}

TEST_CASE("safetensors rejects bad save and read requests", "[core][cpu]") {
  TempDir dir("requests");
  const std::string path = dir.file("m.safetensors");
  mm::Tensor<float> a(2, 3);
  a.fill(1.0f);
  REQUIRE_THROWS_WITH(
      mm::save_safetensors(path, {{"x", a.view()}, {"x", a.view()}}),
      Contains("[save_safetensors] ") && Contains("tensor 'x' name") && Contains("duplicate"));
  REQUIRE_THROWS_WITH(mm::save_safetensors(path, {{"__metadata__", a.view()}}),
                      Contains("other than __metadata__"));
  REQUIRE(!fs::exists(path));
  REQUIRE_THROWS_WITH(mm::NamedTensorView("a", a.view(), {4, 2}),
                      Contains("[NamedTensorView] a shape") && Contains("6 elements"));
  mm::save_safetensors(path, {{"a", a.view()}});
  const mm::Tensor<float>& ca = a;
  mm::Tensor<float> dst(2, 3);
  REQUIRE_THROWS_WITH(mm::load_into(path, {{"a", ca.view()}}),
                      Contains("tensor 'a' destination") && Contains("writable"));
  const mm::SafetensorsFile file(path);
  REQUIRE_THROWS_WITH(file.read_into("a", dst.view().row_block(0, 1)),
                      Contains("tensor 'a' shape") && Contains("expected [1, 3], got [2, 3]"));
  REQUIRE_THROWS_WITH(file.shape("nope"), Contains("tensor 'nope' name"));
  REQUIRE(mm::parse_safetensors_dtype("BF16") == mm::SafetensorsDtype::bf16);
  REQUIRE(!mm::parse_safetensors_dtype("bf16").has_value());
  REQUIRE(mm::safetensors_dtype_bytes(mm::SafetensorsDtype::f64) == 8);
}
