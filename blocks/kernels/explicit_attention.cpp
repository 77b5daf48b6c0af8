// The explicit path's products in float32 on the CPU, where every score and pattern is materialised for the hooks:
// the masked scores (only the lower triangle is computed), the pattern times the values (written straight into
// [batch, pos, n_heads, d_head]), and each head's write to the residual stream ([batch, pos, n_heads, d_model]).
// Their backwards are torch ops (blocks/attention_kernel.py); tests/blocks/test_attention_kernel.py holds them
// to torch's own ops in float64.

#include "simd.h"

namespace {

// scores[i, j] = scale * q[i] . k[j] for j <= i, -inf after (row stride n_pos): the explicit path's masked scores.
// The next task's q and k rows (next) are asked for into L2 a block at a time (as in causal_attention.cpp).
void scores_head(Rows q, Rows k, float* scores, int64_t n_pos, int64_t d_head, float scale, float* scratch, const Rows* next) {
    const int64_t tp = padded(n_pos);
    float* kt = scratch;          // [d_head, tp]
    float* s = kt + d_head * tp;  // [R, tp]
    float* xb = s + R * tp;       // [R, d_head]
    pack_transposed(k, n_pos, d_head, tp, kt);
    for (int64_t i0 = 0; i0 < n_pos; i0 += R) {
        const int64_t rows = block_rows(n_pos, i0);
        for (int w = 0; w < 2; w++) prefetch_rows(next[w], i0, rows, d_head);
        pack_block(q, i0, rows, d_head, scale, xb);
        rows_times_packed(xb, d_head, kt, tp, n_vectors(i0 + rows), s, tp);
        for (int64_t r = 0; r < rows; r++) {
            float* row = scores + (i0 + r) * n_pos;
            std::memcpy(row, s + r * tp, sizeof(float) * (i0 + r + 1));
            for (int64_t j = i0 + r + 1; j < n_pos; j++) row[j] = -INFINITY;
        }
    }
}

// 1 + the index of the last non-zero (or NaN) in row[from:to], or from if they are all 0; vectors first, as
// a causal pattern is all 0 there
int64_t nonzero_end(const float* row, int64_t from, int64_t to) {
    v16i seen = v16i{};
    int64_t j = from;
    for (; j + 16 <= to; j += 16) seen |= vload(row + j) != splat(0.0f);
    for (; j < to; j++) seen[0] |= row[j] != 0.0f;
    for (int k = 0; k < 16; k++)
        if (seen[k])
            for (j = to - 1; j >= from; j--)
                if (row[j] != 0.0f) return j + 1;  // NaN != 0 too
    return from;
}

// z[i] = sum_j pattern[i, j] v[j] for one head: keys past the last non-zero weight of each block of rows are skipped
// (a causal pattern is exactly 0 above the diagonal; a patched one may not be, and is then multiplied in full).
// The next task's value rows (next) are asked for into L2 a block at a time.
void pattern_head(const float* pattern, Rows v, float* z, int64_t z_stride, int64_t n_pos, int64_t d_head, float* pb,
                  Rows next) {
    for (int64_t i0 = 0; i0 < n_pos; i0 += R) {
        const int64_t rows = block_rows(n_pos, i0);
        prefetch_rows(next, i0, rows, d_head);
        int64_t n_keys = i0 + rows;  // past the diagonal, the weights are checked for being all 0
        for (int64_t r = 0; r < rows; r++) n_keys = nonzero_end(pattern + (i0 + r) * n_pos, n_keys, n_pos);
        const float* a = pattern + i0 * n_pos;
        if (rows < R) {  // the last block: zero-padded rows, so the product reads R rows
            std::memset(pb, 0, sizeof(float) * R * n_pos);
            std::memcpy(pb, a, sizeof(float) * rows * n_pos);
            a = pb;
        }
        weights_times_rows(a, n_pos, 1, 0, n_keys, v, d_head, z + i0 * z_stride, z_stride, rows);
    }
}

// result[i, h, :] = z[i, h, :] @ w_o[h] for the block of rows from i0: each head's write to the residual stream
void head_results_block(const float* z, const float* w_o, float* result, int64_t i0, int64_t rows, int64_t n_heads,
                        int64_t d_head, int64_t d_model, float* zb) {
    const int64_t width = n_heads * d_head;
    for (int64_t r = 0; r < R; r++)  // zero-padded past the last row, so every product reads R rows
        for (int64_t c = 0; c < width; c++) zb[r * width + c] = r < rows ? z[(i0 + r) * width + c] : 0.0f;
    for (int64_t h = 0; h < n_heads; h++)
        weights_times_rows(zb + h * d_head, width, 1, 0, d_head, Rows{w_o + h * d_head * d_model, d_model}, d_model,
                           result + (i0 * n_heads + h) * d_model, n_heads * d_model, rows);
}

int64_t scores_scratch(int64_t n_pos, int64_t d_head) {
    const int64_t tp = padded(n_pos);
    return d_head * tp + R * tp + R * d_head;
}

}  // namespace

extern "C" {

// scores: [batch, n_heads, pos, pos], contiguous.
int causal_scores(const float* q, const float* k, float* scores, const int64_t* qs, const int64_t* ks, int64_t batch,
                  int64_t n_heads, int64_t n_pos, int64_t d_head, float scale) {
    const Strides sq = strides(qs), sk = strides(ks);
    return for_each_task(batch * n_heads, scores_scratch(n_pos, d_head), [&](int64_t t, float* scratch) {
        const int64_t b = t / n_heads, h = t % n_heads;
        const int64_t u = task_after(t, batch * n_heads), nb = u / n_heads, nh = u % n_heads;
        const Rows next[2] = {head_rows(q, sq, nb, nh), head_rows(k, sk, nb, nh)};
        scores_head(head_rows(q, sq, b, h), head_rows(k, sk, b, h), scores + t * n_pos * n_pos, n_pos,
                    d_head, scale, scratch, next);
    });
}

// pattern: [batch, n_heads, pos, pos], contiguous; z: [batch, pos, n_heads, d_head] with strides zs.
int pattern_times_values(const float* pattern, const float* v, float* z, const int64_t* vs, const int64_t* zs, int64_t batch,
                         int64_t n_heads, int64_t n_pos, int64_t d_head) {
    const Strides sv = strides(vs), sz = strides(zs);
    return for_each_task(batch * n_heads, R * n_pos, [&](int64_t t, float* scratch) {
        const int64_t b = t / n_heads, h = t % n_heads;
        const int64_t u = task_after(t, batch * n_heads);
        pattern_head(pattern + t * n_pos * n_pos, head_rows(v, sv, b, h), z + b * sz.batch + h * sz.head, sz.pos, n_pos, d_head,
                     scratch, head_rows(v, sv, u / n_heads, u % n_heads));
    });
}

// result: [rows, n_heads, d_model] from z [rows, n_heads, d_head] and w_o [n_heads, d_head, d_model], all contiguous.
int head_results(const float* z, const float* w_o, float* result, int64_t rows, int64_t n_heads, int64_t d_head, int64_t d_model) {
    return for_each_task((rows + R - 1) / R, R * n_heads * d_head, [&](int64_t t, float* scratch) {
        head_results_block(z, w_o, result, t * R, block_rows(rows, t * R), n_heads, d_head, d_model, scratch);
    });
}

}  // extern "C"
