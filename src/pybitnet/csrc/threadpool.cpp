#include "threadpool.h"

#include <chrono>
#include <memory>

#include <unistd.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYBITNET_PAUSE() _mm_pause()
#else
#define PYBITNET_PAUSE() std::this_thread::yield()
#endif

namespace pybitnet {

// How long a worker keeps spinning for the next job before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(200);

ThreadPool::ThreadPool(int n_threads) {
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(wake_mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (auto &t : workers_) t.join();
}

void ThreadPool::take_tasks() {
    for (int64_t i = next_task_.fetch_add(1); i < n_tasks_; i = next_task_.fetch_add(1)) (*task_)(i);
}

void ThreadPool::run(int64_t n_tasks, const std::function<void(int64_t)> &task) {
    if (workers_.empty() || n_tasks <= 1) {
        for (int64_t i = 0; i < n_tasks; ++i) task(i);
        return;
    }
    std::lock_guard<std::mutex> job(job_mutex_);
    n_tasks_ = n_tasks;
    task_ = &task;
    next_task_.store(0);
    busy_workers_.store(static_cast<int>(workers_.size()));
    {
        std::lock_guard<std::mutex> lock(wake_mutex_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    take_tasks();
    while (busy_workers_.load(std::memory_order_acquire) != 0) PYBITNET_PAUSE();
}

void ThreadPool::worker_loop() {
    uint64_t seen = 0;
    for (;;) {
        const auto spin_until = std::chrono::steady_clock::now() + kSpin;
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen) {
            PYBITNET_PAUSE();
            if (++spins % 256 == 0 && std::chrono::steady_clock::now() > spin_until) {
                std::unique_lock<std::mutex> lock(wake_mutex_);
                wake_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
                if (stopping_) return;
            }
        }
        seen = generation_.load(std::memory_order_acquire);
        take_tasks();
        busy_workers_.fetch_sub(1, std::memory_order_release);
    }
}

namespace {
struct PoolSlot {
    std::shared_ptr<ThreadPool> pool;
    pid_t owner = 0;
    int threads = 0;
};
// Never destroyed: joining the workers at exit could race the interpreter's shutdown.
PoolSlot &slot = *new PoolSlot;
std::mutex slot_mutex;
}  // namespace

std::shared_ptr<ThreadPool> pool() {
    std::lock_guard<std::mutex> lock(slot_mutex);
    if (slot.pool && slot.owner != getpid()) {
        // After fork() the workers are gone and cannot be joined: leak the old pool.
        new std::shared_ptr<ThreadPool>(std::move(slot.pool));
    }
    if (!slot.pool) {
        const int n = slot.threads > 0 ? slot.threads
                                       : static_cast<int>(std::thread::hardware_concurrency());
        slot.pool = std::make_shared<ThreadPool>(n > 0 ? n : 1);
        slot.owner = getpid();
    }
    return slot.pool;
}

void set_pool_threads(int n_threads) {
    std::lock_guard<std::mutex> lock(slot_mutex);
    slot.threads = n_threads;
    // A job still running keeps its pool alive; the next job starts the new one.
    if (slot.pool && slot.owner == getpid() && slot.pool->size() != n_threads) slot.pool.reset();
}

int pool_threads() {
    std::lock_guard<std::mutex> lock(slot_mutex);
    if (slot.threads > 0) return slot.threads;
    const int n = static_cast<int>(std::thread::hardware_concurrency());
    return n > 0 ? n : 1;
}

}  // namespace pybitnet
