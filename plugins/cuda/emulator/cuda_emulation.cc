// The fiber scheduler of cuda_emulation.h.
#include <ucontext.h>

#include <algorithm>
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

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  State state = State::kReady;
  unsigned shuffles = 0;  // shuffles done: selects one of two exchange buffers (a lane is at most one ahead)
};

struct Grid {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<float> exchange;  // [2][threads]: values posted by the lanes of each warp
  Fiber* current = nullptr;
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

// Releases the barriers every thread concerned has reached; returns NULL, or a message if none can be.
const char* release(std::vector<Fiber>& fibers) {
  const unsigned n = static_cast<unsigned>(fibers.size());
  bool released = false;
  for (unsigned w = 0; w < n; w += kWarp) {
    const bool warp_waits = std::all_of(fibers.begin() + w, fibers.begin() + w + kWarp,
                                        [](const Fiber& f) { return f.state == State::kAtShuffle; });
    if (warp_waits) {
      for (unsigned t = w; t < w + kWarp; ++t) fibers[t].state = State::kReady;
      released = true;
    }
  }
  if (released) return nullptr;
  const auto at_sync = std::count_if(fibers.begin(), fibers.end(), [](const Fiber& f) { return f.state == State::kAtSync; });
  if (at_sync == static_cast<long>(n)) {
    for (Fiber& f : fibers) f.state = State::kReady;
    return nullptr;
  }
  return "CUDA emulation: a barrier (__syncthreads or a warp shuffle) is not reached by every thread";
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

namespace {

// Runs fiber f until it waits or ends. A function of its own: swapcontext returns twice, as setjmp does.
__attribute__((noinline)) void resume(Grid& g, Fiber& f, unsigned tid) {
  thread_index.x = tid;
  g.current = &f;
  swapcontext(&g.scheduler, &f.context);
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
  }
  std::vector<unsigned> sequence(g.fibers.size());
  while (true) {
    std::iota(sequence.begin(), sequence.end(), 0u);
    if (order == kReverse) std::reverse(sequence.begin(), sequence.end());
    if (order == kShuffled) std::shuffle(sequence.begin(), sequence.end(), rng);
    for (unsigned t : sequence)
      if (g.fibers[t].state == State::kReady) resume(g, g.fibers[t], t);
    if (all_done(g.fibers)) return nullptr;
    if (const char* error = release(g.fibers)) return error;
  }
}

}  // namespace

const char* run_grid(unsigned grid, unsigned threads, Order order, unsigned seed, void (*body)(void*), void* ctx) {
  if (threads == 0 || threads > 1024 || threads % kWarp != 0)
    return "CUDA emulation: threads per block must be a multiple of 32 in 32..1024";
  Grid g;
  g.body = body;
  g.ctx = ctx;
  g.fibers.resize(threads);
  g.exchange.assign(2 * threads, 0.0f);
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
