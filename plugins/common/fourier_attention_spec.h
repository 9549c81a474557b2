// FourierAttention op specification shared by every backend.
//
// Mirrors fourierformer/opspec.py (the single source of truth); a Python test
// parses this header and compares it with opspec.py, so keep its format
// regular: one `constexpr <type> <name>[] = <value>;` or
// `constexpr <type> <name> = <value>;` per line, no macros, no expressions.
//
// Attribute lines come in the order of opspec.ATTRIBUTES (R, power, eps, causal):
//   constexpr char kAttr<Suffix>[] = "<name>";
//   constexpr <float|int64_t> kDefault<Suffix> = <default>;
//   constexpr char kAttrType<Suffix>[] = "<FLOAT|INT>";   // ONNX attribute type
#ifndef FOURIERFORMER_COMMON_FOURIER_ATTENTION_SPEC_H_
#define FOURIERFORMER_COMMON_FOURIER_ATTENTION_SPEC_H_

#include <cstdint>

namespace fourierformer {
namespace spec {

constexpr char kOpType[] = "FourierAttention";
constexpr char kDomain[] = "fourierformer";
constexpr int kVersion = 1;
constexpr char kOrtDomain[] = "fourierformer.onnxruntime";
constexpr int kOrtVersion = 1;

// Inputs of the ONNX Runtime form: q, k, v and an optional R (absent: the attribute R; present, a float32 tensor
// of one element read at each run: it overrides the attribute).
constexpr int kNumOrtInputs = 4;
constexpr char kInputQ[] = "q";
constexpr char kInputK[] = "k";
constexpr char kInputV[] = "v";
constexpr char kInputR[] = "R";
constexpr char kOutputOut[] = "out";

// Attributes, in opspec.ATTRIBUTES order.
constexpr int kNumAttributes = 4;
constexpr char kAttrR[] = "R";
constexpr float kDefaultR = 1.0f;
constexpr char kAttrTypeR[] = "FLOAT";
constexpr char kAttrPower[] = "power";
constexpr int64_t kDefaultPower = 4;
constexpr char kAttrTypePower[] = "INT";
constexpr char kAttrEps[] = "eps";
constexpr float kDefaultEps = 1e-6f;
constexpr char kAttrTypeEps[] = "FLOAT";
constexpr char kAttrCausal[] = "causal";
constexpr int64_t kDefaultCausal = 0;
constexpr char kAttrTypeCausal[] = "INT";

// Valid ranges (also enforced by ff_validate_params in fourier_attention.h).
constexpr int64_t kMinPower = 2;
constexpr int64_t kMaxPower = 64;

// Largest head dim D of the CUDA kernel (FF_CUDA_MAX_DIM in ../cuda/fourier_attention_cuda.h, which the TensorRT
// plugin static_asserts equal): the TensorRT plugin and the to_tensorrt pass refuse a larger one.
constexpr int64_t kCudaMaxDim = 256;

}  // namespace spec
}  // namespace fourierformer

#endif  // FOURIERFORMER_COMMON_FOURIER_ATTENTION_SPEC_H_
