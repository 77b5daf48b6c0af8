// Causal multi-head attention in float32 on the CPU: forward (with each row's log-sum-exp) and backward.
//
// Why it exists: at the sizes this sandbox trains (positions up to a few hundred, d_head 16 to 128),
// torch's CPU flash-attention kernel spends most of its time in the overhead of many tiny matmul
// calls. Here one task is one (batch, head) pair; its keys, scores and probabilities stay in the
// core's cache, and the three products are written as register-blocked loops over 16-float vectors
// (GCC vector extensions: built with -march=native they compile to AVX-512 or AVX2).
// blocks/attention_kernel.py builds, loads and checks this file; tests/blocks/test_attention_kernel.py
// holds it to the explicit softmax(q k^T / sqrt(d_head)) v, values and gradients.
//
// Layouts: q, k, v, out and their gradients are [batch, pos, n_heads, d_head] or any strided view
// of it whose last axis is contiguous; strides are passed as {batch, head, pos} in floats.
// d_head must be a multiple of 16.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
constexpr int64_t R = 8;  // query (or key) rows per block: R rows x 2 vectors = 16 accumulators in registers

inline v16 vload(const float* p) { v16 x; std::memcpy(&x, p, sizeof x); return x; }
inline void vstore(float* p, v16 x) { std::memcpy(p, &x, sizeof x); }
inline v16 splat(float a) { return v16{} + a; }
const v16i IOTA = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// exp(x) for x <= 0: Cephes' expf polynomial (relative error about 1e-7); below -87 it gives exp(-87).
inline v16 vexp(v16 x) {
    x = x < splat(-87.0f) ? splat(-87.0f) : x;
    v16 n = (x * splat(1.44269504088896341f) + splat(12582912.0f)) - splat(12582912.0f);  // round(x / ln 2)
    v16 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    v16 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;  // 2^n
    return p * (v16)bits;
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

// Lane masks of one transpose stage: lane l of the low row comes from a where bit B of l is clear, else from c, B lanes back.
template <int B> struct Masks;
template <> struct Masks<8> {
    static constexpr v16i lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    static constexpr v16i hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
};
template <> struct Masks<4> {
    static constexpr v16i lo = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    static constexpr v16i hi = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
};
template <> struct Masks<2> {
    static constexpr v16i lo = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    static constexpr v16i hi = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
};
template <> struct Masks<1> {
    static constexpr v16i lo = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    static constexpr v16i hi = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
};
template <int B>
inline void transpose_stage(v16* r) {  // swaps the off-diagonal BxB blocks of every 2Bx2B block
    constexpr v16i lo = Masks<B>::lo, hi = Masks<B>::hi;
    for (int i = 0; i < 16; i++) {
        if (i & B) continue;
        const v16 a = r[i], c = r[i + B];
        r[i] = __builtin_shuffle(a, c, lo);
        r[i + B] = __builtin_shuffle(a, c, hi);
    }
}

// yt[e * tp + j] = y[j, e] for j < n_pos, zero up to tp (16x16 blocks transposed in registers)
void pack_transposed(Rows y, int64_t n_pos, int64_t d_head, int64_t tp, float* yt) {
    for (int64_t j0 = 0; j0 < tp; j0 += 16)
        for (int64_t e0 = 0; e0 < d_head; e0 += 16) {
            v16 r[16];
            for (int64_t i = 0; i < 16; i++) r[i] = j0 + i < n_pos ? vload(y.p + (j0 + i) * y.stride + e0) : splat(0.0f);
            transpose_stage<8>(r);
            transpose_stage<4>(r);
            transpose_stage<2>(r);
            transpose_stage<1>(r);
            for (int64_t i = 0; i < 16; i++) vstore(yt + (e0 + i) * tp + j0, r[i]);
        }
}

// xb[r, e] = scale * x[i0 + r, e] for the block's rows, zero for rows past the end
void pack_block(Rows x, int64_t i0, int64_t rows, int64_t d_head, float scale, float* xb) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t e = 0; e < d_head; e++) xb[r * d_head + e] = r < rows ? scale * x.p[(i0 + r) * x.stride + e] : 0.0f;
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
void rows_times_packed(const float* xb, int64_t d_head, const float* yt, int64_t tp, int64_t n_vec, float* out, int64_t out_stride) {
    int64_t jv = 0;
    for (; jv + 2 <= n_vec; jv += 2) rows_times_columns<2>(xb, d_head, yt, tp, jv, out, out_stride);
    if (jv < n_vec) rows_times_columns<1>(xb, d_head, yt, tp, jv, out, out_stride);
}

// out[r, e] = sum_{j0 <= j < j1} a[r * a_r + j * a_j] * y[j, e] for r < R (weights times value-like rows)
void weights_times_rows(const float* a, int64_t a_r, int64_t a_j, int64_t j0, int64_t j1, Rows y, int64_t d_head, float* out) {
    for (int64_t e0 = 0; e0 < d_head; e0 += 32) {
        const bool two = d_head - e0 >= 32;
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
        for (int64_t r = 0; r < R; r++) {
            vstore(out + r * d_head + e0, lo[r]);
            if (two) vstore(out + r * d_head + e0 + 16, hi[r]);
        }
    }
}

// Row i of s holds scores for keys 0..i (and junk after): becomes exp(score - shift) there and 0 after, up to tp.
// Returns the sum of the kept exponentials. shift < 0 means "use the row's own maximum" (stored in *max_out).
float exp_row(float* s, int64_t i, int64_t tp, float shift, float* max_out) {
    const int64_t n_vec = (i + 16) / 16;
    const int32_t count = static_cast<int32_t>(i + 1);
    if (max_out) {
        v16 m = splat(-INFINITY);
        for (int64_t jv = 0; jv < n_vec; jv++) {
            v16 x = vload(s + 16 * jv);
            m = ((IOTA + static_cast<int32_t>(16 * jv) < count) & (x > m)) ? x : m;
        }
        shift = *max_out = hmax(m);
    }
    v16 sum = splat(0.0f);
    for (int64_t jv = 0; jv < n_vec; jv++) {
        v16 p = vexp(vload(s + 16 * jv) - shift);
        p = IOTA + static_cast<int32_t>(16 * jv) < count ? p : splat(0.0f);
        vstore(s + 16 * jv, p);
        sum += p;
    }
    std::memset(s + 16 * n_vec, 0, sizeof(float) * (tp - 16 * n_vec));
    return hsum(sum);
}

struct Strides {
    int64_t batch, head, pos;
};

Rows head_rows(const float* base, const Strides& s, int64_t b, int64_t h) { return {base + b * s.batch + h * s.head, s.pos}; }

void forward_head(Rows q, Rows k, Rows v, float* out, int64_t out_stride, float* lse, int64_t n_pos, int64_t d_head,
                  float scale, float* scratch) {
    const int64_t tp = (n_pos + 15) / 16 * 16;
    float* kt = scratch;               // [d_head, tp]
    float* s = kt + d_head * tp;       // [R, tp]
    float* xb = s + R * tp;            // [R, d_head]
    float* ob = xb + R * d_head;       // [R, d_head]
    pack_transposed(k, n_pos, d_head, tp, kt);
    for (int64_t i0 = 0; i0 < n_pos; i0 += R) {
        const int64_t rows = n_pos - i0 < R ? n_pos - i0 : R, n_keys = i0 + rows;
        pack_block(q, i0, rows, d_head, scale, xb);
        rows_times_packed(xb, d_head, kt, tp, (n_keys + 15) / 16, s, tp);
        float inv[R] = {};
        for (int64_t r = 0; r < R; r++) {
            if (r < rows) {
                float m;
                const float total = exp_row(s + r * tp, i0 + r, tp, 0.0f, &m);
                inv[r] = 1.0f / total;
                lse[i0 + r] = m + std::log(total);
            } else {
                std::memset(s + r * tp, 0, sizeof(float) * tp);
            }
        }
        weights_times_rows(s, tp, 1, 0, n_keys, v, d_head, ob);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t e = 0; e < d_head; e += 16) vstore(out + (i0 + r) * out_stride + e, vload(ob + r * d_head + e) * splat(inv[r]));
    }
}

void backward_head(Rows q, Rows k, Rows v, Rows out, Rows grad_out, const float* lse, float* grad_q, float* grad_k,
                   float* grad_v, const Strides& gs, int64_t n_pos, int64_t d_head, float scale, float* scratch) {
    const int64_t tp = (n_pos + 15) / 16 * 16, tr = (n_pos + R - 1) / R * R;
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
        const int64_t rows = n_pos - i0 < R ? n_pos - i0 : R, n_vec = (i0 + rows + 15) / 16;
        pack_block(q, i0, rows, d_head, scale, xb);
        rows_times_packed(xb, d_head, kt, tp, n_vec, p + i0 * tp, tp);
        pack_block(grad_out, i0, rows, d_head, 1.0f, xb);
        rows_times_packed(xb, d_head, vt, tp, n_vec, ds + i0 * tp, tp);  // grad of the probabilities
        for (int64_t r = 0; r < R; r++) {
            float* pr = p + (i0 + r) * tp;
            float* dr = ds + (i0 + r) * tp;
            if (r >= rows) {
                std::memset(pr, 0, sizeof(float) * tp);
                std::memset(dr, 0, sizeof(float) * tp);
                continue;
            }
            exp_row(pr, i0 + r, tp, lse[i0 + r], nullptr);
            const v16 d = splat(delta[i0 + r]);
            for (int64_t jv = 0; jv < n_vec; jv++) vstore(dr + 16 * jv, vload(pr + 16 * jv) * (vload(dr + 16 * jv) - d));
            std::memset(dr + 16 * n_vec, 0, sizeof(float) * (tp - 16 * n_vec));  // never written: may hold NaN
        }
        weights_times_rows(ds + i0 * tp, tp, 1, 0, i0 + rows, k, d_head, ob);  // grad_q = scale * ds @ k
        for (int64_t r = 0; r < rows; r++)
            for (int64_t e = 0; e < d_head; e += 16) vstore(grad_q + (i0 + r) * gs.pos + e, vload(ob + r * d_head + e) * splat(scale));
    }
    for (int64_t j0 = 0; j0 < n_pos; j0 += R) {  // key blocks: only queries j0.. see them
        const int64_t rows = n_pos - j0 < R ? n_pos - j0 : R;
        weights_times_rows(p + j0, 1, tp, j0, n_pos, grad_out, d_head, ob);  // grad_v = p^T @ grad_out
        for (int64_t r = 0; r < rows; r++)
            for (int64_t e = 0; e < d_head; e += 16) vstore(grad_v + (j0 + r) * gs.pos + e, vload(ob + r * d_head + e));
        weights_times_rows(ds + j0, 1, tp, j0, n_pos, q, d_head, ob);  // grad_k = scale * ds^T @ q
        for (int64_t r = 0; r < rows; r++)
            for (int64_t e = 0; e < d_head; e += 16) vstore(grad_k + (j0 + r) * gs.pos + e, vload(ob + r * d_head + e) * splat(scale));
    }
}

}  // namespace

extern "C" {

// Scratch floats one forward task needs (per thread).
int64_t forward_scratch(int64_t n_pos, int64_t d_head) {
    const int64_t tp = (n_pos + 15) / 16 * 16;
    return d_head * tp + R * tp + 2 * R * d_head;
}

int64_t backward_scratch(int64_t n_pos, int64_t d_head) {
    const int64_t tp = (n_pos + 15) / 16 * 16, tr = (n_pos + R - 1) / R * R;
    return 2 * d_head * tp + 2 * tr * tp + 2 * R * d_head + tr;
}

// out [batch, pos, n_heads, d_head] (strides os); lse [batch, n_heads, pos], contiguous. Returns 0, or 1 if out of memory.
int causal_attention_forward(const float* q, const float* k, const float* v, float* out, float* lse, const int64_t* qs,
                             const int64_t* ks, const int64_t* vs, const int64_t* os, int64_t batch, int64_t n_heads,
                             int64_t n_pos, int64_t d_head, float scale) {
    const Strides sq{qs[0], qs[1], qs[2]}, sk{ks[0], ks[1], ks[2]}, sv{vs[0], vs[1], vs[2]}, so{os[0], os[1], os[2]};
    const int64_t need = forward_scratch(n_pos, d_head);
    int failed = 0;
#pragma omp parallel
    {
        float* scratch = static_cast<float*>(std::malloc(sizeof(float) * need));
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < batch * n_heads; bh++) {
            if (!scratch) continue;
            const int64_t b = bh / n_heads, h = bh % n_heads;
            forward_head(head_rows(q, sq, b, h), head_rows(k, sk, b, h), head_rows(v, sv, b, h), out + b * so.batch + h * so.head,
                         so.pos, lse + bh * n_pos, n_pos, d_head, scale, scratch);
        }
        std::free(scratch);
    }
    return failed;
}

// Gradients of q, k, v into grad_q, grad_k, grad_v, which share the strides gs. Returns 0, or 1 if out of memory.
int causal_attention_backward(const float* q, const float* k, const float* v, const float* out, const float* grad_out,
                              const float* lse, float* grad_q, float* grad_k, float* grad_v, const int64_t* qs,
                              const int64_t* ks, const int64_t* vs, const int64_t* os, const int64_t* gos,
                              const int64_t* gs, int64_t batch, int64_t n_heads, int64_t n_pos, int64_t d_head, float scale) {
    const Strides sq{qs[0], qs[1], qs[2]}, sk{ks[0], ks[1], ks[2]}, sv{vs[0], vs[1], vs[2]}, so{os[0], os[1], os[2]},
        sgo{gos[0], gos[1], gos[2]}, sg{gs[0], gs[1], gs[2]};
    const int64_t need = backward_scratch(n_pos, d_head);
    int failed = 0;
#pragma omp parallel
    {
        float* scratch = static_cast<float*>(std::malloc(sizeof(float) * need));
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < batch * n_heads; bh++) {
            if (!scratch) continue;
            const int64_t b = bh / n_heads, h = bh % n_heads, offset = b * sg.batch + h * sg.head;
            backward_head(head_rows(q, sq, b, h), head_rows(k, sk, b, h), head_rows(v, sv, b, h), head_rows(out, so, b, h),
                          head_rows(grad_out, sgo, b, h), lse + bh * n_pos, grad_q + offset, grad_k + offset,
                          grad_v + offset, sg, n_pos, d_head, scale, scratch);
        }
        std::free(scratch);
    }
    return failed;
}

}  // extern "C"
