/* FourierAttention CUDA kernel: plain C launcher API, shared by the TensorRT plugin and by Python (ctypes).
 *
 * Semantics and parameters: ../common/fourier_attention.h. Fused and tiled over keys: no [Nq,Nk] tensor
 * in device memory; log-domain accumulation with a running maximum and the exact "+ eps" semantics.
 * q, k, v, out share one dtype (float32, float16 or bfloat16); arithmetic is float32; out is written in
 * that dtype. Any dim in 1..FF_CUDA_MAX_DIM, any nq, nk >= 0.
 */
#ifndef FOURIERFORMER_CUDA_FOURIER_ATTENTION_CUDA_H_
#define FOURIERFORMER_CUDA_FOURIER_ATTENTION_CUDA_H_

#include <stddef.h>
#include <stdint.h>

#include "fourier_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FF_CUDA_MAX_DIM 256

/* Element strides of one [batch, heads, rows, dim] tensor; the dim axis is contiguous (stride 1). */
typedef struct ff_strides {
  int64_t batch;
  int64_t head;
  int64_t row;
} ff_strides;

/* Device workspace bytes ff_cuda_forward needs for these parameters (may be 0). */
size_t ff_cuda_workspace_size(const ff_params* p);

/* Enqueue the op on `stream` (a cudaStream_t; 0 = legacy default stream). Strides may be NULL for
 * contiguous tensors. Returns NULL on success, else a static message naming the problem (bad
 * parameters, dim > FF_CUDA_MAX_DIM, or the CUDA error of the launch). Never aborts; does not synchronize. */
const char* ff_cuda_forward(const ff_params* p, ff_dtype dtype,
                            const void* q, const ff_strides* q_strides,
                            const void* k, const ff_strides* k_strides,
                            const void* v, const ff_strides* v_strides,
                            void* out, const ff_strides* out_strides,
                            void* workspace, size_t workspace_bytes, void* stream);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* FOURIERFORMER_CUDA_FOURIER_ATTENTION_CUDA_H_ */
