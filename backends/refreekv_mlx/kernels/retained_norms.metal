// retained_norms: mean retained attention norm for every eviction count (step 5).
//
// This is the BODY of a Metal kernel function: mx.fast.metal_kernel generates the signature
//   const device float* a, const device int* dims, device float* curve, + the thread attributes used below.
//
// Inputs   a      (H, n)  each head's last-row attention on the candidates, least important first
//          dims   [H, n]  (int32)
// Output   curve  (n,)    R(e) = mean_h sqrt( sum_{k >= e} a[h, k]^2 ),  e = 0 .. n-1
//
// Launch: ONE threadgroup of T threads (grid = threadgroup = (T, 1, 1)), T <= REFREEKV_MAX_THREADS.
// The tail sums are a reverse scan, computed in chunks: thread t owns the contiguous chunk
// [t*c, (t+1)*c) of eviction counts (c = ceil(n / T)). For each head:
//   1. every thread sums the squares of its chunk and publishes the total in threadgroup memory;
//   2. after a barrier, a thread adds up the totals of the chunks AFTER its own (the tail beyond it),
//      then walks its chunk backwards, adding one square at a time: a true reverse scan. Every partial
//      sum only ever grows, so it never dips below zero (no `total - prefix`, no sqrt of a negative).
// A thread owns the same e's for every head, so it accumulates the mean over heads in place,
// in head order 0 .. H-1 (deterministic, no atomics).

// Threadgroup memory must be declared at kernel-function scope (not inside a loop or block).
threadgroup float chunk_total[REFREEKV_MAX_THREADS];

const uint tid = thread_position_in_threadgroup.x;
const uint num_threads = threads_per_threadgroup.x;

const uint heads = uint(dims[0]);
const uint n = uint(dims[1]);
const uint chunk = (n + num_threads - 1) / num_threads;
const uint lo = metal::min(tid * chunk, n);
const uint hi = metal::min(lo + chunk, n);

for (uint e = lo; e < hi; ++e) {
    curve[e] = 0.0f;  // outputs start uninitialised
}

for (uint h = 0; h < heads; ++h) {
    const device float* row = a + size_t(h) * n;

    float total = 0.0f;
    for (uint e = hi; e > lo; --e) {
        total += row[e - 1] * row[e - 1];
    }
    chunk_total[tid] = total;
    threadgroup_barrier(mem_flags::mem_threadgroup);

    float tail = 0.0f;
    for (uint c = num_threads - 1; c > tid; --c) {
        tail += chunk_total[c];
    }
    for (uint e = hi; e > lo; --e) {
        tail += row[e - 1] * row[e - 1];
        curve[e - 1] += metal::sqrt(tail);
    }
    // chunk_total is rewritten for the next head: wait until every thread has read it.
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

for (uint e = lo; e < hi; ++e) {
    curve[e] /= float(heads);
}
