// Shared pieces of this folder's kernels: 16-float vectors, a vector exp, register transposes, the two
// register-blocked products, and the OpenMP loop over tasks. GCC vector extensions, and two AVX-512 intrinsics in
// vexp: built with -march=native on an AVX-512 CPU (blocks/fast/build.py builds nowhere else). Everything is
// inline in an anonymous namespace: each kernel file has its copy.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <immintrin.h>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
constexpr int64_t R = 8;  // query (or key) rows per block: R rows x 2 vectors = 16 accumulators in registers

inline int64_t n_vectors(int64_t n) { return (n + 15) / 16; }  // 16-float vectors that hold n floats
inline int64_t padded(int64_t n) { return 16 * n_vectors(n); }
inline int64_t block_rows(int64_t n, int64_t i0) { return n - i0 < R ? n - i0 : R; }  // rows of the block from i0

inline v16 vload(const float* p) { v16 x; std::memcpy(&x, p, sizeof x); return x; }
inline void vstore(float* p, v16 x) { std::memcpy(p, &x, sizeof x); }
// Spelled out lane by lane: v16{} + a compiles to a scalar 0.0f + a (exact for -0.0) and a broadcast from a
// register, two instructions in every inner loop; this is one broadcast, straight from memory where a is loaded.
inline v16 splat(float a) { return v16{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
const v16i IOTA = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// exp(x) for x <= 0: Cephes' expf polynomial (relative error about 1e-7) on x - n ln 2, times 2^n by one vscalefps;
// below -87 it gives exp(-87) (the least normal float's order: no denormals reach the products).
inline v16 vexp(v16 x) {
    x = (v16)_mm512_max_ps((__m512)splat(-87.0f), (__m512)x);  // one instruction; a NaN in x stays NaN
    const v16 n = (x * splat(1.44269504088896341f) + splat(12582912.0f)) - splat(12582912.0f);  // round(x / ln 2)
    const v16 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    v16 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    return (v16)_mm512_scalef_ps((__m512)p, (__m512)n);
}

inline v16 swap(v16 x, int k) {  // exchange neighbouring groups of k lanes
    const v16i masks[4] = {{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14},
                           {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13},
                           {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11},
                           {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}};
    return __builtin_shuffle(x, masks[k]);
}
inline float hmax(v16 x) {
    for (int k = 3; k >= 0; k--) { v16 y = swap(x, k); x = x > y ? x : y; }
    return x[0];
}
inline float hsum(v16 x) {
    for (int k = 3; k >= 0; k--) x += swap(x, k);
    return x[0];
}

struct Rows {  // one head's [pos, d_head] matrix: element (i, e) at p[i * stride + e]
    const float* p;
    int64_t stride;
};

// One stage of a 16 x 16 transpose in registers, then the smaller ones: swaps the off-diagonal B x B blocks of every
// 2B x 2B block. Lane l of the low row comes from a where bit B of l is clear, else from c, B lanes back.
template <int B>
inline void transpose_stages(v16* r) {
    v16i lo, hi;
    for (int l = 0; l < 16; l++) {  // constant after unrolling: the compiler folds them into the shuffles
        lo[l] = (l & B) == 0 ? l : 16 + l - B;
        hi[l] = (l & B) == 0 ? l + B : 16 + l;
    }
    for (int i = 0; i < 16; i++) {
        if (i & B) continue;
        const v16 a = r[i], c = r[i + B];
        r[i] = __builtin_shuffle(a, c, lo);
        r[i + B] = __builtin_shuffle(a, c, hi);
    }
    if constexpr (B > 1) transpose_stages<B / 2>(r);
}

// yt[e * tp + j] = y[j, e] for j < n_pos, zero up to tp (16x16 blocks transposed in registers)
inline void pack_transposed(Rows y, int64_t n_pos, int64_t d_head, int64_t tp, float* yt) {
    for (int64_t j0 = 0; j0 < tp; j0 += 16)
        for (int64_t e0 = 0; e0 < d_head; e0 += 16) {
            v16 r[16];
            for (int64_t i = 0; i < 16; i++) r[i] = j0 + i < n_pos ? vload(y.p + (j0 + i) * y.stride + e0) : splat(0.0f);
            transpose_stages<8>(r);
            for (int64_t i = 0; i < 16; i++) vstore(yt + (e0 + i) * tp + j0, r[i]);
        }
}

// xb[r, e] = scale * x[i0 + r, e] for the block's rows, zero for rows past the end
inline void pack_block(Rows x, int64_t i0, int64_t rows, int64_t d_head, float scale, float* xb) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t e = 0; e < d_head; e++) xb[r * d_head + e] = r < rows ? scale * x.p[(i0 + r) * x.stride + e] : 0.0f;
}

// Asks for rows [i0, i0 + rows) of x (d_head floats each) to be brought into L2 ahead of use. Not into L1: the
// current task's packed keys and scores fill most of its 32 KB, and prefetching into L1 too evicted them (slower).
inline void prefetch_rows(Rows x, int64_t i0, int64_t rows, int64_t d_head) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t e = 0; e < d_head; e += 16) __builtin_prefetch(x.p + (i0 + r) * x.stride + e, 0, 2);
}

// out[r, 16 * jv + l] for V column vectors from jv: each packed column vector is loaded once per e for all R rows
template <int V>
inline void rows_times_columns(const float* xb, int64_t d_head, const float* yt, int64_t tp, int64_t jv, float* out, int64_t out_stride) {
    v16 acc[V][R];
    for (int c = 0; c < V; c++)
        for (int64_t r = 0; r < R; r++) acc[c][r] = splat(0.0f);
    for (int64_t e = 0; e < d_head; e++) {
        v16 y[V];
        for (int c = 0; c < V; c++) y[c] = vload(yt + e * tp + 16 * (jv + c));
        for (int64_t r = 0; r < R; r++) {
            const v16 x = splat(xb[r * d_head + e]);
            for (int c = 0; c < V; c++) acc[c][r] += x * y[c];
        }
    }
    for (int c = 0; c < V; c++)
        for (int64_t r = 0; r < R; r++) vstore(out + r * out_stride + 16 * (jv + c), acc[c][r]);
}

// out[r, j] = sum_e xb[r, e] * yt[e, j] for r < R and j < 16 * n_vec (a block of rows against packed columns)
inline void rows_times_packed(const float* xb, int64_t d_head, const float* yt, int64_t tp, int64_t n_vec, float* out, int64_t out_stride) {
    int64_t jv = 0;
    for (; jv + 2 <= n_vec; jv += 2) rows_times_columns<2>(xb, d_head, yt, tp, jv, out, out_stride);
    if (jv < n_vec) rows_times_columns<1>(xb, d_head, yt, tp, jv, out, out_stride);
}

// out[r, e] = sum_{j0 <= j < j1} a[r * a_r + j * a_j] * y[j, e] for r < rows <= R and e < width (weights times
// value-like rows); out rows are out_stride apart
inline void weights_times_rows(const float* a, int64_t a_r, int64_t a_j, int64_t j0, int64_t j1, Rows y, int64_t width, float* out,
                        int64_t out_stride, int64_t rows = R) {
    for (int64_t e0 = 0; e0 < width; e0 += 32) {
        const bool two = width - e0 >= 32;
        v16 lo[R], hi[R];
        for (int64_t r = 0; r < R; r++) lo[r] = hi[r] = splat(0.0f);
        for (int64_t j = j0; j < j1; j++) {
            const float* yj = y.p + j * y.stride + e0;
            v16 y0 = vload(yj), y1 = two ? vload(yj + 16) : splat(0.0f);
            for (int64_t r = 0; r < R; r++) {
                v16 w = splat(a[r * a_r + j * a_j]);
                lo[r] += w * y0;
                hi[r] += w * y1;
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            vstore(out + r * out_stride + e0, lo[r]);
            if (two) vstore(out + r * out_stride + e0 + 16, hi[r]);
        }
    }
}

// dst rows (dst_stride apart) = scale * the first `rows` rows of the [R, d_head] block ob
inline void store_rows(const float* ob, int64_t rows, int64_t d_head, float scale, float* dst, int64_t dst_stride) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t e = 0; e < d_head; e += 16) vstore(dst + r * dst_stride + e, vload(ob + r * d_head + e) * splat(scale));
}

// The first `rows` rows of the [R, tp] block s, row r holding scores for keys 0..i0 + r (and junk after): each
// becomes exp(score - shift[r]) there and 0 after, up to `width` (a multiple of 16); rows from `rows` to R become 0
// up to width. With max_out, shift[r] is instead the row's maximum, stored in max_out[r]. sum_out[r] gets the row's sum.
// One pass over the block, not a call per row: a row holds 4.5 vectors on average at 128 positions, so per-row
// set-up (constants, calls, memset) cost nearly half as much as the exponentials themselves.
inline void exp_block(float* s, int64_t tp, int64_t i0, int64_t rows, int64_t width, const float* shift, float* max_out,
                      float* sum_out) {
    for (int64_t r = 0; r < rows; r++) {
        float* row = s + r * tp;
        const int64_t count = i0 + r + 1, full = count / 16, n_vec = n_vectors(count);
        const v16i tail = IOTA < static_cast<int32_t>(count - 16 * full);  // kept lanes of the last, partial vector
        float m;
        if (max_out) {
            v16 best = splat(-INFINITY);
            for (int64_t jv = 0; jv < full; jv++) {
                const v16 x = vload(row + 16 * jv);
                best = x > best ? x : best;
            }
            if (full < n_vec) {
                const v16 x = vload(row + 16 * full);
                best = (tail & (x > best)) ? x : best;
            }
            m = max_out[r] = hmax(best);
        } else {
            m = shift[r];
        }
        const v16 mv = splat(m);
        v16 sum = splat(0.0f);
        for (int64_t jv = 0; jv < full; jv++) {
            const v16 p = vexp(vload(row + 16 * jv) - mv);
            vstore(row + 16 * jv, p);
            sum += p;
        }
        if (full < n_vec) {
            const v16 p = tail ? vexp(vload(row + 16 * full) - mv) : splat(0.0f);
            vstore(row + 16 * full, p);
            sum += p;
        }
        for (int64_t j = 16 * n_vec; j < width; j += 16) vstore(row + j, splat(0.0f));
        sum_out[r] = hsum(sum);
    }
    for (int64_t r = rows; r < R; r++)
        for (int64_t j = 0; j < width; j += 16) vstore(s + r * tp + j, splat(0.0f));
}

struct Strides {
    int64_t batch, head, pos;
};

inline Rows head_rows(const float* base, const Strides& s, int64_t b, int64_t h) { return {base + b * s.batch + h * s.head, s.pos}; }

// The task whose rows task t prefetches: the next one, or t itself for the last (its rows are in cache already,
// and no pointer is formed past the end of the tensors).
inline int64_t task_after(int64_t t, int64_t n_tasks) { return t + 1 < n_tasks ? t + 1 : t; }

// Runs task(t, scratch) for t < n_tasks on torch's OpenMP threads, each thread with its own scratch of
// scratch_floats. Returns 0, or 1 if a thread could not get its scratch (then nothing is trusted).
template <class Task>
inline int for_each_task(int64_t n_tasks, int64_t scratch_floats, Task task) {
    int failed = 0;
#pragma omp parallel
    {
        float* scratch = static_cast<float*>(std::malloc(sizeof(float) * scratch_floats));
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tasks; t++)
            if (scratch) task(t, scratch);
        std::free(scratch);
    }
    return failed;
}

inline Strides strides(const int64_t* s) { return {s[0], s[1], s[2]}; }

}  // namespace
