// FourierAttention CPU kernel, one instruction-set path (fused, streaming, log domain).
//
// Compiled once per path (plugins/CMakeLists.txt), each time with that path's target flags and
//   FF_CPU_LANES  floats per vector (16 AVX-512, 8 AVX2, 4 baseline SSE2)
//   FF_CPU_PATH   the ff_cpu::Path object it defines (kPathAvx512, kPathAvx2, kPathBaseline)
//   FF_CPU_NAME   its name ("avx512", ...)
// Everything else in this file has internal linkage (see fourier_attention_cpu_internal.h).
//
// Algorithm: one SIMD lane per key, QB query rows sharing each key load.
//   prepare:  sin/cos of R*q and R*k from the exact double product, rounded once to float (so sin(Rq - Rk)
//             by the angle-difference identity has no cancellation); q, k stored scaled by 2^m ~ R (exact);
//             q side as [row][q', sin, cos][dim], k side as [key group][d][k', sin, cos][16], v padded to [key][dimp].
//   per pair and dim, with d = q' - k', u = d^2 (Consts in the internal header):
//     S = sin(Rq)cos(Rk) - cos(Rq)sin(Rk) = sin(x)                    (mul + fma)
//     t = c0 + c1 u + c2 u^2 + c3 u^3 = R' sinc(x) for |x| < 1          (mul + 3 fma)
//     small = u < thr;  pn *= small ? t : S;  pd *= small ? 1 : d       (cmp, blend + mul, masked mul)
//   (the kernel uses x = k' - q' and sin(Rk - Rq): a dim's sign cancels in |pn/pd|)
//   per pair and chunk of kChunk dims: L += log|pn/pd R'^-n|  (one division, one log)
//   L_ij = power * L = log w_ij; online softmax with running max m over j:
//     out_i = sum_j e^{L_ij-m} v_j / (sum_j e^{L_ij-m} + exp(log(eps) - m)),  0 if m = -inf
//   plus 1 fma per pair-dim for the v accumulation.
#include <math.h>

#include "fourier_attention_cpu_internal.h"

#if !defined(FF_CPU_LANES) || !defined(FF_CPU_PATH) || !defined(FF_CPU_NAME)
#error "compile with -DFF_CPU_LANES=... -DFF_CPU_PATH=... -DFF_CPU_NAME=... (see plugins/CMakeLists.txt)"
#endif

namespace ff_cpu {
namespace {

constexpr int W = FF_CPU_LANES;
constexpr int WD = W / 2;                      // doubles per vector
constexpr int QB = W >= 16 ? 8 : 4;            // query rows per block: 32 vector registers for AVX-512, 16 else
constexpr int64_t kTileGroups = 256 / kGroup;  // key groups per cache tile (256 keys)
constexpr float kSlack = 8.0f;                 // online softmax: e^{L - m} <= e^8 between rescales

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef double vd __attribute__((vector_size(8 * WD)));
typedef int64_t vl __attribute__((vector_size(8 * WD)));

constexpr float kInf = __builtin_inff();

inline vf bc(float s) { return __builtin_shuffle(vf{s}, vi{}); }  // lane 0 to every lane
inline vf ld(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void st(float* p, vf x) { *reinterpret_cast<vf*>(p) = x; }
inline vi as_i(vf x) { vi r; memcpy(&r, &x, sizeof r); return r; }
inline vf as_f(vi x) { vf r; memcpy(&r, &x, sizeof r); return r; }
template <typename V>
inline V iota() {  // 0, 1, 2, ... in V's lanes
  V r;
  for (int i = 0; i < static_cast<int>(sizeof(V) / sizeof(r[0])); ++i) r[i] = i;
  return r;
}

// max and sum over the lanes, by a butterfly (every lane ends with the result); any lane of a mask set.
inline float hmax(vf x) {
  for (int s = W / 2; s > 0; s /= 2) {
    const vf y = __builtin_shuffle(x, iota<vi>() ^ s);
    x = x > y ? x : y;
  }
  return x[0];
}
inline float hsum(vf x) {
  for (int s = W / 2; s > 0; s /= 2) x += __builtin_shuffle(x, iota<vi>() ^ s);
  return x[0];
}
template <typename M>
inline bool any(M m) {
  for (int s = static_cast<int>(sizeof(M) / sizeof(m[0])) / 2; s > 0; s /= 2) m |= __builtin_shuffle(m, iota<M>() ^ s);
  return m[0] != 0;
}

// log(x) for x >= 0 (Cephes logf, ~1 ulp). x < FLT_MIN (0 or subnormal) -> -inf; NaN/inf inputs are not expected
// (callers pass |pn/pd| and handle NaN separately).
inline vf vlog(vf x) {
  const vi xi = as_i(x);
  vi e = ((xi >> 23) & 0xff) - 126;
  vf m = as_f((xi & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const vi lt = m < bc(0.707106781186547524f);
  e = lt ? e - 1 : e;
  m = lt ? m + m - 1.0f : m - 1.0f;
  const vf ef = __builtin_convertvector(e, vf);
  const vf z = m * m;
  vf y = bc(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  vf r = m + y;
  r = r + ef * 0.693359375f;
  return x < bc(1.17549435e-38f) ? bc(-kInf) : r;
}

// exp(x) for x <= 0 (Cephes expf, ~1 ulp); x < -87 -> 0 (incl. -inf); NaN -> NaN.
inline vf vexp(vf x) {
  const vf xc = x < bc(-87.0f) ? bc(-87.0f) : x;
  const vf magic = bc(12582912.0f);  // 1.5 * 2^23: round to nearest integer
  const vf t = xc * 1.44269504088896341f + magic;
  const vf n = t - magic;
  const vi ni = as_i(t) - as_i(magic);
  vf r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const vf z = r * r;
  vf y = bc(1.9875691500E-4f);
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * z + r + 1.0f;
  y = y * as_f((ni + 127) << 23);
  y = x < bc(-87.0f) ? bc(0.0f) : y;
  return x != x ? x : y;
}

// s, c[0, WD) = sin and cos of a, error < 1e-14 for |a| < 1e6; other lanes (large or non-finite) go to libm.
inline void vsincos(vd a, double* s, double* c) {
  const vd magic = vd{} + 6755399441055744.0;  // 1.5 * 2^52: round to nearest integer
  const vd t = a * 0.63661977236758134308 + magic;
  const vd n = t - magic;
  vl quadrant;
  memcpy(&quadrant, &t, sizeof quadrant);
  quadrant &= 3;
  // pi/2 in two parts (fdlibm's pio2_1 has 33 bits: n * pio2_1 is exact for |n| < 2^20, with or without FMA).
  vd r = a - n * 1.57079632673412561417e+00;
  r = r - n * 6.07710050650619224932e-11;
  const vd r2 = r * r;
  // |r| <= pi/4 (+tiny): Taylor to r^13 / r^14.
  vd sp = vd{} - 1.0 / 6227020800.0;
  sp = sp * r2 + 1.0 / 39916800.0;
  sp = sp * r2 - 1.0 / 362880.0;
  sp = sp * r2 + 1.0 / 5040.0;
  sp = sp * r2 - 1.0 / 120.0;
  sp = sp * r2 + 1.0 / 6.0;
  const vd sr = r - r * r2 * sp;
  vd cp = vd{} + 1.0 / 87178291200.0;
  cp = cp * r2 - 1.0 / 479001600.0;
  cp = cp * r2 + 1.0 / 3628800.0;
  cp = cp * r2 - 1.0 / 40320.0;
  cp = cp * r2 + 1.0 / 720.0;
  cp = cp * r2 - 1.0 / 24.0;
  cp = cp * r2 + 0.5;
  const vd cr = 1.0 - r2 * cp;
  const vl swap = (quadrant & 1) != 0;
  vd ss = swap ? cr : sr, cc = swap ? sr : cr;
  ss = (quadrant & 2) != 0 ? -ss : ss;
  cc = ((quadrant + 1) & 2) != 0 ? -cc : cc;
  memcpy(s, &ss, sizeof ss);
  memcpy(c, &cc, sizeof cc);
  const vl large = !(a < 1e6 && a > -1e6);
  if (any(large)) {
    for (int i = 0; i < WD; ++i) {
      if (large[i]) {
        s[i] = sin(a[i]);
        c[i] = cos(a[i]);
      }
    }
  }
}

// ---- prepare -------------------------------------------------------------------------------------------------
typedef float vh __attribute__((vector_size(4 * WD)));  // WD floats: one vd's worth

inline float load_elem(const void* base, ff_dtype dt, int64_t idx) {
  if (dt == FF_DTYPE_FLOAT16) return half_to_float(static_cast<const uint16_t*>(base)[idx]);
  return static_cast<const float*>(base)[idx];
}

inline void store_strided(float* dst, int64_t stride, vh x, int64_t m) {
  if (stride == 1 && m == WD) {
    memcpy(dst, &x, sizeof x);
    return;
  }
  for (int64_t i = 0; i < m; ++i) dst[i * stride] = x[i];
}

// For the n values of src from offset: x' = x 2^m, sin(R x) and cos(R x), value d into xo, so, co [d * stride].
inline void prepare_row(const Consts& K, double R, const void* src, ff_dtype dt, int64_t offset, int64_t n,
                        float* xo, float* so, float* co, int64_t stride) {
  const float scale = u2f(static_cast<uint32_t>(127 + K.scale_exp) << 23);  // 2^m, exact (|m| <= 64)
  for (int64_t d0 = 0; d0 < n; d0 += WD) {
    const int64_t m = n - d0 < WD ? n - d0 : WD;
    vh x = vh{};
    if (dt == FF_DTYPE_FLOAT32 && m == WD) {
      memcpy(&x, static_cast<const float*>(src) + offset + d0, sizeof x);  // one unaligned vector load
    } else {
      for (int64_t i = 0; i < m; ++i) x[i] = load_elem(src, dt, offset + d0 + i);
    }
    alignas(64) double s[WD], c[WD];
    vsincos(__builtin_convertvector(x, vd) * R, s, c);
    vd sv, cv;
    memcpy(&sv, s, sizeof sv);
    memcpy(&cv, c, sizeof cv);
    store_strided(xo + d0 * stride, stride, x * scale, m);
    store_strided(so + d0 * stride, stride, __builtin_convertvector(sv, vh), m);
    store_strided(co + d0 * stride, stride, __builtin_convertvector(cv, vh), m);
  }
}

void prepare(const ff_params* p, const Layout& L, const Consts& K, ff_dtype dt, const void* q, const void* k,
             const void* v, float* ws, int64_t item_begin, int64_t item_end) {
  const double R = static_cast<double>(p->R);
  const int64_t per_bh = L.nq + L.nk;
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t bh = item / per_bh, idx = item % per_bh;
    if (idx < L.nq) {
      const int64_t r = bh * L.nq + idx;
      float* qrow = ws + L.qside + r * L.dim * 3;
      prepare_row(K, R, q, dt, r * L.dim, L.dim, qrow, qrow + L.dim, qrow + 2 * L.dim, 1);
      float* acc = ws + L.acc + r * L.dimp;
      for (int64_t d = 0; d < L.dimp; ++d) acc[d] = 0.0f;
      ws[L.mm + r] = -kInf;
      for (int i = 0; i < kGroup; ++i) ws[L.ll + r * kGroup + i] = 0.0f;
      continue;
    }
    const int64_t j = idx - L.nq, g = j / kGroup, lane = j % kGroup;
    float* kgrp = ws + L.kside + (bh * L.groups + g) * L.dim * 3 * kGroup;
    const int64_t src = (bh * L.nk + j) * L.dim;
    prepare_row(K, R, k, dt, src, L.dim, kgrp + lane, kgrp + kGroup + lane, kgrp + 2 * kGroup + lane, 3 * kGroup);
    float* vrow = ws + L.vv + (bh * L.nkp + j) * L.dimp;
    for (int64_t d = 0; d < L.dim; ++d) vrow[d] = load_elem(v, dt, src + d);
    for (int64_t d = L.dim; d < L.dimp; ++d) vrow[d] = 0.0f;
    // The last key of the (b,h) also fills the padding lanes of its group (masked later; kept finite).
    if (j == L.nk - 1) {
      for (int64_t pj = L.nk; pj < L.nkp; ++pj) {
        const int64_t pl = pj % kGroup;
        for (int64_t d = 0; d < L.dim; ++d) {
          float* kd = kgrp + d * 3 * kGroup + pl;
          kd[0] = 0.0f;
          kd[kGroup] = 0.0f;
          kd[2 * kGroup] = 1.0f;
        }
        float* pv = ws + L.vv + (bh * L.nkp + pj) * L.dimp;
        for (int64_t d = 0; d < L.dimp; ++d) pv[d] = 0.0f;
      }
    }
  }
}

// ---- compute -------------------------------------------------------------------------------------------------
struct RowState {
  const float* q;  // [3][dim]: q', sin Rq, cos Rq
  float* acc;
  float* m;
  float* l;         // [W] per-lane partial sums of the weights
  int64_t last_key;  // keys j > last_key are masked (causal / nk)
};

// Log-weights of Q rows against W keys (kblk: [d][3][kGroup] with these keys' lanes first), then the online-softmax
// update of the rows' state. Ranges over a chunk of n <= 64 dims: den factors are >= min(1, 1/R') > 0.7, so
// den >= 2^-33 (no underflow); num factors are <= sqrt2, so num <= 2^32. A den overflow (prod|x| >= 2^128) or a
// num underflow (below 2^-126, against den >= 2^-33) means |prod sinc| < 2^-93 over the chunk, a weight below
// 2^-186 (power >= 2): taken as 0, as against any eps >= FLT_TRUE_MIN it contributes nothing.
template <int Q, bool FOLD>
inline void process_block(const Consts& K, int64_t dim, int64_t dimp, float power, const float* kblk,
                          const float* vblk, int64_t j0, RowState* rs) {
  const vf Rv = bc(K.R), thr = bc(K.thr);
  const vf c0 = bc(K.c0), c1 = bc(K.c1), c2 = bc(K.c2), c3 = bc(K.c3);
  alignas(64) float Lm[Q][W];  // in memory across the dim loop: the registers go to the pn/pd chains
  for (int r = 0; r < Q; ++r) st(Lm[r], bc(0.0f));
  for (int64_t d0 = 0; d0 < dim; d0 += kChunk) {
    const int64_t d1 = d0 + kChunk < dim ? d0 + kChunk : dim;
    vf pn[Q], pd[Q];
    for (int r = 0; r < Q; ++r) pn[r] = pd[r] = bc(1.0f);
    for (int64_t d = d0; d < d1; ++d) {
      const float* kd = kblk + d * (3 * kGroup);
      const vf kx = ld(kd), ks = ld(kd + kGroup), kc = ld(kd + 2 * kGroup);
      for (int r = 0; r < Q; ++r) {
        const float* qd = rs[r].q + d;
        // x = k' - q' and S = sin(Rk - Rq): the sign of a dim's factor pair cancels in |prod num / prod den|,
        // and this order lets the q side be a broadcast operand.
        vf x = kx - bc(qd[0]);
        if (!FOLD) x = x * Rv;
        const vf S = ks * bc(qd[2 * dim]) - kc * bc(qd[dim]);
        const vf u = x * x;
        const vf t = ((c3 * u + c2) * u + c1) * u + c0;
        const vi big = u >= thr;  // not small (NaN: small, and t is NaN)
        pn[r] *= big ? S : t;
        pd[r] = big ? pd[r] * x : pd[r];
      }
    }
    const vf unscale = bc(d1 - d0 == kChunk ? K.unscale : K.unscale_tail);
    for (int r = 0; r < Q; ++r) {
      const vf ratio = as_f(as_i(pn[r] / pd[r] * unscale) & 0x7fffffff);
      // NaN (from NaN/inf inputs) stays NaN and is detected below.
      st(Lm[r], ld(Lm[r]) + (ratio != ratio ? ratio : vlog(ratio)));
      __asm__ volatile("" ::: "memory");
    }
  }
  // Online softmax, rescaled lazily: m moves only when a log-weight exceeds it by more than kSlack, so the
  // terms e^{L-m} stay <= e^kSlack. l is kept per lane (summed at the end). NaN log-weights (NaN/inf inputs)
  // never move m; they make l NaN through their own terms, or directly where m is still -inf.
  alignas(64) float pj[Q][W];
  bool active[Q];
  const vi lanes = iota<vi>();
  for (int r = 0; r < Q; ++r) {
    vf Lr = ld(Lm[r]) * power;
    if (j0 + W - 1 > rs[r].last_key) Lr = lanes > static_cast<int32_t>(rs[r].last_key - j0) ? bc(-kInf) : Lr;
    float m = *rs[r].m;
    if (any(Lr > bc(m + kSlack))) {
      const float bm = hmax(Lr);
      if (m > -kInf) {
        const vf scale = bc(expf(m - bm));
        st(rs[r].l, ld(rs[r].l) * scale);
        float* acc = rs[r].acc;
        for (int64_t e = 0; e < dimp; e += W) st(acc + e, ld(acc + e) * scale);
      }
      m = bm;
      *rs[r].m = m;
    }
    active[r] = m > -kInf;
    if (!active[r] && any(Lr != Lr)) st(rs[r].l, bc(__builtin_nanf("")));
    const vf pv = active[r] ? vexp(Lr - m) : bc(0.0f);
    st(rs[r].l, ld(rs[r].l) + pv);
    st(pj[r], pv);
  }
  for (int64_t e = 0; e < dimp; e += W) {
    vf a[Q];
    for (int r = 0; r < Q; ++r) a[r] = ld(rs[r].acc + e);
    for (int lane = 0; lane < W; ++lane) {
      const vf vj = ld(vblk + lane * dimp + e);
      for (int r = 0; r < Q; ++r) a[r] += pj[r][lane] * vj;
    }
    for (int r = 0; r < Q; ++r)
      if (active[r]) st(rs[r].acc + e, a[r]);
  }
}

// Q rows from i0 against the key groups [g_begin, g_end) of (b,h) bh.
template <int Q, bool FOLD>
void process_rows(const ff_params* p, const Layout& L, const Consts& K, float* ws, int64_t bh, int64_t i0,
                  int64_t g_begin, int64_t g_end) {
  RowState rs[Q];
  int64_t last = -1;
  for (int r = 0; r < Q; ++r) {
    const int64_t row = bh * L.nq + i0 + r;
    rs[r].q = ws + L.qside + row * L.dim * 3;
    rs[r].acc = ws + L.acc + row * L.dimp;
    rs[r].m = ws + L.mm + row;
    rs[r].l = ws + L.ll + row * kGroup;
    int64_t lk = L.nk - 1;
    if (p->causal) {
      const int64_t c = i0 + r + (L.nk - L.nq);
      lk = c < lk ? c : lk;
    }
    rs[r].last_key = lk;
    last = lk > last ? lk : last;
  }
  const float power = static_cast<float>(p->power);
  const int64_t group_floats = L.dim * 3 * kGroup;
  for (int64_t g = g_begin; g < g_end; ++g) {
    for (int s = 0; s < kGroup / W; ++s) {
      const int64_t j0 = g * kGroup + s * W;
      if (j0 > last) return;  // causal: the diagonal ends the row block's keys
      process_block<Q, FOLD>(K, L.dim, L.dimp, power, ws + L.kside + (bh * L.groups + g) * group_floats + s * W,
                             ws + L.vv + (bh * L.nkp + j0) * L.dimp, j0, rs);
    }
  }
}

template <bool FOLD>
void rows_against_tile(const ff_params* p, const Layout& L, const Consts& K, float* ws, int64_t bh, int64_t i,
                       int64_t i_end, int64_t g_begin, int64_t g_end) {
  while (i < i_end) {
    const int64_t left = i_end - i;
    if (left >= QB) {
      process_rows<QB, FOLD>(p, L, K, ws, bh, i, g_begin, g_end);
      i += QB;
    } else if (QB > 4 && left >= 4) {
      process_rows<4, FOLD>(p, L, K, ws, bh, i, g_begin, g_end);
      i += 4;
    } else {
      process_rows<1, FOLD>(p, L, K, ws, bh, i, g_begin, g_end);
      i += 1;
    }
  }
}

void finalize(const ff_params* p, const Layout& L, ff_dtype dt, const float* ws, void* out, int64_t r) {
  const float m = ws[L.mm + r], l = hsum(ld(ws + L.ll + r * kGroup));
  const float* acc = ws + L.acc + r * L.dimp;
  float inv;
  if (l != l) inv = __builtin_nanf("");
  else if (!(m > -kInf)) inv = 0.0f;               // no weight at all
  else inv = 1.0f / (l + expf(logf(p->eps) - m));  // exp may be +inf -> 0
  if (dt == FF_DTYPE_FLOAT16) {
    uint16_t* o = static_cast<uint16_t*>(out) + r * L.dim;
    for (int64_t d = 0; d < L.dim; ++d) o[d] = float_to_half(acc[d] * inv);
  } else {
    float* o = static_cast<float*>(out) + r * L.dim;
    for (int64_t d = 0; d < L.dim; ++d) o[d] = acc[d] * inv;
  }
}

void compute(const ff_params* p, const Layout& L, const Consts& K, ff_dtype dt, float* ws, void* out,
             int64_t row_begin, int64_t row_end) {
  int64_t row = row_begin;
  while (row < row_end) {
    const int64_t bh = row / L.nq, i_begin = row % L.nq;
    const int64_t i_end = i_begin + (row_end - row) < L.nq ? i_begin + (row_end - row) : L.nq;
    for (int64_t g = 0; g < L.groups; g += kTileGroups) {
      const int64_t g_end = g + kTileGroups < L.groups ? g + kTileGroups : L.groups;
      if (K.fold) rows_against_tile<true>(p, L, K, ws, bh, i_begin, i_end, g, g_end);
      else rows_against_tile<false>(p, L, K, ws, bh, i_begin, i_end, g, g_end);
    }
    for (int64_t i = i_begin; i < i_end; ++i) finalize(p, L, dt, ws, out, bh * L.nq + i);
    row += i_end - i_begin;
  }
}

}  // namespace

extern const Path FF_CPU_PATH = {FF_CPU_NAME, prepare, compute};

}  // namespace ff_cpu
