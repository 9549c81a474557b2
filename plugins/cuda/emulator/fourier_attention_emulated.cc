// ff_cuda_emulated_forward: the CUDA kernels of fourier_attention_kernel.cuh run on the CPU (cuda_emulation.h),
// with the launch planning of ff_cuda_forward for a given SM count; ff_cuda_emulated_plan: that planning alone.
// For tests of the kernels' logic where no GPU is available; slow.
#include <vector>

#include "cuda_emulation.h"
// (the kernel header comes after the emulation of CUDA's built-ins)
namespace ff_cuda {
inline float* shared_memory() { return static_cast<float*>(ff_emu::dynamic_shared()); }
}  // namespace ff_cuda
#define FF_CUDA_MAX_STRIDE_GRID 3  // grids smaller than the work: every case runs the table and merge striding
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
  int sms;
  const char* sm_count(int* out) {
    *out = sms;
    return nullptr;
  }
  const char* launch(ff_cuda::Kernel kernel, unsigned grid, unsigned threads, size_t smem, const ff_cuda::Args& args) {
    Call call{kernel, &args};
    return ff_emu::run_grid(grid, threads, smem, order, seed, &run_thread, &call);
  }
};

}  // namespace

/* As ff_cuda_forward on a device with sm_count SMs, on host pointers and synchronously, with its own workspace.
 * order: 0, 1, 2 = threads run forward, reverse or shuffled (by seed) between barriers; a correctly synchronized
 * kernel gives the same bits in every order. */
FF_EMU_API const char* ff_cuda_emulated_forward(const ff_params* p, ff_dtype dtype,
                                                const void* q, const ff_strides* q_strides,
                                                const void* k, const ff_strides* k_strides,
                                                const void* v, const ff_strides* v_strides,
                                                void* out, const ff_strides* out_strides, int order, unsigned seed,
                                                int sm_count) {
  if (order < ff_emu::kForward || order > ff_emu::kShuffled) return "CUDA emulation: order must be 0, 1 or 2";
  const size_t bytes = ff_cuda::workspace_bytes(p);
  if (bytes == SIZE_MAX) return "CUDA emulation: the workspace would reach 2^62 bytes";
  std::vector<float4> workspace((bytes + sizeof(float4) - 1) / sizeof(float4));  // 16-byte aligned
  EmulatedRunner runner{static_cast<ff_emu::Order>(order), seed, sm_count};
  return ff_cuda::forward(p, dtype, q, q_strides, k, k_strides, v, v_strides, out, out_strides, workspace.data(),
                          bytes, runner);
}

/* The attention kernel's launch for p (valid, non-empty) on sm_count SMs: plan[0..4] = dim bucket, queries per
 * tile, key splits, blocks, merge blocks; and, if tiles is not NULL, the key tiles of each block in launch order
 * (the first min(blocks, max_tiles)). Returns NULL or the parameter check's message. */
FF_EMU_API const char* ff_cuda_emulated_plan(const ff_params* p, int sm_count, int64_t* plan, int64_t* tiles,
                                             int64_t max_tiles) {
  static const float4 dummy{};  // stands for every pointer and the workspace
  if (const char* err = ff_cuda::check_call(p, FF_DTYPE_FLOAT32, &dummy, &dummy, &dummy, &dummy, &dummy, SIZE_MAX))
    return err;
  if (p->batch * p->heads == 0 || p->nq == 0) return "CUDA emulation: nothing to plan";
  const ff_cuda::Launch l = ff_cuda::plan_launch(p, FF_DTYPE_FLOAT32, sm_count, nullptr, nullptr, nullptr, nullptr,
                                                 nullptr, nullptr, nullptr, nullptr, nullptr);
  plan[0] = l.bucket;
  plan[1] = l.args.bq;
  plan[2] = l.args.splits;
  plan[3] = l.grid;
  plan[4] = l.merge_grid;
  for (int64_t blk = 0; tiles != nullptr && blk < int64_t{l.grid} && blk < max_tiles; ++blk) {
    const ff_cuda::WorkItem w = ff_cuda::work_item(blk, l.args);
    tiles[blk] = w.kt_end - w.kt_begin;
  }
  return nullptr;
}
