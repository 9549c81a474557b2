/* FourierAttention CPU kernel: plain C API.
 *
 * Usage (any threading scheme; every call below is thread-safe for disjoint ranges):
 *   size_t bytes = ff_cpu_workspace_size(&p);          // allocate, 64-byte aligned
 *   ff_cpu_prepare(&p, dtype, q, k, v, ws, b, e);       // for disjoint [b,e) covering
 *                                                       //   [0, ff_cpu_prepare_items(&p))
 *   -- barrier --
 *   ff_cpu_compute(&p, dtype, ws, out, b, e);           // for disjoint [b,e) covering
 *                                                       //   [0, ff_cpu_rows(&p)); row = (b,h,i)
 * or, single-threaded, ff_cpu_forward(). Parameters must pass ff_validate_params().
 * dtype applies to q, k, v and out; arithmetic is float32 either way.
 * Nothing here allocates, throws or aborts.
 *
 * Instruction-set paths: avx512 (AVX-512 F/BW/VL/DQ), avx2 (AVX2 + FMA) and baseline (SSE2; on other
 * architectures the only one). The best one the CPU and OS support is chosen at the first call, or the one the
 * environment variable FF_CPU_ISA names (auto | avx512 | avx2 | baseline). Callers check ff_cpu_isa_error()
 * before running: where FF_CPU_ISA cannot be honoured, it says why (the best path is in use meanwhile).
 * The workspace layout is the same for every path.
 */
#ifndef FOURIERFORMER_CPU_FOURIER_ATTENTION_CPU_H_
#define FOURIERFORMER_CPU_FOURIER_ATTENTION_CPU_H_

#include <stddef.h>
#include <stdint.h>

#include "fourier_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The path in use: "avx512", "avx2" or "baseline". */
const char* ff_cpu_isa(void);

/* NULL, or why FF_CPU_ISA could not be honoured (an unknown name, or a path this CPU cannot run). */
const char* ff_cpu_isa_error(void);

/* NULL if the path named name ("auto" included) can run here, else why not. */
const char* ff_cpu_isa_unsupported(const char* name);

/* Uses the path named name from now on (for tests and benchmarks): NULL, or why not (then nothing changes).
 * Safe between calls of other threads: the workspace does not depend on the path. */
const char* ff_cpu_set_isa(const char* name);

/* Required alignment of the workspace pointer. */
#define FF_CPU_WORKSPACE_ALIGNMENT 64

/* Workspace bytes for these parameters: O(batch*heads*(nq+nk)*dim). */
size_t ff_cpu_workspace_size(const ff_params* p);

/* Number of prepare items: batch*heads*(nq + nk) (one q row or one k/v row each). */
int64_t ff_cpu_prepare_items(const ff_params* p);

/* Precomputes sin/cos of R*q and R*k, and repacks k and v into the workspace,
 * for the prepare items [item_begin, item_end). */
void ff_cpu_prepare(const ff_params* p, ff_dtype dtype, const void* q, const void* k,
                    const void* v, void* workspace, int64_t item_begin, int64_t item_end);

/* Number of output rows: batch*heads*nq. */
int64_t ff_cpu_rows(const ff_params* p);

/* A reasonable number of rows per parallel task (a multiple of the kernel's row block). */
int64_t ff_cpu_rows_per_task(const ff_params* p, int num_threads);

/* Computes out rows [row_begin, row_end) (row = (b*heads + h)*nq + i). Needs every
 * prepare item done. Writes only those rows of out and their own workspace state. */
void ff_cpu_compute(const ff_params* p, ff_dtype dtype, void* workspace, void* out,
                    int64_t row_begin, int64_t row_end);

/* Single-threaded convenience: validate, prepare, compute. Returns NULL or an error. */
const char* ff_cpu_forward(const ff_params* p, ff_dtype dtype, const void* q, const void* k,
                           const void* v, void* out, void* workspace);

/* libfourierformer_cpu.so only (fourier_attention_cpu_threads.cpp): ff_cpu_forward over up to `threads` threads
 * (the caller and a persistent pool). Returns NULL or an error, as ff_cpu_forward. */
const char* ff_cpu_forward_threads(const ff_params* p, ff_dtype dtype, const void* q, const void* k,
                                   const void* v, void* out, void* workspace, int threads);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* FOURIERFORMER_CPU_FOURIER_ATTENTION_CPU_H_ */
