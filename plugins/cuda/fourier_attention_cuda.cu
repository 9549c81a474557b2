// FourierAttention CUDA kernel: the C launcher (fourier_attention_cuda.h) around the kernel of
// fourier_attention_kernel.cuh.
#include "fourier_attention_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fourier_attention_kernel.cuh"

#define FF_CUDA_API extern "C" __attribute__((visibility("default")))

namespace {

// Launches a kernel on a stream; returns NULL or the launch's CUDA error.
struct StreamRunner {
  cudaStream_t stream;
  const char* launch(ff_cuda::Kernel kernel, unsigned grid, const ff_cuda::Args& args) {
    kernel<<<grid, ff_cuda::kThreads, 0, stream>>>(args);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
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
