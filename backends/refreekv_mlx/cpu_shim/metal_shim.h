// metal_shim.h: just enough of the Metal Shading Language to compile the ReFreeKV kernel bodies as C++20
// and run them on CPU threads, so their logic can be tested on machines without an Apple GPU.
//
// How a launch is simulated (metal_shim::launch):
//   - threadgroups run ONE AFTER ANOTHER; inside a threadgroup every simulated GPU thread is a real
//     std::thread, so threads interleave as the OS schedules them and `threadgroup_barrier` is a real
//     std::barrier: a missing barrier can show up as a wrong result, as on the GPU;
//   - `threadgroup` variables become function-scope `static`s: one copy shared by every thread that runs
//     the kernel body. Because threadgroups run one at a time, that is exactly "one copy per threadgroup";
//   - thread attributes (thread_position_in_grid, ...) are thread_local variables set before the body runs;
//   - a thread whose body returns early drops out of the barrier (arrive_and_drop); after the launch the
//     shim compares how many barriers each thread passed and reports a mismatch (on a GPU, a barrier not
//     reached by every thread of the group is undefined behaviour).
//
// What is NOT emulated faithfully (keep the kernels free of it, or test it on a Mac):
//   - SIMD-group intrinsics (simd_sum, simd_max, simd_shuffle, quad_*): not provided; the kernels reduce
//     through threadgroup memory instead. Lock-step execution within a SIMD group is not modelled.
//   - Vector types (float4, half ...), `half`/`bfloat` arithmetic, texture and atomic types: not provided.
//   - Floating-point details: Metal's exp/sqrt differ from the C library's by a few ulp, and the Metal
//     compiler may contract a*b+c into fma; compare with a tolerance, never bit for bit.
//   - Uninitialised memory: Metal outputs and threadgroup memory start with garbage. The Python runner
//     fills outputs with NaN so an unwritten element shows up, but `static` threadgroup arrays start at
//     zero (first launch) or keep the previous group's values.
//   - Data races on device memory between threadgroups cannot happen here (groups run sequentially),
//     so a kernel that races across groups would pass the shim and fail on the GPU.
//   - Out-of-bounds accesses are not checked (build with -fsanitize=address to check them).
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace metal_shim {

struct uint3 {
    unsigned x, y, z;
};

// The thread attributes of the thread currently running the body.
inline thread_local uint3 tl_thread_position_in_grid;
inline thread_local uint3 tl_thread_position_in_threadgroup;
inline thread_local uint3 tl_threadgroup_position_in_grid;
inline thread_local uint3 tl_threads_per_threadgroup;
inline thread_local uint3 tl_threadgroups_per_grid;
inline thread_local std::barrier<>* tl_barrier = nullptr;
inline thread_local unsigned long tl_barrier_count = 0;

inline void barrier_wait() {
    ++tl_barrier_count;
    tl_barrier->arrive_and_wait();
}

// Run `body` once per simulated thread of a dispatchThreads-style launch.
// Returns 0 on success, 1 when grid is not a multiple of group, 2 when the threads of a group passed
// different numbers of barriers (non-uniform barrier: undefined behaviour on a GPU).
inline int launch(uint3 grid, uint3 group, const std::function<void()>& body) {
    // `static` threadgroup memory is shared by every launch of a body: serialise launches.
    static std::mutex launch_mutex;
    std::lock_guard<std::mutex> lock(launch_mutex);

    if (group.x == 0 || group.y == 0 || group.z == 0 || grid.x % group.x || grid.y % group.y ||
        grid.z % group.z) {
        return 1;
    }
    const uint3 groups{grid.x / group.x, grid.y / group.y, grid.z / group.z};
    const unsigned threads_per_group = group.x * group.y * group.z;
    int status = 0;
    for (unsigned gz = 0; gz < groups.z; ++gz) {
        for (unsigned gy = 0; gy < groups.y; ++gy) {
            for (unsigned gx = 0; gx < groups.x; ++gx) {
                std::barrier<> bar(static_cast<std::ptrdiff_t>(threads_per_group));
                std::vector<unsigned long> barrier_counts(threads_per_group, 0);
                std::vector<std::thread> threads;
                threads.reserve(threads_per_group);
                for (unsigned tz = 0; tz < group.z; ++tz) {
                    for (unsigned ty = 0; ty < group.y; ++ty) {
                        for (unsigned tx = 0; tx < group.x; ++tx) {
                            const unsigned index = (tz * group.y + ty) * group.x + tx;
                            threads.emplace_back([&, tx, ty, tz, gx, gy, gz, index] {
                                tl_thread_position_in_threadgroup = {tx, ty, tz};
                                tl_threadgroup_position_in_grid = {gx, gy, gz};
                                tl_thread_position_in_grid = {gx * group.x + tx, gy * group.y + ty,
                                                              gz * group.z + tz};
                                tl_threads_per_threadgroup = group;
                                tl_threadgroups_per_grid = groups;
                                tl_barrier = &bar;
                                tl_barrier_count = 0;
                                body();
                                barrier_counts[index] = tl_barrier_count;
                                bar.arrive_and_drop();  // never leave the others waiting for us
                            });
                        }
                    }
                }
                for (auto& t : threads) {
                    t.join();
                }
                if (std::adjacent_find(barrier_counts.begin(), barrier_counts.end(),
                                       std::not_equal_to<>()) != barrier_counts.end()) {
                    status = 2;
                }
            }
        }
    }
    return status;
}

}  // namespace metal_shim

// ------------------------------------------------------------------------------------------------
// The Metal vocabulary the kernel bodies use. Defined after the runtime above so that these macros
// cannot rewrite it.
using uint = unsigned int;
using uint3 = metal_shim::uint3;

#define thread_position_in_grid (::metal_shim::tl_thread_position_in_grid)
#define thread_position_in_threadgroup (::metal_shim::tl_thread_position_in_threadgroup)
#define threadgroup_position_in_grid (::metal_shim::tl_threadgroup_position_in_grid)
#define threads_per_threadgroup (::metal_shim::tl_threads_per_threadgroup)
#define threadgroups_per_grid (::metal_shim::tl_threadgroups_per_grid)

// Address-space qualifiers: device and constant memory are ordinary pointers on a CPU;
// threadgroup memory is one shared copy per (sequentially run) threadgroup, see above.
#define device
#define constant
#define threadgroup static

namespace mem_flags {
constexpr int mem_none = 0;
constexpr int mem_device = 1;
constexpr int mem_threadgroup = 2;
}  // namespace mem_flags

// Every barrier is a full barrier of the threadgroup: a superset of what any mem_flags asks for.
#define threadgroup_barrier(flags) ::metal_shim::barrier_wait()

namespace metal {
inline float exp(float x) { return std::exp(x); }
inline float sqrt(float x) { return std::sqrt(x); }
inline float abs(float x) { return std::fabs(x); }
template <typename T>
inline T max(T a, T b) { return std::max(a, b); }
template <typename T>
inline T min(T a, T b) { return std::min(a, b); }
}  // namespace metal
