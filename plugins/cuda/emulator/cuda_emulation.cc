// The fiber scheduler of cuda_emulation.h.
#include <ucontext.h>

#include <algorithm>
#include <deque>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_emulation.h"  // last: it redefines names the standard headers use

namespace ff_emu {

Dim3 thread_index, block_index, grid_dim;

namespace {

constexpr size_t kStackBytes = 256 << 10;
constexpr unsigned kWarp = 32;

enum class State { kReady, kAtSync, kAtShuffle, kDone };

struct Copy {
  void* dst;
  const void* src;
  size_t bytes;
};
using CopyGroup = std::vector<Copy>;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  State state = State::kReady;
  unsigned shuffles = 0;  // shuffles done: selects one of two exchange buffers (a lane is at most one ahead)
  CopyGroup open_copies;            // cp.async issued since the last commit
  std::deque<CopyGroup> committed;  // committed groups not waited for, oldest first
};

struct Grid {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<float> exchange;  // [2][threads]: values posted by the lanes of each warp
  Fiber* current = nullptr;
  std::vector<float4> shared;  // dynamic shared memory
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
};

Grid* g_grid = nullptr;

void fiber_main() {
  g_grid->body(g_grid->ctx);
  g_grid->current->state = State::kDone;  // uc_link returns to the scheduler
}

// Switch from the running thread back to the scheduler, waiting in `state`.
void wait(State state) {
  Fiber* self = g_grid->current;
  self->state = state;
  swapcontext(&self->context, &g_grid->scheduler);
}

}  // namespace

void syncthreads() { wait(State::kAtSync); }

float shfl_xor(float value, int lane_mask) {
  const unsigned tid = thread_index.x, lane = tid % kWarp, warp_base = tid - lane;
  Fiber* self = g_grid->current;
  float* buffer = g_grid->exchange.data() + (self->shuffles++ % 2) * g_grid->fibers.size();
  buffer[tid] = value;
  wait(State::kAtShuffle);
  return buffer[warp_base + ((lane ^ static_cast<unsigned>(lane_mask)) % kWarp)];
}

void* dynamic_shared() { return g_grid->shared.data(); }

void memcpy_async(void* dst, const void* src, size_t bytes) { g_grid->current->open_copies.push_back({dst, src, bytes}); }

void commit_async() {
  Fiber* self = g_grid->current;
  self->committed.push_back(std::move(self->open_copies));
  self->open_copies.clear();
}

void wait_async(unsigned pending) {
  Fiber* self = g_grid->current;
  while (self->committed.size() > pending) {
    for (const Copy& c : self->committed.front()) std::memcpy(c.dst, c.src, c.bytes);
    self->committed.pop_front();
  }
}

namespace {

// Runs fiber f until it waits or ends. A function of its own: swapcontext returns twice, as setjmp does.
__attribute__((noinline)) void resume(Grid& g, Fiber& f, unsigned tid) {
  thread_index.x = tid;
  g.current = &f;
  swapcontext(&g.scheduler, &f.context);
}

// Runs the ready lanes of the warp starting at thread w (in `lanes` order) and releases its shuffles, until no lane
// is ready: the warp runs ahead to its next __syncthreads (or its end) before another warp runs, as far apart as
// warps may get on a GPU, so that a missing __syncthreads between warps shows.
void run_warp(Grid& g, unsigned w, const std::vector<unsigned>& lanes) {
  Fiber* const warp = g.fibers.data() + w;
  while (true) {
    for (unsigned lane : lanes)
      if (warp[lane].state == State::kReady) resume(g, warp[lane], w + lane);
    if (!std::all_of(warp, warp + kWarp, [](const Fiber& f) { return f.state == State::kAtShuffle; })) return;
    for (unsigned lane = 0; lane < kWarp; ++lane) warp[lane].state = State::kReady;
  }
}

bool all_done(const std::vector<Fiber>& fibers) {
  return std::all_of(fibers.begin(), fibers.end(), [](const Fiber& f) { return f.state == State::kDone; });
}

// Runs block b to its end; returns NULL or the barrier error.
const char* run_block(Grid& g, unsigned b, Order order, std::mt19937& rng) {
  block_index.x = b;
  for (Fiber& f : g.fibers) {
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &g.scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.state = State::kReady;
    f.shuffles = 0;
    f.open_copies.clear();  // copies never waited for are lost
    f.committed.clear();
  }
  std::memset(g.shared.data(), 0xff, g.shared.size() * sizeof(float4));  // NaN: unstaged data shows
  const unsigned warps = static_cast<unsigned>(g.fibers.size()) / kWarp;
  std::vector<unsigned> warp_order(warps), lanes(kWarp);
  while (true) {
    std::iota(warp_order.begin(), warp_order.end(), 0u);
    std::iota(lanes.begin(), lanes.end(), 0u);
    if (order == kReverse) {
      std::reverse(warp_order.begin(), warp_order.end());
      std::reverse(lanes.begin(), lanes.end());
    }
    if (order == kShuffled) {
      std::shuffle(warp_order.begin(), warp_order.end(), rng);
      std::shuffle(lanes.begin(), lanes.end(), rng);
    }
    for (unsigned w : warp_order) run_warp(g, w * kWarp, lanes);
    if (all_done(g.fibers)) return nullptr;
    if (!std::all_of(g.fibers.begin(), g.fibers.end(), [](const Fiber& f) { return f.state == State::kAtSync; }))
      return "CUDA emulation: a barrier (__syncthreads or a warp shuffle) is not reached by every thread";
    for (Fiber& f : g.fibers) f.state = State::kReady;
  }
}

}  // namespace

const char* run_grid(unsigned grid, unsigned threads, size_t shared_bytes, Order order, unsigned seed,
                     void (*body)(void*), void* ctx) {
  if (threads == 0 || threads > 1024 || threads % kWarp != 0)
    return "CUDA emulation: threads per block must be a multiple of 32 in 32..1024";
  Grid g;
  g.body = body;
  g.ctx = ctx;
  g.fibers.resize(threads);
  g.exchange.assign(2 * threads, 0.0f);
  g.shared.resize((shared_bytes + sizeof(float4) - 1) / sizeof(float4));
  for (Fiber& f : g.fibers) f.stack.reset(new char[kStackBytes]);
  g_grid = &g;
  std::mt19937 rng(seed);
  grid_dim.x = grid;
  const char* error = nullptr;
  for (unsigned b = 0; b < grid && error == nullptr; ++b) error = run_block(g, b, order, rng);
  g_grid = nullptr;
  return error;
}

}  // namespace ff_emu
