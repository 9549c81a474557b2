// Checks the FourierAttention TensorRT plugin library with TensorRT's headers only (no TensorRT library).
//
//   fourier_attention_plugin_harness LIB.so [--field NAME:TYPE=VALUE ...] [--expect-reject] [--enqueue]
//                                    [--tensorrt-library FAKE.so]
//
// TYPE is a PluginFieldType without the k: FLOAT32, FLOAT64, FLOAT16, BF16, INT8, INT16, INT32, INT64 (one
// number) or CHAR (VALUE is the string; length = strlen + 1, as TensorRT's ONNX parser passes strings).
// The fields are handed to the creator exactly as given (TensorRT's ONNX parser passes ONNX FLOAT
// attributes as FLOAT32 and INT attributes as INT32, see the plugin's header).
//
// The harness dlopens LIB.so, takes the FourierAttention v1 creator from getCreators and creates the
// plugin (TensorRTPhase::kBUILD), having first handed setLoggerFinder a finder whose logger records what it
// is given. It then checks: the creator's declared fields; the fields reported
// by getFieldsToSerialize equal the given ones (defaults for fields not given); clone and
// serialize -> createPlugin(kRUNTIME) keep them; supportsFormatCombination; getNbOutputs;
// getOutputDataTypes; getOutputShapes (IExprBuilder over the apiv classes of NvInferImpl.h);
// configurePlugin / onShapeChange / getWorkspaceSize on shapes; head dims up to spec::kCudaMaxDim accepted
// and above it refused, the refusal logged through the finder exactly when the TensorRT in the process has
// our headers' major version; getMetadataString against the fields; and that bad field sets are rejected
// with nullptr. With --expect-reject the given fields must instead be rejected. --enqueue (GPU) also
// runs enqueue on random ragged float32 inputs and compares with a float64 reference.
// --tensorrt-library loads FAKE.so first (RTLD_LOCAL, as Python loads TensorRT), a stand-in for TensorRT's
// runtime library (its soname, e.g. libnvinfer.so.10, and getInferLibVersion); without it no TensorRT is loaded.
//
// Prints one JSON object. Exit codes: 0 all checks passed, 1 a check failed, 2 usage error or unusable
// library, 77 --enqueue requested but no CUDA device (after the CPU checks passed).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fourier_attention_spec.h"

namespace {

namespace spec = fourierformer::spec;
using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::IPluginCreatorV3One;
using nvinfer1::IPluginV3;
using nvinfer1::IPluginV3OneBuild;
using nvinfer1::IPluginV3OneCore;
using nvinfer1::IPluginV3OneRuntime;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoDevice = 77;

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return JsonString(std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// ---- plugin fields ----------------------------------------------------------------------------

const std::map<std::string, PluginFieldType>& FieldTypes() {
  static const std::map<std::string, PluginFieldType> types = {
      {"FLOAT16", PluginFieldType::kFLOAT16}, {"FLOAT32", PluginFieldType::kFLOAT32},
      {"FLOAT64", PluginFieldType::kFLOAT64}, {"BF16", PluginFieldType::kBF16},
      {"INT8", PluginFieldType::kINT8},       {"INT16", PluginFieldType::kINT16},
      {"INT32", PluginFieldType::kINT32},     {"INT64", PluginFieldType::kINT64},
      {"CHAR", PluginFieldType::kCHAR}};
  return types;
}

std::string TypeName(PluginFieldType t) {
  for (const auto& kv : FieldTypes()) {
    if (kv.second == t) return kv.first;
  }
  return "UNKNOWN(" + std::to_string(static_cast<int>(t)) + ")";
}

uint16_t FloatToHalfBits(float f) {  // round-to-nearest-even, enough for the harness' inputs
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// One field as given on the command line, with its own storage.
struct FieldArg {
  std::string name;
  PluginFieldType type = PluginFieldType::kUNKNOWN;
  std::string text;               // the VALUE as given
  double number = 0;              // numeric VALUE (not for CHAR)
  std::vector<unsigned char> data;
  int32_t length = 1;
};

bool MakeField(const std::string& name, const std::string& type, const std::string& value, FieldArg* out,
               std::string* err) {
  const auto it = FieldTypes().find(type);
  if (it == FieldTypes().end()) {
    *err = "unknown field type '" + type + "'";
    return false;
  }
  FieldArg f;
  f.name = name;
  f.type = it->second;
  f.text = value;
  if (f.type == PluginFieldType::kCHAR) {
    f.data.assign(value.begin(), value.end());
    f.data.push_back('\0');
    f.length = static_cast<int32_t>(f.data.size());
    *out = f;
    return true;
  }
  char* end = nullptr;
  f.number = std::strtod(value.c_str(), &end);
  if (value.empty() || end == nullptr || *end != '\0') {
    *err = "field value '" + value + "' is not a number";
    return false;
  }
  const bool is_int = f.type == PluginFieldType::kINT8 || f.type == PluginFieldType::kINT16 ||
                      f.type == PluginFieldType::kINT32 || f.type == PluginFieldType::kINT64;
  if (is_int && (f.number != std::floor(f.number) || std::fabs(f.number) > 9.2e18)) {
    *err = "field value '" + value + "' is not an integer";
    return false;
  }
  auto put = [&f](const void* p, size_t n) {
    f.data.resize(n);
    std::memcpy(f.data.data(), p, n);
  };
  switch (f.type) {
    case PluginFieldType::kFLOAT32: { const float v = static_cast<float>(f.number); put(&v, 4); break; }
    case PluginFieldType::kFLOAT64: { const double v = f.number; put(&v, 8); break; }
    case PluginFieldType::kFLOAT16: { const uint16_t v = FloatToHalfBits(static_cast<float>(f.number)); put(&v, 2); break; }
    case PluginFieldType::kBF16: {
      const float v = static_cast<float>(f.number);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const uint16_t b = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
      put(&b, 2);
      break;
    }
    case PluginFieldType::kINT8: { const int8_t v = static_cast<int8_t>(f.number); put(&v, 1); break; }
    case PluginFieldType::kINT16: { const int16_t v = static_cast<int16_t>(f.number); put(&v, 2); break; }
    case PluginFieldType::kINT32: { const int32_t v = static_cast<int32_t>(f.number); put(&v, 4); break; }
    case PluginFieldType::kINT64: { const int64_t v = static_cast<int64_t>(f.number); put(&v, 8); break; }
    default: *err = "unsupported field type"; return false;
  }
  *out = f;
  return true;
}

// NAME:TYPE=VALUE
bool ParseFieldArg(const std::string& text, FieldArg* out, std::string* err) {
  const auto colon = text.find(':');
  const auto equals = text.find('=', colon == std::string::npos ? 0 : colon);
  if (colon == std::string::npos || equals == std::string::npos || colon == 0) {
    *err = "expected NAME:TYPE=VALUE, got '" + text + "'";
    return false;
  }
  return MakeField(text.substr(0, colon), text.substr(colon + 1, equals - colon - 1), text.substr(equals + 1), out,
                   err);
}

// A PluginFieldCollection over FieldArgs (which must outlive it).
struct Collection {
  explicit Collection(const std::vector<FieldArg>& args) {
    for (const FieldArg& a : args) fields.emplace_back(a.name.c_str(), a.data.data(), a.type, a.length);
    fc.nbFields = static_cast<int32_t>(fields.size());
    fc.fields = fields.empty() ? nullptr : fields.data();
  }
  std::vector<PluginField> fields;
  PluginFieldCollection fc{};
};

// A field's values as doubles (empty for unsupported types); CHAR gives its string in *text.
std::vector<double> FieldValues(const PluginField& f, std::string* text) {
  std::vector<double> out;
  if (f.data == nullptr || f.length <= 0) return out;
  for (int32_t i = 0; i < f.length; ++i) {
    switch (f.type) {
      case PluginFieldType::kFLOAT32: out.push_back(static_cast<const float*>(f.data)[i]); break;
      case PluginFieldType::kFLOAT64: out.push_back(static_cast<const double*>(f.data)[i]); break;
      case PluginFieldType::kINT8: out.push_back(static_cast<const int8_t*>(f.data)[i]); break;
      case PluginFieldType::kINT16: out.push_back(static_cast<const int16_t*>(f.data)[i]); break;
      case PluginFieldType::kINT32: out.push_back(static_cast<const int32_t*>(f.data)[i]); break;
      case PluginFieldType::kINT64: out.push_back(static_cast<double>(static_cast<const int64_t*>(f.data)[i])); break;
      case PluginFieldType::kCHAR:
        if (text != nullptr) *text = std::string(static_cast<const char*>(f.data), strnlen(static_cast<const char*>(f.data), f.length));
        return out;
      default: return out;
    }
  }
  return out;
}

// {"name": {"type": "FLOAT32", "value": 1.5}, ...} for a collection.
std::string FieldsJson(const PluginFieldCollection* fc) {
  std::ostringstream s;
  s << "{";
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    const PluginField& f = fc->fields[i];
    std::string text;
    const std::vector<double> v = FieldValues(f, &text);
    s << (i ? ", " : "") << JsonString(f.name ? f.name : "") << ": {\"type\": " << JsonString(TypeName(f.type))
      << ", \"length\": " << f.length << ", \"value\": ";
    if (f.type == PluginFieldType::kCHAR) s << JsonString(text);
    else if (v.size() == 1) s << JsonNumber(v[0]);
    else s << "null";
    s << "}";
  }
  s << "}";
  return s.str();
}

// The four values in spec order from a reported collection; false if a field is missing or malformed.
struct Values {
  double R, power, eps, causal;
  bool operator==(const Values& o) const { return R == o.R && power == o.power && eps == o.eps && causal == o.causal; }
};

bool ReportedValues(const PluginFieldCollection* fc, Values* out, std::string* why) {
  if (fc == nullptr || fc->nbFields != spec::kNumAttributes || fc->fields == nullptr) {
    *why = "getFieldsToSerialize must report exactly the 4 fields";
    return false;
  }
  const char* names[4] = {spec::kAttrR, spec::kAttrPower, spec::kAttrEps, spec::kAttrCausal};
  const PluginFieldType types[4] = {PluginFieldType::kFLOAT32, PluginFieldType::kINT32, PluginFieldType::kFLOAT32,
                                    PluginFieldType::kINT32};
  double v[4];
  for (int i = 0; i < 4; ++i) {
    const PluginField& f = fc->fields[i];
    if (f.name == nullptr || std::strcmp(f.name, names[i]) != 0 || f.type != types[i] || f.length != 1) {
      *why = std::string("reported field ") + std::to_string(i) + " must be " + names[i] + ":" + TypeName(types[i]) +
             " of length 1";
      return false;
    }
    v[i] = FieldValues(f, nullptr).at(0);
  }
  *out = Values{v[0], v[1], v[2], v[3]};
  return true;
}

// ---- an IExprBuilder over the pure-virtual apiv classes -----------------------------------------

class DimImpl final : public nvinfer1::apiv::VDimensionExpr {
 public:
  DimImpl(bool constant, int64_t value) : constant_(constant), value_(value) {}
  bool isConstant() const override { return constant_; }
  int64_t getConstantValue() const override { return constant_ ? value_ : std::numeric_limits<int64_t>::min(); }
  bool isSizeTensor() const override { return false; }

 private:
  bool constant_;
  int64_t value_;
};

class Dim final : public IDimensionExpr {
 public:
  explicit Dim(nvinfer1::apiv::VDimensionExpr* impl) { mImpl = impl; }
  ~Dim() noexcept override = default;
};

class ExprBuilderImpl final : public nvinfer1::apiv::VExprBuilder {
 public:
  const IDimensionExpr* constant(int64_t value) override { return Make(true, value); }
  const IDimensionExpr* symbol() { return Make(false, 0); }
  const IDimensionExpr* operation(nvinfer1::DimensionOperation op, const IDimensionExpr& a,
                                  const IDimensionExpr& b) override {
    ++operations;
    if (!a.isConstant() || !b.isConstant()) return Make(false, 0);
    const int64_t x = a.getConstantValue(), y = b.getConstantValue();
    switch (op) {
      case nvinfer1::DimensionOperation::kSUM: return Make(true, x + y);
      case nvinfer1::DimensionOperation::kPROD: return Make(true, x * y);
      case nvinfer1::DimensionOperation::kMAX: return Make(true, x > y ? x : y);
      case nvinfer1::DimensionOperation::kMIN: return Make(true, x < y ? x : y);
      case nvinfer1::DimensionOperation::kSUB: return Make(true, x - y);
      default: return Make(false, 0);
    }
  }
  const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
    return Make(false, 0);
  }
  int operations = 0;

 private:
  const IDimensionExpr* Make(bool constant, int64_t value) {
    impls_.emplace_back(constant, value);
    dims_.emplace_back(&impls_.back());
    return &dims_.back();
  }
  std::deque<DimImpl> impls_;
  std::deque<Dim> dims_;
};

class ExprBuilder final : public nvinfer1::IExprBuilder {
 public:
  explicit ExprBuilder(nvinfer1::apiv::VExprBuilder* impl) { mImpl = impl; }
  ~ExprBuilder() noexcept override = default;
};

bool SameDim(const IDimensionExpr* a, const IDimensionExpr* b) {
  if (a == b) return true;
  return a != nullptr && b != nullptr && a->isConstant() && b->isConstant() &&
         a->getConstantValue() == b->getConstantValue();
}

// ---- a logger finder that records what the plugin logs ---------------------------------------------

class RecordingLogger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {  // the harness is single-threaded
    messages.push_back({severity, msg != nullptr ? msg : ""});
  }
  struct Message {
    Severity severity;
    std::string text;
  };
  std::vector<Message> messages;
};

class RecordingFinder final : public nvinfer1::ILoggerFinder {
 public:
  nvinfer1::ILogger* findLogger() override { return &logger; }
  RecordingLogger logger;
};

std::string MessagesJson(const std::vector<RecordingLogger::Message>& messages) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < messages.size(); ++i) {
    s << (i ? ", " : "") << "{\"severity\": " << static_cast<int>(messages[i].severity)
      << ", \"text\": " << JsonString(messages[i].text) << "}";
  }
  s << "]";
  return s.str();
}

// ---- checks -----------------------------------------------------------------------------------

struct Checks {
  struct Result {
    std::string name;
    bool ok;
    std::string detail;
  };
  std::vector<Result> results;
  void Add(const std::string& name, bool ok, const std::string& detail = "") { results.push_back({name, ok, detail}); }
  int Failed() const {
    int n = 0;
    for (const auto& r : results) n += r.ok ? 0 : 1;
    return n;
  }
  std::string Json() const {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < results.size(); ++i) {
      s << (i ? ", " : "") << "{\"name\": " << JsonString(results[i].name)
        << ", \"ok\": " << (results[i].ok ? "true" : "false");
      if (!results[i].detail.empty()) s << ", \"detail\": " << JsonString(results[i].detail);
      s << "}";
    }
    s << "]";
    return s.str();
  }
};

struct PluginDeleter {
  void operator()(IPluginV3* p) const { delete p; }
};
using PluginPtr = std::unique_ptr<IPluginV3, PluginDeleter>;

IPluginV3OneCore* CoreOf(IPluginV3* p) {
  return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}
IPluginV3OneBuild* BuildOf(IPluginV3* p) {
  return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* RuntimeOf(IPluginV3* p) {
  return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

nvinfer1::Dims MakeDims(std::initializer_list<int64_t> d) {
  nvinfer1::Dims out{};
  out.nbDims = static_cast<int32_t>(d.size());
  int i = 0;
  for (int64_t x : d) out.d[i++] = x;
  return out;
}

PluginTensorDesc Desc(DataType type, TensorFormat format, const nvinfer1::Dims& dims) {
  PluginTensorDesc d{};
  d.dims = dims;
  d.type = type;
  d.format = format;
  d.scale = 1.0f;
  return d;
}

DynamicPluginTensorDesc DynDesc(DataType type, TensorFormat format, const nvinfer1::Dims& dims) {
  DynamicPluginTensorDesc d{};
  d.desc = Desc(type, format, dims);
  d.min = d.opt = d.max = dims;
  return d;
}

// Does the plugin accept this (q, k, v, out) combination at every position?
bool Supports(IPluginV3OneBuild* b, const DataType (&types)[4], TensorFormat format) {
  const nvinfer1::Dims d = MakeDims({2, 3, 5, 8});
  DynamicPluginTensorDesc io[4];
  for (int i = 0; i < 4; ++i) io[i] = DynDesc(types[i], format, d);
  for (int32_t pos = 0; pos < 4; ++pos) {
    if (!b->supportsFormatCombination(pos, io, 3, 1)) return false;
  }
  return true;
}

// configurePlugin on float32 q, k, v [2,3,5,dim] whose optimization profile reaches head dim `most`.
int32_t ConfigureWithDim(IPluginV3OneBuild* b, int64_t dim, int64_t most) {
  DynamicPluginTensorDesc io[4];
  for (DynamicPluginTensorDesc& d : io) {
    d = DynDesc(DataType::kFLOAT, TensorFormat::kLINEAR, MakeDims({2, 3, 5, dim}));
    d.max = MakeDims({2, 3, 5, most});
  }
  return b->configurePlugin(io, 3, io + 3, 1);
}

// onShapeChange on float32 q, k, v [2,3,5,dim].
int32_t ShapeChangeWithDim(IPluginV3OneRuntime* r, int64_t dim) {
  PluginTensorDesc io[4];
  for (PluginTensorDesc& d : io) d = Desc(DataType::kFLOAT, TensorFormat::kLINEAR, MakeDims({2, 3, 5, dim}));
  return r->onShapeChange(io, 3, io + 3, 1);
}

// Whether getMetadataString's text is "FourierAttention v1 R=.. power=.. eps=.. causal=.. max_dim=.. tensorrt=.."
// for these fields (floats read back exactly), the kernel's largest head dim and the headers' version.
bool MetadataMatches(const char* text, const Values& v, const std::string& built_for, std::string* why) {
  std::istringstream tokens(text != nullptr ? text : "");
  std::string name, version;
  tokens >> name >> version;
  const char* keys[6] = {"R", "power", "eps", "causal", "max_dim", "tensorrt"};
  std::string values[6];
  bool ok = name == spec::kOpType && version == "v1";
  for (int i = 0; ok && i < 6; ++i) {
    std::string token;
    ok = static_cast<bool>(tokens >> token) && token.rfind(std::string(keys[i]) + "=", 0) == 0;
    if (ok) values[i] = token.substr(std::strlen(keys[i]) + 1);
  }
  std::string rest;
  ok = ok && !(tokens >> rest) && std::strtof(values[0].c_str(), nullptr) == v.R &&
       values[1] == std::to_string(static_cast<int>(v.power)) && std::strtof(values[2].c_str(), nullptr) == v.eps &&
       values[3] == std::to_string(static_cast<int>(v.causal)) && values[4] == std::to_string(spec::kCudaMaxDim) &&
       values[5] == built_for;
  if (!ok) *why = std::string("got '") + (text != nullptr ? text : "(null)") + "'";
  return ok;
}

// ---- enqueue on a GPU -------------------------------------------------------------------------

struct EnqueueResult {
  int status = 0;  // 0 ran, kExitNoDevice, or kExitFailed
  std::string detail;
  double error = -1;
};

EnqueueResult RunEnqueue(IPluginV3* plugin, const Values& a) {
  EnqueueResult r;
  int devices = 0;
  const cudaError_t dev_err = cudaGetDeviceCount(&devices);
  if (dev_err != cudaSuccess || devices == 0) {
    r.status = kExitNoDevice;
    r.detail = std::string("no CUDA device (") + (dev_err != cudaSuccess ? cudaGetErrorString(dev_err) : "0 devices") +
               ")";
    return r;
  }
  const int64_t B = 2, H = 3, NQ = 37, NK = 53, D = 40;
  const double R = a.R, power = a.power, eps = a.eps;
  const bool causal = a.causal != 0;
  // |R (q - k)| stays small, so every weight is a product of sinc factors near 1: far above eps.
  const double spread = 0.5 / (R * std::sqrt(power * static_cast<double>(D)));
  std::mt19937 rng(20240611);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> q(B * H * NQ * D), k(B * H * NK * D), v(B * H * NK * D), out(B * H * NQ * D, 0.0f);
  for (auto& x : q) x = static_cast<float>(unit(rng) * spread);
  for (auto& x : k) x = static_cast<float>(unit(rng) * spread);
  for (auto& x : v) x = unit(rng);

  IPluginV3OneBuild* build = BuildOf(plugin);
  IPluginV3OneRuntime* runtime = RuntimeOf(plugin);
  const nvinfer1::Dims dq = MakeDims({B, H, NQ, D}), dk = MakeDims({B, H, NK, D});
  DynamicPluginTensorDesc din[3] = {DynDesc(DataType::kFLOAT, TensorFormat::kLINEAR, dq),
                                    DynDesc(DataType::kFLOAT, TensorFormat::kLINEAR, dk),
                                    DynDesc(DataType::kFLOAT, TensorFormat::kLINEAR, dk)};
  DynamicPluginTensorDesc dout[1] = {DynDesc(DataType::kFLOAT, TensorFormat::kLINEAR, dq)};
  PluginTensorDesc in[3] = {din[0].desc, din[1].desc, din[2].desc};
  PluginTensorDesc o[1] = {dout[0].desc};
  const size_t ws_bytes = build->getWorkspaceSize(din, 3, dout, 1);

  void *gq = nullptr, *gk = nullptr, *gv = nullptr, *gout = nullptr, *gws = nullptr;
  cudaStream_t stream = nullptr;
  bool ok = cudaMalloc(&gq, q.size() * 4) == cudaSuccess && cudaMalloc(&gk, k.size() * 4) == cudaSuccess &&
            cudaMalloc(&gv, v.size() * 4) == cudaSuccess && cudaMalloc(&gout, out.size() * 4) == cudaSuccess &&
            (ws_bytes == 0 || cudaMalloc(&gws, ws_bytes) == cudaSuccess) && cudaStreamCreate(&stream) == cudaSuccess;
  ok = ok && cudaMemcpy(gq, q.data(), q.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
       cudaMemcpy(gk, k.data(), k.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
       cudaMemcpy(gv, v.data(), v.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
       cudaMemset(gout, 0xff, out.size() * 4) == cudaSuccess;  // NaN pattern: unwritten outputs show up
  if (!ok) {
    r.status = kExitFailed;
    r.detail = std::string("CUDA setup failed: ") + cudaGetErrorString(cudaGetLastError());
  } else if (build->configurePlugin(din, 3, dout, 1) != 0 || runtime->onShapeChange(in, 3, o, 1) != 0) {
    r.status = kExitFailed;
    r.detail = "configurePlugin/onShapeChange failed";
  } else {
    const void* inputs[3] = {gq, gk, gv};
    void* outputs[1] = {gout};
    if (runtime->enqueue(in, o, inputs, outputs, gws, stream) != 0) {
      r.status = kExitFailed;
      r.detail = "enqueue returned non-zero";
    } else if (cudaStreamSynchronize(stream) != cudaSuccess ||
               cudaMemcpy(out.data(), gout, out.size() * 4, cudaMemcpyDeviceToHost) != cudaSuccess) {
      r.status = kExitFailed;
      r.detail = std::string("CUDA error after enqueue: ") + cudaGetErrorString(cudaGetLastError());
    }
  }
  for (void* p : {gq, gk, gv, gout, gws}) {
    if (p != nullptr) cudaFree(p);
  }
  if (stream != nullptr) cudaStreamDestroy(stream);
  if (r.status != 0) return r;

  double diff2 = 0, ref2 = 0, min_weight_sum = std::numeric_limits<double>::infinity();
  std::vector<double> acc(D);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    for (int64_t i = 0; i < NQ; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      double sum = 0;
      for (int64_t j = 0; j < NK; ++j) {
        if (causal && j > i + (NK - NQ)) continue;
        double w = 1;
        for (int64_t d = 0; d < D; ++d) {
          const double x = R * (static_cast<double>(q[(bh * NQ + i) * D + d]) - k[(bh * NK + j) * D + d]);
          w *= std::pow(x == 0 ? 1.0 : std::sin(x) / x, power);
        }
        sum += w;
        for (int64_t d = 0; d < D; ++d) acc[d] += w * v[(bh * NK + j) * D + d];
      }
      min_weight_sum = std::min(min_weight_sum, sum);
      for (int64_t d = 0; d < D; ++d) {
        const double ref = acc[d] / (sum + eps);
        const double got = out[(bh * NQ + i) * D + d];
        diff2 += (got - ref) * (got - ref);
        ref2 += ref * ref;
      }
    }
  }
  r.error = std::sqrt(diff2 / ref2);
  std::ostringstream s;
  s << "B=" << B << " H=" << H << " Nq=" << NQ << " Nk=" << NK << " D=" << D << " float32, min weight sum "
    << min_weight_sum << ", workspace " << ws_bytes << " bytes";
  r.detail = s.str();
  return r;
}

// ---- main -------------------------------------------------------------------------------------

int Usage(const char* argv0, const std::string& why) {
  std::fprintf(stderr,
               "%s\nusage: %s LIB.so [--field NAME:TYPE=VALUE ...] [--expect-reject] [--enqueue] "
               "[--tensorrt-library FAKE.so]\n"
               "  TYPE: FLOAT32 FLOAT64 FLOAT16 BF16 INT8 INT16 INT32 INT64 CHAR\n",
               why.c_str(), argv0);
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(argv[0], "missing LIB.so");
  std::vector<FieldArg> given;
  bool expect_reject = false, enqueue = false;
  const char* tensorrt_library = nullptr;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tensorrt-library" && i + 1 < argc) {
      tensorrt_library = argv[++i];
    } else if (a == "--enqueue") {
      enqueue = true;
    } else if (a == "--expect-reject") {
      expect_reject = true;
    } else if (a == "--field" && i + 1 < argc) {
      FieldArg f;
      std::string err;
      if (!ParseFieldArg(argv[++i], &f, &err)) return Usage(argv[0], err);
      given.push_back(f);
    } else {
      return Usage(argv[0], "bad argument '" + a + "'");
    }
  }

  int32_t tensorrt_version = 0;  // getInferLibVersion of --tensorrt-library; 0: no TensorRT loaded
  if (tensorrt_library != nullptr) {
    void* trt = dlopen(tensorrt_library, RTLD_NOW | RTLD_LOCAL);
    auto version = trt != nullptr ? reinterpret_cast<int32_t (*)()>(dlsym(trt, "getInferLibVersion")) : nullptr;
    if (version == nullptr) {
      std::fprintf(stderr, "cannot load getInferLibVersion from %s: %s\n", tensorrt_library, dlerror());
      return kExitUsage;
    }
    tensorrt_version = version();
  }
  // The plugin may log through TensorRT's logger only when that TensorRT has our headers' major version.
  const bool logger_usable = tensorrt_version / 10000 == NV_TENSORRT_MAJOR;

  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "cannot dlopen %s: %s\n", argv[1], dlerror());
    return kExitUsage;
  }
  using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
  using VersionQuery = const char* (*)();
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto version_query = reinterpret_cast<VersionQuery>(dlsym(lib, "ff_trt_plugin_tensorrt_version"));
  if (get_creators == nullptr) {
    std::fprintf(stderr, "%s does not export getCreators\n", argv[1]);
    return kExitUsage;
  }
  Checks checks;
  RecordingFinder finder;  // outlives every plugin call: the library is never unloaded before exit
  auto set_logger_finder = reinterpret_cast<void (*)(nvinfer1::ILoggerFinder*)>(dlsym(lib, "setLoggerFinder"));
  checks.Add("set_logger_finder_exported", set_logger_finder != nullptr);
  if (set_logger_finder != nullptr) set_logger_finder(&finder);
  const std::string built_for = version_query != nullptr ? version_query() : "";
  checks.Add("version_query", version_query != nullptr && built_for.find('.') != std::string::npos &&
                                  std::atoi(built_for.c_str()) == NV_TENSORRT_MAJOR,
             "library built against TensorRT " + built_for);

  int32_t count = -1;
  nvinfer1::IPluginCreatorInterface* const* creators = get_creators(count);
  IPluginCreatorV3One* creator = nullptr;
  for (int32_t i = 0; creators != nullptr && i < count; ++i) {
    if (creators[i] == nullptr || std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) {
      continue;
    }
    auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
    if (std::strcmp(c->getPluginName(), spec::kOpType) == 0 && std::strcmp(c->getPluginVersion(), "1") == 0 &&
        std::strcmp(c->getPluginNamespace(), "") == 0) {
      creator = c;
    }
  }
  if (creator == nullptr) {
    std::fprintf(stderr, "%s has no %s version 1 (namespace \"\") IPluginCreatorV3One among its %d creators\n",
                 argv[1], spec::kOpType, count);
    return kExitUsage;
  }

  // The creator's declared fields: names in spec order, the types of TensorRT's ONNX parser.
  const PluginFieldCollection* declared = creator->getFieldNames();
  {
    const char* names[4] = {spec::kAttrR, spec::kAttrPower, spec::kAttrEps, spec::kAttrCausal};
    const PluginFieldType types[4] = {PluginFieldType::kFLOAT32, PluginFieldType::kINT32, PluginFieldType::kFLOAT32,
                                      PluginFieldType::kINT32};
    bool ok = declared != nullptr && declared->nbFields == spec::kNumAttributes && declared->fields != nullptr;
    for (int i = 0; ok && i < 4; ++i) {
      ok = declared->fields[i].name != nullptr && std::strcmp(declared->fields[i].name, names[i]) == 0 &&
           declared->fields[i].type == types[i];
    }
    checks.Add("creator_field_names", ok, "R:FLOAT32, power:INT32, eps:FLOAT32, causal:INT32 in spec order");
  }

  Collection given_fc(given);
  PluginPtr plugin(creator->createPlugin("harness", &given_fc.fc, TensorRTPhase::kBUILD));
  std::ostringstream json;
  json << "{\"library\": " << JsonString(argv[1]) << ", \"tensorrt_headers\": "
       << JsonString(std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                     std::to_string(NV_TENSORRT_PATCH))
       << ", \"plugin_built_for\": " << JsonString(built_for) << ", \"tensorrt_runtime\": " << tensorrt_version
       << ", \"creator_fields\": " << FieldsJson(declared)
       << ", \"given_fields\": " << FieldsJson(&given_fc.fc);

  if (expect_reject) {
    checks.Add("given_fields_rejected", plugin == nullptr, "createPlugin must return nullptr");
    json << ", \"created\": " << (plugin ? "true" : "false") << ", \"checks\": " << checks.Json()
         << ", \"passed\": " << (checks.results.size() - checks.Failed()) << ", \"failed\": " << checks.Failed()
         << "}";
    std::printf("%s\n", json.str().c_str());
    return checks.Failed() == 0 ? 0 : kExitFailed;
  }
  checks.Add("create_build_phase", plugin != nullptr, "createPlugin(kBUILD) with the given fields");
  Values reported{};
  bool have_reported = false;
  if (plugin) {
    IPluginV3OneCore* core = CoreOf(plugin.get());
    IPluginV3OneBuild* build = BuildOf(plugin.get());
    IPluginV3OneRuntime* runtime = RuntimeOf(plugin.get());
    checks.Add("capabilities", core != nullptr && build != nullptr && runtime != nullptr &&
                                   std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0 &&
                                   std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0 &&
                                   std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0 &&
                                   std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    if (core == nullptr || build == nullptr || runtime == nullptr) {
      json << ", \"checks\": " << checks.Json() << ", \"passed\": " << (checks.results.size() - checks.Failed())
           << ", \"failed\": " << checks.Failed() << "}";
      std::printf("%s\n", json.str().c_str());
      return kExitFailed;
    }
    checks.Add("identity", std::strcmp(core->getPluginName(), spec::kOpType) == 0 &&
                               std::strcmp(core->getPluginVersion(), "1") == 0 &&
                               std::strcmp(core->getPluginNamespace(), "") == 0);

    // Fields reported back = given (float32/int32 of the given values), defaults elsewhere.
    std::string why;
    have_reported = ReportedValues(runtime->getFieldsToSerialize(), &reported, &why);
    Values expected{spec::kDefaultR, static_cast<double>(spec::kDefaultPower), spec::kDefaultEps,
                    static_cast<double>(spec::kDefaultCausal)};
    for (const FieldArg& f : given) {
      std::vector<double> v = FieldValues(PluginField(f.name.c_str(), f.data.data(), f.type, f.length), nullptr);
      if (v.size() != 1) continue;
      if (f.name == spec::kAttrR) expected.R = static_cast<float>(v[0]);
      if (f.name == spec::kAttrPower) expected.power = v[0];
      if (f.name == spec::kAttrEps) expected.eps = static_cast<float>(v[0]);
      if (f.name == spec::kAttrCausal) expected.causal = v[0];
    }
    checks.Add("reported_fields_equal_given", have_reported && reported == expected,
               have_reported ? "" : why);
    json << ", \"fields\": " << FieldsJson(runtime->getFieldsToSerialize());

    PluginPtr copy(plugin->clone());
    Values copy_values{};
    checks.Add("clone_fields", copy != nullptr && RuntimeOf(copy.get()) != nullptr &&
                                   ReportedValues(RuntimeOf(copy.get())->getFieldsToSerialize(), &copy_values, &why) &&
                                   have_reported && copy_values == reported);
    // What TensorRT does with an engine: serialize the fields, createPlugin(kRUNTIME) from them, attach.
    std::vector<FieldArg> serialized;
    const PluginFieldCollection* sfc = runtime->getFieldsToSerialize();
    for (int32_t i = 0; sfc != nullptr && i < sfc->nbFields; ++i) {
      const PluginField& f = sfc->fields[i];
      FieldArg a;
      a.name = f.name;
      a.type = f.type;
      a.length = f.length;
      const size_t elem = (f.type == PluginFieldType::kFLOAT64 || f.type == PluginFieldType::kINT64) ? 8
                          : (f.type == PluginFieldType::kCHAR || f.type == PluginFieldType::kINT8) ? 1
                          : (f.type == PluginFieldType::kINT16 || f.type == PluginFieldType::kFLOAT16 ||
                             f.type == PluginFieldType::kBF16) ? 2 : 4;
      const auto* bytes = static_cast<const unsigned char*>(f.data);
      a.data.assign(bytes, bytes + elem * static_cast<size_t>(f.length));
      serialized.push_back(a);
    }
    copy.reset();  // the serialized bytes are owned copies: the runtime plugin must not depend on the original
    Collection serialized_fc(serialized);
    PluginPtr restored(creator->createPlugin("harness", &serialized_fc.fc, TensorRTPhase::kRUNTIME));
    Values restored_values{};
    checks.Add("serialize_roundtrip", restored != nullptr && RuntimeOf(restored.get()) != nullptr &&
                                          ReportedValues(RuntimeOf(restored.get())->getFieldsToSerialize(),
                                                         &restored_values, &why) &&
                                          have_reported && restored_values == reported);
    if (restored != nullptr && RuntimeOf(restored.get()) != nullptr) {
      PluginPtr attached(RuntimeOf(restored.get())->attachToContext(nullptr));
      Values attached_values{};
      checks.Add("attach_to_context", attached != nullptr &&
                                          ReportedValues(RuntimeOf(attached.get())->getFieldsToSerialize(),
                                                         &attached_values, &why) &&
                                          attached_values == reported);
    }

    // Formats and types.
    const auto L = TensorFormat::kLINEAR;
    const DataType F = DataType::kFLOAT, Hf = DataType::kHALF, Bf = DataType::kBF16, I = DataType::kINT32;
    checks.Add("formats_accept_same_type", Supports(build, {F, F, F, F}, L) && Supports(build, {Hf, Hf, Hf, Hf}, L) &&
                                               Supports(build, {Bf, Bf, Bf, Bf}, L));
    checks.Add("formats_reject_mixed_types", !Supports(build, {Hf, F, F, F}, L) && !Supports(build, {F, Hf, F, F}, L) &&
                                                 !Supports(build, {F, F, Bf, F}, L) && !Supports(build, {F, F, F, Hf}, L));
    checks.Add("formats_reject_int32", !Supports(build, {I, I, I, I}, L));
    checks.Add("formats_reject_nonlinear", !Supports(build, {F, F, F, F}, TensorFormat::kCHW32) &&
                                               !Supports(build, {Hf, Hf, Hf, Hf}, TensorFormat::kHWC8) &&
                                               !Supports(build, {F, F, F, F}, TensorFormat::kHWC));
    checks.Add("nb_outputs", build->getNbOutputs() == 1);
    bool types_ok = true;
    for (DataType t : {F, Hf, Bf}) {
      DataType out_type = DataType::kINT8;
      const DataType in_types[3] = {t, t, t};
      types_ok = types_ok && build->getOutputDataTypes(&out_type, 1, in_types, 3) == 0 && out_type == t;
    }
    checks.Add("output_data_types", types_ok, "out type = q type");

    // Output shapes: symbolic and constant extents; out must be exactly q's dims, whatever k/v are.
    ExprBuilderImpl impl;
    ExprBuilder exprs(&impl);
    const IDimensionExpr* batch = impl.symbol();
    const IDimensionExpr* nq = impl.symbol();
    const IDimensionExpr* nk = impl.symbol();
    DimsExprs inputs[3];
    for (DimsExprs& in : inputs) {
      in.nbDims = 4;
      in.d[0] = batch;
      in.d[1] = exprs.constant(3);
      in.d[3] = exprs.constant(40);
    }
    inputs[0].d[2] = nq;
    inputs[1].d[2] = nk;
    inputs[2].d[2] = nk;
    DimsExprs out{};
    bool shapes_ok = build->getOutputShapes(inputs, 3, nullptr, 0, &out, 1, exprs) == 0 && out.nbDims == 4;
    for (int i = 0; shapes_ok && i < 4; ++i) shapes_ok = SameDim(out.d[i], inputs[0].d[i]);
    checks.Add("output_shapes_symbolic", shapes_ok, "out dims = q dims [batch(sym), 3, Nq(sym), 40]");
    DimsExprs cin[3];
    const int64_t qd[4] = {2, 3, 37, 40}, kd[4] = {2, 3, 53, 40};
    for (int t = 0; t < 3; ++t) {
      cin[t].nbDims = 4;
      for (int i = 0; i < 4; ++i) cin[t].d[i] = exprs.constant(t == 0 ? qd[i] : kd[i]);
    }
    DimsExprs cout{};
    bool const_ok = build->getOutputShapes(cin, 3, nullptr, 0, &cout, 1, exprs) == 0 && cout.nbDims == 4;
    for (int i = 0; const_ok && i < 4; ++i) {
      const_ok = cout.d[i] != nullptr && cout.d[i]->isConstant() && cout.d[i]->getConstantValue() == qd[i];
    }
    checks.Add("output_shapes_constant", const_ok, "q [2,3,37,40], k/v [2,3,53,40] -> out [2,3,37,40]");

    // Shapes through configurePlugin / onShapeChange / getWorkspaceSize (no CUDA call is made).
    const nvinfer1::Dims dq = MakeDims({2, 3, 37, 40}), dk = MakeDims({2, 3, 53, 40});
    DynamicPluginTensorDesc din[3] = {DynDesc(F, L, dq), DynDesc(F, L, dk), DynDesc(F, L, dk)};
    DynamicPluginTensorDesc dout[1] = {DynDesc(F, L, dq)};
    PluginTensorDesc pin[3] = {din[0].desc, din[1].desc, din[2].desc};
    PluginTensorDesc pout[1] = {dout[0].desc};
    checks.Add("configure_plugin", build->configurePlugin(din, 3, dout, 1) == 0);
    checks.Add("on_shape_change", runtime->onShapeChange(pin, 3, pout, 1) == 0);
    PluginTensorDesc bad_in[3] = {pin[0], Desc(F, L, MakeDims({2, 3, 53, 32})), pin[2]};
    std::fprintf(stderr, "[harness] expecting a shape-mismatch message:\n");
    checks.Add("on_shape_change_rejects_mismatch", runtime->onShapeChange(bad_in, 3, pout, 1) != 0);
    // The CUDA kernel's sin/cos table: 12 bytes per padded row (64) of q and k, batch, head and padded dim (16).
    const size_t ws = build->getWorkspaceSize(din, 3, dout, 1), expected_ws = 12 * 2 * 3 * (64 + 64) * 48;
    checks.Add("workspace_size", ws == expected_ws,
               std::to_string(ws) + " bytes, expected " + std::to_string(expected_ws));

    // Head dims: up to the CUDA kernel's maximum accepted, above it refused (static, or the profile's largest).
    const int64_t max_dim = spec::kCudaMaxDim;
    checks.Add("head_dim_max_accepted", ConfigureWithDim(build, max_dim, max_dim) == 0 &&
                                            ConfigureWithDim(build, -1, max_dim) == 0 &&
                                            ShapeChangeWithDim(runtime, max_dim) == 0);
    const size_t logged_before = finder.logger.messages.size();
    std::fprintf(stderr, "[harness] expecting 3 head-dim refusals (through the logger: %s):\n",
                 logger_usable ? "yes" : "no");
    checks.Add("head_dim_above_max_refused", ConfigureWithDim(build, max_dim + 1, max_dim + 1) != 0 &&
                                                 ConfigureWithDim(build, -1, max_dim + 1) != 0 &&
                                                 ShapeChangeWithDim(runtime, max_dim + 1) != 0);
    const std::string refusal = "D=" + std::to_string(max_dim + 1) + " (last axis of q, k, v) is above " +
                                std::to_string(max_dim);
    int refusals_logged = 0;
    for (size_t i = logged_before; i < finder.logger.messages.size(); ++i) {
      const RecordingLogger::Message& m = finder.logger.messages[i];
      const bool is_refusal = m.text.find(refusal) != std::string::npos;
      refusals_logged += m.severity == nvinfer1::ILogger::Severity::kERROR && is_refusal;
    }
    checks.Add("head_dim_refusal_logged", refusals_logged == (logger_usable ? 3 : 0),
               std::to_string(refusals_logged) + " refusals through the logger, TensorRT runtime " +
                   std::to_string(tensorrt_version) + " vs headers " + std::to_string(NV_TENSORRT_MAJOR));

    std::string metadata_why;
    checks.Add("metadata_string", have_reported && MetadataMatches(build->getMetadataString(), reported, built_for,
                                                                   &metadata_why), metadata_why);
    json << ", \"metadata\": " << JsonString(build->getMetadataString() ? build->getMetadataString() : "");
  }

  // Bad field sets must be rejected with nullptr (and no crash).
  struct BadCase {
    const char* label;
    std::vector<std::vector<std::string>> fields;  // name, type, value
  };
  const std::vector<BadCase> bad_cases = {
      {"power_odd", {{"power", "INT32", "3"}}},
      {"power_too_large", {{"power", "INT32", "66"}}},
      {"power_zero", {{"power", "INT32", "0"}}},
      {"R_negative", {{"R", "FLOAT32", "-1"}}},
      {"R_zero", {{"R", "FLOAT32", "0"}}},
      {"R_nan", {{"R", "FLOAT32", "nan"}}},
      {"R_inf", {{"R", "FLOAT32", "inf"}}},
      {"eps_zero", {{"eps", "FLOAT32", "0"}}},
      {"causal_two", {{"causal", "INT32", "2"}}},
      {"unknown_field", {{"temperature", "FLOAT32", "1"}}},
      {"plugin_version_as_field", {{"plugin_version", "CHAR", "1"}}},
      {"power_as_float", {{"power", "FLOAT32", "4"}}},
      {"R_as_int", {{"R", "INT32", "1"}}},
      {"R_as_string", {{"R", "CHAR", "1.5"}}},
      {"causal_as_float", {{"causal", "FLOAT32", "1"}}},
      {"power_int64_overflow", {{"power", "INT64", "4294967300"}}},
      {"duplicate_field", {{"power", "INT32", "4"}, {"power", "INT32", "6"}}},
  };
  std::fprintf(stderr, "[harness] expecting %zu rejection messages:\n", bad_cases.size() + 2);
  bool all_rejected = true;
  std::string not_rejected;
  for (const BadCase& bc : bad_cases) {
    std::vector<FieldArg> args;
    for (const auto& f : bc.fields) {
      FieldArg a;
      std::string err;
      if (!MakeField(f[0], f[1], f[2], &a, &err)) {
        std::fprintf(stderr, "internal: bad case %s: %s\n", bc.label, err.c_str());
        return kExitUsage;
      }
      args.push_back(a);
    }
    Collection fc(args);
    PluginPtr p(creator->createPlugin(bc.label, &fc.fc, TensorRTPhase::kBUILD));
    if (p != nullptr) {
      all_rejected = false;
      not_rejected += std::string(not_rejected.empty() ? "" : ", ") + bc.label;
    }
  }
  checks.Add("bad_fields_rejected", all_rejected, not_rejected.empty() ? "" : "accepted: " + not_rejected);
  {
    // A field of length 2 and a field without data.
    const float two[2] = {1.0f, 2.0f};
    PluginField f2[1] = {PluginField(spec::kAttrR, two, PluginFieldType::kFLOAT32, 2)};
    PluginField fnull[1] = {PluginField(spec::kAttrR, nullptr, PluginFieldType::kFLOAT32, 1)};
    PluginFieldCollection c2{1, f2}, cnull{1, fnull};
    PluginPtr p2(creator->createPlugin("length2", &c2, TensorRTPhase::kBUILD));
    PluginPtr pnull(creator->createPlugin("nodata", &cnull, TensorRTPhase::kBUILD));
    checks.Add("malformed_fields_rejected", p2 == nullptr && pnull == nullptr);
  }
  {
    // No fields at all (TensorRT passes only the attributes present): the spec defaults.
    PluginFieldCollection empty{0, nullptr};
    PluginPtr p(creator->createPlugin("defaults", &empty, TensorRTPhase::kBUILD));
    Values v{};
    std::string why;
    checks.Add("empty_fields_give_defaults",
               p != nullptr && ReportedValues(RuntimeOf(p.get())->getFieldsToSerialize(), &v, &why) &&
                   v == Values{spec::kDefaultR, static_cast<double>(spec::kDefaultPower), spec::kDefaultEps,
                               static_cast<double>(spec::kDefaultCausal)});
  }

  int exit_code = 0;
  if (enqueue && plugin != nullptr && have_reported) {
    const EnqueueResult er = RunEnqueue(plugin.get(), reported);
    if (er.status == kExitNoDevice) {
      json << ", \"enqueue\": {\"status\": \"skipped\", \"reason\": " << JsonString(er.detail) << "}";
      exit_code = kExitNoDevice;
    } else {
      const bool ok = er.status == 0 && er.error <= 1e-5;
      checks.Add("enqueue_float32_vs_float64", ok, er.detail + ", normwise relative error " + JsonNumber(er.error));
      json << ", \"enqueue\": {\"status\": " << JsonString(er.status == 0 ? "ran" : "failed")
           << ", \"relative_error\": " << JsonNumber(er.error) << ", \"detail\": " << JsonString(er.detail) << "}";
    }
  }
  if (!logger_usable) {
    checks.Add("logger_unused", finder.logger.messages.empty(), "no TensorRT of the headers' major is loaded");
  }
  const int failed = checks.Failed();
  json << ", \"logged\": " << MessagesJson(finder.logger.messages) << ", \"checks\": " << checks.Json()
       << ", \"passed\": " << (checks.results.size() - failed) << ", \"failed\": " << failed << "}";
  std::printf("%s\n", json.str().c_str());
  if (failed > 0) return kExitFailed;
  return exit_code;
}
