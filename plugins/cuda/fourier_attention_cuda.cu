// FourierAttention CUDA kernel: the C launcher (fourier_attention_cuda.h) around the kernels of
// fourier_attention_kernel.cuh.
#include "fourier_attention_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <atomic>

namespace ff_cuda {
// The running block's dynamic shared memory (the emulator defines its own).
__device__ __forceinline__ float* shared_memory() {
  extern __shared__ float4 ff_dynamic_shared[];
  return reinterpret_cast<float*>(ff_dynamic_shared);
}
}  // namespace ff_cuda

#include "fourier_attention_kernel.cuh"

#define FF_CUDA_API extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kCachedDevices = 64;
std::atomic<int> g_sm_count[kCachedDevices];  // 0: not queried yet

const char* error_of(cudaError_t err) { return err == cudaSuccess ? nullptr : cudaGetErrorString(err); }

// Launches kernels on a stream; returns NULL or the CUDA error.
struct StreamRunner {
  cudaStream_t stream;

  // The current device's SM count (cached per device).
  const char* sm_count(int* sms) {
    int device = 0;
    if (const char* err = error_of(cudaGetDevice(&device))) return err;
    if (device < kCachedDevices && (*sms = g_sm_count[device].load(std::memory_order_relaxed)) > 0) return nullptr;
    if (const char* err = error_of(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device))) return err;
    if (device < kCachedDevices) g_sm_count[device].store(*sms, std::memory_order_relaxed);
    return nullptr;
  }

  const char* launch(ff_cuda::Kernel kernel, unsigned grid, unsigned threads, size_t smem, const ff_cuda::Args& args) {
    if (smem > 48 * 1024) {  // above the default limit of dynamic shared memory
      const cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (err != cudaSuccess) return cudaGetErrorString(err);
    }
    kernel<<<grid, threads, smem, stream>>>(args);
    return error_of(cudaGetLastError());
  }
};

}  // namespace

FF_CUDA_API size_t ff_cuda_workspace_size(const ff_params* p) {
  return p == nullptr ? 0 : ff_cuda::workspace_bytes(p);  // touches no CUDA API
}

FF_CUDA_API const char* ff_cuda_forward(const ff_params* p, ff_dtype dtype,
                                        const void* q, const ff_strides* q_strides,
                                        const void* k, const ff_strides* k_strides,
                                        const void* v, const ff_strides* v_strides,
                                        void* out, const ff_strides* out_strides,
                                        void* workspace, size_t workspace_bytes, void* stream) {
  StreamRunner runner{static_cast<cudaStream_t>(stream)};
  return ff_cuda::forward(p, dtype, q, q_strides, k, k_strides, v, v_strides, out, out_strides, workspace,
                          workspace_bytes, runner);
}
