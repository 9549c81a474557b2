// ONNX Runtime custom-op library: FourierAttention (domain fourierformer.onnxruntime, v1).
//
// Inputs q[B,H,Nq,D], k[B,H,Nk,D], v[B,H,Nk,D] (float32, or float16 computed in float32) and an
// optional R (float32, one element, read at each run: it overrides the attribute R, for an R fed at
// run time); output out[B,H,Nq,D] of q's type; attributes R, power, eps, causal (see
// common/fourier_attention_spec.h). Errors never escape as C++ exceptions: kernel creation
// and compute use the *V2 entry points and return an OrtStatus naming the problem.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "fourier_attention.h"
#include "fourier_attention_cpu.h"
#include "fourier_attention_spec.h"

namespace {

namespace fs = fourierformer::spec;

constexpr size_t kIndexR = fs::kNumOrtInputs - 1;  // the optional input R, after q, k, v

template <typename T> struct ElemTraits;
template <> struct ElemTraits<float> {
  static constexpr ONNXTensorElementDataType kOnnx = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  static constexpr ff_dtype kFF = FF_DTYPE_FLOAT32;
};
template <> struct ElemTraits<Ort::Float16_t> {
  static constexpr ONNXTensorElementDataType kOnnx = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  static constexpr ff_dtype kFF = FF_DTYPE_FLOAT16;
};

OrtStatus* make_status(const OrtApi& api, OrtErrorCode code, const std::string& msg) {
  return api.CreateStatus(code, msg.c_str());
}

// Reads an optional attribute: absent -> default; present with the wrong type -> error.
template <typename V>
OrtStatus* read_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name,
                     const char* type_name, V def, V* out) {
  V value{};
  OrtStatus* st;
  if constexpr (std::is_same_v<V, float>) st = api.KernelInfoGetAttribute_float(info, name, &value);
  else st = api.KernelInfoGetAttribute_int64(info, name, &value);
  if (st == nullptr) { *out = value; return nullptr; }
  // ONNX Runtime answers an absent attribute with ORT_FAIL and one of another type with ORT_INVALID_ARGUMENT.
  const OrtErrorCode code = api.GetErrorCode(st);
  const std::string msg = api.GetErrorMessage(st);
  api.ReleaseStatus(st);
  if (code == ORT_FAIL) {
    *out = def;
    return nullptr;
  }
  return make_status(api, ORT_INVALID_ARGUMENT,
                     std::string("FourierAttention: attribute ") + name + " must be of ONNX type " +
                         type_name + " (" + msg + ")");
}

std::string fmt_float(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

struct Attrs {
  float R;
  int32_t power;
  float eps;
  int32_t causal;
};

// A shape as text; unknown (symbolic) dims, stored as -1, print as "?".
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
  return r + "]";
}

// What is wrong with the shapes of q, k, v (empty if nothing): rank 4 each, one B, H, D, one Nk for k and v.
// Negative dims are unknown (at graph load) and match anything.
std::string shape_problem(const std::vector<int64_t> (&shp)[3]) {
  const char* names[3] = {fs::kInputQ, fs::kInputK, fs::kInputV};
  for (int i = 0; i < 3; ++i) {
    if (shp[i].size() != 4)
      return std::string("FourierAttention: ") + names[i] + " must have rank 4 [B,H," + (i == 0 ? "Nq" : "Nk") +
             ",D], got rank " + std::to_string(shp[i].size()) + " " + shape_str(shp[i]);
  }
  const auto &qs = shp[0], &ks = shp[1], &vs = shp[2];
  const auto differ = [](int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; };
  static const char* dim_names[4] = {"B (dim 0)", "H (dim 1)", "N (dim 2)", "D (dim 3)"};
  for (int ax : {0, 1, 3}) {
    if (differ(ks[ax], qs[ax]))
      return std::string("FourierAttention: q and k disagree on ") + dim_names[ax] + ": q " + shape_str(qs) +
             ", k " + shape_str(ks);
    if (differ(vs[ax], qs[ax]))
      return std::string("FourierAttention: q and v disagree on ") + dim_names[ax] + ": q " + shape_str(qs) +
             ", v " + shape_str(vs);
  }
  if (differ(vs[2], ks[2]))
    return "FourierAttention: k and v must have the same Nk (dim 2): k " + shape_str(ks) + ", v " + shape_str(vs);
  return {};
}

// R of this run into *R: the input R where the node has one (one element, finite, > 0), else `attr`.
OrtStatus* run_r(const OrtApi& api, const Ort::KernelContext& ctx, float attr, float* R) {
  *R = attr;
  if (ctx.GetInputCount() <= kIndexR) return nullptr;
  const Ort::ConstValue r = ctx.GetInput(kIndexR);
  if (!r) return nullptr;  // an omitted optional input (empty name)
  if (!r.IsTensor()) return make_status(api, ORT_INVALID_ARGUMENT, "FourierAttention: input R must be a tensor");
  const auto info = r.GetTensorTypeAndShapeInfo();
  if (info.GetElementCount() != 1)
    return make_status(api, ORT_INVALID_ARGUMENT, "FourierAttention: input R must hold exactly one element, got shape " +
                                                      shape_str(info.GetShape()));
  const float value = *r.GetTensorData<float>();
  if (!(std::isfinite(value) && value > 0))
    return make_status(api, ORT_INVALID_ARGUMENT,
                       "FourierAttention: input R must be finite and > 0, got R=" + fmt_float(value));
  *R = value;
  return nullptr;
}

struct AlignedBuffer {
  void* p = nullptr;
  ~AlignedBuffer() {
    if (p) ::operator delete(p, std::align_val_t(FF_CPU_WORKSPACE_ALIGNMENT));
  }
};

struct PrepareJob {
  const ff_params* p;
  ff_dtype dt;
  const void *q, *k, *v;
  void* ws;
  int64_t items, per_task;
  static void Run(void* self, size_t t) {
    auto* j = static_cast<PrepareJob*>(self);
    const int64_t b = static_cast<int64_t>(t) * j->per_task;
    const int64_t e = b + j->per_task < j->items ? b + j->per_task : j->items;
    ff_cpu_prepare(j->p, j->dt, j->q, j->k, j->v, j->ws, b, e);
  }
};

struct ComputeJob {
  const ff_params* p;
  ff_dtype dt;
  void* ws;
  void* out;
  int64_t rows, per_task;
  static void Run(void* self, size_t t) {
    auto* j = static_cast<ComputeJob*>(self);
    const int64_t b = static_cast<int64_t>(t) * j->per_task;
    const int64_t e = b + j->per_task < j->rows ? b + j->per_task : j->rows;
    ff_cpu_compute(j->p, j->dt, j->ws, j->out, b, e);
  }
};

template <typename T>
struct FourierAttentionKernel {
  FourierAttentionKernel(const OrtApi& api, Attrs a) : api_(api), attrs_(a) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept {
    try {
      return Compute(context);
    } catch (const Ort::Exception& e) {
      return make_status(api_, e.GetOrtErrorCode(), std::string("FourierAttention: ") + e.what());
    } catch (const std::bad_alloc&) {
      return make_status(api_, ORT_FAIL, "FourierAttention: out of memory");
    } catch (const std::exception& e) {
      return make_status(api_, ORT_FAIL, std::string("FourierAttention: ") + e.what());
    } catch (...) {
      return make_status(api_, ORT_FAIL, "FourierAttention: unknown error");
    }
  }

 private:
  OrtStatusPtr Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    if (const size_t count = ctx.GetInputCount(); count != kIndexR && count != kIndexR + 1)
      return make_status(api_, ORT_INVALID_ARGUMENT,
                         "FourierAttention: expected 3 inputs (q, k, v) or 4 (q, k, v, R), got " +
                             std::to_string(count));
    const char* names[3] = {fs::kInputQ, fs::kInputK, fs::kInputV};
    Ort::ConstValue in[3] = {ctx.GetInput(0), ctx.GetInput(1), ctx.GetInput(2)};
    std::vector<int64_t> shp[3];
    for (int i = 0; i < 3; ++i) {
      if (!in[i] || !in[i].IsTensor())
        return make_status(api_, ORT_INVALID_ARGUMENT,
                           std::string("FourierAttention: input ") + names[i] + " must be a tensor");
      shp[i] = in[i].GetTensorTypeAndShapeInfo().GetShape();
    }
    if (const std::string problem = shape_problem(shp); !problem.empty())
      return make_status(api_, ORT_INVALID_ARGUMENT, problem);
    const auto &qs = shp[0], &ks = shp[1];

    ff_params p;
    p.batch = qs[0];
    p.heads = qs[1];
    p.nq = qs[2];
    p.nk = ks[2];
    p.dim = qs[3];
    if (OrtStatus* st = run_r(api_, ctx, attrs_.R, &p.R)) return st;
    p.power = attrs_.power;
    p.eps = attrs_.eps;
    p.causal = attrs_.causal;
    if (const char* err = ff_validate_params(&p)) return make_status(api_, ORT_INVALID_ARGUMENT, err);

    auto out = ctx.GetOutput(0, qs);
    if (p.batch * p.heads * p.nq * p.dim == 0) return nullptr;
    void* out_data = out.GetTensorMutableData<T>();
    const void* qd = in[0].GetTensorData<T>();
    const void* kd = in[1].GetTensorData<T>();
    const void* vd = in[2].GetTensorData<T>();
    const ff_dtype dt = ElemTraits<T>::kFF;

    AlignedBuffer ws;
    const size_t bytes = ff_cpu_workspace_size(&p);
    ws.p = ::operator new(bytes ? bytes : 1, std::align_val_t(FF_CPU_WORKSPACE_ALIGNMENT), std::nothrow);
    if (!ws.p)
      return make_status(api_, ORT_FAIL, "FourierAttention: cannot allocate a workspace of " +
                                              std::to_string(bytes) + " bytes");

    unsigned hc = std::thread::hardware_concurrency();
    const int threads = hc ? static_cast<int>(hc) : 1;

    PrepareJob pj{&p, dt, qd, kd, vd, ws.p, ff_cpu_prepare_items(&p), 0};
    pj.per_task = pj.items / (4 * static_cast<int64_t>(threads)) + 1;
    const int64_t ptasks = (pj.items + pj.per_task - 1) / pj.per_task;
    if (ptasks > 1) ctx.ParallelFor(&PrepareJob::Run, static_cast<size_t>(ptasks), 0, &pj);
    else if (ptasks == 1) PrepareJob::Run(&pj, 0);

    ComputeJob cj{&p, dt, ws.p, out_data, ff_cpu_rows(&p), ff_cpu_rows_per_task(&p, threads)};
    const int64_t ctasks = (cj.rows + cj.per_task - 1) / cj.per_task;
    if (ctasks > 1) ctx.ParallelFor(&ComputeJob::Run, static_cast<size_t>(ctasks), 0, &cj);
    else if (ctasks == 1) ComputeJob::Run(&cj, 0);
    return nullptr;
  }

  const OrtApi& api_;
  Attrs attrs_;
};

template <typename T>
struct FourierAttentionOp : Ort::CustomOpBase<FourierAttentionOp<T>, FourierAttentionKernel<T>, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const noexcept {
    *kernel = nullptr;
    try {
      if (const char* err = ff_cpu_isa_error()) return make_status(api, ORT_INVALID_ARGUMENT, err);
      float R, eps;
      int64_t power, causal;
      if (OrtStatus* st = read_attr(api, info, fs::kAttrR, fs::kAttrTypeR, fs::kDefaultR, &R)) return st;
      if (OrtStatus* st = read_attr(api, info, fs::kAttrPower, fs::kAttrTypePower, fs::kDefaultPower, &power)) return st;
      if (OrtStatus* st = read_attr(api, info, fs::kAttrEps, fs::kAttrTypeEps, fs::kDefaultEps, &eps)) return st;
      if (OrtStatus* st = read_attr(api, info, fs::kAttrCausal, fs::kAttrTypeCausal, fs::kDefaultCausal, &causal)) return st;
      ff_params p{};
      p.R = R;
      p.eps = eps;
      // Out-of-int32 values map to an invalid value so validation names the attribute.
      p.power = (power >= fs::kMinPower && power <= fs::kMaxPower) ? static_cast<int32_t>(power) : -1;
      p.causal = (causal == 0 || causal == 1) ? static_cast<int32_t>(causal) : -1;
      if (const char* err = ff_validate_attributes(&p)) {
        std::string msg = err;
        if (p.power == -1 || (power % 2) != 0) msg += " (got power=" + std::to_string(power) + ")";
        else if (p.causal == -1) msg += " (got causal=" + std::to_string(causal) + ")";
        else if (!(std::isfinite(R) && R > 0)) msg += " (got R=" + fmt_float(R) + ")";
        else msg += " (got eps=" + fmt_float(eps) + ")";
        return make_status(api, ORT_INVALID_ARGUMENT, msg);
      }
      *kernel = new FourierAttentionKernel<T>(api, Attrs{p.R, p.power, p.eps, p.causal});
      return nullptr;
    } catch (const std::exception& e) {
      return make_status(api, ORT_FAIL, std::string("FourierAttention: ") + e.what());
    } catch (...) {
      return make_status(api, ORT_FAIL, "FourierAttention: unknown error creating the kernel");
    }
  }

  FourierAttentionOp() { OrtCustomOp::InferOutputShapeFn = &InferShape; }

  // Graph-load shape inference (ONNX Runtime >= 1.17), with or without the input R: out gets q's type and shape,
  // symbolic dims kept, when the shapes of q, k, v can work; else nothing is inferred and Compute reports the
  // problem when it runs (ONNX Runtime ignores a status returned from here, so none is). Written against the C
  // API: the C++ wrapper of these headers marks symbolic output dims with -2, which newer runtimes refuse.
  static OrtStatusPtr InferShape(const OrtCustomOp*, OrtShapeInferContext* ctx) noexcept {
    const OrtApi& api = Ort::GetApi();
    const auto ok = [&api](OrtStatus* st) {
      if (st != nullptr) api.ReleaseStatus(st);
      return st == nullptr;
    };
    try {
      size_t count = 0;
      if (!ok(api.ShapeInferContext_GetInputCount(ctx, &count)) || count < kIndexR || count > kIndexR + 1)
        return nullptr;
      std::vector<int64_t> shp[3];
      std::vector<const char*> symbols;  // q's symbolic dim names ("" where a dim is a number)
      ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // q's (one schema serves all T)
      for (size_t i = 0; i < 3; ++i) {
        OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
        size_t rank = 0;
        if (!ok(api.ShapeInferContext_GetInputTypeShape(ctx, i, &info)) || !ok(api.GetDimensionsCount(info, &rank)) ||
            rank == 0)
          return nullptr;  // rank unknown (or a scalar, which Compute reports)
        shp[i].resize(rank);
        if (!ok(api.GetDimensions(info, shp[i].data(), rank))) return nullptr;
        if (i == 0) {
          symbols.resize(rank);
          if (!ok(api.GetSymbolicDimensions(info, symbols.data(), rank)) || !ok(api.GetTensorElementType(info, &type)))
            return nullptr;
        }
      }
      if (!shape_problem(shp).empty()) return nullptr;
      for (int64_t& dim : shp[0]) dim = dim < 0 ? -1 : dim;
      OrtTensorTypeAndShapeInfo* out = nullptr;
      if (!ok(api.CreateTensorTypeAndShapeInfo(&out))) return nullptr;
      const std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> owned(
          out, [](OrtTensorTypeAndShapeInfo* i) { Ort::GetApi().ReleaseTensorTypeAndShapeInfo(i); });
      ok(api.SetTensorElementType(out, type)) &&
          ok(api.SetDimensions(out, shp[0].data(), shp[0].size())) &&
          ok(api.SetSymbolicDimensions(out, symbols.data(), symbols.size())) &&
          ok(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
    } catch (...) {  // allocation failure: infer nothing
    }
    return nullptr;
  }

  const char* GetName() const { return fs::kOpType; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return fs::kNumOrtInputs; }
  // R is float32 in both variants (the portable form's type; to_onnxruntime casts a float16 one).
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == kIndexR ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ElemTraits<T>::kOnnx;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == kIndexR ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ElemTraits<T>::kOnnx; }
};

// Op objects and the domain live for the whole library lifetime (never released: sessions
// created from any SessionOptions that registered the library may outlive static destructors).
FourierAttentionOp<float> g_op_f32;
FourierAttentionOp<Ort::Float16_t> g_op_f16;
std::mutex g_domain_mutex;
OrtCustomOpDomain* g_domain = nullptr;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // cannot even report an error
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* old = api_base->GetApi(1);
    if (old == nullptr) return nullptr;
    return old->CreateStatus(ORT_FAIL, ("libfourierformer_ort: needs ONNX Runtime API version >= " +
                                        std::to_string(ORT_API_VERSION) + ", this runtime is " +
                                        api_base->GetVersionString()).c_str());
  }
  Ort::InitApi(api);
  try {
    std::lock_guard<std::mutex> lock(g_domain_mutex);
    if (g_domain == nullptr) {
      OrtCustomOpDomain* d = nullptr;
      if (OrtStatus* st = api->CreateCustomOpDomain(fs::kOrtDomain, &d)) return st;
      if (OrtStatus* st = api->CustomOpDomain_Add(d, &g_op_f32)) { api->ReleaseCustomOpDomain(d); return st; }
      if (OrtStatus* st = api->CustomOpDomain_Add(d, &g_op_f16)) { api->ReleaseCustomOpDomain(d); return st; }
      g_domain = d;
    }
    return api->AddCustomOpDomain(options, g_domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("libfourierformer_ort: ") + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, "libfourierformer_ort: unknown error in RegisterCustomOps");
  }
}
