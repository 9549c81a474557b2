// FourierAttention CUDA kernels (fused, tiled over keys, log domain, online maximum): the device code and the
// launch planning, included by fourier_attention_cuda.cu (nvcc) and by emulator/ (a host compiler, with CUDA's
// built-ins emulated, to run the kernels' logic on a CPU). Include the CUDA (or emulation) headers first.
//
// Two launches on one stream:
//   trig_table_kernel: once per call, for every row of q and of k and every dim, (x', sin(R x) t, cos(R x) t)
//     into the workspace (the "table"; t = 1/R' for q, 1 for k). sin/cos are of the exact product R*x (float
//     hi + exact residual lo via fmaf, sincosf of hi, angle-addition with a short series in lo), so there is
//     no Rq - Rk cancellation later. Layout per side (q, then k): [batch*heads][chunk][3][kDC][rows], rows
//     padded to a multiple of 64 and dims to a multiple of kDC with (0, 0, 1): the attention kernel copies a
//     tile's chunk into shared memory with aligned float4 loads and no bounds checks. Cost: 2/N of the
//     attention's pair-dims (one sincos per element instead of one per element and tile).
//   fourier_attention_kernel: one block of 256 threads owns a tile of BQ = 64 queries of one (batch, head)
//     and streams the visible keys in tiles of BK = 64 (causal: tiles wholly above the diagonal are never
//     visited). Per key tile:
//   phase 1 (log-weights; 11 FP32 instructions per pair and dim): dims are processed in chunks of DC = 16.
//     For each chunk the block copies, from the table, (q', sin Rq / R', cos Rq / R') of its 64 queries and
//     (k', sin Rk, cos Rk) of the 64 keys into shared memory, layout [3][DC][64 + 4]. Each thread owns a
//     4 x 4 micro-tile of (query, key) pairs (tq = tid / 16, tk = tid % 16) and for every dim computes
//        d = q' - k',  u = d^2,  S = sin(Rq)cos(Rk) - cos(Rq)sin(Rk) (scaled by 1/R'),
//        u < thr (|x| < 1): num *= 1 + c1' u + c2' u^2 + c3' u^3 (accurate sinc, no cancellation), den *= 1
//        else:              num *= S,                                                                den *= d
//     (q' = q 2^m, k' = k 2^m exactly, with R' = R 2^-m in [1/sqrt2, sqrt2): num/den = sinc(R(q-k)));
//     then, every kChunksPerLog = 2 chunks (32 dims), one IEEE division and one logf per pair:
//     Lacc += log|num/den| (the range argument is at the loop).
//     Padded dims (>= dim) have q' = k' = 0, hence u = 0 and factors exactly 1.
//   softmax statistics: L = power * Lacc, masked to -inf (j >= nk, causal); per query row the tile
//     maximum over the 16 threads of a half-warp (shuffles), running max m, alpha = e^{m_old - m_new},
//     p = e^{L - m_new} (with m_new = -inf replaced by 0, so no -inf - -inf), running sum l.
//     p is written transposed to shared memory P[64 keys][64 + 4], alpha to shared memory.
//   phase 2 (P V; 1 FMA per pair and dim): v is staged in chunks of DV = min(DB, 64) dims
//     [64 keys][DV + 4] (aliasing the phase-1 buffers); each thread owns TQ2 rows x 4 dims of every
//     chunk in registers (acc[NCH][TQ2][4], NCH = DB / DV; DB = dim bucket 32/64/128/256, a template
//     parameter so the register array is static) and rescales them by alpha once per tile.
// Finalize: out = acc / (l + exp(log(eps) - m)), 0 for rows without a visible key (m = -inf), NaN if any
// log-weight of the row was NaN (NaN/inf inputs); written in the input dtype.
//
// Shared memory: 26,112 (phase-1 buffers, reused for v) + 17,408 (P) + 768 (row stats) bytes: static,
// under 48 KiB. Global workspace: the table, 12 bytes x (nq and nk each rounded up to 64) x (dim rounded up
// to 16) per (batch, head), O(N D); nothing of size [nq, nk] or [nq, nk, dim] exists anywhere.
// Template instances: 4 dim buckets x {fold, no fold} (fold = |log2 R| <= 64, i.e. always in practice);
// dtype is a uniform runtime switch used only when building the table, staging v and storing.
#ifndef FOURIERFORMER_CUDA_FOURIER_ATTENTION_KERNEL_CUH_
#define FOURIERFORMER_CUDA_FOURIER_ATTENTION_KERNEL_CUH_

#include <cmath>
#include <cstdint>

#include "fourier_attention_cuda.h"

namespace ff_cuda {

constexpr int kThreads = 256;
constexpr int kBQ = 64;       // queries per block
constexpr int kBK = 64;       // keys per tile
constexpr int kDC = 16;       // dims per chunk (staged in shared memory at a time)
constexpr int kChunksPerLog = 2;  // chunks per division and log of the products (32 dims)
constexpr int kPad = 4;       // row padding (floats) of the shared tiles; keeps float4 alignment
constexpr int kRowStride = kBQ + kPad;                 // == kBK + kPad
constexpr int kQKPlane = kDC * kRowStride;             // one of (x, sin, cos) for one side
constexpr int kQKFloats = 2 * 3 * kQKPlane;            // q side + k side
constexpr int kPFloats = kBK * kRowStride;
static_assert(kBQ == kBK, "the shared layouts assume square tiles");
static_assert(kThreads == (kBQ / 4) * (kBK / 4), "phase 1: one 4x4 micro-tile per thread");
static_assert(kBK * (64 + kPad) <= kQKFloats, "the v chunk must fit into the phase-1 buffers");

struct Tensor {
  const void* ptr;
  int64_t sb, sh, sr;  // element strides of batch, head, row (dim stride is 1)
};

struct Args {
  Tensor q, k, v;
  void* out;
  int64_t osb, osh, osr;
  int64_t heads, nq, nk;
  int dim;
  int dtype;
  int causal;
  int nqt;          // query tiles per (batch, head)
  float R;          // original R (angles R*x)
  float scale;      // 2^m (fold) or 1
  float inv_rp;     // 1/R' (fold) or 1
  float rmul;       // no fold: x = R (q - k)
  float thr;        // small-|x| threshold on u: 1/R'^2 (fold) or 1
  float c1, c2, c3; // sinc(x) ~ 1 + c1 u + c2 u^2 + c3 u^3 in the variable u
  float power;
  float log_eps;
  float* table;     // the workspace: q side, then k side
  int64_t bh;       // batch * heads
  int64_t q_rows;   // nq and nk padded to multiples of 64
  int64_t k_rows;
  int nchunks;      // ceil(dim / kDC)
};

// Table elements per side and (batch, head) for `rows` padded rows: [nchunks][3][kDC][rows].
__host__ __device__ inline int64_t table_floats(int nchunks, int64_t rows) { return int64_t{3} * kDC * nchunks * rows; }

__device__ __forceinline__ float load_elem(const void* base, int64_t idx, int dtype) {
  if (dtype == FF_DTYPE_FLOAT16) return __half2float(static_cast<const __half*>(base)[idx]);
  if (dtype == FF_DTYPE_BFLOAT16) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[idx]);
  return static_cast<const float*>(base)[idx];
}

__device__ __forceinline__ void store_elem(void* base, int64_t idx, int dtype, float x) {
  if (dtype == FF_DTYPE_FLOAT16) {
    static_cast<__half*>(base)[idx] = __float2half_rn(x);
  } else if (dtype == FF_DTYPE_BFLOAT16) {
    static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(x);
  } else {
    static_cast<float*>(base)[idx] = x;
  }
}

// Rare path (|R x| >= 2^20 or non-finite): reduce the exact double product. Not inlined: keeps the
// double-precision code out of the hot function's register allocation.
__device__ __noinline__ void sincos_wide(float R, float x, float* s, float* c) {
  double sd, cd;
  sincos(static_cast<double>(R) * static_cast<double>(x), &sd, &cd);
  *s = static_cast<float>(sd);
  *c = static_cast<float>(cd);
}

// sin and cos of the exact product R*x (not of its float rounding): a = hi + lo exactly,
// sin(a) = sin(hi) cos(lo) + cos(hi) sin(lo). |lo| <= ulp(hi)/2 <= 2^-4 for |hi| < 2^20, where the
// series below are accurate to < 1e-9. sincosf (not __sinf): accurate for large arguments (2 ulp).
__device__ __forceinline__ void sincos_exact_product(float R, float x, float* s, float* c) {
  const float hi = __fmul_rn(R, x);
  if (fabsf(hi) < 1048576.0f) {
    const float lo = fmaf(R, x, -hi);
    float sh, ch;
    sincosf(hi, &sh, &ch);
    const float l2 = lo * lo;
    const float sl = lo - lo * l2 * (1.0f / 6.0f) * (1.0f - l2 * (1.0f / 20.0f));
    const float cl = 1.0f - l2 * 0.5f * (1.0f - l2 * (1.0f / 12.0f));
    *s = fmaf(sh, cl, ch * sl);
    *c = fmaf(ch, cl, -(sh * sl));
  } else {
    sincos_wide(R, x, s, c);
  }
}

__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float get(const float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The table of both sides (layout: the file comment; q and k tiles have kBQ == kBK rows). One block fills one
// (side, batch*head, chunk, row tile): [3][kDC][64] entries; blocks stride over the grid.
__global__ void __launch_bounds__(kThreads) trig_table_kernel(const Args a) {
  const int64_t q_tiles = a.q_rows / kBQ, tiles = q_tiles + a.k_rows / kBQ;
  const int64_t nblocks = a.bh * tiles * a.nchunks;
  for (int64_t blk = blockIdx.x; blk < nblocks; blk += gridDim.x) {
    const int ch = static_cast<int>(blk % a.nchunks);
    const int64_t tile = blk / a.nchunks % tiles, bh = blk / a.nchunks / tiles;
    const bool is_q = tile < q_tiles;
    const Tensor& t = is_q ? a.q : a.k;
    const int64_t rows = is_q ? a.q_rows : a.k_rows, nrows = is_q ? a.nq : a.nk;
    const int64_t r0 = (is_q ? tile : tile - q_tiles) * kBQ;
    const float trig_scale = is_q ? a.inv_rp : 1.0f;
    float* const side = is_q ? a.table : a.table + a.bh * table_floats(a.nchunks, a.q_rows);
    float* const chunk = side + (bh * a.nchunks + ch) * (3 * kDC) * rows;
    const int64_t toff = bh / a.heads * t.sb + bh % a.heads * t.sh;
    for (int idx = threadIdx.x; idx < kDC * kBQ; idx += kThreads) {
      const int dd = idx / kBQ, r = idx % kBQ;
      const int64_t row = r0 + r;
      const int d = ch * kDC + dd;
      float x = 0.0f, sn = 0.0f, cs = 1.0f;
      if (row < nrows && d < a.dim) {
        const float val = load_elem(t.ptr, toff + row * t.sr + d, a.dtype);
        x = val * a.scale;  // exact power-of-two scaling
        sincos_exact_product(a.R, val, &sn, &cs);
        sn *= trig_scale;
        cs *= trig_scale;
      }
      chunk[(0 * kDC + dd) * rows + row] = x;
      chunk[(1 * kDC + dd) * rows + row] = sn;
      chunk[(2 * kDC + dd) * rows + row] = cs;
    }
  }
}

// One thread's share of copying a tile's table chunk ([3][kDC][rows]) to shared memory ([3][kDC][kRowStride]):
// the 3 planes of dim tid / 16, rows 4 (tid % 16) .. + 3 of the tile; src and dst point at plane 0 there.
static_assert(kThreads == kDC * (kBQ / 4), "staging: one float4 per thread and plane");
__device__ __forceinline__ void stage_chunk(float* dst, const float* src, int64_t plane_stride) {
#pragma unroll
  for (int plane = 0; plane < 3; ++plane)
    *reinterpret_cast<float4*>(dst + plane * kQKPlane) = ld4(src + plane * plane_stride);
}

// Stage v[k0 .. k0+64)[c0 .. c0+DV) as float into vs[64][DV + kPad]; rows >= nk and dims >= dim are 0.
template <int DV>
__device__ __forceinline__ void stage_v(float* vs, const Args& a, int64_t voff, int64_t k0, int c0) {
  for (int idx = threadIdx.x; idx < kBK * DV; idx += kThreads) {
    const int dv = idx % DV, r = idx / DV;
    const int64_t row = k0 + r;
    const int d = c0 + dv;
    float x = 0.0f;
    if (row < a.nk && d < a.dim) x = load_elem(a.v.ptr, voff + row * a.v.sr + d, a.dtype);
    vs[r * (DV + kPad) + dv] = x;
  }
}

template <int DB, bool FOLD>
__global__ void __launch_bounds__(kThreads, DB <= 64 ? 2 : 1) fourier_attention_kernel(const Args a) {
  constexpr int DV = DB < 64 ? DB : 64;  // dims per v chunk
  constexpr int NCH = DB / DV;           // v chunks
  constexpr int G = DV / 4;              // phase 2: dim groups of 4
  constexpr int QG = kThreads / G;       // phase 2: query groups
  constexpr int TQ2 = kBQ / QG;          // phase 2: rows per thread (2 or 4)
  static_assert(TQ2 * QG == kBQ && (TQ2 == 2 || TQ2 == 4), "phase-2 mapping");
  const float kNegInf = __int_as_float(0xff800000);  // -inf

  __shared__ __align__(16) float s_qk[kQKFloats];  // phase 1: q then k chunk; phase 2: v chunk
  __shared__ __align__(16) float s_p[kPFloats];    // p transposed: [key][query]
  __shared__ float s_alpha[kBQ];
  __shared__ float s_l[kBQ];
  __shared__ float s_m[kBQ];

  const int tid = threadIdx.x;
  const int64_t blk = blockIdx.x;
  const int64_t bh = blk / a.nqt;
  const int qt = a.nqt - 1 - static_cast<int>(blk % a.nqt);  // longest (causal) tiles first
  const int64_t b = bh / a.heads, h = bh % a.heads;
  const int64_t q0 = static_cast<int64_t>(qt) * kBQ;
  const int64_t voff = b * a.v.sb + h * a.v.sh;
  const int64_t ooff = b * a.osb + h * a.osh;
  const int64_t diag = a.nk - a.nq;  // key j visible to query i iff j <= i + diag (causal)

  // Keys [0, kend) are visible to at least one valid row of this tile.
  int64_t kend = a.nk;
  if (a.causal) {
    const int64_t last_row = (q0 + kBQ < a.nq ? q0 + kBQ : a.nq) - 1;
    const int64_t last_key = last_row + diag;
    kend = last_key + 1 < kend ? last_key + 1 : kend;
    if (kend < 0) kend = 0;
  }
  const int64_t nkt = (kend + kBK - 1) / kBK;

  // phase-1 mapping: 4 queries x 4 keys
  const int tk = tid % 16, tq = tid / 16;
  // phase-2 mapping: TQ2 rows x 4 dims per v chunk
  const int dg = tid % G, qg = tid / G;

  float m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) { m[i] = kNegInf; l[i] = 0.0f; }
  float acc[NCH][TQ2][4];
#pragma unroll
  for (int c = 0; c < NCH; ++c)
#pragma unroll
    for (int i = 0; i < TQ2; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[c][i][e] = 0.0f;

  const int nchunks = a.nchunks;
  float* const qs_buf = s_qk;
  float* const ks_buf = s_qk + 3 * kQKPlane;
  // this thread's staging position (stage_chunk) in chunk 0 of the q tile and of key tile 0, and in s_qk
  const int stage_dim = tid / 16, stage_row = 4 * (tid % 16);
  const float* const q_stage =
      a.table + bh * table_floats(nchunks, a.q_rows) + stage_dim * a.q_rows + q0 + stage_row;
  const float* const k_stage = a.table + a.bh * table_floats(nchunks, a.q_rows) +
                               bh * table_floats(nchunks, a.k_rows) + stage_dim * a.k_rows + stage_row;
  float* const stage_dst = s_qk + stage_dim * kRowStride + stage_row;

  for (int64_t kt = 0; kt < nkt; ++kt) {
    const int64_t k0 = kt * kBK;
    float lacc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) lacc[i][j] = 0.0f;

    // ---- phase 1: log-weights of the 64 x 64 tile --------------------------------------------
    for (int c0 = 0; c0 < nchunks; c0 += kChunksPerLog) {
      // Products of the sinc factors' numerators and denominators over kChunksPerLog chunks (32 dims), then one
      // division and one log. Range: |num| <= 2^16 (fold: |S / R'| <= sqrt2; no fold: |S| <= 1) and
      // |den| >= 2^-16 (the large-|x| path has |d| >= 1/R' > 1/sqrt2, no fold: >= 1), so den overflowing or
      // num underflowing means |num / den| < 2^-110: such a pair's weight (< 2^-220) becomes 0 or inexact.
      float pn[4][4], pd[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) { pn[i][j] = 1.0f; pd[i][j] = 1.0f; }
      const int c_end = c0 + kChunksPerLog < nchunks ? c0 + kChunksPerLog : nchunks;
#pragma unroll 1
      for (int ch = c0; ch < c_end; ++ch) {
        stage_chunk(stage_dst, q_stage + ch * (3 * kDC) * a.q_rows, kDC * a.q_rows);
        stage_chunk(stage_dst + 3 * kQKPlane, k_stage + k0 + ch * (3 * kDC) * a.k_rows, kDC * a.k_rows);
        __syncthreads();
#pragma unroll
        for (int dd = 0; dd < kDC; ++dd) {
          const float* qrow = qs_buf + dd * kRowStride + tq * 4;
          const float* krow = ks_buf + dd * kRowStride + tk * 4;
          const float4 qx = ld4(qrow), qsn = ld4(qrow + kQKPlane), qcs = ld4(qrow + 2 * kQKPlane);
          const float4 kx = ld4(krow), ksn = ld4(krow + kQKPlane), kcs = ld4(krow + 2 * kQKPlane);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              float d = get(qx, i) - get(kx, j);
              if (!FOLD) d *= a.rmul;
              const float u = d * d;
              const float S = fmaf(get(qsn, i), get(kcs, j), -(get(qcs, i) * get(ksn, j)));
              float t = fmaf(a.c3, u, a.c2);
              t = fmaf(t, u, a.c1);
              t = fmaf(t, u, 1.0f);
              const bool small = u < a.thr;
              pn[i][j] *= small ? t : S;
              pd[i][j] *= small ? 1.0f : d;
            }
          }
        }
        __syncthreads();  // the next chunk (or the v chunk) overwrites s_qk
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) lacc[i][j] += logf(fabsf(pn[i][j] / pd[i][j]));
    }

    // ---- online softmax statistics ----------------------------------------------------------
    float p[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t qi = q0 + tq * 4 + i;
      float tmax = kNegInf;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t kj = k0 + tk * 4 + j;
        const bool visible = kj < a.nk && (!a.causal || kj <= qi + diag);
        p[i][j] = visible ? a.power * lacc[i][j] : kNegInf;  // NaN stays NaN
        tmax = fmaxf(tmax, p[i][j]);                          // fmaxf ignores NaN
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
      const float m_new = fmaxf(m[i], tmax);
      const float m_ref = m_new == kNegInf ? 0.0f : m_new;  // no -inf - -inf
      const float alpha = expf(m[i] - m_ref);               // 0 when m[i] = -inf
      float rsum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        p[i][j] = expf(p[i][j] - m_ref);  // -inf -> 0; <= 1
        rsum += p[i][j];
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) rsum += __shfl_xor_sync(0xffffffffu, rsum, off);
      l[i] = l[i] * alpha + rsum;  // NaN sticks
      m[i] = m_new;
      if (tk == 0) s_alpha[tq * 4 + i] = alpha;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      *reinterpret_cast<float4*>(s_p + (tk * 4 + j) * kRowStride + tq * 4) =
          make_float4(p[0][j], p[1][j], p[2][j], p[3][j]);

    // ---- phase 2: acc = alpha * acc + P V ------------------------------------------------------
    stage_v<DV>(s_qk, a, voff, k0, 0);
    __syncthreads();  // s_p, s_alpha, v chunk 0 visible
#pragma unroll
    for (int i = 0; i < TQ2; ++i) {
      const float al = s_alpha[qg * TQ2 + i];
#pragma unroll
      for (int c = 0; c < NCH; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[c][i][e] *= al;
    }
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
      if (c * DV >= a.dim) break;  // uniform over the block
      if (c > 0) {
        __syncthreads();  // everyone is done reading chunk c - 1
        stage_v<DV>(s_qk, a, voff, k0, c * DV);
        __syncthreads();
      }
#pragma unroll 8
      for (int kk = 0; kk < kBK; ++kk) {
        const float4 vv = ld4(s_qk + kk * (DV + kPad) + dg * 4);
        float pr[TQ2];
        if constexpr (TQ2 == 4) {
          const float4 t = ld4(s_p + kk * kRowStride + qg * 4);
          pr[0] = t.x; pr[1] = t.y; pr[2] = t.z; pr[3] = t.w;
        } else {
          const float2 t = *reinterpret_cast<const float2*>(s_p + kk * kRowStride + qg * 2);
          pr[0] = t.x; pr[1] = t.y;
        }
#pragma unroll
        for (int i = 0; i < TQ2; ++i) {
          acc[c][i][0] = fmaf(pr[i], vv.x, acc[c][i][0]);
          acc[c][i][1] = fmaf(pr[i], vv.y, acc[c][i][1]);
          acc[c][i][2] = fmaf(pr[i], vv.z, acc[c][i][2]);
          acc[c][i][3] = fmaf(pr[i], vv.w, acc[c][i][3]);
        }
      }
    }
    __syncthreads();  // s_qk (v chunk), s_p and s_alpha are rewritten by the next tile
  }

  // ---- finalize ------------------------------------------------------------------------------
  if (tk == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) { s_l[tq * 4 + i] = l[i]; s_m[tq * 4 + i] = m[i]; }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < TQ2; ++i) {
    const int r = qg * TQ2 + i;
    const int64_t row = q0 + r;
    if (row >= a.nq) continue;
    const float lr = s_l[r], mr = s_m[r];
    float inv;
    if (lr != lr) inv = __int_as_float(0x7fc00000);               // NaN in the row's weights
    else if (!(mr > kNegInf)) inv = 0.0f;                           // no visible key (or all weights 0)
    else inv = 1.0f / (lr + expf(a.log_eps - mr));                   // expf may be +inf -> 0
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = c * DV + dg * 4 + e;
        if (d < a.dim) store_elem(a.out, ooff + row * a.osr + d, a.dtype, acc[c][i][e] * inv);
      }
    }
  }
}

// A validated launch: the table's grid, the attention kernel's instance (dim bucket, fold) and grid, and the
// arguments of both (grid 0: nothing to do).
struct Launch {
  Args args;
  unsigned table_grid;
  unsigned grid;
  int bucket;  // 32, 64, 128 or 256
  bool fold;
};

#ifndef FF_CUDA_MAX_TABLE_GRID
#define FF_CUDA_MAX_TABLE_GRID (1 << 20)
#endif
// Blocks of the table kernel's grid; its blocks stride over the tiles beyond this. The emulator lowers it, so
// that every emulated case runs the striding.
constexpr int64_t kMaxTableGrid = FF_CUDA_MAX_TABLE_GRID;

inline int64_t padded_rows(int64_t n) { return (n + kBQ - 1) / kBQ * kBQ; }
inline int dim_chunks(int64_t dim) { return static_cast<int>((dim + kDC - 1) / kDC); }  // chunks covering dim

// The workspace bytes for p: the table (0 if p is invalid or there is nothing to compute; SIZE_MAX if it
// would reach 2^62 bytes).
inline size_t workspace_bytes(const ff_params* p) {
  if (ff_validate_params(p) != nullptr || p->dim < 1 || p->dim > FF_CUDA_MAX_DIM) return 0;
  if (p->batch == 0 || p->heads == 0 || p->nq == 0) return 0;
  const int nchunks = dim_chunks(p->dim);
  const double rows = static_cast<double>(p->nq) + static_cast<double>(p->nk) + 2.0 * kBQ;
  if (static_cast<double>(p->batch) * static_cast<double>(p->heads) * 3.0 * kDC * nchunks * rows * sizeof(float) >=
      0x1p62)
    return SIZE_MAX;
  const int64_t floats = p->batch * p->heads * table_floats(nchunks, padded_rows(p->nq) + padded_rows(p->nk));
  return static_cast<size_t>(floats) * sizeof(float);
}

inline ff_strides contiguous(int64_t heads, int64_t rows, int64_t dim) {
  ff_strides s;
  s.row = dim;
  s.head = rows * dim;
  s.batch = heads * rows * dim;
  return s;
}


// Checks the parameters and prepares the launch; returns NULL or a static message naming the problem.
inline const char* plan_launch(const ff_params* p, ff_dtype dtype, const void* q, const ff_strides* q_strides,
                               const void* k, const ff_strides* k_strides, const void* v,
                               const ff_strides* v_strides, void* out, const ff_strides* out_strides,
                               void* workspace, size_t workspace_size, Launch* launch) {
  launch->grid = 0;
  launch->table_grid = 0;
  if (const char* err = ff_validate_params(p)) return err;
  if (p->dim < 1 || p->dim > FF_CUDA_MAX_DIM)
    return "FourierAttention CUDA: dim must be in 1..256 (FF_CUDA_MAX_DIM)";
  if (dtype != FF_DTYPE_FLOAT32 && dtype != FF_DTYPE_FLOAT16 && dtype != FF_DTYPE_BFLOAT16)
    return "FourierAttention CUDA: dtype must be FF_DTYPE_FLOAT32, FF_DTYPE_FLOAT16 or FF_DTYPE_BFLOAT16";
  const int64_t bh = p->batch * p->heads;
  if (bh == 0 || p->nq == 0) return nullptr;  // empty output
  if (q == nullptr || out == nullptr || (p->nk > 0 && (k == nullptr || v == nullptr)))
    return "FourierAttention CUDA: null tensor pointer";
  const int64_t nqt = (p->nq + kBQ - 1) / kBQ;
  if (nqt > INT32_MAX || bh > INT32_MAX / nqt)
    return "FourierAttention CUDA: batch * heads * ceil(nq / 64) exceeds the grid limit (2^31 - 1 blocks)";
  const size_t needed = workspace_bytes(p);
  if (needed == SIZE_MAX)
    return "FourierAttention CUDA: the workspace would reach 2^62 bytes (nq, nk or batch * heads too large)";
  if (workspace == nullptr || workspace_size < needed)
    return "FourierAttention CUDA: the workspace is NULL or smaller than ff_cuda_workspace_size()";
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return "FourierAttention CUDA: the workspace must be 16-byte aligned";

  const ff_strides qs = q_strides ? *q_strides : contiguous(p->heads, p->nq, p->dim);
  const ff_strides ks = k_strides ? *k_strides : contiguous(p->heads, p->nk, p->dim);
  const ff_strides vs = v_strides ? *v_strides : contiguous(p->heads, p->nk, p->dim);
  const ff_strides os = out_strides ? *out_strides : contiguous(p->heads, p->nq, p->dim);

  Args& a = launch->args;
  a.q = Tensor{q, qs.batch, qs.head, qs.row};
  a.k = Tensor{k, ks.batch, ks.head, ks.row};
  a.v = Tensor{v, vs.batch, vs.head, vs.row};
  a.out = out;
  a.osb = os.batch;
  a.osh = os.head;
  a.osr = os.row;
  a.heads = p->heads;
  a.nq = p->nq;
  a.nk = p->nk;
  a.dim = static_cast<int>(p->dim);
  a.dtype = static_cast<int>(dtype);
  a.causal = p->causal;
  a.nqt = static_cast<int>(nqt);
  a.R = p->R;
  a.power = static_cast<float>(p->power);
  a.log_eps = std::log(p->eps);
  a.table = static_cast<float*>(workspace);
  a.bh = bh;
  a.q_rows = padded_rows(p->nq);
  a.k_rows = padded_rows(p->nk);
  a.nchunks = dim_chunks(p->dim);

  // Fold R into the inputs by an exact power of two: R' = R 2^-m in [1/sqrt2, sqrt2), q' = q 2^m.
  // sinc(R(q-k)) = (S/R') / (q'-k') with S = sin(Rq)cos(Rk) - cos(Rq)sin(Rk); the small-|x| series
  // in u = (q'-k')^2 has coefficients c_n R'^(2n). Extreme R (|m| > 64, q' could overflow): no fold.
  const double c1 = -0.1666659563779831, c2 = 0.008329861797392368, c3 = -0.00019291458011139184;
  const double R = p->R;
  int m = 0;
  std::frexp(R * 0.70710678118654752, &m);
  launch->fold = m >= -64 && m <= 64;
  if (launch->fold) {
    const double rp = std::ldexp(R, -m), r2 = rp * rp;
    a.scale = static_cast<float>(std::ldexp(1.0, m));
    a.inv_rp = static_cast<float>(1.0 / rp);
    a.rmul = 1.0f;
    a.thr = static_cast<float>(1.0 / r2);
    a.c1 = static_cast<float>(c1 * r2);
    a.c2 = static_cast<float>(c2 * r2 * r2);
    a.c3 = static_cast<float>(c3 * r2 * r2 * r2);
  } else {
    a.scale = 1.0f;
    a.inv_rp = 1.0f;
    a.rmul = p->R;
    a.thr = 1.0f;
    a.c1 = static_cast<float>(c1);
    a.c2 = static_cast<float>(c2);
    a.c3 = static_cast<float>(c3);
  }
  launch->bucket = p->dim <= 32 ? 32 : p->dim <= 64 ? 64 : p->dim <= 128 ? 128 : 256;
  launch->grid = static_cast<unsigned>(bh * nqt);
  const int64_t table_blocks = bh * ((a.q_rows + a.k_rows) / kBQ) * a.nchunks;
  launch->table_grid = static_cast<unsigned>(table_blocks < kMaxTableGrid ? table_blocks : kMaxTableGrid);
  return nullptr;
}

using Kernel = void (*)(Args);

// The attention kernel's instance for a dim bucket (32, 64, 128, 256) and fold.
inline Kernel attention_kernel(int bucket, bool fold) {
  switch (bucket) {
    case 32: return fold ? fourier_attention_kernel<32, true> : fourier_attention_kernel<32, false>;
    case 64: return fold ? fourier_attention_kernel<64, true> : fourier_attention_kernel<64, false>;
    case 128: return fold ? fourier_attention_kernel<128, true> : fourier_attention_kernel<128, false>;
    default: return fold ? fourier_attention_kernel<256, true> : fourier_attention_kernel<256, false>;
  }
}

// Checks and plans, then runs the table kernel and the attention kernel through runner.launch(kernel, grid, args)
// (a const char*: NULL or an error). Returns NULL or the message of the planning or of a launch.
template <class Runner>
const char* forward(const ff_params* p, ff_dtype dtype, const void* q, const ff_strides* q_strides, const void* k,
                    const ff_strides* k_strides, const void* v, const ff_strides* v_strides, void* out,
                    const ff_strides* out_strides, void* workspace, size_t workspace_size, Runner& runner) {
  Launch l;
  if (const char* err = plan_launch(p, dtype, q, q_strides, k, k_strides, v, v_strides, out, out_strides, workspace,
                                    workspace_size, &l))
    return err;
  if (l.grid == 0) return nullptr;
  if (const char* err = runner.launch(trig_table_kernel, l.table_grid, l.args)) return err;
  return runner.launch(attention_kernel(l.bucket, l.fold), l.grid, l.args);
}

}  // namespace ff_cuda

#endif  // FOURIERFORMER_CUDA_FOURIER_ATTENTION_KERNEL_CUH_
