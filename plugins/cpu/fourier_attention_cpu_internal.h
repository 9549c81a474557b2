// Internal to the CPU kernel: what its dispatcher (fourier_attention_cpu.cpp) and its instruction-set paths
// (fourier_attention_cpu_path.cpp, compiled once per path with that path's flags) share.
//
// Only plain structs, declarations and internal-linkage helpers live here: a translation unit built with AVX-512
// flags must not emit a function the linker could pick for the baseline path, so nothing defined here has external
// linkage.
#ifndef FOURIERFORMER_CPU_FOURIER_ATTENTION_CPU_INTERNAL_H_
#define FOURIERFORMER_CPU_FOURIER_ATTENTION_CPU_INTERNAL_H_

#include <stdint.h>
#include <string.h>

#include "fourier_attention.h"

namespace ff_cpu {

// Keys per group in the workspace: every path reads the same layout (16 = the AVX-512 path's lanes; narrower
// paths take a group in 2 or 4 parts), so the workspace never depends on the path that computes it.
constexpr int kGroup = 16;
// Query rows per parallel task are a multiple of this (the widest path's row block).
constexpr int kRowBlock = 8;
// Dims per chunk: one division and one log per pair and chunk (ranges: fourier_attention_cpu_path.cpp).
constexpr int kChunk = 64;

// Workspace offsets, in floats from its start (each a multiple of 16 floats = 64 bytes):
//   qside [bh*nq][3][dim] = (q', sin Rq, cos Rq);  kside [bh][key group][dim][3][kGroup] = (k', sin Rk, cos Rk);
//   vv [bh][nkp][dimp] (v padded with zeros);  acc [bh*nq][dimp], mm [bh*nq] and ll [bh*nq][kGroup]: the
//   online-softmax state (ll per lane).
struct Layout {
  int64_t bh, nq, nk, dim, dimp, groups, nkp;
  int64_t qside, kside, vv, acc, mm, ll;
  int64_t total;
};

// Constants of the per-pair-dim loop (made once per call by the dispatcher; see fourier_attention_cpu_path.cpp).
//   fold = true (|log2 R| <= 64): q' = q 2^m, k' = k 2^m (exact) with R' = R/2^m in [1/sqrt2, sqrt2); x = R'(q'-k').
//   fold = false: q' = q, k' = k, x = R(q - k), R' = 1.
// With d = q' - k' (fold) or x (not fold) and u = d^2: small = u < thr (|x| < 1), and the factor pair
//   small: num = c0 + c1 u + c2 u^2 + c3 u^3 = R' sinc(x),  den = 1;   else: num = sin(x),  den = d
// so that num/den = R' sinc(x), and a chunk of n dims gives |prod sinc| = |prod num / prod den| R'^-n, taken as a
// factor before the log (a term -n log R' after it would cancel against the log, up to 22 for n = 64).
// unscale = R'^-kChunk for a whole chunk, unscale_tail = R'^-(dim % kChunk) for the last one.
struct Consts {
  float R, thr, c0, c1, c2, c3, unscale, unscale_tail;
  int scale_exp;
  bool fold;
};

namespace {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// float16 <-> float32, exact, round to nearest even.
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

}  // namespace

// One instruction-set path: its two phases (the public API's prepare and compute, for item or row ranges).
struct Path {
  const char* name;
  void (*prepare)(const ff_params* p, const Layout& L, const Consts& K, ff_dtype dt, const void* q, const void* k,
                  const void* v, float* ws, int64_t item_begin, int64_t item_end);
  void (*compute)(const ff_params* p, const Layout& L, const Consts& K, ff_dtype dt, float* ws, void* out,
                  int64_t row_begin, int64_t row_end);
};

extern const Path kPathAvx512, kPathAvx2, kPathBaseline;

// NULL, or why a whole-problem call (ff_cpu_forward, ff_cpu_forward_threads) must not run: bad parameters, an
// FF_CPU_ISA that cannot be honoured, or a misaligned workspace. Defined in fourier_attention_cpu.cpp.
const char* call_problem(const ff_params* p, const void* workspace);

}  // namespace ff_cpu

#endif  // FOURIERFORMER_CPU_FOURIER_ATTENTION_CPU_INTERNAL_H_
