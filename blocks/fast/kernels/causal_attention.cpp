// Causal multi-head attention in float32 on the CPU: forward (with each row's log-sum-exp) and backward.
//
// Why it exists: at the sizes this sandbox trains (positions up to a few hundred, d_head 16 to 128),
// torch's CPU flash-attention kernel spends most of its time in the overhead of many tiny matmul
// calls. Here one task is one (batch, head) pair; its keys, scores and probabilities stay in the
// core's cache, and the three products are written as register-blocked loops over 16-float vectors
// (simd.h). blocks/fast/build.py builds it; blocks/fast/attention.py checks and calls it, and
// tests/blocks/test_fast_attention.py holds it to the explicit softmax(q k^T / sqrt(d_head)) v,
// values and gradients.
//
// Layouts: q, k, v, out and their gradients are [batch, pos, n_heads, d_head] or any strided view
// of it whose last axis is contiguous; strides are passed as {batch, head, pos} in floats.
// d_head must be a multiple of 16.

#include "simd.h"

namespace {

// One (batch, head) task. The rows of the task after it (next: q, k, v) are asked for a block at a time, so that
// they are in cache when it starts; lse may be null (no gradient will be taken).
void forward_head(Rows q, Rows k, Rows v, float* out, int64_t out_stride, float* lse, int64_t n_pos, int64_t d_head,
                  float scale, float* scratch, const Rows* next) {
    const int64_t tp = padded(n_pos);
    float* kt = scratch;               // [d_head, tp]
    float* s = kt + d_head * tp;       // [R, tp]
    float* xb = s + R * tp;            // [R, d_head]
    float* ob = xb + R * d_head;       // [R, d_head]
    pack_transposed(k, n_pos, d_head, tp, kt);
    for (int64_t i0 = 0; i0 < n_pos; i0 += R) {
        const int64_t rows = block_rows(n_pos, i0), n_keys = i0 + rows;
        for (int w = 0; w < 3; w++) prefetch_rows(next[w], i0, rows, d_head);
        pack_block(q, i0, rows, d_head, scale, xb);
        rows_times_packed(xb, d_head, kt, tp, n_vectors(n_keys), s, tp);
        float m[R], total[R], inv[R] = {};
        exp_block(s, tp, i0, rows, padded(n_keys), nullptr, m, total);  // the products below read keys < n_keys
        for (int64_t r = 0; r < rows; r++) {
            inv[r] = 1.0f / total[r];
            if (lse) lse[i0 + r] = m[r] + std::log(total[r]);
        }
        weights_times_rows(s, tp, 1, 0, n_keys, v, d_head, ob, d_head);
        for (int64_t r = 0; r < rows; r++) store_rows(ob + r * d_head, 1, d_head, inv[r], out + (i0 + r) * out_stride, out_stride);
    }
}

void backward_head(Rows q, Rows k, Rows v, Rows out, Rows grad_out, const float* lse, float* grad_q, float* grad_k,
                   float* grad_v, const Strides& gs, int64_t n_pos, int64_t d_head, float scale, float* scratch) {
    const int64_t tp = padded(n_pos), tr = (n_pos + R - 1) / R * R;
    float* kt = scratch;               // [d_head, tp]
    float* vt = kt + d_head * tp;      // [d_head, tp]
    float* p = vt + d_head * tp;       // [tr, tp]: probabilities, 0 above the diagonal
    float* ds = p + tr * tp;           // [tr, tp]: gradient of the scores
    float* xb = ds + tr * tp;          // [R, d_head]
    float* ob = xb + R * d_head;       // [R, d_head]
    float* delta = ob + R * d_head;    // [tr]: sum_e grad_out[i, e] * out[i, e]
    pack_transposed(k, n_pos, d_head, tp, kt);
    pack_transposed(v, n_pos, d_head, tp, vt);
    for (int64_t i = 0; i < n_pos; i++) {
        v16 acc = splat(0.0f);
        for (int64_t e = 0; e < d_head; e += 16) acc += vload(grad_out.p + i * grad_out.stride + e) * vload(out.p + i * out.stride + e);
        delta[i] = hsum(acc);
    }
    for (int64_t i0 = 0; i0 < tr; i0 += R) {
        const int64_t rows = block_rows(n_pos, i0), n_vec = n_vectors(i0 + rows);
        pack_block(q, i0, rows, d_head, scale, xb);
        rows_times_packed(xb, d_head, kt, tp, n_vec, p + i0 * tp, tp);
        pack_block(grad_out, i0, rows, d_head, 1.0f, xb);
        rows_times_packed(xb, d_head, vt, tp, n_vec, ds + i0 * tp, tp);  // grad of the probabilities
        float sums[R];
        exp_block(p + i0 * tp, tp, i0, rows, tp, lse + i0, nullptr, sums);
        for (int64_t r = 0; r < R; r++) {
            float* dr = ds + (i0 + r) * tp;
            if (r >= rows) {
                std::memset(dr, 0, sizeof(float) * tp);
                continue;
            }
            const float* pr = p + (i0 + r) * tp;
            const v16 d = splat(delta[i0 + r]);
            for (int64_t jv = 0; jv < n_vec; jv++) vstore(dr + 16 * jv, vload(pr + 16 * jv) * (vload(dr + 16 * jv) - d));
            std::memset(dr + 16 * n_vec, 0, sizeof(float) * (tp - 16 * n_vec));  // never written: may hold NaN
        }
        weights_times_rows(ds + i0 * tp, tp, 1, 0, i0 + rows, k, d_head, ob, d_head);  // grad_q = scale * ds @ k
        store_rows(ob, rows, d_head, scale, grad_q + i0 * gs.pos, gs.pos);
    }
    for (int64_t j0 = 0; j0 < n_pos; j0 += R) {  // key blocks: only queries j0.. see them
        const int64_t rows = block_rows(n_pos, j0);
        weights_times_rows(p + j0, 1, tp, j0, n_pos, grad_out, d_head, ob, d_head);  // grad_v = p^T @ grad_out
        store_rows(ob, rows, d_head, 1.0f, grad_v + j0 * gs.pos, gs.pos);
        weights_times_rows(ds + j0, 1, tp, j0, n_pos, q, d_head, ob, d_head);  // grad_k = scale * ds^T @ q
        store_rows(ob, rows, d_head, scale, grad_k + j0 * gs.pos, gs.pos);
    }
}

int64_t forward_scratch(int64_t n_pos, int64_t d_head) {
    const int64_t tp = padded(n_pos);
    return d_head * tp + R * tp + 2 * R * d_head;
}

int64_t backward_scratch(int64_t n_pos, int64_t d_head) {
    const int64_t tp = padded(n_pos), tr = (n_pos + R - 1) / R * R;
    return 2 * d_head * tp + 2 * tr * tp + 2 * R * d_head + tr;
}

}  // namespace

// Each function takes q, k, v (and out, grads) as base pointers with strides {batch, head, pos} in floats, and
// returns 0, or 1 if out of memory.
extern "C" {

// out: [batch, pos, n_heads, d_head] with strides os; lse: [batch, n_heads, pos], contiguous, or null.
int causal_attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, const int64_t* qs,
                             const int64_t* ks, const int64_t* vs, const int64_t* os, int64_t batch, int64_t n_heads,
                             int64_t n_pos, int64_t d_head, float scale) {
    const Strides sq = strides(qs), sk = strides(ks), sv = strides(vs), so = strides(os);
    return for_each_task(batch * n_heads, forward_scratch(n_pos, d_head), [&](int64_t t, float* scratch) {
        const int64_t b = t / n_heads, h = t % n_heads;
        const int64_t u = task_after(t, batch * n_heads), nb = u / n_heads, nh = u % n_heads;
        const Rows next[3] = {head_rows(q, sq, nb, nh), head_rows(k, sk, nb, nh), head_rows(v, sv, nb, nh)};
        forward_head(head_rows(q, sq, b, h), head_rows(k, sk, b, h), head_rows(v, sv, b, h), out + b * so.batch + h * so.head,
                     so.pos, lse ? lse + t * n_pos : nullptr, n_pos, d_head, scale, scratch, next);
    });
}

// grad_q, grad_k, grad_v share the strides gs.
int causal_attention_backward(const float* q, const float* k, const float* v, const float* out, const float* grad_out,
                              const float* lse, float* grad_q, float* grad_k, float* grad_v, const int64_t* qs,
                              const int64_t* ks, const int64_t* vs, const int64_t* os, const int64_t* gos,
                              const int64_t* gs, int64_t batch, int64_t n_heads, int64_t n_pos, int64_t d_head, float scale) {
    const Strides sq = strides(qs), sk = strides(ks), sv = strides(vs), so = strides(os), sgo = strides(gos), sg = strides(gs);
    return for_each_task(batch * n_heads, backward_scratch(n_pos, d_head), [&](int64_t t, float* scratch) {
        const int64_t b = t / n_heads, h = t % n_heads, offset = b * sg.batch + h * sg.head;
        backward_head(head_rows(q, sq, b, h), head_rows(k, sk, b, h), head_rows(v, sv, b, h), head_rows(out, so, b, h),
                      head_rows(grad_out, sgo, b, h), lse + t * n_pos, grad_q + offset, grad_k + offset,
                      grad_v + offset, sg, n_pos, d_head, scale, scratch);
    });
}

}  // extern "C"
