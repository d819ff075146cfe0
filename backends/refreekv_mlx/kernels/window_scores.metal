// window_scores: the attention a ReFreeKV decision reads, reduced to two (Hq, n) arrays (Eq. 1 + ranking).
//
// This is the BODY of a Metal kernel function: mx.fast.metal_kernel generates the signature
//   const device float* q, const device float* k, const device int* dims, const device float* params,
//   device float* col_sum, device float* last_row, + the thread attributes used below.
//
// Inputs   q        (Hq, r, D)  post-RoPE queries of the last r prompt positions, float32, row-contiguous
//          k        (Hkv, L, D) post-RoPE keys; query head h reads KV head h / G (never copied G times)
//          dims     [Hq, L, D, r, G, n]   (int32), 1 <= r <= L, 1 <= n <= L
//          params   [scale]         (float32)
// Outputs  col_sum  (Hq, n)  sum over the r rows of softmax(scale * q k^T + causal mask)[:, :n]
//          last_row (Hq, n)  the last row of that softmax on the first n key positions
//
// Row i is the absolute position L - r + i and sees keys 0 .. L - r + i (causal mask). The official
// script asks for n = L - r (the candidates before its window: every column visible to every row);
// the paper asks for r = 1 and n = L (the last row over every key). In general the columns
// j >= L - r are masked for the rows before j, and the kernel writes probability 0 there.
//
// Launch: one threadgroup per query head (grid = (T, Hq, 1), threadgroup = (T, 1, 1)), T a power of
// two <= REFREEKV_MAX_THREADS. Thread t handles keys j = t, t + T, t + 2T, ...
// Each row is normalised in two passes over its keys:
//   pass 1: every thread keeps a running (max, sum of exp) of its own visible keys ("online softmax");
//           a tree reduction in threadgroup memory merges them into the row's max and sum;
//   pass 2: every thread recomputes its logits and writes exp(logit - max) / sum for its columns.
// Only the r x L block is ever touched, and it is never stored: logits are recomputed
// instead (2 dot products per key and row), which is cheap next to the model's own attention.
// A thread owns the same columns in every row, so it accumulates col_sum without atomics.

// Threadgroup memory must be declared at kernel-function scope (not inside a loop or block).
threadgroup float q_row[REFREEKV_MAX_HEAD_DIM];
threadgroup float part_max[REFREEKV_MAX_THREADS];
threadgroup float part_sum[REFREEKV_MAX_THREADS];

const uint head = threadgroup_position_in_grid.y;
const uint tid = thread_position_in_threadgroup.x;
const uint num_threads = threads_per_threadgroup.x;

const uint num_keys = uint(dims[1]);
const uint head_dim = uint(dims[2]);
const uint window = uint(dims[3]);
const uint groups = uint(dims[4]);
const uint n = uint(dims[5]);                 // columns reported
const uint first_row = num_keys - window;     // absolute position of row 0
const float scale = params[0];

const device float* k_head = k + size_t(head / groups) * num_keys * head_dim;

for (uint i = 0; i < window; ++i) {
    // Row i is the absolute position L - r + i; causally it sees keys 0 .. L - r + i.
    const uint last_visible = first_row + i;

    // Stage this row's query in threadgroup memory: every thread reads all of it.
    const device float* q_src = q + (size_t(head) * window + i) * head_dim;
    for (uint d = tid; d < head_dim; d += num_threads) {
        q_row[d] = q_src[d];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Pass 1: running max m and sum s of exp(logit - m) over this thread's visible keys.
    float m = -INFINITY;
    float s = 0.0f;
    for (uint j = tid; j <= last_visible; j += num_threads) {
        float qk = 0.0f;
        for (uint d = 0; d < head_dim; ++d) {
            qk += k_head[size_t(j) * head_dim + d] * q_row[d];
        }
        const float logit = scale * qk;
        if (logit > m) {
            s = s * metal::exp(m - logit) + 1.0f;  // rescale the old sum to the new max
            m = logit;
        } else {
            s += metal::exp(logit - m);
        }
    }
    part_max[tid] = m;
    part_sum[tid] = s;
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Tree reduction of the (max, sum) pairs: log2(T) steps, a barrier after each.
    for (uint stride = num_threads / 2; stride > 0; stride /= 2) {
        if (tid < stride) {
            const float m1 = part_max[tid];
            const float m2 = part_max[tid + stride];
            const float m12 = metal::max(m1, m2);
            // A thread that saw no key holds (-inf, 0): give it weight 0 instead of exp(-inf - -inf) = NaN.
            const float w1 = (m1 == -INFINITY) ? 0.0f : metal::exp(m1 - m12);
            const float w2 = (m2 == -INFINITY) ? 0.0f : metal::exp(m2 - m12);
            part_sum[tid] = part_sum[tid] * w1 + part_sum[tid + stride] * w2;
            part_max[tid] = m12;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    const float row_max = part_max[0];
    const float row_sum = part_sum[0];

    // Pass 2: normalised probabilities of this thread's columns; a column after this row's position
    // is masked (probability 0, no logit computed). No barrier inside: the branch may diverge.
    for (uint j = tid; j < n; j += num_threads) {
        float p = 0.0f;
        if (j <= last_visible) {
            float qk = 0.0f;
            for (uint d = 0; d < head_dim; ++d) {
                qk += k_head[size_t(j) * head_dim + d] * q_row[d];
            }
            p = metal::exp(scale * qk - row_max) / row_sum;
        }
        const size_t out = size_t(head) * n + j;
        // Outputs start uninitialised: the first row writes, later rows add.
        col_sum[out] = (i == 0) ? p : col_sum[out] + p;
        if (i == window - 1) {
            last_row[out] = p;
        }
    }
    // q_row, part_max and part_sum are overwritten by the next row: wait until everyone is done.
    threadgroup_barrier(mem_flags::mem_threadgroup);
}
