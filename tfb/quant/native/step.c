/* A whole decoding step in one call: a list of operations planned once in Python from the model's modules
 * (tfb/nn/step.py), run here back to back over fixed float32 buffers, so that a token costs one call from
 * Python instead of hundreds (a thin, deep model spends as long in those calls as in its products).
 *
 * Each operation calls the same kernels the module path calls (tfb_matmul, tfb_matmul_int8, tfb_rms_norm,
 * tfb_rope, tfb_attend), so a step computes what the modules compute; the few element-wise operations
 * (residual add, gated activation) round as torch's do, up to the activation functions' own exp/tanh.
 *
 * What changes from one token to the next comes in as arguments, not in the plan: each row's position, and
 * per row a table of `slots` (int64 each): where each rope's cos/sin table starts, where each layer's keys
 * and values are stored and how far apart their heads are, and (row 0) where the logits go. Python refills
 * them when a cache grows or other caches are used, without planning again. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

enum { OK = 0, ERR_SHAPE = -2 }; /* runtime.c's statuses */

EXPORT int tfb_matmul(int type, const uint8_t *w, int64_t stride, int64_t N, int64_t K, const float *x, int64_t M,
                      float *y);
EXPORT int tfb_matmul_int8(int type, const uint8_t *w, int64_t stride, int64_t N, int64_t K, const float *x,
                           int64_t M, float *y);
EXPORT int tfb_rms_norm(const float *x, int64_t rows, int64_t n, const float *w, float eps, float *y);
EXPORT int tfb_rope(const float *x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t dims, const float *cos,
                    const float *sin, int adjacent, float *y);
EXPORT int tfb_attend(const float *q, int64_t batch, int64_t kv_heads, int64_t rows, int64_t d, const void *k,
                      int64_t k_head, int64_t k_row, const void *v, int64_t v_head, int64_t v_row, int64_t dv,
                      int64_t s, int half, float scale, float softcap, const float *sinks, float *out);

/* The operations; the fields each one reads are listed with it (tfb/nn/step.py writes them). A step computes
 * `rows` tokens at once, each of its own sequence (its own position and cache): every buffer holds one row of
 * the sizes below per token, rows after each other. */
enum {
    STEP_MATMUL,   /* y[rows, N] = x[rows, K] W^T (+ bias). i: type, stride, N, K, int8. p: w, x, y, bias (or NULL) */
    STEP_RMS_NORM, /* y = rms_norm(x) * w over each of `count` vectors of n a row. i: count, n. f: eps. p: x, w, y */
    STEP_ADD,      /* x[rows, n] += scale * y (scale 1: a plain sum). i: n. f: scale. p: x, y */
    STEP_GLU,      /* out[rows, n] = act(gate) * up, or act(gate) where up is NULL. i: n, act. p: gate, up, out */
    STEP_ROPE,     /* x[rows, heads, head_dim] rotated in place, each row at its position. i: heads, head_dim, dims,
                    * adjacent, slot (cos at slots[slot], sin at slots[slot + 1], dims / 2 a position). p: x */
    STEP_STORE,    /* each row's cache at its position = its x[heads, n]. i: heads, n, slot (base at slots[slot],
                    * heads slots[slot + 1] floats apart, positions n apart). p: x */
    STEP_ATTEND,   /* out[rows, kv_heads * group, dv] = each row's attention of its q[kv_heads * group, d] over its
                    * cache's first position + 1 keys (the last `window`, or from the start of the position's
                    * `chunk`, where not 0). i: kv_heads, group, d, dv, slot (k base, k head stride, v base, v head
                    * stride), window, chunk. f: scale, softcap. p: q, sinks (or NULL), out */
    STEP_LOGITS,   /* the logits (at slots[0] of row 0: [rows, N]) = x W^T, as STEP_MATMUL */
    STEP_MUL,      /* out[rows, n] = a * b (a gate applied). i: n. p: a, b, out */
    STEP_GATHER,   /* y[rows, count * n] = per row `count` pieces of n columns of x (its rows `width` floats apart),
                    * `stride` apart from column `first` (one part of interleaved heads). i: count, n, stride,
                    * width, first. p: x, y */
    STEP_CONV,     /* causal depthwise convolution step with state, each row with its own: per channel c, with the
                    * kernel w[c, 0..K-1] and the channel's last K - 1 inputs s[c, 0..K-2] (oldest first; the
                    * row's slots[slot] holds s's address), y[c] = act(w[c,0] s[c,0] + ... + w[c,K-2] s[c,K-2] +
                    * w[c,K-1] x[c]), then s shifts by one and takes x[c]. i: channels, K, act (-1: none), slot.
                    * p: x, w, y */
    STEP_L2_NORM,  /* y = x / sqrt(sum(x^2) + eps) * scale over each of `count` vectors of n a row. i: count, n.
                    * f: eps, scale. p: x, y */
    STEP_DELTA,    /* gated delta rule step, each row with its own state: per value head h (reading key head
                    * h % key_heads where tiled, else h / (heads / key_heads)), with decay g = a_neg[h]
                    * softplus(alpha[h] + dt_bias[h]) and beta = sigmoid(b[h]), the state S[h] [dk, dv] (the row's
                    * slots[slot] holds its address) becomes exp(g) S + k (beta (v - exp(g) S^T k))^T, and
                    * out[h] = S^T q (the new S). A row: q, k [key_heads, dk]; v, out [heads, dv]; b, alpha [heads].
                    * i: heads, key_heads, dk, dv, tiled, slot. p: q, k, v, b, alpha, dt_bias, a_neg, out */
};

enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU_ERF, ACT_RELU, ACT_RELU_SQUARED, ACT_SIGMOID };

typedef struct {
    int64_t op;
    int64_t i[8];
    double f[2];
    void *p[8];
} step_op;

static float activation(int act, float x) {
    switch (act) {
    case ACT_SILU: return x / (1.0f + expf(-x));
    case ACT_GELU_TANH: {
        const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    case ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case ACT_RELU: return x > 0.0f ? x : 0.0f;
    case ACT_RELU_SQUARED: return x > 0.0f ? x * x : 0.0f;
    default: return 1.0f / (1.0f + expf(-x));
    }
}

static void conv(const step_op *o, int64_t row, const int64_t *slots) {
    const float *x = (const float *)o->p[0] + row * o->i[0], *w = o->p[1];
    float *y = (float *)o->p[2] + row * o->i[0], *state = (float *)(intptr_t)slots[o->i[3]];
    int64_t kernel = o->i[1], keep = kernel - 1;
    int act = (int)o->i[2];
    for (int64_t c = 0; c < o->i[0]; c++) {
        float *s = state + c * keep;
        const float *wc = w + c * kernel;
        float acc = keep ? wc[0] * s[0] : wc[0] * x[c];
        for (int64_t j = 1; j < keep; j++) acc += wc[j] * s[j];
        if (keep) acc += wc[keep] * x[c];
        for (int64_t j = 0; j + 1 < keep; j++) s[j] = s[j + 1];
        if (keep) s[keep - 1] = x[c];
        y[c] = act < 0 ? acc : activation(act, acc);
    }
}

static void l2_norm(const step_op *o, int64_t rows) {
    const float *x = o->p[0];
    float *y = o->p[1];
    int64_t n = o->i[1];
    float eps = (float)o->f[0], scale = (float)o->f[1];
    for (int64_t r = 0; r < o->i[0] * rows; r++) {
        const float *xr = x + r * n;
        float sum = 0.0f;
        for (int64_t i = 0; i < n; i++) sum += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(sum + eps);
        for (int64_t i = 0; i < n; i++) y[r * n + i] = xr[i] * inv * scale;
    }
}

static void delta(const step_op *o, int64_t row, const int64_t *slots) {
    int64_t heads = o->i[0], key_heads = o->i[1], dk = o->i[2], dv = o->i[3];
    const float *q = (const float *)o->p[0] + row * key_heads * dk, *k = (const float *)o->p[1] + row * key_heads * dk,
                *v = (const float *)o->p[2] + row * heads * dv, *b = (const float *)o->p[3] + row * heads,
                *alpha = (const float *)o->p[4] + row * heads, *dt_bias = o->p[5], *a_neg = o->p[6];
    float *out = (float *)o->p[7] + row * heads * dv, *states = (float *)(intptr_t)slots[o->i[5]];
    for (int64_t h = 0; h < heads; h++) {
        int64_t kh = o->i[4] ? h % key_heads : h / (heads / key_heads);
        const float *qh = q + kh * dk, *kk = k + kh * dk, *vh = v + h * dv;
        float *S = states + h * dk * dv, *oh = out + h * dv;
        float a = alpha[h] + dt_bias[h];
        float decay = expf(a_neg[h] * (a > 20.0f ? a : log1pf(expf(a)))); /* softplus as torch's (threshold 20) */
        float beta = 1.0f / (1.0f + expf(-b[h]));
        float u[dv];
        for (int64_t j = 0; j < dv; j++) u[j] = 0.0f;
        for (int64_t i = 0; i < dk; i++) { /* u = S^T k */
            const float *row = S + i * dv;
            for (int64_t j = 0; j < dv; j++) u[j] += row[j] * kk[i];
        }
        for (int64_t j = 0; j < dv; j++) u[j] = beta * (vh[j] - decay * u[j]);
        for (int64_t j = 0; j < dv; j++) oh[j] = 0.0f;
        for (int64_t i = 0; i < dk; i++) { /* S = decay S + k u^T; out = S^T q */
            float *row = S + i * dv;
            for (int64_t j = 0; j < dv; j++) {
                row[j] = decay * row[j] + kk[i] * u[j];
                oh[j] += row[j] * qh[i];
            }
        }
    }
}

static int matmul(const step_op *o, int64_t rows, float *y) {
    int64_t N = o->i[2];
    int status = (o->i[4] ? tfb_matmul_int8 : tfb_matmul)((int)o->i[0], o->p[0], o->i[1], N, o->i[3], o->p[1], rows,
                                                         y);
    const float *bias = o->p[3];
    if (status == OK && bias)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t n = 0; n < N; n++) y[r * N + n] += bias[n];
    return status;
}

static int attend(const step_op *o, int64_t position, const int64_t *slots, const float *q, float *out) {
    const int64_t *s = slots + o->i[4];
    int64_t count = position + 1, first = 0, d = o->i[2], dv = o->i[3];
    if (o->i[5] && count > o->i[5]) first = count - o->i[5];
    if (o->i[6]) {
        int64_t chunk_start = position / o->i[6] * o->i[6];
        first = chunk_start > first ? chunk_start : first;
    }
    const float *k = (const float *)(intptr_t)s[0] + first * d, *v = (const float *)(intptr_t)s[2] + first * dv;
    return tfb_attend(q, 1, o->i[0], o->i[1], d, k, s[1], d, v, s[3], dv, dv, count - first, 0, (float)o->f[0],
                      (float)o->f[1], o->p[1], out);
}

static void rope(const step_op *o, int64_t position, const int64_t *slots, float *x) {
    int64_t half = o->i[2] / 2;
    const float *cos = (const float *)(intptr_t)slots[o->i[4]] + position * half;
    const float *sin = (const float *)(intptr_t)slots[o->i[4] + 1] + position * half;
    tfb_rope(x, 1, o->i[0], o->i[1], o->i[2], cos, sin, (int)o->i[3], x);
}

static void store(const step_op *o, int64_t position, const int64_t *slots, const float *x) {
    const int64_t *s = slots + o->i[2];
    float *base = (float *)(intptr_t)s[0];
    for (int64_t h = 0; h < o->i[0]; h++)
        memcpy(base + h * s[1] + position * o->i[1], x + h * o->i[1], (size_t)o->i[1] * sizeof(float));
}

static void elementwise(const step_op *o, int64_t rows) {
    int64_t n = o->i[0] * rows;
    if (o->op == STEP_ADD) {
        float *x = o->p[0];
        const float *y = o->p[1];
        float scale = (float)o->f[0];
        if (scale == 1.0f)
            for (int64_t i = 0; i < n; i++) x[i] += y[i];
        else
            for (int64_t i = 0; i < n; i++) x[i] += y[i] * scale;
    } else {
        const float *gate = o->p[0], *up = o->p[1];
        float *out = o->p[2];
        int act = (int)o->i[1];
        for (int64_t i = 0; i < n; i++) out[i] = up ? activation(act, gate[i]) * up[i] : activation(act, gate[i]);
    }
}

/* Run `count` operations for `rows` tokens, row r at positions[r] with its slots at slots + r * slot_count.
 * Returns 0, or the first failing kernel's status. */
EXPORT int tfb_step(const step_op *ops, int64_t count, int64_t rows, const int64_t *positions, const int64_t *slots,
                    int64_t slot_count) {
    for (int64_t n = 0; n < count; n++) {
        const step_op *o = ops + n;
        int status = OK;
        switch (o->op) {
        case STEP_MATMUL: status = matmul(o, rows, o->p[2]); break;
        case STEP_LOGITS: status = matmul(o, rows, (float *)(intptr_t)slots[0]); break;
        case STEP_RMS_NORM:
            status = tfb_rms_norm(o->p[0], o->i[0] * rows, o->i[1], o->p[1], (float)o->f[0], o->p[2]);
            break;
        case STEP_ADD:
        case STEP_GLU: elementwise(o, rows); break;
        case STEP_ROPE:
            for (int64_t r = 0; r < rows; r++)
                rope(o, positions[r], slots + r * slot_count, (float *)o->p[0] + r * o->i[0] * o->i[1]);
            break;
        case STEP_STORE:
            for (int64_t r = 0; r < rows; r++)
                store(o, positions[r], slots + r * slot_count, (const float *)o->p[0] + r * o->i[0] * o->i[1]);
            break;
        case STEP_ATTEND: {
            int64_t heads = o->i[0] * o->i[1];
            for (int64_t r = 0; r < rows && status == OK; r++)
                status = attend(o, positions[r], slots + r * slot_count, (const float *)o->p[0] + r * heads * o->i[2],
                                (float *)o->p[2] + r * heads * o->i[3]);
            break;
        }
        case STEP_MUL: {
            const float *a = o->p[0], *b = o->p[1];
            float *out = o->p[2];
            for (int64_t i = 0; i < o->i[0] * rows; i++) out[i] = a[i] * b[i];
            break;
        }
        case STEP_GATHER:
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < o->i[0]; c++)
                    memcpy((float *)o->p[1] + (r * o->i[0] + c) * o->i[1],
                           (const float *)o->p[0] + r * o->i[3] + o->i[4] + c * o->i[2], (size_t)o->i[1] * sizeof(float));
            break;
        case STEP_CONV:
            for (int64_t r = 0; r < rows; r++) conv(o, r, slots + r * slot_count);
            break;
        case STEP_L2_NORM: l2_norm(o, rows); break;
        case STEP_DELTA:
            for (int64_t r = 0; r < rows; r++) delta(o, r, slots + r * slot_count);
            break;
        default: status = ERR_SHAPE;
        }
        if (status != OK) return status;
    }
    return OK;
}
