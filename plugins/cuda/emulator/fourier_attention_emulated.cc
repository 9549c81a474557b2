// ff_cuda_emulated_forward: the CUDA kernel of fourier_attention_kernel.cuh run on the CPU (cuda_emulation.h),
// with the launch planning of ff_cuda_forward. For tests of the kernel's logic where no GPU is available; slow.
#include <vector>

#include "cuda_emulation.h"
// (the kernel header comes after the emulation of CUDA's built-ins)
#define FF_CUDA_MAX_TABLE_GRID 3  // a grid smaller than the table's tiles: every case runs the table kernel's striding
#include "fourier_attention_kernel.cuh"

#define FF_EMU_API extern "C" __attribute__((visibility("default")))

namespace {

struct Call {
  ff_cuda::Kernel kernel;
  const ff_cuda::Args* args;
};

void run_thread(void* call) {
  const Call* c = static_cast<const Call*>(call);
  c->kernel(*c->args);
}

struct EmulatedRunner {
  ff_emu::Order order;
  unsigned seed;
  const char* launch(ff_cuda::Kernel kernel, unsigned grid, const ff_cuda::Args& args) {
    Call call{kernel, &args};
    return ff_emu::run_grid(grid, ff_cuda::kThreads, order, seed, &run_thread, &call);
  }
};

}  // namespace

/* As ff_cuda_forward, on host pointers and synchronously, with its own workspace. order: 0, 1, 2 = threads run
 * forward, reverse or shuffled (by seed) between barriers; a correctly synchronized kernel gives the same bits in
 * every order. */
FF_EMU_API const char* ff_cuda_emulated_forward(const ff_params* p, ff_dtype dtype,
                                                const void* q, const ff_strides* q_strides,
                                                const void* k, const ff_strides* k_strides,
                                                const void* v, const ff_strides* v_strides,
                                                void* out, const ff_strides* out_strides, int order, unsigned seed) {
  if (order < ff_emu::kForward || order > ff_emu::kShuffled) return "CUDA emulation: order must be 0, 1 or 2";
  const size_t bytes = ff_cuda::workspace_bytes(p);
  if (bytes == SIZE_MAX) return "CUDA emulation: the workspace would reach 2^62 bytes";
  std::vector<float4> workspace((bytes + sizeof(float4) - 1) / sizeof(float4));  // 16-byte aligned
  EmulatedRunner runner{static_cast<ff_emu::Order>(order), seed};
  return ff_cuda::forward(p, dtype, q, q_strides, k, k_strides, v, v_strides, out, out_strides, workspace.data(),
                          bytes, runner);
}
