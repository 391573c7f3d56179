#include "threadpool.h"

#include <algorithm>
#include <chrono>
#include <memory>

#ifdef _WIN32
#include <process.h>
#define getpid _getpid  // Windows has no fork: the owner never changes there
#else
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYBITNET_PAUSE() _mm_pause()
#else
#define PYBITNET_PAUSE() std::this_thread::yield()
#endif

namespace pybitnet {

// How long a worker keeps spinning for the next job before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(200);
// How long the caller spins for workers to finish a job's last tasks before it sleeps (a job's
// tasks are balanced to within a few microseconds when every thread has a core).
constexpr auto kFinishSpin = std::chrono::microseconds(50);

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

void ThreadPool::take_tasks(uint64_t job) {
    for (;;) {
        uint64_t s = state_.load(std::memory_order_acquire);
        if (s >> 32 != job) return;
        // Read after the acquire above, so at least this job's values; if job + 2 replaced
        // them meanwhile, the compare-exchange below fails.
        const Job &slot = jobs_[job & 1];
        const int64_t n = slot.n_tasks.load(std::memory_order_relaxed);
        const auto *task = slot.task.load(std::memory_order_relaxed);
        const int64_t i = static_cast<int64_t>(s & 0xffffffffu);
        if (i >= n) return;
        if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
        (*task)(i);
        if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
            // the job's last task: wake the caller if it sleeps (under the mutex, so a caller
            // between its check and its wait cannot miss it)
            std::lock_guard<std::mutex> lock(done_mutex_);
            done_cv_.notify_one();
        }
    }
}

void ThreadPool::run(int64_t n_tasks, const std::function<void(int64_t)> &task) {
    if (workers_.empty() || n_tasks <= 1) {
        for (int64_t i = 0; i < n_tasks; ++i) task(i);
        return;
    }
    constexpr int64_t kMaxTasks = int64_t{1} << 31;  // the task index has 32 bits of state_
    if (n_tasks > kMaxTasks) {
        for (int64_t first = 0; first < n_tasks; first += kMaxTasks)
            run(std::min(kMaxTasks, n_tasks - first), [&](int64_t i) { task(first + i); });
        return;
    }
    std::lock_guard<std::mutex> lock_job(job_mutex_);
    const uint64_t job = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    jobs_[job & 1].n_tasks.store(n_tasks, std::memory_order_relaxed);
    jobs_[job & 1].task.store(&task, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(wake_mutex_);
        state_.store(job << 32, std::memory_order_release);
    }
    wake_.notify_all();
    take_tasks(job);
    // Every task is claimed: wait only for those still running on a worker; spin a little, then
    // sleep. Sleeping matters when other processes keep cores busy: a worker preempted in the
    // middle of a task waits in some core's run queue, and an idle core (ours, once asleep) is
    // where the OS moves it at once; a spinning caller kept its core and waited a time slice.
    const auto spin_until = std::chrono::steady_clock::now() + kFinishSpin;
    for (int spins = 1; done_.load(std::memory_order_acquire) != n_tasks; ++spins) {
        PYBITNET_PAUSE();
        if (spins % 64 == 0 && std::chrono::steady_clock::now() > spin_until) {
            std::unique_lock<std::mutex> lock(done_mutex_);
            done_cv_.wait(lock, [&] { return done_.load(std::memory_order_acquire) == n_tasks; });
        }
    }
}

void ThreadPool::worker_loop() {
    uint64_t seen = 0;
    const auto current = [this] { return state_.load(std::memory_order_acquire) >> 32; };
    for (;;) {
        const auto spin_until = std::chrono::steady_clock::now() + kSpin;
        int spins = 0;
        while (current() == seen) {
            PYBITNET_PAUSE();
            if (++spins % 256 == 0 && std::chrono::steady_clock::now() > spin_until) {
                std::unique_lock<std::mutex> lock(wake_mutex_);
                wake_.wait(lock, [&] { return stopping_ || current() != seen; });
                if (stopping_) return;
            }
        }
        seen = current();
        take_tasks(seen);
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
