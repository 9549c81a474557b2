// FourierAttention CUDA kernels (fused, tiled over keys, log domain, online maximum): the device code and the
// launch planning, included by fourier_attention_cuda.cu (nvcc) and by emulator/ (a host compiler, with CUDA's
// built-ins emulated, to run the kernels' logic on a CPU). Include the CUDA (or emulation) headers first, with
// cuda_pipeline_primitives.h (cp.async), and define ff_cuda::shared_memory() (the block's dynamic shared memory).
//
// Two launches on one stream, three when the keys are split:
//   trig_table_kernel: once per call, for every row of q and of k and every dim, (x', sin(R x) t, cos(R x) t)
//     into the workspace (the "table"; t = 1/R' for q, 1 for k). sin/cos are of the exact product R*x (float
//     hi + exact residual lo via fmaf, sincosf of hi, angle-addition with a short series in lo), so there is
//     no Rq - Rk cancellation later. Layout per side (q, then k): [batch*heads][chunk][3][kDC][rows], rows
//     padded to a multiple of 64 and dims to a multiple of kDC with (0, 0, 1): the attention kernel copies a
//     tile's chunk into shared memory with aligned float4 loads and no bounds checks. Cost: 2/N of the
//     attention's pair-dims (one sincos per element instead of one per element and tile).
//   fourier_attention_kernel<DB, BQ, FOLD>: one block of 4 BQ threads owns a tile of BQ = 64 or 32 queries of one
//     (batch, head) and streams its visible keys, or one split of them (below), in tiles of BK = 64 (causal:
//     tiles wholly above the diagonal are never visited). Per key tile:
//   phase 1 (log-weights; 11 FP32 instructions per pair and dim): dims are processed in chunks of DC = 16.
//     For each chunk the block copies, from the table, (q', sin Rq / R', cos Rq / R') of its BQ queries and
//     (k', sin Rk, cos Rk) of the 64 keys into shared memory, layout [3][DC][BQ + 4] and [3][DC][64 + 4]
//     (buckets 128 and 256: double-buffered, the next chunk is copied by cp.async while this one is computed).
//     Each thread owns a 4 x 4 micro-tile of (query, key) pairs (tq = tid / 16, tk = tid % 16) and for every dim
//     computes
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
//     p is written transposed to shared memory P[64 keys][BQ + 4], alpha to shared memory.
//   phase 2 (P V; 1 FMA per pair and dim): v is staged in chunks of DV = min(DB, 64) dims
//     [64 keys][DV + 4] (aliasing a phase-1 buffer); each thread owns TQ2 = DV / 16 rows x 4 dims of every
//     chunk in registers (acc[NCH][TQ2][4], NCH = DB / DV; DB = dim bucket 16/32/64/128/256, a template
//     parameter so the register array is static) and rescales them by alpha once per tile.
// Finalize: out = acc / (l + exp(log(eps) - m)), 0 for rows without a visible key (m = -inf), NaN if any
// log-weight of the row was NaN (NaN/inf inputs); written in the input dtype.
//   Split keys (when the grid would be under two waves: plan_grid): each query tile's visible key tiles are
//     divided into `splits` near-equal ranges, one block each; a block stores its rows' (m, l, acc) unnormalised
//     into the workspace instead of finalizing, and merge_kernel combines them exactly: M = max m_s,
//     l = sum l_s e^{m_s - M}, acc = sum acc_s e^{m_s - M}, then the finalize above with M (eps added once, in
//     the same scale). Empty ranges store (-inf, 0, 0).
//   Block order: query tiles longest (causal) first over every (batch, head) and split (work_item).
//
// Shared memory (dynamic; Layout): phase-1 buffers (26,112 bytes at BQ = 64, 19,968 at 32; two of them for
// buckets 128 and 256), P (17,408 / 9,216) and row statistics (768 / 384). Global workspace: the table, 12 bytes x
// (nq and nk each rounded up to 64) x (dim rounded up to 16) per (batch, head), O(N D), and the splits' partial
// results; nothing of size [nq, nk] or [nq, nk, dim] exists anywhere.
// Template instances: 5 dim buckets x 2 query tiles x {fold, no fold} (fold = |log2 R| <= 64, i.e. always in
// practice); dtype is a uniform runtime switch used only when building the table, staging v and storing.
#ifndef FOURIERFORMER_CUDA_FOURIER_ATTENTION_KERNEL_CUH_
#define FOURIERFORMER_CUDA_FOURIER_ATTENTION_KERNEL_CUH_

#include <cmath>
#include <cstdint>

#include "fourier_attention_cuda.h"

namespace ff_cuda {

constexpr int kBK = 64;            // keys per tile
constexpr int kTableRows = 64;     // table rows are padded to this multiple (of every query tile and of kBK)
constexpr int kDC = 16;            // dims per chunk (staged in shared memory at a time)
constexpr int kChunksPerLog = 2;   // chunks per division and log of the products (32 dims)
constexpr int kPad = 4;            // row padding (floats) of the shared tiles; keeps float4 alignment
constexpr int kKStride = kBK + kPad;
constexpr int kStrideThreads = 256;  // threads of the table and merge kernels
constexpr int kMaxSplits = 16;       // key splits per query tile
constexpr int kMaxSms = 256;         // SM counts above are planned as this (bounds the workspace without a device)

// Resident blocks per SM the attention kernel's launch bounds ask for: 512 threads (two blocks of 64 queries)
// for buckets up to 128, 256 for bucket 256 (its registers).
__host__ __device__ constexpr int blocks_per_sm(int bucket, int bq) { return (bucket <= 128 ? 512 : 256) / (4 * bq); }

// Shared-memory layout (floats) of the attention kernel with a query tile of BQ rows.
template <int BQ, bool PIPE>
struct Layout {
  static constexpr int kThreads = 4 * BQ;                     // one 4 x 4 micro-tile of BQ x 64 pairs each
  static constexpr int kQStride = BQ + kPad;
  static constexpr int kQPlane = kDC * kQStride;              // one of (x, sin, cos) of the q side
  static constexpr int kKPlane = kDC * kKStride;
  static constexpr int kBuf = 3 * (kQPlane + kKPlane);        // one chunk of both sides (or a v chunk)
  static constexpr int kBuffers = PIPE ? 2 : 1;
  static constexpr int kP = kBK * kQStride;                   // p transposed: [key][query]
  static constexpr int kFloats = kBuffers * kBuf + kP + 3 * BQ;  // + alpha, l, m per row
  static_assert(kBK * (64 + kPad) <= kBuf, "a v chunk must fit into a phase-1 buffer");
  static_assert(kBuf % 4 == 0 && kP % 4 == 0, "float4 alignment of the buffers");
};

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
  int bq;           // queries per tile (the kernel instance's BQ)
  int64_t nqt;      // query tiles per (batch, head)
  int splits;       // key ranges per query tile (1: the attention kernel finalizes)
  float R;          // original R (angles R*x)
  float scale;      // 2^m (fold) or 1
  float inv_rp;     // 1/R' (fold) or 1
  float rmul;       // no fold: x = R (q - k)
  float thr;        // small-|x| threshold on u: 1/R'^2 (fold) or 1
  float c1, c2, c3; // sinc(x) ~ 1 + c1 u + c2 u^2 + c3 u^3 in the variable u
  float power;
  float log_eps;
  float* table;     // the workspace: q side, then k side
  float* partial;   // splits > 1: (m, l) [splits][bh][q_rows][2], then acc [splits][bh][q_rows][dim]
  int64_t bh;       // batch * heads
  int64_t q_rows;   // nq and nk padded to multiples of kTableRows
  int64_t k_rows;
  int nchunks;      // ceil(dim / kDC)
};

// Table elements per side and (batch, head) for `rows` padded rows: [nchunks][3][kDC][rows].
__host__ __device__ inline int64_t table_floats(int nchunks, int64_t rows) { return int64_t{3} * kDC * nchunks * rows; }

// One block's work: query rows [q0, q0 + bq) of (batch, head) bh, key tiles [kt_begin, kt_end), split s.
struct WorkItem {
  int64_t bh, q0, kt_begin, kt_end;
  int s;
};

// Block blk's work. Blocks run query tiles longest (causal) first over every (batch, head) and split; a query
// tile's key tiles visible to at least one of its valid rows are divided into a.splits ranges, longer ones first,
// whose lengths differ by at most one tile.
__host__ __device__ inline WorkItem work_item(int64_t blk, const Args& a) {
  const int64_t per_tile = a.bh * a.splits;
  const int64_t qt = a.nqt - 1 - blk / per_tile;
  const int s = static_cast<int>(blk % a.splits);
  const int64_t q0 = qt * a.bq;
  int64_t kend = a.nk;
  if (a.causal) {
    const int64_t last_row = (q0 + a.bq < a.nq ? q0 + a.bq : a.nq) - 1;
    const int64_t last_key = last_row + a.nk - a.nq;
    kend = last_key + 1 < kend ? last_key + 1 : kend;
    if (kend < 0) kend = 0;
  }
  const int64_t nkt = (kend + kBK - 1) / kBK, len = nkt / a.splits, extra = nkt % a.splits;
  const int64_t begin = s * len + (s < extra ? s : extra);  // the first `extra` splits take one tile more
  return WorkItem{blk % per_tile / a.splits, q0, begin, begin + len + (s < extra ? 1 : 0), s};
}

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

// The factor turning a row's accumulator (relative to its maximum log-weight m, with row sum l) into its output:
// 1 / (l + e^{log eps - m}); 0 for a row without a visible key (or with every weight 0), NaN if l is NaN.
__device__ __forceinline__ float row_scale(float l, float m, float log_eps) {
  if (l != l) return __int_as_float(0x7fc00000);
  if (!(m > __int_as_float(0xff800000))) return 0.0f;
  return 1.0f / (l + expf(log_eps - m));  // expf may be +inf -> 0
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

// The table of both sides (layout: the file comment). One block fills one (side, batch*head, chunk, row tile of
// kTableRows): [3][kDC][64] entries; blocks stride over the grid.
__global__ void __launch_bounds__(kStrideThreads) trig_table_kernel(const Args a) {
  const int64_t q_tiles = a.q_rows / kTableRows, tiles = q_tiles + a.k_rows / kTableRows;
  const int64_t nblocks = a.bh * tiles * a.nchunks;
  for (int64_t blk = blockIdx.x; blk < nblocks; blk += gridDim.x) {
    const int ch = static_cast<int>(blk % a.nchunks);
    const int64_t tile = blk / a.nchunks % tiles, bh = blk / a.nchunks / tiles;
    const bool is_q = tile < q_tiles;
    const Tensor& t = is_q ? a.q : a.k;
    const int64_t rows = is_q ? a.q_rows : a.k_rows, nrows = is_q ? a.nq : a.nk;
    const int64_t r0 = (is_q ? tile : tile - q_tiles) * kTableRows;
    const float trig_scale = is_q ? a.inv_rp : 1.0f;
    float* const side = is_q ? a.table : a.table + a.bh * table_floats(a.nchunks, a.q_rows);
    float* const chunk = side + (bh * a.nchunks + ch) * (3 * kDC) * rows;
    const int64_t toff = bh / a.heads * t.sb + bh % a.heads * t.sh;
    for (int idx = threadIdx.x; idx < kDC * kTableRows; idx += kStrideThreads) {
      const int dd = idx / kTableRows, r = idx % kTableRows;
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

// 16 bytes from global to shared memory: a plain copy, or (ASYNC) a cp.async that the caller commits and waits for.
template <bool ASYNC>
__device__ __forceinline__ void copy16(float* dst, const float* src) {
  if constexpr (ASYNC) {
    __pipeline_memcpy_async(dst, src, 16);
  } else {
    *reinterpret_cast<float4*>(dst) = ld4(src);
  }
}

// Copies one table chunk of the q tile and of the key tile ([3][kDC][rows] each) into the shared buffer buf
// ([3][kDC][kQStride], then [3][kDC][kKStride]): this thread's float4 of each plane of the q side, at q in plane 0
// of the table (planes q_plane apart), and 64 / BQ of the k side, at k (the next 4 BQ / 16 dims on: k_next; planes
// k_plane apart). The thread's positions: stage_offsets. ASYNC: as one committed cp.async group.
template <int BQ, bool ASYNC>
__device__ __forceinline__ void stage_chunk(float* buf, const float* q, int64_t q_plane, const float* k,
                                            int64_t k_next, int64_t k_plane) {
  using L = Layout<BQ, ASYNC>;
  const int tid = threadIdx.x;
  float* const qdst = buf + tid / (BQ / 4) * L::kQStride + 4 * (tid % (BQ / 4));
  float* const kdst = buf + 3 * L::kQPlane + tid / (kBK / 4) * kKStride + 4 * (tid % (kBK / 4));
#pragma unroll
  for (int plane = 0; plane < 3; ++plane) copy16<ASYNC>(qdst + plane * L::kQPlane, q + plane * q_plane);
#pragma unroll
  for (int it = 0; it < kDC * kBK / 4 / L::kThreads; ++it)
#pragma unroll
    for (int plane = 0; plane < 3; ++plane)
      copy16<ASYNC>(kdst + it * (L::kThreads / (kBK / 4)) * kKStride + plane * L::kKPlane,
                    k + it * k_next + plane * k_plane);
  if constexpr (ASYNC) __pipeline_commit();
}

// This thread's positions in the table for stage_chunk: the row-and-dim offsets of its q and k float4s.
template <int BQ>
__device__ __forceinline__ void stage_offsets(const Args& a, int64_t* q, int64_t* k) {
  const int tid = threadIdx.x;
  *q = tid / (BQ / 4) * a.q_rows + 4 * (tid % (BQ / 4));
  *k = tid / (kBK / 4) * a.k_rows + 4 * (tid % (kBK / 4));
}

// Stage v[k0 .. k0+64)[c0 .. c0+DV) as float into vs[64][DV + kPad]; rows >= nk and dims >= dim are 0.
template <int DV, int NT>
__device__ __forceinline__ void stage_v(float* vs, const Args& a, int64_t voff, int64_t k0, int c0) {
  for (int idx = threadIdx.x; idx < kBK * DV; idx += NT) {
    const int dv = idx % DV, r = idx / DV;
    const int64_t row = k0 + r;
    const int d = c0 + dv;
    float x = 0.0f;
    if (row < a.nk && d < a.dim) x = load_elem(a.v.ptr, voff + row * a.v.sr + d, a.dtype);
    vs[r * (DV + kPad) + dv] = x;
  }
}

// N consecutive floats (N = 1, 2 or 4, aligned to N floats) from shared memory.
template <int N>
__device__ __forceinline__ void load_row(const float* p, float (&out)[N]) {
  if constexpr (N == 4) {
    const float4 t = ld4(p);
    out[0] = t.x; out[1] = t.y; out[2] = t.z; out[3] = t.w;
  } else if constexpr (N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    out[0] = t.x; out[1] = t.y;
  } else {
    out[0] = *p;
  }
}

// The products over one chunk's 16 dims of the sinc factors' numerators (pn) and denominators (pd) of this
// thread's 4 x 4 pairs, from the chunk in shared memory (qs: q side at the thread's queries, ks: k side).
template <int BQ, bool FOLD>
__device__ __forceinline__ void chunk_products(const float* qs, const float* ks, const Args& a, float (&pn)[4][4],
                                               float (&pd)[4][4]) {
  using L = Layout<BQ, false>;
#pragma unroll
  for (int dd = 0; dd < kDC; ++dd) {
    const float* qrow = qs + dd * L::kQStride;
    const float* krow = ks + dd * kKStride;
    const float4 qx = ld4(qrow), qsn = ld4(qrow + L::kQPlane), qcs = ld4(qrow + 2 * L::kQPlane);
    const float4 kx = ld4(krow), ksn = ld4(krow + L::kKPlane), kcs = ld4(krow + 2 * L::kKPlane);
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
}

template <int DB, int BQ, bool FOLD>
__global__ void __launch_bounds__(4 * BQ, blocks_per_sm(DB, BQ)) fourier_attention_kernel(const Args a) {
  constexpr bool PIPE = DB >= 128;       // double-buffered phase 1 (cp.async)
  using L = Layout<BQ, PIPE>;
  constexpr int NT = L::kThreads;
  constexpr int DV = DB < 64 ? DB : 64;  // dims per v chunk
  constexpr int NCH = DB / DV;           // v chunks
  constexpr int G = DV / 4;              // phase 2: dim groups of 4
  constexpr int QG = NT / G;             // phase 2: query groups
  constexpr int TQ2 = BQ / QG;           // phase 2: rows per thread (DV / 16)
  static_assert(TQ2 * QG == BQ && TQ2 * 16 == DV, "phase-2 mapping");
  const float kNegInf = __int_as_float(0xff800000);  // -inf

  float* const s_buf = shared_memory();  // phase 1: q then k chunk (PIPE: two buffers); phase 2: v chunk
  float* const s_p = s_buf + L::kBuffers * L::kBuf;
  float* const s_alpha = s_p + L::kP;
  float* const s_l = s_alpha + BQ;
  float* const s_m = s_l + BQ;

  const int tid = threadIdx.x;
  const WorkItem w = work_item(blockIdx.x, a);
  const int64_t b = w.bh / a.heads, h = w.bh % a.heads;
  const int64_t voff = b * a.v.sb + h * a.v.sh;
  const int64_t diag = a.nk - a.nq;  // key j visible to query i iff j <= i + diag (causal)

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
  const int64_t q_step = 3 * kDC * a.q_rows, k_step = 3 * kDC * a.k_rows;  // table floats per chunk
  const int64_t q_plane = kDC * a.q_rows, k_plane = kDC * a.k_rows, k_next = NT / (kBK / 4) * a.k_rows;
  // this thread's staging positions in chunk 0 of the q tile, and of key tile 0, in the table
  int64_t q_off, k_off;
  stage_offsets<BQ>(a, &q_off, &k_off);
  const float* const q_tab = a.table + w.bh * table_floats(nchunks, a.q_rows) + w.q0 + q_off;
  const float* const k_tab =
      a.table + a.bh * table_floats(nchunks, a.q_rows) + w.bh * table_floats(nchunks, a.k_rows) + k_off;
  int cur = 0;  // PIPE: the buffer of the chunk being computed; the other one receives the next chunk
  if constexpr (PIPE) {
    if (w.kt_begin < w.kt_end)
      stage_chunk<BQ, true>(s_buf, q_tab, q_plane, k_tab + w.kt_begin * kBK, k_next, k_plane);
  }

  for (int64_t kt = w.kt_begin; kt < w.kt_end; ++kt) {
    const int64_t k0 = kt * kBK;
    float lacc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) lacc[i][j] = 0.0f;

    // ---- phase 1: log-weights of the BQ x 64 tile --------------------------------------------
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
        float* const buf = s_buf + cur * L::kBuf;
        if constexpr (PIPE) {
          __pipeline_wait_prior(0);  // this thread's copies of the chunk are done
          __syncthreads();           // everyone's are; everyone is done with the other buffer (chunk or v)
          const bool last = ch + 1 == nchunks;  // then the next chunk is chunk 0 of the next key tile
          if (!last || kt + 1 < w.kt_end)
            stage_chunk<BQ, true>(s_buf + (cur ^ 1) * L::kBuf, q_tab + (last ? 0 : ch + 1) * q_step, q_plane,
                                  k_tab + (last ? k0 + kBK : k0 + (ch + 1) * k_step), k_next, k_plane);
        } else {
          stage_chunk<BQ, false>(buf, q_tab + ch * q_step, q_plane, k_tab + k0 + ch * k_step, k_next, k_plane);
          __syncthreads();
        }
        chunk_products<BQ, FOLD>(buf + tq * 4, buf + 3 * L::kQPlane + tk * 4, a, pn, pd);
        if constexpr (PIPE) {
          cur ^= 1;
        } else {
          __syncthreads();  // the next chunk (or the v chunk) overwrites the buffer
        }
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
      const int64_t qi = w.q0 + tq * 4 + i;
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
      *reinterpret_cast<float4*>(s_p + (tk * 4 + j) * L::kQStride + tq * 4) =
          make_float4(p[0][j], p[1][j], p[2][j], p[3][j]);

    // ---- phase 2: acc = alpha * acc + P V ------------------------------------------------------
    // PIPE: v goes into the buffer of the last chunk computed (the next key tile's chunk 0 fills the other)
    float* const vbuf = s_buf + (cur ^ (PIPE ? 1 : 0)) * L::kBuf;
    if constexpr (PIPE) __syncthreads();  // everyone is done with the last chunk
    stage_v<DV, NT>(vbuf, a, voff, k0, 0);
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
        stage_v<DV, NT>(vbuf, a, voff, k0, c * DV);
        __syncthreads();
      }
#pragma unroll 8
      for (int kk = 0; kk < kBK; ++kk) {
        const float4 vv = ld4(vbuf + kk * (DV + kPad) + dg * 4);
        float pr[TQ2];
        load_row<TQ2>(s_p + kk * L::kQStride + qg * TQ2, pr);
#pragma unroll
        for (int i = 0; i < TQ2; ++i) {
          acc[c][i][0] = fmaf(pr[i], vv.x, acc[c][i][0]);
          acc[c][i][1] = fmaf(pr[i], vv.y, acc[c][i][1]);
          acc[c][i][2] = fmaf(pr[i], vv.z, acc[c][i][2]);
          acc[c][i][3] = fmaf(pr[i], vv.w, acc[c][i][3]);
        }
      }
    }
    __syncthreads();  // the buffers, s_p and s_alpha are rewritten by the next tile
  }

  // ---- finalize, or store this split's partial results -----------------------------------------
  if (tk == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) { s_l[tq * 4 + i] = l[i]; s_m[tq * 4 + i] = m[i]; }
  }
  __syncthreads();
  const int64_t part_row = (w.s * a.bh + w.bh) * a.q_rows;  // splits > 1: this split's row 0 in the partials
  float* const part_acc = a.partial + 2 * a.splits * a.bh * a.q_rows;
#pragma unroll
  for (int i = 0; i < TQ2; ++i) {
    const int r = qg * TQ2 + i;
    const int64_t row = w.q0 + r;
    if (row >= a.nq) continue;
    const float scale = a.splits == 1 ? row_scale(s_l[r], s_m[r], a.log_eps) : 1.0f;
    if (a.splits > 1 && dg == 0) {
      a.partial[2 * (part_row + row)] = s_m[r];
      a.partial[2 * (part_row + row) + 1] = s_l[r];
    }
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = c * DV + dg * 4 + e;
        if (d >= a.dim) continue;
        if (a.splits == 1)
          store_elem(a.out, b * a.osb + h * a.osh + row * a.osr + d, a.dtype, acc[c][i][e] * scale);
        else
          part_acc[(part_row + row) * a.dim + d] = acc[c][i][e];
      }
    }
  }
}

// Combines the splits' partial results into out (the file comment); one thread per output element, blocks
// stride over the grid.
__global__ void __launch_bounds__(kStrideThreads) merge_kernel(const Args a) {
  const float kNegInf = __int_as_float(0xff800000);
  const int64_t n = a.bh * a.nq * a.dim, split_rows = a.bh * a.q_rows;
  const float* const part_acc = a.partial + 2 * a.splits * split_rows;
  for (int64_t e = int64_t{blockIdx.x} * kStrideThreads + threadIdx.x; e < n;
       e += int64_t{gridDim.x} * kStrideThreads) {
    const int d = static_cast<int>(e % a.dim);
    const int64_t row = e / a.dim % a.nq, bh = e / a.dim / a.nq;
    const int64_t r0 = bh * a.q_rows + row;
    float M = kNegInf;
    for (int s = 0; s < a.splits; ++s) M = fmaxf(M, a.partial[2 * (s * split_rows + r0)]);
    const float m_ref = M == kNegInf ? 0.0f : M;  // no -inf - -inf
    float l = 0.0f, acc = 0.0f;
    for (int s = 0; s < a.splits; ++s) {
      const int64_t r = s * split_rows + r0;
      const float f = expf(a.partial[2 * r] - m_ref);  // 0 for an empty split
      l += a.partial[2 * r + 1] * f;                   // NaN sticks
      acc += part_acc[r * a.dim + d] * f;
    }
    const int64_t o = bh / a.heads * a.osb + bh % a.heads * a.osh + row * a.osr + d;
    store_elem(a.out, o, a.dtype, acc * row_scale(l, M, a.log_eps));
  }
}

// A planned launch: the table's grid, the attention kernel's instance (dim bucket, query tile, fold), its grid
// and dynamic shared memory, the merge's grid (0: no split), and the arguments of all three.
struct Launch {
  Args args;
  unsigned table_grid;
  unsigned grid;
  unsigned merge_grid;
  unsigned threads;
  size_t smem_bytes;
  int bucket;  // 16, 32, 64, 128 or 256
  bool fold;
};

#ifndef FF_CUDA_MAX_STRIDE_GRID
#define FF_CUDA_MAX_STRIDE_GRID (1 << 20)
#endif
// Blocks of the table and merge kernels' grids; their blocks stride over the work beyond this. The emulator
// lowers it, so that every emulated case runs the striding.
constexpr int64_t kMaxStrideGrid = FF_CUDA_MAX_STRIDE_GRID;

inline int64_t ceil_div(int64_t n, int64_t d) { return (n + d - 1) / d; }
inline int64_t padded_rows(int64_t n) { return ceil_div(n, kTableRows) * kTableRows; }
inline int dim_chunks(int64_t dim) { return static_cast<int>(ceil_div(dim, kDC)); }  // chunks covering dim
inline int dim_bucket(int64_t dim) { return dim <= 16 ? 16 : dim <= 32 ? 32 : dim <= 64 ? 64 : dim <= 128 ? 128 : 256; }

// The attention kernel's grid shape for p (valid, non-empty) on `sms` SMs (clamped to 1..kMaxSms).
struct GridPlan {
  int bq;          // queries per tile: 32 where the grid of 64-query tiles is under two waves of resident blocks
                   // or its last tile is at most half full, else 64
  int64_t nqt;     // query tiles per (batch, head)
  int splits;      // key ranges per query tile: enough for two waves, at most one key tile each and kMaxSplits
};

inline GridPlan plan_grid(const ff_params* p, int sms) {
  sms = sms < 1 ? 1 : sms > kMaxSms ? kMaxSms : sms;
  const int bucket = dim_bucket(p->dim);
  const double bh = static_cast<double>(p->batch) * static_cast<double>(p->heads);
  const int64_t tiles64 = ceil_div(p->nq, 64), tiles32 = ceil_div(p->nq, 32);
  const bool small = bh * tiles64 < 2.0 * blocks_per_sm(bucket, 64) * sms;
  GridPlan g;
  g.bq = small || tiles32 < 2 * tiles64 ? 32 : 64;
  g.nqt = g.bq == 32 ? tiles32 : tiles64;
  const double blocks = bh * g.nqt, target = 2.0 * blocks_per_sm(bucket, g.bq) * sms;
  const int64_t nkt = ceil_div(p->nk, kBK);
  int64_t splits = blocks >= target ? 1 : static_cast<int64_t>(std::ceil(target / blocks));
  splits = splits < nkt ? splits : nkt;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  g.splits = static_cast<int>(splits < 1 ? 1 : splits);
  return g;
}

inline int64_t table_floats_total(const ff_params* p) {
  return p->batch * p->heads * table_floats(dim_chunks(p->dim), padded_rows(p->nq) + padded_rows(p->nk));
}

// Floats of the splits' partial results ((m, l) and acc per padded query row) for `splits` splits (0 if 1).
inline int64_t partial_floats(const ff_params* p, int splits) {
  return splits > 1 ? splits * p->batch * p->heads * padded_rows(p->nq) * (p->dim + 2) : 0;
}

// The workspace bytes for p: the table and the partial results of as many splits as any SM count asks for (0 if
// p is invalid or there is nothing to compute; SIZE_MAX if it would reach 2^62 bytes).
inline size_t workspace_bytes(const ff_params* p) {
  if (ff_validate_params(p) != nullptr || p->dim < 1 || p->dim > FF_CUDA_MAX_DIM) return 0;
  if (p->batch == 0 || p->heads == 0 || p->nq == 0) return 0;
  const double bh = static_cast<double>(p->batch) * static_cast<double>(p->heads);
  const double rows = static_cast<double>(p->nq) + static_cast<double>(p->nk) + 2.0 * kTableRows;
  const double partial_rows = (static_cast<double>(p->nq) + kTableRows) * kMaxSplits * (p->dim + 2);
  if (bh * (3.0 * kDC * dim_chunks(p->dim) * rows + partial_rows) * sizeof(float) >= 0x1p62) return SIZE_MAX;
  const int64_t floats = table_floats_total(p) + partial_floats(p, plan_grid(p, kMaxSms).splits);
  return static_cast<size_t>(floats) * sizeof(float);
}

inline ff_strides contiguous(int64_t heads, int64_t rows, int64_t dim) {
  ff_strides s;
  s.row = dim;
  s.head = rows * dim;
  s.batch = heads * rows * dim;
  return s;
}

// Checks the parameters, pointers and workspace of a call (touches no CUDA API); returns NULL or a static message
// naming the problem.
inline const char* check_call(const ff_params* p, ff_dtype dtype, const void* q, const void* k, const void* v,
                              const void* out, const void* workspace, size_t workspace_size) {
  if (const char* err = ff_validate_params(p)) return err;
  if (p->dim < 1 || p->dim > FF_CUDA_MAX_DIM)
    return "FourierAttention CUDA: dim must be in 1..256 (FF_CUDA_MAX_DIM)";
  if (dtype != FF_DTYPE_FLOAT32 && dtype != FF_DTYPE_FLOAT16 && dtype != FF_DTYPE_BFLOAT16)
    return "FourierAttention CUDA: dtype must be FF_DTYPE_FLOAT32, FF_DTYPE_FLOAT16 or FF_DTYPE_BFLOAT16";
  const int64_t bh = p->batch * p->heads;
  if (bh == 0 || p->nq == 0) return nullptr;  // empty output
  if (q == nullptr || out == nullptr || (p->nk > 0 && (k == nullptr || v == nullptr)))
    return "FourierAttention CUDA: null tensor pointer";
  // splits only where the grid is under two waves (a few thousand blocks), so this bounds the grid
  const int64_t nqt = ceil_div(p->nq, 32);
  if (nqt > INT32_MAX || bh > INT32_MAX / nqt)
    return "FourierAttention CUDA: batch * heads * ceil(nq / 32) exceeds the grid limit (2^31 - 1 blocks)";
  const size_t needed = workspace_bytes(p);
  if (needed == SIZE_MAX)
    return "FourierAttention CUDA: the workspace would reach 2^62 bytes (nq, nk or batch * heads too large)";
  if (workspace == nullptr || workspace_size < needed)
    return "FourierAttention CUDA: the workspace is NULL or smaller than ff_cuda_workspace_size()";
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return "FourierAttention CUDA: the workspace must be 16-byte aligned";
  return nullptr;
}

// Dynamic shared memory bytes of the attention kernel instance.
inline size_t attention_smem_bytes(int bucket, int bq) {
  const bool pipe = bucket >= 128;
  if (bq == 32) return sizeof(float) * (pipe ? Layout<32, true>::kFloats : Layout<32, false>::kFloats);
  return sizeof(float) * (pipe ? Layout<64, true>::kFloats : Layout<64, false>::kFloats);
}

// Plans the launch of a checked (check_call), non-empty call on `sms` SMs. Pointers may be NULL (a plan only).
inline Launch plan_launch(const ff_params* p, ff_dtype dtype, int sms, const void* q, const ff_strides* q_strides,
                          const void* k, const ff_strides* k_strides, const void* v, const ff_strides* v_strides,
                          void* out, const ff_strides* out_strides, void* workspace) {
  const ff_strides qs = q_strides ? *q_strides : contiguous(p->heads, p->nq, p->dim);
  const ff_strides ks = k_strides ? *k_strides : contiguous(p->heads, p->nk, p->dim);
  const ff_strides vs = v_strides ? *v_strides : contiguous(p->heads, p->nk, p->dim);
  const ff_strides os = out_strides ? *out_strides : contiguous(p->heads, p->nq, p->dim);
  const GridPlan g = plan_grid(p, sms);

  Launch launch;
  Args& a = launch.args;
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
  a.bq = g.bq;
  a.nqt = g.nqt;
  a.splits = g.splits;
  a.R = p->R;
  a.power = static_cast<float>(p->power);
  a.log_eps = std::log(p->eps);
  a.table = static_cast<float*>(workspace);
  a.partial = a.table == nullptr ? nullptr : a.table + table_floats_total(p);
  a.bh = p->batch * p->heads;
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
  launch.fold = m >= -64 && m <= 64;
  if (launch.fold) {
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
  launch.bucket = dim_bucket(p->dim);
  launch.threads = static_cast<unsigned>(4 * g.bq);
  launch.smem_bytes = attention_smem_bytes(launch.bucket, g.bq);
  launch.grid = static_cast<unsigned>(a.bh * g.nqt * g.splits);
  const int64_t table_blocks = a.bh * ((a.q_rows + a.k_rows) / kTableRows) * a.nchunks;
  launch.table_grid = static_cast<unsigned>(table_blocks < kMaxStrideGrid ? table_blocks : kMaxStrideGrid);
  const int64_t merge_blocks = g.splits > 1 ? ceil_div(a.bh * a.nq * a.dim, kStrideThreads) : 0;
  launch.merge_grid = static_cast<unsigned>(merge_blocks < kMaxStrideGrid ? merge_blocks : kMaxStrideGrid);
  return launch;
}

using Kernel = void (*)(Args);

// The attention kernel's instance for a dim bucket and query tile.
template <int DB>
inline Kernel attention_kernel_for(int bq, bool fold) {
  if (bq == 32) return fold ? fourier_attention_kernel<DB, 32, true> : fourier_attention_kernel<DB, 32, false>;
  return fold ? fourier_attention_kernel<DB, 64, true> : fourier_attention_kernel<DB, 64, false>;
}

inline Kernel attention_kernel(int bucket, int bq, bool fold) {
  switch (bucket) {
    case 16: return attention_kernel_for<16>(bq, fold);
    case 32: return attention_kernel_for<32>(bq, fold);
    case 64: return attention_kernel_for<64>(bq, fold);
    case 128: return attention_kernel_for<128>(bq, fold);
    default: return attention_kernel_for<256>(bq, fold);
  }
}

// Checks and plans, then runs the table kernel, the attention kernel and (split keys) the merge kernel through
// runner.sm_count(int*) and runner.launch(kernel, grid, threads, smem_bytes, args) (each a const char*: NULL or an
// error). Returns NULL or the message of the check or of a CUDA call.
template <class Runner>
const char* forward(const ff_params* p, ff_dtype dtype, const void* q, const ff_strides* q_strides, const void* k,
                    const ff_strides* k_strides, const void* v, const ff_strides* v_strides, void* out,
                    const ff_strides* out_strides, void* workspace, size_t workspace_size, Runner& runner) {
  if (const char* err = check_call(p, dtype, q, k, v, out, workspace, workspace_size)) return err;
  if (p->batch * p->heads == 0 || p->nq == 0) return nullptr;
  int sms = 0;
  if (const char* err = runner.sm_count(&sms)) return err;
  const Launch l = plan_launch(p, dtype, sms, q, q_strides, k, k_strides, v, v_strides, out, out_strides, workspace);
  if (const char* err = runner.launch(trig_table_kernel, l.table_grid, kStrideThreads, 0, l.args)) return err;
  if (const char* err = runner.launch(attention_kernel(l.bucket, l.args.bq, l.fold), l.grid, l.threads,
                                      l.smem_bytes, l.args))
    return err;
  return l.merge_grid == 0 ? nullptr : runner.launch(merge_kernel, l.merge_grid, kStrideThreads, 0, l.args);
}

}  // namespace ff_cuda

#endif  // FOURIERFORMER_CUDA_FOURIER_ATTENTION_KERNEL_CUH_
