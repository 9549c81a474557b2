/* FourierAttention: backend-neutral C API (parameters and their validation).
 *
 *   x_d   = R * (q_i,d - k_j,d)
 *   w_ij  = prod_d sinc(x_d) ** power,  sinc(x) = sin(x)/x, sinc(0) = 1
 *   out_i = sum_j w_ij v_j / (sum_j w_ij + eps)
 *   causal: w_ij = 0 for j > i + (nk - nq)  (bottom-right aligned)
 *
 * Tensors: q[batch,heads,nq,dim], k/v[batch,heads,nk,dim], out[batch,heads,nq,dim],
 * contiguous row-major. Backends (CPU: cpu/fourier_attention_cpu.h) build on this.
 */
#ifndef FOURIERFORMER_COMMON_FOURIER_ATTENTION_H_
#define FOURIERFORMER_COMMON_FOURIER_ATTENTION_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ff_params {
  int64_t batch;
  int64_t heads;
  int64_t nq;
  int64_t nk;
  int64_t dim;
  float R;       /* finite, > 0 */
  int32_t power; /* even, 2..64 */
  float eps;     /* finite, > 0 */
  int32_t causal;/* 0 or 1 */
} ff_params;

/* Element types understood by the backends. */
typedef enum ff_dtype { FF_DTYPE_FLOAT32 = 0, FF_DTYPE_FLOAT16 = 1, FF_DTYPE_BFLOAT16 = 2 } ff_dtype;

/* Returns NULL if every field of *p is valid, else a static, NUL-terminated
 * message naming the problem (e.g. "FourierAttention: attribute R must be finite
 * and > 0"). Never fails otherwise. Thread-safe. */
const char* ff_validate_params(const ff_params* p);

/* Validates only the attributes (R, power, eps, causal); sizes are ignored. */
const char* ff_validate_attributes(const ff_params* p);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* FOURIERFORMER_COMMON_FOURIER_ATTENTION_H_ */
