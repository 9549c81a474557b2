// FourierAttention TensorRT plugin (IPluginV3 / IPluginCreatorV3One) over the CUDA kernel in
// ../cuda/fourier_attention_cuda.h.
//
// Plugin name = spec::kOpType ("FourierAttention"), version "1", namespace "". Fields, in spec order:
//   R       kFLOAT32 (1 value)   also accepted: kFLOAT64
//   power   kINT32   (1 value)   also accepted: kINT64, kINT16, kINT8
//   eps     kFLOAT32 (1 value)   also accepted: kFLOAT64
//   causal  kINT32   (1 value)   also accepted: kINT64, kINT16, kINT8
// These are the types TensorRT's ONNX parser produces from ONNX FLOAT / INT node attributes (its
// fallback plugin importer maps FLOAT -> kFLOAT32 and INT -> kINT32, and only passes the attributes
// named by getFieldNames(); plugin_version / plugin_namespace select the creator and are not fields).
// Missing fields take the spec defaults; unknown fields, bad types or out-of-range values make
// createPlugin return nullptr (with a message). getFieldsToSerialize writes all four fields with the
// primary types above. getMetadataString (engine inspection) gives the fields, the kernel's largest
// head dim and the TensorRT headers' version, floats in their shortest round-trip form:
//   FourierAttention v1 R=0.25 power=8 eps=1e-05 causal=1 max_dim=256 tensorrt=10.14.1
//
// A head dim D (last axis of q, k, v) above spec::kCudaMaxDim, the CUDA kernel's maximum, is refused by
// configurePlugin (D or the profile's largest D) and onShapeChange, with a message.
//
// Messages go to TensorRT's logger when TensorRT gave the library a logger finder (setLoggerFinder) and
// the TensorRT loaded in the process has the major version of our headers (the logger's ABI changes
// across majors); otherwise to stderr.
//
// The library exports only getCreators and setLoggerFinder (TensorRT's plugin-library entry points) and
// ff_trt_plugin_tensorrt_version. It links no TensorRT library (the headers only).
#ifndef FOURIERFORMER_TENSORRT_FOURIER_ATTENTION_PLUGIN_H_
#define FOURIERFORMER_TENSORRT_FOURIER_ATTENTION_PLUGIN_H_

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

#include "fourier_attention.h"

#define FF_TRT_EXPORT __attribute__((visibility("default")))

namespace fourierformer {
namespace trt {

constexpr char kPluginVersion[] = "1";
constexpr char kPluginNamespace[] = "";

// The four attribute values (sizes of ff_params are filled per shape).
struct Attributes {
  float R;
  int32_t power;
  float eps;
  int32_t causal;
};

// Parses a field collection into *out (starting from the spec defaults). Returns an empty string on
// success, else a message naming the bad field.
std::string ParseFields(const nvinfer1::PluginFieldCollection* fc, Attributes* out);

class FourierAttentionPlugin final : public nvinfer1::IPluginV3,
                                     public nvinfer1::IPluginV3OneCore,
                                     public nvinfer1::IPluginV3OneBuild,
                                     public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit FourierAttentionPlugin(const Attributes& attrs);
  ~FourierAttentionPlugin() override = default;
  FourierAttentionPlugin(const FourierAttentionPlugin&) = delete;
  FourierAttentionPlugin& operator=(const FourierAttentionPlugin&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override;
  const char* getPluginVersion() const noexcept override;
  const char* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             const nvinfer1::DataType* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override;
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* outputs, int32_t nbOutputs) const noexcept override;
  const char* getMetadataString() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs, const nvinfer1::PluginTensorDesc* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

  const Attributes& attributes() const { return attrs_; }

 private:
  Attributes attrs_;
  nvinfer1::PluginField fields_[4];
  nvinfer1::PluginFieldCollection fc_;
  char metadata_[256];  // getMetadataString's text, fixed at construction (no allocation)
};

class FourierAttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  FourierAttentionPluginCreator();
  ~FourierAttentionPluginCreator() override = default;

  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override;
  const char* getPluginName() const noexcept override;
  const char* getPluginVersion() const noexcept override;
  const char* getPluginNamespace() const noexcept override;

 private:
  nvinfer1::PluginField fields_[4];
  nvinfer1::PluginFieldCollection fc_;
};

}  // namespace trt
}  // namespace fourierformer

extern "C" {
// TensorRT's entry point for plugin libraries (IPluginRegistry::loadLibrary): the V3 creators.
FF_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
// TensorRT hands the library its logger finder after loading it (IPluginRegistry::loadLibrary).
FF_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
// "major.minor.patch" of the TensorRT headers this library was built against.
FF_TRT_EXPORT const char* ff_trt_plugin_tensorrt_version(void);
}

#endif  // FOURIERFORMER_TENSORRT_FOURIER_ATTENTION_PLUGIN_H_
