/* CUDA built-ins for a host compiler, enough to run fourier_attention_kernel.cuh on a CPU.
 *
 * A block's threads are fibers (ucontext) run one at a time by a scheduler: warp by warp, in a chosen order, each
 * warp runs to its next __syncthreads() (lane by lane, in a chosen order, between its warp shuffles) before the
 * next warp runs. So shared memory (__shared__ is `static`: one block runs at a time) behaves as on a GPU for
 * correctly synchronized code, and a missing barrier makes the result depend on the order: running forward,
 * reverse and shuffled orders exposes races, between warps as within one.
 * A barrier not reached by every thread (divergence, deadlock) stops the grid with an error.
 * cp.async (the __pipeline_* primitives) is emulated as a copy made when the issuing thread waits for its group:
 * until then the destination keeps its old bytes, so a missing wait (or a missing barrier after it) changes the
 * result. Dynamic shared memory is one buffer per grid, filled with NaN bytes before each block.
 * Include this instead of the CUDA headers; it brings CUDA's own (host-capable) fp16/bf16 and vector types.
 * Include it after every standard header: it redefines names (__noinline__, ...) that those use.
 */
#ifndef FOURIERFORMER_CUDA_EMULATOR_CUDA_EMULATION_H_
#define FOURIERFORMER_CUDA_EMULATOR_CUDA_EMULATION_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace ff_emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

/* Order in which the scheduler runs a block's threads between barriers. */
enum Order { kForward = 0, kReverse = 1, kShuffled = 2 };

/* Runs body(ctx) for threads [0, threads) of blocks [0, grid), one block after the other, with shared_bytes of
 * dynamic shared memory. Returns NULL, or a static message if a barrier was not reached by every thread of its
 * block (or warp). threads <= 1024, a multiple of 32. Not reentrant: one grid at a time per process. */
const char* run_grid(unsigned grid, unsigned threads, size_t shared_bytes, Order order, unsigned seed,
                     void (*body)(void*), void* ctx);

void syncthreads();
float shfl_xor(float value, int lane_mask);
void* dynamic_shared();  // the running block's dynamic shared memory (16-byte aligned)
void memcpy_async(void* dst, const void* src, size_t bytes);  // joins the thread's uncommitted group
void commit_async();                                          // closes that group
void wait_async(unsigned pending);  // makes the copies of all but the `pending` newest committed groups

extern Dim3 thread_index, block_index, grid_dim;  // of the running thread; set by the scheduler

}  // namespace ff_emu

// The execution-space and storage keywords, as the host compiler should read them.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

#define threadIdx (ff_emu::thread_index)
#define blockIdx (ff_emu::block_index)
#define gridDim (ff_emu::grid_dim)

inline void __syncthreads() { ff_emu::syncthreads(); }
inline float __shfl_xor_sync(unsigned /*mask: every lane takes part*/, float value, int lane_mask) {
  return ff_emu::shfl_xor(value, lane_mask);
}
inline float __int_as_float(int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void __pipeline_memcpy_async(void* dst, const void* src, size_t bytes) { ff_emu::memcpy_async(dst, src, bytes); }
inline void __pipeline_commit() { ff_emu::commit_async(); }
inline void __pipeline_wait_prior(size_t pending) { ff_emu::wait_async(static_cast<unsigned>(pending)); }
inline float __fmul_rn(float a, float b) { return a * b; }  // the emulator is built without FP contraction

#endif  /* FOURIERFORMER_CUDA_EMULATOR_CUDA_EMULATION_H_ */
