// FourierAttention CPU kernel (fused, streaming, log domain).
//
// Algorithm (4 query rows x 8 keys per step, one SIMD lane per key; see Consts below):
//   prepare:  sin/cos of R*q and R*k computed in double from the exact product, rounded once
//             to float (so no Rq - Rk cancellation); q, k stored scaled by 2^m ~ R (exact);
//             k side repacked as [key block][d][k, sin, cos][8], v padded to [key][dim8].
//   per pair and dim (x = R(q-k), 8 pairs per vector op; ~11 FMA-port ops + 1 sub):
//     S = sin(Rq)cos(Rk) - cos(Rq)sin(Rk) = sin(x)                  (mul + fma)
//     |x|<1: sinc via a degree-3 polynomial in x^2 (no cancellation)   (mul + 3 fma)
//     pn *= small ? poly : S;  pd *= small ? const : x              (cmp, 2 blend, 2 mul)
//   per pair and chunk of 16 dims: L += log|pn/pd|  (one division + one log per chunk)
//   L_ij = power * L = log w_ij; online softmax with running max m over j:
//     out_i = sum_j e^{L_ij-m} v_j / (sum_j e^{L_ij-m} + exp(log(eps) - m)),  0 if m = -inf
//   plus 1 fma per pair-dim for the v accumulation.
#include "fourier_attention_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {

typedef float v8f __attribute__((vector_size(32), aligned(32)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(32)));

constexpr int kLanes = 8;       // keys per vector
constexpr int kChunk = 16;      // dims per log
constexpr int kRowBlock = 4;    // query rows sharing each k load
constexpr int64_t kKeyTile = 256;  // keys per cache tile

inline v8f bc(float s) { return v8f{s, s, s, s, s, s, s, s}; }
inline v8f ld(const float* p) { return *reinterpret_cast<const v8f*>(p); }
inline void st(float* p, v8f x) { *reinterpret_cast<v8f*>(p) = x; }
inline v8i as_i(v8f x) { v8i r; std::memcpy(&r, &x, sizeof r); return r; }
inline v8f as_f(v8i x) { v8f r; std::memcpy(&r, &x, sizeof r); return r; }
inline v8f vsel(v8i m, v8f a, v8f b) { return m ? a : b; }

inline float hmax(v8f x) {
  float m = x[0];
  for (int i = 1; i < kLanes; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
inline float hsum(v8f x) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += x[i];
  return s;
}

// log(x) for x >= 0 (Cephes logf, ~1 ulp). x < FLT_MIN (0 or subnormal) -> -inf; NaN/inf
// inputs are not expected (callers pass |pn/pd| and handle NaN separately).
inline v8f vlog(v8f x) {
  const v8i xi = as_i(x);
  v8i e = ((xi >> 23) & 0xff) - 126;
  v8f m = as_f((xi & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const v8i lt = m < bc(0.707106781186547524f);
  e = lt ? e - 1 : e;
  m = lt ? m + m - 1.0f : m - 1.0f;
  const v8f ef = __builtin_convertvector(e, v8f);
  const v8f z = m * m;
  v8f y = bc(7.0376836292E-2f);
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
  v8f r = m + y;
  r = r + ef * 0.693359375f;
  return vsel(x < bc(1.17549435e-38f), bc(-std::numeric_limits<float>::infinity()), r);
}

// exp(x) for x <= 0 (Cephes expf, ~1 ulp); x < -87 -> 0 (incl. -inf); NaN -> NaN.
inline v8f vexp(v8f x) {
  const v8f xc = vsel(x < bc(-87.0f), bc(-87.0f), x);
  const v8f magic = bc(12582912.0f);  // 1.5 * 2^23: round to nearest integer
  const v8f t = xc * 1.44269504088896341f + magic;
  const v8f n = t - magic;
  const v8i ni = as_i(t) - as_i(magic);
  v8f r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const v8f z = r * r;
  v8f y = bc(1.9875691500E-4f);
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * z + r + 1.0f;
  y = y * as_f((ni + 127) << 23);
  y = vsel(x < bc(-87.0f), bc(0.0f), y);
  return vsel(x != x, x, y);
}

// ---- float16 <-> float32 (round to nearest even), exact, portable -----------------------
inline float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (ex == 0) return u2f(sign) + (sign ? -1.0f : 1.0f) * static_cast<float>(man) * 5.9604644775390625e-8f;
  if (ex == 31) return u2f(sign | 0x7f800000u | (man << 13));
  return u2f(sign | ((ex + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_half(float ff) {
  uint32_t f = f2u(ff);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= ((127u + 16u) << 23)) {
    o = f > (255u << 23) ? 0x7e00 : 0x7c00;  // NaN or overflow/inf
  } else if (f < (113u << 23)) {              // half subnormal or zero
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    o = static_cast<uint16_t>(f2u(u2f(f) + u2f(magic)) - magic);
  } else {
    const uint32_t odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    f += odd;
    o = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

inline float load_elem(const void* base, ff_dtype dt, int64_t idx) {
  if (dt == FF_DTYPE_FLOAT16) return half_to_float(static_cast<const uint16_t*>(base)[idx]);
  return static_cast<const float*>(base)[idx];
}

// ---- sin and cos of R*x, from the exact double product, rounded once to float ------------
inline void sincos_scaled(double a, float* s, float* c) {
  if (!(std::fabs(a) < 1e6)) {  // large or non-finite: libm
    *s = static_cast<float>(std::sin(a));
    *c = static_cast<float>(std::cos(a));
    return;
  }
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double t = a * 0.63661977236758134308 + magic;
  const double n = t - magic;
  int64_t ti;
  std::memcpy(&ti, &t, 8);
  const int quadrant = static_cast<int>(ti & 3);
  double r = std::fma(-n, 1.57079632679489655800e+00, a);
  r = std::fma(-n, 6.12323399573676603587e-17, r);
  const double r2 = r * r;
  // |r| <= pi/4 (+tiny): Taylor to r^13 / r^14, error < 1e-14.
  double sp = -1.0 / 6227020800.0;
  sp = sp * r2 + 1.0 / 39916800.0;
  sp = sp * r2 - 1.0 / 362880.0;
  sp = sp * r2 + 1.0 / 5040.0;
  sp = sp * r2 - 1.0 / 120.0;
  sp = sp * r2 + 1.0 / 6.0;
  const double sr = r - r * r2 * sp;
  double cp = 1.0 / 87178291200.0;
  cp = cp * r2 - 1.0 / 479001600.0;
  cp = cp * r2 + 1.0 / 3628800.0;
  cp = cp * r2 - 1.0 / 40320.0;
  cp = cp * r2 + 1.0 / 720.0;
  cp = cp * r2 - 1.0 / 24.0;
  cp = cp * r2 + 0.5;
  const double cr = 1.0 - r2 * cp;
  double ss, cc;
  switch (quadrant) {
    case 0: ss = sr; cc = cr; break;
    case 1: ss = cr; cc = -sr; break;
    case 2: ss = -sr; cc = -cr; break;
    default: ss = -cr; cc = sr; break;
  }
  *s = static_cast<float>(ss);
  *c = static_cast<float>(cc);
}

// ---- workspace layout --------------------------------------------------------------------
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Layout {
  int64_t bh, nq, nk, dim, dimp, nkb, nkp;
  // offsets in floats from the workspace start (each a multiple of 16 floats = 64 bytes)
  // q side: [bh*nq][dim][3] = (q, sin Rq, cos Rq); k side: [bh][key block][dim][3][8]
  int64_t qside, kside, vv, acc, mm, ll;
  int64_t total;
};

inline Layout make_layout(const ff_params* p) {
  Layout L;
  L.bh = p->batch * p->heads;
  L.nq = p->nq;
  L.nk = p->nk;
  L.dim = p->dim;
  L.dimp = round_up(p->dim, kLanes);
  L.nkb = (p->nk + kLanes - 1) / kLanes;
  L.nkp = L.nkb * kLanes;
  int64_t off = 0;
  auto take = [&off](int64_t n) { const int64_t o = off; off += round_up(n, 16); return o; };
  const int64_t qsz = L.bh * L.nq * L.dim, ksz = L.bh * L.nkp * L.dim;
  L.qside = take(3 * qsz);
  L.kside = take(3 * ksz);
  L.vv = take(L.bh * L.nkp * L.dimp);
  L.acc = take(L.bh * L.nq * L.dimp);
  L.mm = take(L.bh * L.nq);
  L.ll = take(L.bh * L.nq);
  L.total = off;
  return L;
}

// ---- the row-block kernel ------------------------------------------------------------------
struct RowState {
  const float* q;  // [dim][3]
  float* acc;
  float* m;
  float* l;
  int64_t last_key;  // keys j > last_key are masked (causal / nk)
};

// Constants of the per-pair-dim loop. sinc(x) ~= 1 + c1 u + c2 u^2 + c3 u^3 for u = x^2 < 1
// (near-minimax fit; relative error ~1e-7 in float32, Taylor would need one more term).
//
// fold = true (the usual case): the prepare step stores q' = q*2^m, k' = k*2^m (exact) with
// 2^m ~ R, so R' = R/2^m is in [1/sqrt2, sqrt2] and x = R'(q' - k'). R' is folded away:
//   d = q' - k', u = d^2, small = u < thr = 1/R'^2,
//   small: num = poly(R'^2 u)/R' = c0 + c1' u + ..., den = thr  -> num/den = R' sinc(x)
//   else : num = S = sin(x),                          den = d    -> num/den = R' sinc(x)
// so each chunk of n dims gives log|prod sinc| = log|pn/pd| - n log R'. Only 5 vector
// constants are live in the loop (c0..c3, thr), which keeps the pn/pd chains in registers.
// Ranges: den factors are >= min(thr, 1/R') >= 1/2 (no underflow over 16 dims); pd overflow
// needs prod|x| >= 2^128 / 2^8, i.e. a weight below 2^-120 (treated as 0).
// fold = false (|log2 R| > 64 only): x = R*(q - k), num/den = sinc(x) with thr = den_small = 1.
struct Consts {
  float R, thr, c0, c1, c2, c3, log_r;
  int scale_exp;  // m: q', k' = ldexp(q, m)
  bool fold;
};

inline Consts make_consts(const ff_params* p) {
  const double c1 = -0.1666659563779831, c2 = 0.008329861797392368, c3 = -0.00019291458011139184;
  Consts k;
  const double R = p->R;
  int m = 0;
  std::frexp(R * 0.70710678118654752, &m);  // R/2^m in [1/sqrt2, sqrt2)
  k.fold = m >= -64 && m <= 64;
  if (k.fold) {
    const double Rp = std::ldexp(R, -m), r2 = Rp * Rp;
    k.scale_exp = m;
    k.R = static_cast<float>(Rp);
    k.thr = static_cast<float>(1.0 / r2);
    k.c0 = static_cast<float>(1.0 / Rp);
    k.c1 = static_cast<float>(c1 * r2 / Rp);
    k.c2 = static_cast<float>(c2 * r2 * r2 / Rp);
    k.c3 = static_cast<float>(c3 * r2 * r2 * r2 / Rp);
    k.log_r = static_cast<float>(std::log(Rp));
  } else {
    k.scale_exp = 0;
    k.R = p->R;
    k.thr = 1.0f;
    k.c0 = 1.0f;
    k.c1 = static_cast<float>(c1);
    k.c2 = static_cast<float>(c2);
    k.c3 = static_cast<float>(c3);
    k.log_r = 0.0f;
  }
  return k;
}

// Log-weights of QB rows against key block kb (8 keys), then the online-softmax update.
template <int QB, bool FOLD>
inline void process_block(const ff_params* p, const Consts& K, const Layout& Lo, const float* kblk,
                          const float* vblk, int64_t j0, RowState* rs) {
  const int64_t dim = Lo.dim;
  const v8f Rv = bc(K.R);
  const v8f thr = bc(K.thr);  // == c0 == den_small == 1 when !FOLD
  const v8f c0 = FOLD ? bc(K.c0) : thr;
  const v8f c3 = bc(K.c3), c2 = bc(K.c2), c1 = bc(K.c1);
  // Kept in memory across the dim loop (frees registers for the pn/pd chains).
  alignas(32) float Lm[QB][kLanes];
  for (int r = 0; r < QB; ++r) st(Lm[r], bc(0.0f));
  for (int64_t d0 = 0; d0 < dim; d0 += kChunk) {
    const int64_t d1 = d0 + kChunk < dim ? d0 + kChunk : dim;
    v8f pn[QB], pd[QB];
    for (int r = 0; r < QB; ++r) { pn[r] = bc(1.0f); pd[r] = bc(1.0f); }
    for (int64_t d = d0; d < d1; ++d) {
      const float* kd = kblk + d * (3 * kLanes);
      const v8f kxv = ld(kd), ksv = ld(kd + kLanes), kcv = ld(kd + 2 * kLanes);
      for (int r = 0; r < QB; ++r) {
        const float* qd = rs[r].q + 3 * d;
        v8f x = bc(qd[0]) - kxv;
        if (!FOLD) x = x * Rv;
        const v8f S = bc(qd[1]) * kcv - bc(qd[2]) * ksv;
        const v8f x2 = x * x;
        v8f t = c3 * x2 + c2;
        t = t * x2 + c1;
        t = t * x2 + c0;
        const v8i small = x2 < thr;
        pn[r] *= vsel(small, t, S);
        pd[r] *= vsel(small, thr, x);
      }
    }
    const v8f corr = bc(FOLD ? static_cast<float>(d1 - d0) * K.log_r : 0.0f);
    for (int r = 0; r < QB; ++r) {
      v8f q = pn[r] / pd[r];
      q = as_f(as_i(q) & 0x7fffffff);
      // NaN (from NaN/inf inputs) stays NaN and is detected below.
      st(Lm[r], ld(Lm[r]) + vsel(q != q, q, vlog(q) - corr));
      __asm__ volatile("" ::: "memory");
    }
  }
  const float pw = static_cast<float>(p->power);
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t dimp = Lo.dimp;
  alignas(32) float pj[QB][kLanes];
  bool active[QB];
  for (int r = 0; r < QB; ++r) {
    v8f Lr = ld(Lm[r]) * pw;
    if (j0 + kLanes - 1 > rs[r].last_key) {
      for (int lane = 0; lane < kLanes; ++lane)
        if (j0 + lane > rs[r].last_key) Lr[lane] = ninf;
    }
    float bm = hmax(Lr);
    int nan = 0;
    for (int lane = 0; lane < kLanes; ++lane) nan |= (Lr[lane] != Lr[lane]);
    if (nan) { *rs[r].l = std::numeric_limits<float>::quiet_NaN(); bm = *rs[r].m; }
    float m = *rs[r].m;
    if (bm > m) {
      const float scale = std::exp(m - bm);  // 0 when m = -inf
      *rs[r].l *= scale;
      float* acc = rs[r].acc;
      for (int64_t e = 0; e < dimp; e += kLanes) st(acc + e, ld(acc + e) * scale);
      m = bm;
      *rs[r].m = m;
    }
    active[r] = (m > ninf) || nan;
    if (!active[r]) continue;
    const v8f pv = vexp(Lr - m);
    *rs[r].l += hsum(pv);
    st(pj[r], pv);
  }
  for (int64_t e = 0; e < dimp; e += kLanes) {
    v8f a[QB];
    for (int r = 0; r < QB; ++r) a[r] = ld(rs[r].acc + e);
    for (int lane = 0; lane < kLanes; ++lane) {
      const v8f vj = ld(vblk + lane * dimp + e);
      for (int r = 0; r < QB; ++r) a[r] += bc(pj[r][lane]) * vj;
    }
    for (int r = 0; r < QB; ++r)
      if (active[r]) st(rs[r].acc + e, a[r]);
  }
}

template <int QB, bool FOLD>
void process_rows(const ff_params* p, const Consts& K, const Layout& Lo, float* ws, int64_t bh, int64_t i0,
                  int64_t kb_begin, int64_t kb_end) {
  RowState rs[QB];
  int64_t last = -1;
  for (int r = 0; r < QB; ++r) {
    const int64_t row = bh * Lo.nq + i0 + r;
    rs[r].q = ws + Lo.qside + row * Lo.dim * 3;
    rs[r].acc = ws + Lo.acc + row * Lo.dimp;
    rs[r].m = ws + Lo.mm + row;
    rs[r].l = ws + Lo.ll + row;
    int64_t lk = Lo.nk - 1;
    if (p->causal) {
      const int64_t c = i0 + r + (Lo.nk - Lo.nq);
      lk = c < lk ? c : lk;
    }
    rs[r].last_key = lk;
    last = lk > last ? lk : last;
  }
  if (last < 0) return;
  const int64_t kb_last = last / kLanes;
  if (kb_end > kb_last + 1) kb_end = kb_last + 1;
  const int64_t kblock = Lo.dim * 3 * kLanes;
  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    const int64_t koff = (bh * Lo.nkb + kb) * kblock;
    process_block<QB, FOLD>(p, K, Lo, ws + Lo.kside + koff,
                      ws + Lo.vv + (bh * Lo.nkp + kb * kLanes) * Lo.dimp, kb * kLanes, rs);
  }
}

}  // namespace

extern "C" size_t ff_cpu_workspace_size(const ff_params* p) {
  return static_cast<size_t>(make_layout(p).total) * sizeof(float);
}

extern "C" int64_t ff_cpu_prepare_items(const ff_params* p) {
  return p->batch * p->heads * (p->nq + p->nk);
}

extern "C" int64_t ff_cpu_rows(const ff_params* p) { return p->batch * p->heads * p->nq; }

extern "C" int64_t ff_cpu_rows_per_task(const ff_params* p, int num_threads) {
  if (num_threads < 1) num_threads = 1;
  const int64_t rows = ff_cpu_rows(p);
  // Aim for >= 8 tasks per thread (load balance, causal rows differ in cost), <= 64 rows.
  int64_t r = rows / (8 * static_cast<int64_t>(num_threads));
  if (r > 64) r = 64;
  r = round_up(r < 1 ? 1 : r, kRowBlock);
  return r;
}

extern "C" void ff_cpu_prepare(const ff_params* p, ff_dtype dt, const void* q, const void* k,
                               const void* v, void* workspace, int64_t item_begin,
                               int64_t item_end) {
  const Layout Lo = make_layout(p);
  float* ws = static_cast<float*>(workspace);
  const double R = static_cast<double>(p->R);
  const int scale_exp = make_consts(p).scale_exp;
  const int64_t per_bh = Lo.nq + Lo.nk;
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t bh = item / per_bh, idx = item % per_bh;
    if (idx < Lo.nq) {
      const int64_t row = bh * Lo.nq + idx;
      float* qrow = ws + Lo.qside + row * Lo.dim * 3;
      for (int64_t d = 0; d < Lo.dim; ++d) {
        const float x = load_elem(q, dt, row * Lo.dim + d);
        qrow[3 * d] = std::ldexp(x, scale_exp);
        sincos_scaled(R * static_cast<double>(x), qrow + 3 * d + 1, qrow + 3 * d + 2);
      }
      float* acc = ws + Lo.acc + row * Lo.dimp;
      for (int64_t d = 0; d < Lo.dimp; ++d) acc[d] = 0.0f;
      ws[Lo.mm + row] = -std::numeric_limits<float>::infinity();
      ws[Lo.ll + row] = 0.0f;
    } else {
      const int64_t j = idx - Lo.nq, kb = j / kLanes, lane = j % kLanes;
      float* kblk = ws + Lo.kside + (bh * Lo.nkb + kb) * Lo.dim * 3 * kLanes;
      const int64_t src = (bh * Lo.nk + j) * Lo.dim;
      for (int64_t d = 0; d < Lo.dim; ++d) {
        const float x = load_elem(k, dt, src + d);
        float* kd = kblk + d * 3 * kLanes + lane;
        kd[0] = std::ldexp(x, scale_exp);
        sincos_scaled(R * static_cast<double>(x), kd + kLanes, kd + 2 * kLanes);
      }
      float* vrow = ws + Lo.vv + (bh * Lo.nkp + j) * Lo.dimp;
      for (int64_t d = 0; d < Lo.dim; ++d) vrow[d] = load_elem(v, dt, src + d);
      for (int64_t d = Lo.dim; d < Lo.dimp; ++d) vrow[d] = 0.0f;
      // The last key of the (b,h) also fills the padding lanes of its block.
      if (j == Lo.nk - 1) {
        for (int64_t pj = Lo.nk; pj < Lo.nkp; ++pj) {
          const int64_t pl = pj % kLanes;
          for (int64_t d = 0; d < Lo.dim; ++d) {
            float* kd = kblk + d * 3 * kLanes + pl;
            kd[0] = 0.0f;
            kd[kLanes] = 0.0f;
            kd[2 * kLanes] = 1.0f;
          }
          float* pv = ws + Lo.vv + (bh * Lo.nkp + pj) * Lo.dimp;
          for (int64_t d = 0; d < Lo.dimp; ++d) pv[d] = 0.0f;
        }
      }
    }
  }
}

extern "C" void ff_cpu_compute(const ff_params* p, ff_dtype dt, void* workspace, void* out,
                               int64_t row_begin, int64_t row_end) {
  const Layout Lo = make_layout(p);
  float* ws = static_cast<float*>(workspace);
  const float log_eps = std::log(p->eps);
  const Consts K = make_consts(p);
  int64_t row = row_begin;
  while (row < row_end) {
    const int64_t bh = row / Lo.nq;
    const int64_t i_begin = row % Lo.nq;
    int64_t i_end = i_begin + (row_end - row);
    if (i_end > Lo.nq) i_end = Lo.nq;
    for (int64_t kt = 0; kt < Lo.nkb; kt += kKeyTile / kLanes) {
      const int64_t kt_end = kt + kKeyTile / kLanes < Lo.nkb ? kt + kKeyTile / kLanes : Lo.nkb;
      int64_t i = i_begin;
      if (K.fold) {
        for (; i + kRowBlock <= i_end; i += kRowBlock) process_rows<kRowBlock, true>(p, K, Lo, ws, bh, i, kt, kt_end);
        for (; i < i_end; ++i) process_rows<1, true>(p, K, Lo, ws, bh, i, kt, kt_end);
      } else {
        for (; i + kRowBlock <= i_end; i += kRowBlock) process_rows<kRowBlock, false>(p, K, Lo, ws, bh, i, kt, kt_end);
        for (; i < i_end; ++i) process_rows<1, false>(p, K, Lo, ws, bh, i, kt, kt_end);
      }
    }
    // finalize
    for (int64_t i = i_begin; i < i_end; ++i) {
      const int64_t r = bh * Lo.nq + i;
      const float m = ws[Lo.mm + r], l = ws[Lo.ll + r];
      const float* acc = ws + Lo.acc + r * Lo.dimp;
      float inv;
      if (l != l) inv = std::numeric_limits<float>::quiet_NaN();
      else if (!(m > -std::numeric_limits<float>::infinity())) inv = 0.0f;  // no weight at all
      else inv = 1.0f / (l + std::exp(log_eps - m));                       // exp may be +inf -> 0
      if (dt == FF_DTYPE_FLOAT16) {
        uint16_t* o = static_cast<uint16_t*>(out) + r * Lo.dim;
        for (int64_t d = 0; d < Lo.dim; ++d) o[d] = float_to_half(acc[d] * inv);
      } else {
        float* o = static_cast<float*>(out) + r * Lo.dim;
        for (int64_t d = 0; d < Lo.dim; ++d) o[d] = acc[d] * inv;
      }
    }
    row += i_end - i_begin;
  }
}

extern "C" const char* ff_cpu_forward(const ff_params* p, ff_dtype dtype, const void* q,
                                      const void* k, const void* v, void* out, void* workspace) {
  if (const char* err = ff_validate_params(p)) return err;
  if (reinterpret_cast<uintptr_t>(workspace) % FF_CPU_WORKSPACE_ALIGNMENT != 0)
    return "FourierAttention: workspace must be 64-byte aligned";
  ff_cpu_prepare(p, dtype, q, k, v, workspace, 0, ff_cpu_prepare_items(p));
  ff_cpu_compute(p, dtype, workspace, out, 0, ff_cpu_rows(p));
  return nullptr;
}
