// mmsparse/core/safetensors.hpp
//
// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N
// bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {string: string}}, then the
// raw little-endian data. Opening a file validates its whole header; load_into also checks every
// requested tensor and stages the data first, so a failed load writes nothing.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <mmsparse/core/dtype.hpp>
#include <mmsparse/core/error.hpp>
#include <mmsparse/core/view.hpp>

namespace mmsparse {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian: mmsparse reads it on little-endian hosts only");

// Every dtype of the format; mmsparse reads and writes f32, f64, bf16 and i32.
enum class SafetensorsDtype {
  boolean,
  u8,
  i8,
  f8_e5m2,
  f8_e4m3,
  i16,
  u16,
  f16,
  bf16,
  i32,
  u32,
  f32,
  f64,
  i64,
  u64
};

namespace detail {

struct SafetensorsDtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  std::int64_t bytes;
};

inline constexpr std::array<SafetensorsDtypeInfo, 15> safetensors_dtypes = {{
    {SafetensorsDtype::boolean, "BOOL", 1},
    {SafetensorsDtype::u8, "U8", 1},
    {SafetensorsDtype::i8, "I8", 1},
    {SafetensorsDtype::f8_e5m2, "F8_E5M2", 1},
    {SafetensorsDtype::f8_e4m3, "F8_E4M3", 1},
    {SafetensorsDtype::i16, "I16", 2},
    {SafetensorsDtype::u16, "U16", 2},
    {SafetensorsDtype::f16, "F16", 2},
    {SafetensorsDtype::bf16, "BF16", 2},
    {SafetensorsDtype::i32, "I32", 4},
    {SafetensorsDtype::u32, "U32", 4},
    {SafetensorsDtype::f32, "F32", 4},
    {SafetensorsDtype::f64, "F64", 8},
    {SafetensorsDtype::i64, "I64", 8},
    {SafetensorsDtype::u64, "U64", 8},
}};

inline const SafetensorsDtypeInfo& dtype_info(SafetensorsDtype t) {
  return safetensors_dtypes[static_cast<std::size_t>(t)];
}

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// "path: tensor 'name' field" (the argument part of an Error message).
inline std::string st_arg(const std::string& path, std::string_view name, std::string_view field) {
  std::string s = path + ": ";
  if (!name.empty()) {
    s += "tensor '" + std::string(name) + "' ";
  }
  return s + std::string(field);
}

// a * b, or nullopt on overflow past int64.
inline std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    return std::nullopt;
  }
  return r;
}

}  // namespace detail

[[nodiscard]] inline std::string_view safetensors_dtype_name(SafetensorsDtype t) {
  return detail::dtype_info(t).name;
}
[[nodiscard]] inline std::int64_t safetensors_dtype_bytes(SafetensorsDtype t) {
  return detail::dtype_info(t).bytes;
}
[[nodiscard]] inline std::optional<SafetensorsDtype> parse_safetensors_dtype(std::string_view s) {
  for (const auto& info : detail::safetensors_dtypes) {
    if (info.name == s) {
      return info.dtype;
    }
  }
  return std::nullopt;
}

template <class T>
constexpr SafetensorsDtype safetensors_dtype_of() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    return SafetensorsDtype::f32;
  } else if constexpr (std::is_same_v<U, double>) {
    return SafetensorsDtype::f64;
  } else if constexpr (std::is_same_v<U, bf16>) {
    return SafetensorsDtype::bf16;
  } else {
    static_assert(
        std::is_same_v<U, std::int32_t>,
        "safetensors I/O supports float (F32), double (F64), bf16 (BF16) and int32 (I32)");
    return SafetensorsDtype::i32;
  }
}

// A named host view to save from or load into. Its shape in the file defaults to [rows, cols]
// for a View and [size] for a Span; any shape with the same element count may be given.
struct NamedTensorView {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::f32;
  std::vector<std::int64_t> shape;
  std::byte* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t stride = 0;  // elements between rows
  bool writable = false;    // false for a view of const data: save only

  template <class T>
  NamedTensorView(std::string tensor_name, View<T, host_space> v)
      : NamedTensorView(std::move(tensor_name), v, {v.rows, v.cols}) {}
  template <class T>
  NamedTensorView(std::string tensor_name,
                  View<T, host_space> v,
                  std::vector<std::int64_t> file_shape)
      : name(std::move(tensor_name)),
        dtype(safetensors_dtype_of<T>()),
        shape(std::move(file_shape)),
        data(reinterpret_cast<std::byte*>(const_cast<std::remove_const_t<T>*>(v.data))),
        rows(v.rows),
        cols(v.cols),
        stride(v.stride),
        writable(!std::is_const_v<T>) {
    std::int64_t count = 1;
    for (const std::int64_t s : shape) {
      MMSPARSE_CHECK(s >= 0,
                     "NamedTensorView",
                     name + " shape",
                     "non-negative dims",
                     detail::shape_string(shape));
      count *= s;
    }
    MMSPARSE_CHECK(count == rows * cols,
                   "NamedTensorView",
                   name + " shape",
                   "a shape of " + std::to_string(rows * cols) + " elements (the view is [" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "])",
                   detail::shape_string(shape));
  }
  template <class T>
  NamedTensorView(std::string tensor_name, Span<T, host_space> s)
      : NamedTensorView(std::move(tensor_name), s.as_column(), {s.size}) {}

  [[nodiscard]] std::int64_t element_bytes() const {
    return safetensors_dtype_bytes(dtype);
  }
  [[nodiscard]] std::int64_t bytes() const {
    return rows * cols * element_bytes();
  }
};

// An opened safetensors file: the validated header; tensors are read on request.
class SafetensorsFile {
 public:
  struct Entry {
    std::string name;
    SafetensorsDtype dtype;
    std::vector<std::int64_t> shape;
    std::int64_t begin = 0;  // byte offsets in the data section
    std::int64_t end = 0;
  };

  // Largest header accepted (as the reference implementation: 100 MB).
  static constexpr std::int64_t max_header_bytes = 100'000'000;

  explicit SafetensorsFile(std::string path) : path_(std::move(path)) {
    parse();
  }

  [[nodiscard]] const std::string& path() const {
    return path_;
  }
  // Tensor names in data order.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) {
      out.push_back(e.name);
    }
    return out;
  }
  [[nodiscard]] bool contains(std::string_view name) const {
    return find(name) != nullptr;
  }
  [[nodiscard]] const std::vector<std::int64_t>& shape(std::string_view name) const {
    return entry(name, "SafetensorsFile::shape").shape;
  }
  [[nodiscard]] SafetensorsDtype dtype(std::string_view name) const {
    return entry(name, "SafetensorsFile::dtype").dtype;
  }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  [[nodiscard]] const std::vector<Entry>& entries() const {
    return entries_;
  }

  // Reads tensor dst.name into dst (checked: present, dtype, shape, writable).
  void read_into(const NamedTensorView& dst) const {
    const Entry& e = check_destination(dst, "SafetensorsFile::read_into");
    const auto staged = read_bytes(e, "SafetensorsFile::read_into");
    scatter(staged, dst);
  }
  template <class T>
  void read_into(std::string_view name, View<T, host_space> dst) const {
    read_into(NamedTensorView(std::string(name), dst));
  }
  template <class T>
  void read_into(std::string_view name, Span<T, host_space> dst) const {
    read_into(NamedTensorView(std::string(name), dst));
  }

  // Checks that dst can receive its tensor; returns the file entry.
  const Entry& check_destination(const NamedTensorView& dst, const char* op) const {
    const Entry* e = find(dst.name);
    MMSPARSE_CHECK(e != nullptr,
                   op,
                   detail::st_arg(path_, dst.name, "name"),
                   "a tensor of the file",
                   "no such tensor (the file has " + std::to_string(entries_.size()) + ")");
    MMSPARSE_CHECK(dst.writable,
                   op,
                   detail::st_arg(path_, dst.name, "destination"),
                   "a writable view",
                   "a view of const data");
    MMSPARSE_CHECK(e->dtype == dst.dtype,
                   op,
                   detail::st_arg(path_, dst.name, "dtype"),
                   safetensors_dtype_name(dst.dtype),
                   safetensors_dtype_name(e->dtype));
    MMSPARSE_CHECK(e->shape == dst.shape,
                   op,
                   detail::st_arg(path_, dst.name, "shape"),
                   detail::shape_string(dst.shape),
                   detail::shape_string(e->shape));
    return *e;
  }

  // The raw bytes of one entry, read and size-checked (the file may have changed since opening).
  [[nodiscard]] std::vector<std::byte> read_bytes(const Entry& e, const char* op) const {
    std::vector<std::byte> buf(static_cast<std::size_t>(e.end - e.begin));
    std::ifstream in(path_, std::ios::binary);
    MMSPARSE_CHECK(in.good(),
                   op,
                   detail::st_arg(path_, e.name, "file"),
                   "a readable file",
                   std::error_code(errno, std::generic_category()).message());
    in.seekg(static_cast<std::streamoff>(data_start_ + e.begin));
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    const auto got = in.gcount();
    MMSPARSE_CHECK(got == static_cast<std::streamsize>(buf.size()),
                   op,
                   detail::st_arg(path_, e.name, "data"),
                   std::to_string(buf.size()) + " bytes",
                   std::to_string(got) + " bytes");
    return buf;
  }

  // Copies staged file bytes (dense row-major) into a strided destination.
  static void scatter(const std::vector<std::byte>& staged, const NamedTensorView& dst) {
    const std::int64_t row_bytes = dst.cols * dst.element_bytes();
    if (row_bytes == 0) {
      return;  // an empty tensor has nothing to copy (and possibly no storage)
    }
    for (std::int64_t r = 0; r < dst.rows; ++r) {
      std::memcpy(dst.data + r * dst.stride * dst.element_bytes(),
                  staged.data() + r * row_bytes,
                  static_cast<std::size_t>(row_bytes));
    }
  }

 private:
  const Entry* find(std::string_view name) const {
    for (const auto& e : entries_) {
      if (e.name == name) {
        return &e;
      }
    }
    return nullptr;
  }
  const Entry& entry(std::string_view name, const char* op) const {
    const Entry* e = find(name);
    MMSPARSE_CHECK(e != nullptr,
                   op,
                   detail::st_arg(path_, name, "name"),
                   "a tensor of the file",
                   "no such tensor");
    return *e;
  }

  [[noreturn]] void fail(std::string_view name,
                         std::string_view field,
                         const std::string& expected,
                         const std::string& actual) const {
    throw Error(detail::format_error(
        "SafetensorsFile", detail::st_arg(path_, name, field), expected, actual));
  }

  void parse() {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path_, ec);
    if (ec) {
      fail("", "file", "a readable file", ec.message());
    }
    const auto file_size = static_cast<std::int64_t>(size);
    if (file_size < 8) {
      fail("",
           "header length",
           "an 8-byte header length field",
           "a file of " + std::to_string(file_size) + " bytes");
    }
    std::ifstream in(path_, std::ios::binary);
    if (!in.good()) {
      fail(
          "", "file", "a readable file", std::error_code(errno, std::generic_category()).message());
    }
    std::array<unsigned char, 8> len_bytes{};
    in.read(reinterpret_cast<char*>(len_bytes.data()), 8);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) {
      n = (n << 8) | len_bytes[static_cast<std::size_t>(i)];
    }
    const auto room = static_cast<std::uint64_t>(file_size - 8);
    if (n > room || n > static_cast<std::uint64_t>(max_header_bytes)) {
      fail("",
           "header length",
           "at most " + std::to_string(std::min<std::uint64_t>(room, max_header_bytes)) +
               " bytes (what the file holds after the length field)",
           std::to_string(n));
    }
    std::string header(static_cast<std::size_t>(n), '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    if (in.gcount() != static_cast<std::streamsize>(n)) {
      fail("", "header", std::to_string(n) + " bytes", std::to_string(in.gcount()) + " bytes");
    }
    data_start_ = 8 + static_cast<std::int64_t>(n);
    const std::int64_t data_size = file_size - data_start_;

    // Parse; a duplicate top-level key would otherwise be silently resolved by the parser.
    std::vector<std::string> top_keys;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(
          header, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
            if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
              top_keys.push_back(parsed.get<std::string>());
            }
            return true;
          });
    } catch (const nlohmann::json::exception& e) {
      fail("", "header", "well-formed JSON", e.what());
    }
    if (!j.is_object()) {
      fail("", "header", "a JSON object", j.type_name());
    }
    std::sort(top_keys.begin(), top_keys.end());
    const auto dup = std::adjacent_find(top_keys.begin(), top_keys.end());
    if (dup != top_keys.end()) {
      fail(*dup, "name", "a name used once", "a duplicate entry");
    }

    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) {
          fail("", "__metadata__", "an object of strings", v.type_name());
        }
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) {
            fail("", "__metadata__[" + m.key() + "]", "a string", m.value().type_name());
          }
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      entries_.push_back(parse_entry(name, v, data_size));
    }

    // Sorted by offset, the entries must tile the data section exactly: no overlap, no hole.
    std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::int64_t at = 0;
    const Entry* prev = nullptr;
    for (const auto& e : entries_) {
      if (e.begin < at) {
        fail(e.name,
             "data_offsets",
             "a range after tensor '" + prev->name + "' (ends at " + std::to_string(at) + ")",
             "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "), which overlaps it");
      }
      if (e.begin > at) {
        fail(e.name,
             "data_offsets",
             "a range starting at " + std::to_string(at) +
                 " (no unindexed bytes in the data section)",
             "a start at " + std::to_string(e.begin));
      }
      at = e.end;
      prev = &e;
    }
    if (at != data_size) {
      fail("",
           "data section",
           std::to_string(at) + " bytes (the end of the last tensor)",
           std::to_string(data_size) + " bytes");
    }
  }

  Entry parse_entry(const std::string& name,
                    const nlohmann::json& v,
                    std::int64_t data_size) const {
    if (!v.is_object()) {
      fail(name, "entry", "an object {dtype, shape, data_offsets}", v.type_name());
    }
    Entry e;
    e.name = name;
    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) {
      fail(name, "dtype", "a dtype string", dt == v.end() ? "none" : dt->type_name());
    }
    const auto parsed = parse_safetensors_dtype(dt->get<std::string>());
    if (!parsed) {
      fail(name,
           "dtype",
           "a safetensors dtype (F32, F64, BF16, I32, ...)",
           "\"" + dt->get<std::string>() + "\"");
    }
    e.dtype = *parsed;
    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) {
      fail(name, "shape", "an array of dims", sh == v.end() ? "none" : sh->type_name());
    }
    std::int64_t count = 1;
    bool overflow = false;
    for (const auto& s : *sh) {
      if (!s.is_number_unsigned() || s.get<std::uint64_t>() > INT64_MAX) {
        fail(name, "shape", "non-negative integer dims", sh->dump());
      }
      e.shape.push_back(s.get<std::int64_t>());
      const auto c = detail::checked_mul(count, e.shape.back());
      overflow = overflow || !c;
      count = c.value_or(0);
    }
    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      fail(name,
           "data_offsets",
           "[begin, end] with non-negative integers",
           off == v.end() ? "none" : off->dump());
    }
    const auto b = (*off)[0].get<std::uint64_t>();
    const auto en = (*off)[1].get<std::uint64_t>();
    if (b > en) {
      fail(name, "data_offsets", "begin <= end", off->dump());
    }
    if (en > static_cast<std::uint64_t>(data_size)) {
      fail(name,
           "data_offsets",
           "a range inside the data section of " + std::to_string(data_size) + " bytes",
           off->dump());
    }
    e.begin = static_cast<std::int64_t>(b);
    e.end = static_cast<std::int64_t>(en);
    const auto bytes = detail::checked_mul(count, safetensors_dtype_bytes(e.dtype));
    if (overflow || !bytes || *bytes != e.end - e.begin) {
      fail(name,
           "data_offsets",
           "end - begin = " +
               (overflow || !bytes ? std::string("(overflow)") : std::to_string(*bytes)) +
               " bytes (shape " + detail::shape_string(e.shape) + " of " +
               std::string(safetensors_dtype_name(e.dtype)) + ")",
           std::to_string(e.end - e.begin) + " bytes");
    }
    return e;
  }

  std::string path_;
  std::int64_t data_start_ = 0;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Loads every tensor of `dst` from the file at `path`, all or nothing: the header, the presence,
// dtype and shape of every requested tensor are checked and all data is staged before any
// destination is written.
inline void load_into(const std::string& path, std::span<const NamedTensorView> dst) {
  constexpr const char* op = "load_into";
  const SafetensorsFile file(path);
  std::vector<const SafetensorsFile::Entry*> entries;
  for (const auto& d : dst) {
    entries.push_back(&file.check_destination(d, op));
  }
  std::vector<std::vector<std::byte>> staged;
  staged.reserve(dst.size());
  for (const auto* e : entries) {
    staged.push_back(file.read_bytes(*e, op));
  }
  for (std::size_t i = 0; i < dst.size(); ++i) {
    SafetensorsFile::scatter(staged[i], dst[i]);
  }
}
inline void load_into(const std::string& path, const std::vector<NamedTensorView>& dst) {
  load_into(path, std::span<const NamedTensorView>(dst));
}

// Writes `tensors` (in order) and optional string metadata to `path`. The file is written next
// to its destination and renamed into place, so a failed save leaves no partial file.
inline void save_safetensors(const std::string& path,
                             std::span<const NamedTensorView> tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  constexpr const char* op = "save_safetensors";
  std::vector<std::string> names;
  for (const auto& t : tensors) {
    MMSPARSE_CHECK(!t.name.empty() && t.name != "__metadata__",
                   op,
                   detail::st_arg(path, t.name, "name"),
                   "a non-empty name other than __metadata__",
                   "\"" + t.name + "\"");
    names.push_back(t.name);
  }
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  MMSPARSE_CHECK(dup == names.end(),
                 op,
                 detail::st_arg(path, *dup, "name"),
                 "a name used once",
                 "a duplicate");

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::int64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(safetensors_dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MMSPARSE_CHECK(out.good(),
                   op,
                   path,
                   "a writable file",
                   std::error_code(errno, std::generic_category()).message());
    std::array<char, 8> len{};
    auto n = static_cast<std::uint64_t>(text.size());
    for (auto& c : len) {
      c = static_cast<char>(n & 0xffu);
      n >>= 8;
    }
    out.write(len.data(), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : tensors) {
      const std::int64_t row_bytes = t.cols * t.element_bytes();
      for (std::int64_t r = 0; r < t.rows; ++r) {
        out.write(reinterpret_cast<const char*>(t.data + r * t.stride * t.element_bytes()),
                  static_cast<std::streamsize>(row_bytes));
      }
    }
    out.flush();
    if (!out.good()) {
      out.close();
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw Error(detail::format_error(op, path, "a complete write", "a failed write"));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw Error(detail::format_error(op, path, "a file renamed into place", ec.message()));
  }
}
inline void save_safetensors(const std::string& path,
                             const std::vector<NamedTensorView>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  save_safetensors(path, std::span<const NamedTensorView>(tensors), metadata);
}

}  // namespace mmsparse
