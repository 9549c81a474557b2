// ff_cpu_forward_threads: the CPU kernel over a persistent pool of threads (libfourierformer_cpu.so only; the
// ONNX Runtime op uses ONNX Runtime's pool instead).
//
// One call runs both phases: every participant (the caller and up to threads - 1 pool workers) claims prepare
// items, then waits at a barrier, then claims output rows, in ranges taken from an atomic counter. Workers spin
// briefly for the next job before they sleep, so the back-to-back calls of a model's layers do not pay a wake-up
// each. A caller that finds the pool busy (another thread's call) runs its job alone.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "fourier_attention_cpu.h"
#include "fourier_attention_cpu_internal.h"

namespace {

struct Job {
  const ff_params* p;
  ff_dtype dt;
  const void *q, *k, *v;
  void *out, *ws;
  int64_t items, items_per_task, rows, rows_per_task;
  int participants;
  std::atomic<int64_t> next_item{0}, next_row{0};
  std::atomic<int> prepared{0};

  void run() {
    for (int64_t b; (b = next_item.fetch_add(items_per_task)) < items;)
      ff_cpu_prepare(p, dt, q, k, v, ws, b, b + items_per_task < items ? b + items_per_task : items);
    prepared.fetch_add(1, std::memory_order_acq_rel);
    for (int spins = 0; prepared.load(std::memory_order_acquire) < participants; ++spins)
      if (spins > 1000) std::this_thread::yield();
    for (int64_t b; (b = next_row.fetch_add(rows_per_task)) < rows;)
      ff_cpu_compute(p, dt, ws, out, b, b + rows_per_task < rows ? b + rows_per_task : rows);
  }
};

class Pool {
 public:
  // Runs job with up to `threads` participants; returns once every participant is done with it.
  void run(Job& job, int threads) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || threads <= 1) {
      job.participants = 1;
      job.run();
      return;
    }
    grow(threads - 1);
    const int helpers = static_cast<int>(workers_.size()) < threads - 1 ? static_cast<int>(workers_.size())
                                                                         : threads - 1;
    job.participants = helpers + 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      wanted_ = helpers;
      done_ = 0;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job.run();
    for (int spins = 0; done_.load(std::memory_order_acquire) < helpers; ++spins)
      if (spins > 1000) std::this_thread::yield();
  }

  ~Pool() = delete;  // lives until the process ends (workers are detached)

 private:
  void grow(int n) {
    const uint64_t now = generation_.load(std::memory_order_acquire);  // a new worker waits for the next job
    while (static_cast<int>(workers_.size()) < n) {
      try {
        workers_.emplace_back([this, id = static_cast<int>(workers_.size()), now] { work(id, now); });
        workers_.back().detach();
      } catch (...) {  // no more threads: run with those there are
        return;
      }
    }
  }

  void work(int id, uint64_t seen) {
    for (;;) {
      // Spin (about 50 us) for the next job, then sleep.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
      for (int spins = 0; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        cpu_relax();
        if (spins % 64 == 63 && std::chrono::steady_clock::now() > until) break;
      }
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        job = id < wanted_ ? job_ : nullptr;
      }
      if (!job) continue;
      job->run();
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  std::mutex busy_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> done_{0};
  Job* job_ = nullptr;
  int wanted_ = 0;
};

// The process's pool (a child after fork() makes its own: the parent's workers do not exist there).
Pool& pool() {
  static std::atomic<pid_t> owner{0};
  static std::atomic<Pool*> instance{nullptr};
  static std::mutex make;
  const pid_t pid = getpid();
  if (owner.load(std::memory_order_acquire) != pid) {
    std::lock_guard<std::mutex> lock(make);
    if (owner.load() != pid) {
      instance.store(new Pool());  // the parent's pool, if any, is left behind with its threads
      owner.store(pid, std::memory_order_release);
    }
  }
  return *instance.load(std::memory_order_acquire);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const char* ff_cpu_forward_threads(
    const ff_params* p, ff_dtype dtype, const void* q, const void* k, const void* v, void* out, void* workspace,
    int threads) {
  if (const char* err = ff_cpu::call_problem(p, workspace)) return err;
  if (threads < 1) threads = 1;
  Job job;
  job.p = p;
  job.dt = dtype;
  job.q = q;
  job.k = k;
  job.v = v;
  job.out = out;
  job.ws = workspace;
  job.items = ff_cpu_prepare_items(p);
  job.items_per_task = job.items / (4 * static_cast<int64_t>(threads)) + 1;
  job.rows = ff_cpu_rows(p);
  job.rows_per_task = ff_cpu_rows_per_task(p, threads);
  // Small problems: the caller alone (a handoff costs more than it saves).
  const double pair_dims = static_cast<double>(p->batch * p->heads) * p->nq * p->nk * p->dim;
  if (pair_dims < 2e5) threads = 1;
  try {
    pool().run(job, threads);
  } catch (...) {  // pool() or a lock failed, before the job was handed to any worker: run it alone
    job.participants = 1;
    job.run();
  }
  return nullptr;
}
