// FourierAttention TensorRT plugin: see fourier_attention_plugin.h.
#include "fourier_attention_plugin.h"

#include <NvInferVersion.h>
#include <dlfcn.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include "fourier_attention_cuda.h"
#include "fourier_attention_spec.h"

namespace fourierformer {
namespace trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;

#define FF_TRT_STR2(x) #x
#define FF_TRT_STR(x) FF_TRT_STR2(x)
constexpr char kTensorRTVersion[] =
    FF_TRT_STR(NV_TENSORRT_MAJOR) "." FF_TRT_STR(NV_TENSORRT_MINOR) "." FF_TRT_STR(NV_TENSORRT_PATCH);

#ifdef FF_TENSORRT_HEADERS_VERSION
constexpr bool StrEqual(const char* a, const char* b) {
  return *a == *b && (*a == '\0' || StrEqual(a + 1, b + 1));
}
static_assert(StrEqual(kTensorRTVersion, FF_TENSORRT_HEADERS_VERSION),
              "NvInferVersion.h disagrees with the version CMake read from it (FF_TENSORRT_HEADERS_VERSION)");
#endif
static_assert(NV_TENSORRT_MAJOR >= 10, "the FourierAttention plugin needs TensorRT >= 10 headers (IPluginV3)");
static_assert(spec::kCudaMaxDim == FF_CUDA_MAX_DIM, "spec::kCudaMaxDim must equal the CUDA kernel's FF_CUDA_MAX_DIM");

constexpr int32_t kNbInputs = 3;  // q, k, v
constexpr int32_t kNbOutputs = 1;

// The finder TensorRT gave setLoggerFinder, kept only when TensorRTMatchesHeaders() held then.
std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};

// Whether the TensorRT in this process has our headers' major version, so that its loggers have the ILogger
// ABI we were compiled against (it changes across majors, the plugin ABI does not): one of its libraries of
// that major is loaded (found by soname; nothing is loaded) and its getInferLibVersion agrees.
bool TensorRTMatchesHeaders() noexcept {
  constexpr const char* kLibraries[] = {"libnvinfer.so." FF_TRT_STR(NV_TENSORRT_MAJOR),
                                        "libnvinfer_lean.so." FF_TRT_STR(NV_TENSORRT_MAJOR),
                                        "libnvinfer_dispatch.so." FF_TRT_STR(NV_TENSORRT_MAJOR)};
  for (const char* name : kLibraries) {
    const std::unique_ptr<void, int (*)(void*)> lib(dlopen(name, RTLD_LAZY | RTLD_NOLOAD), &dlclose);
    if (lib == nullptr) continue;
    const auto version = reinterpret_cast<int32_t (*)()>(dlsym(lib.get(), "getInferLibVersion"));
    if (version != nullptr && version() / 10000 == NV_TENSORRT_MAJOR) return true;  // (major*100+minor)*100+patch
  }
  return false;
}

// An error, through TensorRT's logger when we may use it, else on stderr.
void ReportError(const char* what) noexcept {
  nvinfer1::ILoggerFinder* finder = g_logger_finder.load(std::memory_order_acquire);
  nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
  char line[1024];
  std::snprintf(line, sizeof(line), "%s TensorRT plugin: %s", spec::kOpType, what);
  if (logger != nullptr) {
    logger->log(nvinfer1::ILogger::Severity::kERROR, line);
  } else {
    std::fprintf(stderr, "%s\n", line);
  }
}

// Whether the CUDA kernel runs head dim `dim` (unknown, i.e. negative, passes); else reports why.
bool DimSupported(const char* where, const char* which, int64_t dim) noexcept {
  if (dim <= spec::kCudaMaxDim) return true;
  char why[256];
  std::snprintf(why, sizeof(why),
                "%s: %s D=%lld (last axis of q, k, v) is above %lld, the most the CUDA kernel supports", where, which,
                static_cast<long long>(dim), static_cast<long long>(spec::kCudaMaxDim));
  ReportError(why);
  return false;
}

// getMetadataString's text (see the header) into out[size]; floats in their shortest round-trip form.
void FormatMetadata(const Attributes& a, char* out, size_t size) noexcept {
  char r[32], eps[32];
  *std::to_chars(r, r + sizeof(r) - 1, a.R).ptr = '\0';
  *std::to_chars(eps, eps + sizeof(eps) - 1, a.eps).ptr = '\0';
  std::snprintf(out, size, "%s v%s R=%s power=%d eps=%s causal=%d max_dim=%lld tensorrt=%s", spec::kOpType,
                kPluginVersion, r, a.power, eps, a.causal, static_cast<long long>(spec::kCudaMaxDim), kTensorRTVersion);
}

bool ReadFloat(const PluginField& f, float* out) {
  switch (f.type) {
    case PluginFieldType::kFLOAT32: *out = *static_cast<const float*>(f.data); return true;
    case PluginFieldType::kFLOAT64: *out = static_cast<float>(*static_cast<const double*>(f.data)); return true;
    default: return false;
  }
}

bool ReadInt(const PluginField& f, int32_t* out) {
  int64_t v = 0;
  switch (f.type) {
    case PluginFieldType::kINT32: v = *static_cast<const int32_t*>(f.data); break;
    case PluginFieldType::kINT64: v = *static_cast<const int64_t*>(f.data); break;
    case PluginFieldType::kINT16: v = *static_cast<const int16_t*>(f.data); break;
    case PluginFieldType::kINT8: v = *static_cast<const int8_t*>(f.data); break;
    default: return false;
  }
  if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
    return false;
  }
  *out = static_cast<int32_t>(v);
  return true;
}

ff_params MakeParams(const Attributes& a) {
  ff_params p{};
  p.R = a.R;
  p.power = a.power;
  p.eps = a.eps;
  p.causal = a.causal;
  return p;
}

bool IsSupportedType(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16; }

bool ToFFDtype(DataType t, ff_dtype* out) {
  switch (t) {
    case DataType::kFLOAT: *out = FF_DTYPE_FLOAT32; return true;
    case DataType::kHALF: *out = FF_DTYPE_FLOAT16; return true;
    case DataType::kBF16: *out = FF_DTYPE_BFLOAT16; return true;
    default: return false;
  }
}

// Sizes of *p from q [B,H,Nq,D], k [B,H,Nk,D], v [B,H,Nk,D]; false (with *why) on a mismatch.
// Negative extents (unknown at build time) are accepted when allow_unknown is set.
bool ShapesToParams(const nvinfer1::Dims& q, const nvinfer1::Dims& k, const nvinfer1::Dims& v, bool allow_unknown,
                    ff_params* p, const char** why) {
  if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4) {
    *why = "q, k and v must be 4-D [batch, heads, rows, dim]";
    return false;
  }
  for (int i = 0; i < 4; ++i) {
    const bool known = q.d[i] >= 0 && k.d[i] >= 0 && v.d[i] >= 0;
    if (!known && !allow_unknown) {
      *why = "unknown (negative) tensor extent at run time";
      return false;
    }
    if (!known) continue;
    if (k.d[i] != v.d[i]) {
      *why = "k and v must have the same shape";
      return false;
    }
    if (i != 2 && q.d[i] != k.d[i]) {
      *why = "q and k/v must agree in batch, heads and dim";
      return false;
    }
  }
  p->batch = q.d[0];
  p->heads = q.d[1];
  p->nq = q.d[2];
  p->nk = k.d[2];
  p->dim = q.d[3];
  return true;
}

// The kernel's parameters for these attributes and shapes; false (reported on stderr) on a shape mismatch.
bool CheckedParams(const Attributes& a, const nvinfer1::Dims& q, const nvinfer1::Dims& k, const nvinfer1::Dims& v,
                   bool allow_unknown, ff_params* p) {
  *p = MakeParams(a);
  const char* why = nullptr;
  if (ShapesToParams(q, k, v, allow_unknown, p, &why)) return true;
  ReportError(why);
  return false;
}

}  // namespace

std::string ParseFields(const nvinfer1::PluginFieldCollection* fc, Attributes* out) {
  Attributes a{spec::kDefaultR, static_cast<int32_t>(spec::kDefaultPower), spec::kDefaultEps,
               static_cast<int32_t>(spec::kDefaultCausal)};
  bool seen[spec::kNumAttributes] = {false, false, false, false};
  if (fc != nullptr) {
    if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr)) {
      return "malformed PluginFieldCollection";
    }
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      const PluginField& f = fc->fields[i];
      if (f.name == nullptr) return "a plugin field has no name";
      const std::string name(f.name);
      int index = -1;
      if (name == spec::kAttrR) index = 0;
      if (name == spec::kAttrPower) index = 1;
      if (name == spec::kAttrEps) index = 2;
      if (name == spec::kAttrCausal) index = 3;
      if (index < 0) {
        return "unknown plugin field '" + name + "' (known: " + spec::kAttrR + ", " + spec::kAttrPower + ", " +
               spec::kAttrEps + ", " + spec::kAttrCausal + ")";
      }
      if (seen[index]) return "plugin field '" + name + "' given twice";
      seen[index] = true;
      if (f.data == nullptr) return "plugin field '" + name + "' has no data";
      const bool is_float = index == 0 || index == 2;
      const bool type_ok = is_float ? (f.type == PluginFieldType::kFLOAT32 || f.type == PluginFieldType::kFLOAT64)
                                    : (f.type == PluginFieldType::kINT32 || f.type == PluginFieldType::kINT64 ||
                                       f.type == PluginFieldType::kINT16 || f.type == PluginFieldType::kINT8);
      if (!type_ok) {
        return "plugin field '" + name + "' has PluginFieldType " + std::to_string(static_cast<int>(f.type)) +
               (is_float ? "; expected kFLOAT32 (or kFLOAT64)" : "; expected kINT32 (or kINT64/kINT16/kINT8)");
      }
      if (f.length != 1) {
        return "plugin field '" + name + "' must hold exactly one value (length " + std::to_string(f.length) + ")";
      }
      bool ok = false;
      switch (index) {
        case 0: ok = ReadFloat(f, &a.R); break;
        case 1: ok = ReadInt(f, &a.power); break;
        case 2: ok = ReadFloat(f, &a.eps); break;
        default: ok = ReadInt(f, &a.causal); break;
      }
      if (!ok) return "plugin field '" + name + "' is out of the int32 range";
    }
  }
  const ff_params p = MakeParams(a);
  if (const char* err = ff_validate_attributes(&p)) return err;
  *out = a;
  return std::string();
}

// ---- FourierAttentionPlugin ---------------------------------------------------------------------

FourierAttentionPlugin::FourierAttentionPlugin(const Attributes& attrs) : attrs_(attrs), fc_{} {
  fields_[0] = PluginField(spec::kAttrR, &attrs_.R, PluginFieldType::kFLOAT32, 1);
  fields_[1] = PluginField(spec::kAttrPower, &attrs_.power, PluginFieldType::kINT32, 1);
  fields_[2] = PluginField(spec::kAttrEps, &attrs_.eps, PluginFieldType::kFLOAT32, 1);
  fields_[3] = PluginField(spec::kAttrCausal, &attrs_.causal, PluginFieldType::kINT32, 1);
  fc_.nbFields = spec::kNumAttributes;
  fc_.fields = fields_;
  FormatMetadata(attrs_, metadata_, sizeof(metadata_));
}

nvinfer1::IPluginCapability* FourierAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* FourierAttentionPlugin::clone() noexcept {
  return new (std::nothrow) FourierAttentionPlugin(attrs_);
}

const char* FourierAttentionPlugin::getPluginName() const noexcept { return spec::kOpType; }
const char* FourierAttentionPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
const char* FourierAttentionPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t FourierAttentionPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                                const nvinfer1::DynamicPluginTensorDesc* out,
                                                int32_t nbOutputs) noexcept {
  if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
    ReportError("configurePlugin: expected 3 inputs (q, k, v) and 1 output");
    return -1;
  }
  ff_params p;
  if (!CheckedParams(attrs_, in[0].desc.dims, in[1].desc.dims, in[2].desc.dims, /*allow_unknown=*/true, &p)) return -1;
  const nvinfer1::Dims& most = in[0].max;  // the optimization profile's largest q
  const bool ok = DimSupported("configurePlugin", "head dim", p.dim) &&
                  DimSupported("configurePlugin", "the profile's largest head dim", most.nbDims == 4 ? most.d[3] : -1);
  return ok ? 0 : -1;
}

int32_t FourierAttentionPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                                   const nvinfer1::DataType* inputTypes,
                                                   int32_t nbInputs) const noexcept {
  if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNbOutputs || nbInputs != kNbInputs) {
    return -1;
  }
  outputTypes[0] = inputTypes[0];
  return 0;
}

int32_t FourierAttentionPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
                                                const nvinfer1::DimsExprs* /*shapeInputs*/,
                                                int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                                int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  if (inputs == nullptr || outputs == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs ||
      inputs[0].nbDims != 4) {
    ReportError("getOutputShapes: expected q, k, v of rank 4 and one output");
    return -1;
  }
  outputs[0] = inputs[0];  // out[B,H,Nq,D] = q's dims
  return 0;
}

bool FourierAttentionPlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut,
                                                       int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 ||
      pos >= nbInputs + nbOutputs) {
    return false;
  }
  const nvinfer1::PluginTensorDesc& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR || !IsSupportedType(d.type)) return false;
  // All four tensors share one type: positions before pos are already fixed by TensorRT.
  return pos == 0 || d.type == inOut[0].desc.type;
}

int32_t FourierAttentionPlugin::getNbOutputs() const noexcept { return kNbOutputs; }

size_t FourierAttentionPlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                                                const nvinfer1::DynamicPluginTensorDesc* /*outputs*/,
                                                int32_t /*nbOutputs*/) const noexcept {
  if (inputs == nullptr || nbInputs != kNbInputs) return 0;
  ff_params p = MakeParams(attrs_);
  const char* why = nullptr;
  // The largest shapes of the optimization profile bound what enqueue will see.
  if (!ShapesToParams(inputs[0].max, inputs[1].max, inputs[2].max, /*allow_unknown=*/false, &p, &why)) return 0;
  return ff_cuda_workspace_size(&p);
}

const char* FourierAttentionPlugin::getMetadataString() noexcept { return metadata_; }

int32_t FourierAttentionPlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
                                              const nvinfer1::PluginTensorDesc* out, int32_t nbOutputs) noexcept {
  if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
    ReportError("onShapeChange: expected 3 inputs (q, k, v) and 1 output");
    return -1;
  }
  ff_params p;
  const bool ok = CheckedParams(attrs_, in[0].dims, in[1].dims, in[2].dims, /*allow_unknown=*/false, &p) &&
                  DimSupported("onShapeChange", "head dim", p.dim);
  return ok ? 0 : -1;
}

int32_t FourierAttentionPlugin::enqueue(const nvinfer1::PluginTensorDesc* inputDesc,
                                        const nvinfer1::PluginTensorDesc* outputDesc, const void* const* inputs,
                                        void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr) {
    ReportError("enqueue: null tensor descriptors or pointers");
    return -1;
  }
  ff_params p;
  if (!CheckedParams(attrs_, inputDesc[0].dims, inputDesc[1].dims, inputDesc[2].dims, /*allow_unknown=*/false, &p)) {
    return -1;
  }
  ff_dtype dtype;
  if (!ToFFDtype(inputDesc[0].type, &dtype) || inputDesc[1].type != inputDesc[0].type ||
      inputDesc[2].type != inputDesc[0].type || outputDesc[0].type != inputDesc[0].type) {
    ReportError("enqueue: q, k, v and out must share one type (float32, float16 or bfloat16)");
    return -1;
  }
  const size_t workspace_bytes = ff_cuda_workspace_size(&p);
  if (workspace_bytes > 0 && workspace == nullptr) {
    ReportError("enqueue: no workspace was provided");
    return -1;
  }
  const char* err = ff_cuda_forward(&p, dtype, inputs[0], nullptr, inputs[1], nullptr, inputs[2], nullptr, outputs[0],
                                    nullptr, workspace, workspace_bytes, static_cast<void*>(stream));
  if (err != nullptr) {
    ReportError(err);
    return -1;
  }
  return 0;
}

nvinfer1::IPluginV3* FourierAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();  // no per-context resources
}

const nvinfer1::PluginFieldCollection* FourierAttentionPlugin::getFieldsToSerialize() noexcept {
  fields_[0].data = &attrs_.R;
  fields_[1].data = &attrs_.power;
  fields_[2].data = &attrs_.eps;
  fields_[3].data = &attrs_.causal;
  return &fc_;
}

// ---- FourierAttentionPluginCreator --------------------------------------------------------------

FourierAttentionPluginCreator::FourierAttentionPluginCreator() : fc_{} {
  // Names and the types TensorRT's ONNX parser produces for ONNX FLOAT / INT attributes; data unset.
  fields_[0] = PluginField(spec::kAttrR, nullptr, PluginFieldType::kFLOAT32, 1);
  fields_[1] = PluginField(spec::kAttrPower, nullptr, PluginFieldType::kINT32, 1);
  fields_[2] = PluginField(spec::kAttrEps, nullptr, PluginFieldType::kFLOAT32, 1);
  fields_[3] = PluginField(spec::kAttrCausal, nullptr, PluginFieldType::kINT32, 1);
  fc_.nbFields = spec::kNumAttributes;
  fc_.fields = fields_;
}

nvinfer1::IPluginV3* FourierAttentionPluginCreator::createPlugin(const char* name,
                                                                 const nvinfer1::PluginFieldCollection* fc,
                                                                 nvinfer1::TensorRTPhase phase) noexcept {
  if (phase != nvinfer1::TensorRTPhase::kBUILD && phase != nvinfer1::TensorRTPhase::kRUNTIME) {
    ReportError("createPlugin: unknown TensorRTPhase");
    return nullptr;
  }
  try {
    Attributes attrs{};
    const std::string err = ParseFields(fc, &attrs);
    if (!err.empty()) {
      const std::string msg = "createPlugin(" + std::string(name != nullptr ? name : "") + "): " + err;
      ReportError(msg.c_str());
      return nullptr;
    }
    return new FourierAttentionPlugin(attrs);
  } catch (...) {  // never let an exception cross the ABI
    ReportError("createPlugin: out of memory");
    return nullptr;
  }
}

const nvinfer1::PluginFieldCollection* FourierAttentionPluginCreator::getFieldNames() noexcept { return &fc_; }
const char* FourierAttentionPluginCreator::getPluginName() const noexcept { return spec::kOpType; }
const char* FourierAttentionPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
const char* FourierAttentionPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }

}  // namespace trt
}  // namespace fourierformer

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static fourierformer::trt::FourierAttentionPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  using fourierformer::trt::g_logger_finder;
  g_logger_finder.store(finder != nullptr && fourierformer::trt::TensorRTMatchesHeaders() ? finder : nullptr,
                        std::memory_order_release);
}

extern "C" const char* ff_trt_plugin_tensorrt_version(void) { return fourierformer::trt::kTensorRTVersion; }
