#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pybitnet {

// A persistent pool: n - 1 worker threads plus the calling thread run the tasks of one job at a
// time. Workers spin briefly after a job (decoding calls kernels every few microseconds), then
// sleep on a condition variable, so an idle process costs no CPU.
//
// A job is done when its tasks are, not when every worker has checked in: on a machine whose
// cores are busy with other processes a worker may not run for a whole time slice, and the
// caller then takes all the tasks itself instead of waiting for it (waiting cost milliseconds
// per kernel call, several times the call itself, when another process held a core).
class ThreadPool {
  public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool &operator=(const ThreadPool &) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }
    // Runs task(i) for every i in [0, n_tasks) and returns when all are done. Jobs from several
    // callers run one after another.
    void run(int64_t n_tasks, const std::function<void(int64_t)> &task);

  private:
    void worker_loop();
    // Claims and runs tasks of job `job` until none is left (or a later job has started).
    void take_tasks(uint64_t job);

    std::vector<std::thread> workers_;
    std::mutex job_mutex_;  // one job at a time
    std::mutex wake_mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    // (job number << 32) | next unclaimed task: a task is claimed with one compare-exchange, so
    // a worker that wakes late can never claim a task of a job that has finished.
    std::atomic<uint64_t> state_{0};
    // A job's task count and function, in the slot of its job number's parity: run(J + 1)
    // writes the other slot before it publishes state_, so a worker that read state_ = (J, i)
    // always reads job J's values (J's slot is reused only by job J + 2, after state_ has moved
    // on and the worker's compare-exchange can no longer succeed).
    struct Job {
        std::atomic<int64_t> n_tasks{0};
        std::atomic<const std::function<void(int64_t)> *> task{nullptr};
    };
    Job jobs_[2];
    std::atomic<int64_t> done_{0};  // tasks of the current job finished
    std::mutex done_mutex_;         // the caller sleeps on done_cv_ for the last tasks
    std::condition_variable done_cv_;
};

// The process's pool, created on first use with set_pool_threads' count (default: every
// hardware thread). A child process after fork() gets a fresh pool. The pool lives at least
// as long as the pointer is held; it is never destroyed at exit, where joining threads could
// race the interpreter's shutdown.
std::shared_ptr<ThreadPool> pool();
void set_pool_threads(int n_threads);
int pool_threads();

}  // namespace pybitnet
