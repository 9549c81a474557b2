// FourierAttention CPU kernel: the public C API (fourier_attention_cpu.h) and the choice of instruction-set path.
//
// The kernel itself is fourier_attention_cpu_path.cpp, compiled once per path with that path's flags. This file is
// compiled for the baseline target only: it reads CPUID (and the OS's saved vector state, XGETBV) once, takes
// FF_CPU_ISA into account, and forwards every call to the chosen path's functions.
#include "fourier_attention_cpu.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "fourier_attention_cpu_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define FF_CPU_X86 1
#endif

namespace ff_cpu {
namespace {

#ifdef FF_CPU_X86
// What the AVX2 and AVX-512 paths are compiled for (plugins/CMakeLists.txt) and what the OS must save for them.
struct CpuFeatures {
  bool avx2_fma = false;  // AVX, AVX2, FMA, and YMM state enabled by the OS
  bool avx512 = false;    // AVX-512 F, BW, VL, DQ, and ZMM/opmask state enabled by the OS
};

CpuFeatures read_cpu() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!osxsave || !avx) return f;
  unsigned xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_state = (xlo & 0x6u) == 0x6u, zmm_state = (xlo & 0xe6u) == 0xe6u;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5);
  const bool f512 = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  f.avx2_fma = avx2 && fma && ymm_state;
  f.avx512 = f.avx2_fma && f512 && dq && bw && vl && zmm_state;
  return f;
}

const CpuFeatures& cpu() {
  static const CpuFeatures features = read_cpu();
  return features;
}

const Path* const kPaths[] = {&kPathAvx512, &kPathAvx2, &kPathBaseline};  // best first

const char* unsupported(const Path& path) {
  if (&path == &kPathAvx512 && !cpu().avx512)
    return "FF_CPU_ISA: this CPU (or its OS) lacks AVX-512 F/BW/VL/DQ, which the avx512 path needs";
  if (&path == &kPathAvx2 && !cpu().avx2_fma)
    return "FF_CPU_ISA: this CPU (or its OS) lacks AVX2 and FMA, which the avx2 path needs";
  return nullptr;
}
#else
const Path* const kPaths[] = {&kPathBaseline};
const char* unsupported(const Path&) { return nullptr; }
#endif

const Path* best() {
  for (const Path* path : kPaths)
    if (!unsupported(*path)) return path;
  return &kPathBaseline;
}

// The path named name ("auto" or empty: the best this CPU runs), or nullptr with *error set.
const Path* find(const char* name, const char** error) {
  *error = nullptr;
  if (name == nullptr || *name == '\0' || std::strcmp(name, "auto") == 0) return best();
  for (const Path* path : kPaths) {
    if (std::strcmp(name, path->name) != 0) continue;
    *error = unsupported(*path);
    return *error ? nullptr : path;
  }
  *error = "FF_CPU_ISA must be auto, avx512, avx2 or baseline (the paths this build has)";
  return nullptr;
}

// The path in use: FF_CPU_ISA's at the first call (the best one where it is unset, or cannot be honoured: then
// env_error says why, and callers refuse to run), or ff_cpu_set_isa's.
struct Selection {
  explicit Selection(const char* env) {
    const Path* chosen = find(env, &env_error);
    path.store(chosen ? chosen : best());
  }
  std::atomic<const Path*> path;
  const char* env_error = nullptr;
};

Selection& selection() {
  static Selection s(std::getenv("FF_CPU_ISA"));
  return s;
}

const Path& path() { return *selection().path.load(std::memory_order_acquire); }

Layout make_layout(const ff_params* p) {
  Layout L;
  L.bh = p->batch * p->heads;
  L.nq = p->nq;
  L.nk = p->nk;
  L.dim = p->dim;
  L.dimp = round_up(p->dim, kGroup);
  L.groups = (p->nk + kGroup - 1) / kGroup;
  L.nkp = L.groups * kGroup;
  int64_t off = 0;
  auto take = [&off](int64_t n) { const int64_t o = off; off += round_up(n, 16); return o; };
  L.qside = take(3 * L.bh * L.nq * L.dim);
  L.kside = take(3 * L.bh * L.nkp * L.dim);
  L.vv = take(L.bh * L.nkp * L.dimp);
  L.acc = take(L.bh * L.nq * L.dimp);
  L.mm = take(L.bh * L.nq);
  L.ll = take(L.bh * L.nq * kGroup);
  L.total = off;
  return L;
}

// sinc(x) ~= 1 + c1 x^2 + c2 x^4 + c3 x^6 for |x| < 1 (near-minimax; relative error ~1e-7 in float32), scaled as
// Consts describes: small-argument factors are R' sinc(x) = R' + c1 R'^3 u + c2 R'^5 u^2 + c3 R'^7 u^3.
Consts make_consts(const ff_params* p) {
  const double c1 = -0.1666659563779831, c2 = 0.008329861797392368, c3 = -0.00019291458011139184;
  Consts k;
  const double R = p->R;
  int m = 0;
  std::frexp(R * 0.70710678118654752, &m);  // R/2^m in [1/sqrt2, sqrt2)
  k.fold = m >= -64 && m <= 64;
  const double Rp = k.fold ? std::ldexp(R, -m) : 1.0, r2 = Rp * Rp;
  k.scale_exp = k.fold ? m : 0;
  k.R = k.fold ? static_cast<float>(Rp) : p->R;
  k.thr = static_cast<float>(1.0 / r2);
  k.c0 = static_cast<float>(Rp);
  k.c1 = static_cast<float>(c1 * r2 * Rp);
  k.c2 = static_cast<float>(c2 * r2 * r2 * Rp);
  k.c3 = static_cast<float>(c3 * r2 * r2 * r2 * Rp);
  k.unscale = static_cast<float>(std::pow(Rp, -kChunk));
  k.unscale_tail = static_cast<float>(std::pow(Rp, -(p->dim % kChunk)));
  return k;
}

}  // namespace
}  // namespace ff_cpu

using ff_cpu::make_consts;
using ff_cpu::make_layout;

extern "C" const char* ff_cpu_isa(void) { return ff_cpu::path().name; }

extern "C" const char* ff_cpu_isa_error(void) { return ff_cpu::selection().env_error; }

extern "C" const char* ff_cpu_isa_unsupported(const char* name) {
  const char* error = nullptr;
  ff_cpu::find(name, &error);
  return error;
}

extern "C" const char* ff_cpu_set_isa(const char* name) {
  const char* error = nullptr;
  const ff_cpu::Path* path = ff_cpu::find(name, &error);
  if (path) ff_cpu::selection().path.store(path, std::memory_order_release);
  return error;
}

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
  return ff_cpu::round_up(r < 1 ? 1 : r, ff_cpu::kRowBlock);
}

extern "C" void ff_cpu_prepare(const ff_params* p, ff_dtype dt, const void* q, const void* k, const void* v,
                               void* workspace, int64_t item_begin, int64_t item_end) {
  ff_cpu::path().prepare(p, make_layout(p), make_consts(p), dt, q, k, v, static_cast<float*>(workspace),
                         item_begin, item_end);
}

extern "C" void ff_cpu_compute(const ff_params* p, ff_dtype dt, void* workspace, void* out, int64_t row_begin,
                               int64_t row_end) {
  ff_cpu::path().compute(p, make_layout(p), make_consts(p), dt, static_cast<float*>(workspace), out, row_begin,
                         row_end);
}

const char* ff_cpu::call_problem(const ff_params* p, const void* workspace) {
  if (const char* err = ff_validate_params(p)) return err;
  if (const char* err = ff_cpu_isa_error()) return err;
  if (reinterpret_cast<uintptr_t>(workspace) % FF_CPU_WORKSPACE_ALIGNMENT != 0)
    return "FourierAttention: workspace must be 64-byte aligned";
  return nullptr;
}

extern "C" const char* ff_cpu_forward(const ff_params* p, ff_dtype dtype, const void* q, const void* k,
                                      const void* v, void* out, void* workspace) {
  if (const char* err = ff_cpu::call_problem(p, workspace)) return err;
  ff_cpu_prepare(p, dtype, q, k, v, workspace, 0, ff_cpu_prepare_items(p));
  ff_cpu_compute(p, dtype, workspace, out, 0, ff_cpu_rows(p));
  return nullptr;
}
