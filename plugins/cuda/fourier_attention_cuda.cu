// FourierAttention CUDA kernel (see fourier_attention_cuda.h for the contract).
//
// Layout: one warp per query row; the 32 lanes split the head dimension (lane owns d = lane + 32 t).
// A block of kWarps rows streams the keys through shared memory in tiles of kTileFloats / D keys
// (k and v, converted to float32). Per key, each lane multiplies sinc(R (q_d - k_d)) over its dims,
// takes one log of the square, and a warp reduction gives L_ij = (power / 2) sum_d log sinc^2. The
// output accumulates online with a running maximum m (FlashAttention-style), and ends as
//     out_i = sum_j e^{L_ij - m} v_j / (sum_j e^{L_ij - m} + eps e^{-m}),
// the reference's "+ eps" exactly. A row whose weights are all zero (or that sees no key) outputs 0.
// No [Nq, Nk] tensor exists anywhere; memory beyond inputs and output is the shared tile.
#include "fourier_attention_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int kWarps = 8;               // query rows per block
constexpr int kTileFloats = 2048;       // floats per shared tile of k (and again of v)
constexpr int64_t kMaxGridY = 65535;    // CUDA's limit on gridDim.y, which indexes (batch, head)

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

struct Args {
  ff_params p;
  ff_strides qs, ks, vs, os;
  int64_t bh_offset;
};

__device__ __forceinline__ float sinc(float x) { return x == 0.0f ? 1.0f : sinf(x) / x; }

// DPL: head dims per lane (D <= 32 * DPL).
template <typename T, int DPL>
__global__ void __launch_bounds__(kWarps * 32)
fourier_attention_kernel(Args a, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ out) {
  constexpr int kTile = kTileFloats / (32 * DPL);  // keys per tile
  __shared__ float ktile[kTileFloats];
  __shared__ float vtile[kTileFloats];

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t dim = a.p.dim, nq = a.p.nq, nk = a.p.nk;
  const int64_t bh = a.bh_offset + blockIdx.y;
  const int64_t b = bh / a.p.heads, h = bh % a.p.heads;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kWarps;
  const int64_t i = row0 + warp;
  const bool active = i < nq;
  const int64_t shift = nk - nq;  // causal: key j visible to query i iff j <= i + shift
  // Keys any row of this block can see (uniform across the block: the loop holds __syncthreads).
  const int64_t last_row = row0 + kWarps - 1 < nq ? row0 + kWarps - 1 : nq - 1;
  const int64_t block_keys = a.p.causal ? (last_row + shift + 1 < nk ? last_row + shift + 1 : nk) : nk;
  const int64_t my_keys = !active ? 0 : a.p.causal ? (i + shift + 1 < nk ? i + shift + 1 : nk) : nk;

  const T* kbase = k + b * a.ks.batch + h * a.ks.head;
  const T* vbase = v + b * a.vs.batch + h * a.vs.head;
  float qd[DPL], acc[DPL];
#pragma unroll
  for (int t = 0; t < DPL; ++t) {
    const int64_t d = lane + 32 * t;
    qd[t] = active && d < dim ? to_float(q[b * a.qs.batch + h * a.qs.head + i * a.qs.row + d]) : 0.0f;
    acc[t] = 0.0f;
  }
  const float R = a.p.R;
  const float half_power = 0.5f * static_cast<float>(a.p.power);
  float m = -INFINITY, l = 0.0f;
  bool nan = false;  // a NaN weight (from NaN inputs) makes the row NaN, as in the reference

  for (int64_t j0 = 0; j0 < block_keys; j0 += kTile) {
    const int64_t tile_keys = block_keys - j0 < kTile ? block_keys - j0 : kTile;
    __syncthreads();  // the previous tile is no longer read
    for (int64_t e = threadIdx.x; e < tile_keys * dim; e += blockDim.x) {
      const int64_t jj = e / dim, d = e % dim;
      ktile[jj * dim + d] = to_float(kbase[(j0 + jj) * a.ks.row + d]);
      vtile[jj * dim + d] = to_float(vbase[(j0 + jj) * a.vs.row + d]);
    }
    __syncthreads();
    const int64_t usable = my_keys - j0 < tile_keys ? my_keys - j0 : tile_keys;  // warp-uniform
    for (int64_t jj = 0; jj < usable; ++jj) {
      float prod = 1.0f;
#pragma unroll
      for (int t = 0; t < DPL; ++t) {
        const int64_t d = lane + 32 * t;
        if (d < dim) prod *= sinc(R * (qd[t] - ktile[jj * dim + d]));
      }
      float L = logf(prod * prod);  // -inf where a factor is exactly 0; never > 0 since |sinc| <= 1
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) L += __shfl_xor_sync(0xffffffffu, L, offset);
      L *= half_power;
      if (L != L) { nan = true; continue; }
      const float m_new = fmaxf(m, L);
      if (m_new == -INFINITY) continue;  // weight exactly 0 and nothing accumulated yet
      const float scale = expf(m - m_new);  // 0 when m was -inf
      const float w = expf(L - m_new);
      l = l * scale + w;
#pragma unroll
      for (int t = 0; t < DPL; ++t) {
        const int64_t d = lane + 32 * t;
        acc[t] = acc[t] * scale + (d < dim ? w * vtile[jj * dim + d] : 0.0f);
      }
      m = m_new;
    }
  }
  if (!active) return;
  // eps e^{-m} computed in the log domain; with no visible weight (m = -inf) the output is exactly 0.
  const float denom = m == -INFINITY ? 1.0f : l + expf(logf(a.p.eps) - m);
  T* orow = out + b * a.os.batch + h * a.os.head + i * a.os.row;
#pragma unroll
  for (int t = 0; t < DPL; ++t) {
    const int64_t d = lane + 32 * t;
    if (d < dim) orow[d] = from_float<T>(nan ? NAN : m == -INFINITY ? 0.0f : acc[t] / denom);
  }
}

ff_strides contiguous(const ff_params& p, int64_t rows) {
  return ff_strides{p.heads * rows * p.dim, rows * p.dim, p.dim};
}

template <typename T>
cudaError_t launch(const Args& base, const void* q, const void* k, const void* v, void* out, cudaStream_t stream) {
  const int64_t dim = base.p.dim;
  const dim3 block(kWarps * 32);
  const int64_t bh_total = base.p.batch * base.p.heads;
  for (int64_t offset = 0; offset < bh_total; offset += kMaxGridY) {
    Args a = base;
    a.bh_offset = offset;
    const dim3 grid(static_cast<unsigned>((base.p.nq + kWarps - 1) / kWarps),
                    static_cast<unsigned>(bh_total - offset < kMaxGridY ? bh_total - offset : kMaxGridY));
    const auto* qt = static_cast<const T*>(q);
    const auto* kt = static_cast<const T*>(k);
    const auto* vt = static_cast<const T*>(v);
    auto* ot = static_cast<T*>(out);
    if (dim <= 32) fourier_attention_kernel<T, 1><<<grid, block, 0, stream>>>(a, qt, kt, vt, ot);
    else if (dim <= 64) fourier_attention_kernel<T, 2><<<grid, block, 0, stream>>>(a, qt, kt, vt, ot);
    else if (dim <= 128) fourier_attention_kernel<T, 4><<<grid, block, 0, stream>>>(a, qt, kt, vt, ot);
    else fourier_attention_kernel<T, 8><<<grid, block, 0, stream>>>(a, qt, kt, vt, ot);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

}  // namespace

extern "C" size_t ff_cuda_workspace_size(const ff_params*) { return 0; }

extern "C" const char* ff_cuda_forward(const ff_params* p, ff_dtype dtype, const void* q, const ff_strides* q_strides,
                                       const void* k, const ff_strides* k_strides, const void* v,
                                       const ff_strides* v_strides, void* out, const ff_strides* out_strides,
                                       void* /*workspace*/, size_t /*workspace_bytes*/, void* stream) {
  if (const char* error = ff_validate_params(p)) return error;
  if (p->dim < 1 || p->dim > FF_CUDA_MAX_DIM) return "FourierAttention (CUDA): dim must be in 1..256";
  if (p->nq == 0 || p->batch == 0 || p->heads == 0) return nullptr;
  if (q == nullptr || out == nullptr || (p->nk > 0 && (k == nullptr || v == nullptr)))
    return "FourierAttention (CUDA): null tensor pointer";
  if (p->nq > static_cast<int64_t>(kWarps) * 0x7fffffff) return "FourierAttention (CUDA): nq is too large";
  Args a{*p, q_strides ? *q_strides : contiguous(*p, p->nq), k_strides ? *k_strides : contiguous(*p, p->nk),
         v_strides ? *v_strides : contiguous(*p, p->nk), out_strides ? *out_strides : contiguous(*p, p->nq), 0};
  const auto s = static_cast<cudaStream_t>(stream);
  cudaError_t status = cudaErrorInvalidValue;
  switch (dtype) {
    case FF_DTYPE_FLOAT32: status = launch<float>(a, q, k, v, out, s); break;
    case FF_DTYPE_FLOAT16: status = launch<__half>(a, q, k, v, out, s); break;
    case FF_DTYPE_BFLOAT16: status = launch<__nv_bfloat16>(a, q, k, v, out, s); break;
    default: return "FourierAttention (CUDA): unsupported dtype";
  }
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
