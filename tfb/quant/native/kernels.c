/* Kernels for ggml block formats: a bit-exact dequantizer per format and, for most, a fused
 * matrix-vector product that expands each block in registers.
 *
 * Compiled once per instruction set (see simd.h) with -DTFB_ISA_SYMBOL=<name of the exported table>.
 *
 * Matrix-vector products keep float32 throughout: each weight is the reference's float value (up to
 * where the scale multiply happens), each product is with the float32 activation, sums are float32.
 * To keep the inner loops short, the per-block or per-sub-block scale multiplies the partial sum of
 * q * x rather than every q, and an additive offset m (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) multiplies the sum
 * of x over its run: sum((d*q + m) * x) = d * sum(q * x) + m * sum(x). That changes only the rounding.
 *
 * Dequantizers produce exactly the reference's float32 values: the scale computed as the reference
 * does, then one multiply (and one add or subtract for the offset formats); nothing is fused.
 */
#include <math.h>

#include "formats.h"
#include "grids.h" /* generated into the build directory (tables.py) */
#include "simd.h"
#include "unpack.h"

#ifndef TFB_ISA_SYMBOL
#error "compile with -DTFB_ISA_SYMBOL=<exported table name>"
#endif

/* A block's contribution to a dot product: inlined into its row loop whatever the compiler's size
 * heuristics say (a call per block costs more than some blocks' work) */
#define BLOCK_FN static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------ helpers */

static const float IQ4_NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const float MXFP4_VALUES[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
static const float Q4_0_VALUES[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};

/* bit `from` of each lane, moved to bit `to` (all other bits cleared) */
static inline vi vi_bit_to(vi v, int from, int to) {
    vi moved = from >= to ? vi_srl(v, from - to) : vi_sll(v, to - from);
    return vi_and(moved, 1 << to);
}

/* The weights PREFETCH_BYTES ahead of `p`, `bytes` of them, asked for into L2 as a row is read: weights
 * streamed from memory (an output layer) otherwise arrive only as the loop stalls on them. Spread over the
 * row (one request per cache line read), not in bursts. Measured (one thread, one activation row, [151936 x
 * 1024] streamed): Q8_0 26 -> 13 ms, Q4_K 9.9 -> 9.2 ms; no change on weights in cache. int8.c does the same. */
#define PREFETCH_BYTES 4096
static inline void prefetch_ahead(const uint8_t *p, int bytes) {
    for (int line = 0; line < bytes; line += 64) __builtin_prefetch(p + PREFETCH_BYTES + line, 0, 2);
}

/* The dot-product loop shared by the block formats: two accumulators over alternate blocks, each
 * block's contribution added by block_<fmt>(block, x, sums, acc, &offset); `offset` collects, lane by
 * lane, what the formats with additive offsets subtract at the end. */
#define DEFINE_ROWS(fmt, type_size, block_size, sums_per_block)                                              \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const float *x,      \
                           const float *sums, float *y) {                                                    \
        for (int64_t r = 0; r < nrows; r++) {                                                                \
            const uint8_t *row = w + r * stride;                                                             \
            vf acc0 = vf_zero(), acc1 = vf_zero();                                                           \
            vf offset = vf_zero();                                                                           \
            int64_t b = 0;                                                                                   \
            for (; b + 1 < nb; b += 2) {                                                                     \
                prefetch_ahead(row + b * (type_size), 2 * (type_size));                                      \
                acc0 = block_##fmt(row + b * (type_size), x + b * (block_size), sums + b * (sums_per_block), \
                                   acc0, &offset);                                                           \
                acc1 = block_##fmt(row + (b + 1) * (type_size), x + (b + 1) * (block_size),                 \
                                   sums + (b + 1) * (sums_per_block), acc1, &offset);                        \
            }                                                                                                \
            if (b < nb)                                                                                      \
                acc0 = block_##fmt(row + b * (type_size), x + b * (block_size), sums + b * (sums_per_block), \
                                   acc0, &offset);                                                           \
            y[r] = vf_sum(vf_sub(vf_add(acc0, acc1), offset));                                              \
        }                                                                                                    \
    }

/* The 256-weight formats split a block into prepare_<fmt>(block, sums, &prep, &offset), which works out
 * its scales (and, for some, its integer fields), and body_<fmt>(block, x, &prep, acc), the multiply-adds.
 * The row loop prepares block b + 1 before the body of block b: the scales come out of a chain of
 * dependent steps (bit fields, conversions, multiplies) that would otherwise hold up every block's
 * multiply-adds; one block ahead, that chain overlaps the previous block's work (a quarter faster). */
typedef struct {
    float scale[16];
    uint8_t q[256]; /* the block's integer fields in weight order, for the formats that unpack them */
} prepared_block;

#define DEFINE_PIPELINED_ROWS(fmt, type_size, sums_per_block)                                                \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const float *x,      \
                           const float *sums, float *y) {                                                    \
        prepared_block prep[2];                                                                              \
        for (int64_t r = 0; r < nrows; r++) {                                                                \
            const uint8_t *row = w + r * stride;                                                             \
            vf acc0 = vf_zero(), acc1 = vf_zero(), offset = vf_zero();                                       \
            prepare_##fmt(row, sums, &prep[0], &offset);                                                     \
            for (int64_t b = 0; b < nb; b += 2) {                                                            \
                const uint8_t *blk = row + b * (type_size);                                                  \
                prefetch_ahead(blk, 2 * (type_size));                                                        \
                if (b + 1 < nb) prepare_##fmt(blk + (type_size), sums + (b + 1) * (sums_per_block), &prep[1], \
                                              &offset);                                                      \
                acc0 = body_##fmt(blk, x + 256 * b, &prep[0], acc0);                                         \
                if (b + 1 < nb) {                                                                            \
                    if (b + 2 < nb) prepare_##fmt(blk + 2 * (type_size), sums + (b + 2) * (sums_per_block),  \
                                                  &prep[0], &offset);                                        \
                    acc1 = body_##fmt(blk + (type_size), x + 256 * (b + 1), &prep[1], acc1);                 \
                }                                                                                            \
            }                                                                                                \
            y[r] = vf_sum(vf_sub(vf_add(acc0, acc1), offset));                                               \
        }                                                                                                    \
    }

/* ------------------------------------------------------------------------------- F16 and BF16 */
/* One element per "block": the weight's own 2 bytes. Rows may have any length, hence the scalar tail. */

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#define DEFINE_FLOAT16(fmt, load_vector, load_scalar)                                                        \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t K, const float *x,       \
                           const float *sums, float *y) {                                                    \
        (void)sums;                                                                                          \
        for (int64_t r = 0; r < nrows; r++) {                                                                \
            const uint8_t *row = w + r * stride;                                                             \
            vf acc0 = vf_zero(), acc1 = vf_zero();                                                           \
            int64_t k = 0;                                                                                   \
            for (; k + 2 * LANES <= K; k += 2 * LANES) {                                                     \
                prefetch_ahead(row + 2 * k, 4 * LANES);                                                      \
                acc0 = vf_fma(load_vector(row + 2 * k), vf_load(x + k), acc0);                               \
                acc1 = vf_fma(load_vector(row + 2 * (k + LANES)), vf_load(x + k + LANES), acc1);             \
            }                                                                                                \
            float tail = 0.0f;                                                                               \
            for (; k < K; k++) tail += load_scalar(load_u16(row + 2 * k)) * x[k];                            \
            y[r] = vf_sum(vf_add(acc0, acc1)) + tail;                                                        \
        }                                                                                                    \
    }                                                                                                        \
    static void dequant_##fmt(const uint8_t *blocks, int64_t n, float *out) {                                \
        int64_t k = 0;                                                                                       \
        for (; k + LANES <= n; k += LANES) vf_store(out + k, load_vector(blocks + 2 * k));                   \
        for (; k < n; k++) out[k] = load_scalar(load_u16(blocks + 2 * k));                                   \
    }

DEFINE_FLOAT16(f16, vf_f16, half_to_float)
DEFINE_FLOAT16(bf16, vf_bf16, bf16_to_float)

/* ------------------------------------------------------------------------- 32-weight formats */

/* Q8_0, 34 bytes: d (f16), qs[32] (int8). w[j] = qs[j] * d */
BLOCK_FN vf block_q8_0(const uint8_t *blk, const float *x, const float *sums, vf acc, vf *offset) {
    (void)sums, (void)offset;
    vf t = vf_mul(vi_float(vi_i8(blk + 2)), vf_load(x));
    for (int i = LANES; i < 32; i += LANES) t = vf_fma(vi_float(vi_i8(blk + 2 + i)), vf_load(x + i), t);
    return vf_fma(t, vf_set1(load_half(blk)), acc);
}
DEFINE_ROWS(q8_0, 34, 32, 0)

static void dequant_q8_0(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 34, out += 32) {
        vf d = vf_set1(load_half(blk));
        for (int i = 0; i < 32; i += LANES) vf_store(out + i, vf_mul(vi_float(vi_i8(blk + 2 + i)), d));
    }
}

/* The 4-bit table formats, qs[16] after a `header`-byte scale: w[j] = table[qs[j] & 15] * d and
 * w[j + 16] = table[qs[j] >> 4] * d.
 *   Q4_0, 18 bytes: d (f16), qs. table = -8 .. 7
 *   IQ4_NL, 18 bytes: d (f16), qs. table = kvalues_iq4nl
 *   MXFP4, 17 bytes: e (E8M0), qs. table = kvalues_mxfp4 (E2M1 doubled), d = 2^(e - 128) as ggml's
 *     ggml_e8m0_to_fp32_half builds it (e < 2 gives a subnormal) */

static inline vf table_nibbles(vtable table, const uint8_t *qs, const float *x) {
    vf t = vf_zero();
    for (int i = 0; i < 16; i += LANES) {
        vi q = vi_u8(qs + i);
        t = vf_fma(vf_table16(table, q), vf_load(x + i), t);
        t = vf_fma(vf_table16(table, vi_srl(q, 4)), vf_load(x + 16 + i), t);
    }
    return t;
}

static inline void dequant_table_nibbles(vtable table, const uint8_t *qs, float d, float *out) {
    vf scale = vf_set1(d);
    for (int i = 0; i < 16; i += LANES) {
        vi q = vi_u8(qs + i);
        vf_store(out + i, vf_mul(vf_table16(table, q), scale));
        vf_store(out + 16 + i, vf_mul(vf_table16(table, vi_srl(q, 4)), scale));
    }
}

#define DEFINE_TABLE4(fmt, type_size, header, table, scale_of)                                              \
    BLOCK_FN vf block_##fmt(const uint8_t *blk, const float *x, const float *sums, vf acc, vf *off)    { \
        (void)sums, (void)off;                                                                               \
        return vf_fma(table_nibbles(vtable_load(table), blk + (header), x), vf_set1(scale_of), acc);         \
    }                                                                                                        \
    DEFINE_ROWS(fmt, type_size, 32, 0)                                                                       \
    static void dequant_##fmt(const uint8_t *blk, int64_t nb, float *out) {                                  \
        vtable t = vtable_load(table);                                                                       \
        for (int64_t b = 0; b < nb; b++, blk += (type_size), out += 32)                                      \
            dequant_table_nibbles(t, blk + (header), scale_of, out);                                         \
    }

DEFINE_TABLE4(q4_0, 18, 2, Q4_0_VALUES, load_half(blk))
DEFINE_TABLE4(iq4_nl, 18, 2, IQ4_NL_VALUES, load_half(blk))
DEFINE_TABLE4(mxfp4, 17, 1, MXFP4_VALUES, e8m0_half(blk[0]))

/* Q4_1, 20 bytes: d, m (f16), qs[16]. w[j] = (qs[j] & 15) * d + m, w[j + 16] = (qs[j] >> 4) * d + m */
BLOCK_FN vf block_q4_1(const uint8_t *blk, const float *x, const float *sums, vf acc, vf *offset) {
    vf t = vf_zero();
    for (int i = 0; i < 16; i += LANES) {
        vi q = vi_u8(blk + 4 + i);
        t = vf_fma(vf_nibble_low(q), vf_load(x + i), t);
        t = vf_fma(vi_float(vi_srl(q, 4)), vf_load(x + 16 + i), t);
    }
    *offset = vf_sub(*offset, vf_first(load_half(blk + 2) * sums[0]));
    return vf_fma(t, vf_set1(load_half(blk)), acc);
}
DEFINE_ROWS(q4_1, 20, 32, 1)

static void dequant_q4_1(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 20, out += 32) {
        vf d = vf_set1(load_half(blk)), m = vf_set1(load_half(blk + 2));
        for (int i = 0; i < 16; i += LANES) {
            vi q = vi_u8(blk + 4 + i);
            vf_store(out + i, vf_add(vf_mul(vf_nibble_low(q), d), m));
            vf_store(out + 16 + i, vf_add(vf_mul(vi_float(vi_srl(q, 4)), d), m));
        }
    }
}

/* Q5_0, 22 bytes: d (f16), qh[4], qs[16]. Bit j of qh (little-endian uint32) is the fifth bit of
 * weight j: w[j] = ((qs[j] & 15) | bit j << 4) - 16) * d, w[j + 16] likewise with qs[j] >> 4, bit j + 16.
 * Q5_1, 24 bytes: d, m (f16), qh[4], qs[16]: the same without the -16, plus m. */
static inline vi five_bit_low(const uint8_t *qs, uint32_t qh, int i) {
    return vi_or_bits(vi_and(vi_u8(qs + i), 15), qh >> i, 16);
}
static inline vi five_bit_high(const uint8_t *qs, uint32_t qh, int i) {
    return vi_or_bits(vi_srl(vi_u8(qs + i), 4), qh >> (16 + i), 16);
}

BLOCK_FN vf block_q5_0(const uint8_t *blk, const float *x, const float *sums, vf acc, vf *offset) {
    (void)sums, (void)offset;
    uint32_t qh = load_u32(blk + 2);
    vf t = vf_zero();
    for (int i = 0; i < 16; i += LANES) {
        t = vf_fma(vi_float(vi_add(five_bit_low(blk + 6, qh, i), -16)), vf_load(x + i), t);
        t = vf_fma(vi_float(vi_add(five_bit_high(blk + 6, qh, i), -16)), vf_load(x + 16 + i), t);
    }
    return vf_fma(t, vf_set1(load_half(blk)), acc);
}
DEFINE_ROWS(q5_0, 22, 32, 0)

static void dequant_q5_0(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 22, out += 32) {
        vf d = vf_set1(load_half(blk));
        uint32_t qh = load_u32(blk + 2);
        for (int i = 0; i < 16; i += LANES) {
            vf_store(out + i, vf_mul(vi_float(vi_add(five_bit_low(blk + 6, qh, i), -16)), d));
            vf_store(out + 16 + i, vf_mul(vi_float(vi_add(five_bit_high(blk + 6, qh, i), -16)), d));
        }
    }
}

BLOCK_FN vf block_q5_1(const uint8_t *blk, const float *x, const float *sums, vf acc, vf *offset) {
    uint32_t qh = load_u32(blk + 4);
    vf t = vf_zero();
    for (int i = 0; i < 16; i += LANES) {
        t = vf_fma(vi_float(five_bit_low(blk + 8, qh, i)), vf_load(x + i), t);
        t = vf_fma(vi_float(five_bit_high(blk + 8, qh, i)), vf_load(x + 16 + i), t);
    }
    *offset = vf_sub(*offset, vf_first(load_half(blk + 2) * sums[0]));
    return vf_fma(t, vf_set1(load_half(blk)), acc);
}
DEFINE_ROWS(q5_1, 24, 32, 1)

static void dequant_q5_1(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 24, out += 32) {
        vf d = vf_set1(load_half(blk)), m = vf_set1(load_half(blk + 2));
        uint32_t qh = load_u32(blk + 4);
        for (int i = 0; i < 16; i += LANES) {
            vf_store(out + i, vf_add(vf_mul(vi_float(five_bit_low(blk + 8, qh, i)), d), m));
            vf_store(out + 16 + i, vf_add(vf_mul(vi_float(five_bit_high(blk + 8, qh, i)), d), m));
        }
    }
}

/* -------------------------------------------------------------------------------------- k-quants */

/* Q2_K, Q3_K, Q5_K and Q6_K first assemble a block's integer fields into 256 bytes in weight order
 * (GCC vectors, 32 bytes at a time, whatever width the target has), then multiply: sub-block j of `sub`
 * weights contributes scale[j] * (q . x) to the dot product and is expanded as scale[j] * (q - bias)
 * (- min[j]). A constant bias (Q3_K's 4, Q6_K's 32) is folded into the sums of x over each sub-block. */

BLOCK_FN vf dot_unpacked(const uint8_t *q, const float *x, const float *scale, int sub, vf acc) {
    /* Make the compiler store q and widen it from memory: kept in registers, each 16 bytes would cost a
     * lane extraction on top of the widening, and shuffles are the scarcest unit here. */
    __asm__ __volatile__("" : : "r"(q) : "memory");
    for (int j = 0; j < 256 / sub; j++) {
        vf part = vf_mul(vi_float(vi_u8(q + sub * j)), vf_load(x + sub * j));
        for (int i = LANES; i < sub; i += LANES)
            part = vf_fma(vi_float(vi_u8(q + sub * j + i)), vf_load(x + sub * j + i), part);
        acc = vf_fma(part, vf_set1(scale[j]), acc);
    }
    return acc;
}

/* The rows of a format whose prepare_<fmt> unpacks every integer field into prepared_block.q: its body is
 * dot_unpacked over sub-blocks of `sub` weights. */
#define DEFINE_UNPACKED_ROWS(fmt, type_size, sums_per_block, sub)                                            \
    BLOCK_FN vf body_##fmt(const uint8_t *blk, const float *x, const prepared_block *p, vf acc) {             \
        (void)blk;                                                                                           \
        return dot_unpacked(p->q, x, p->scale, sub, acc);                                                    \
    }                                                                                                        \
    DEFINE_PIPELINED_ROWS(fmt, type_size, sums_per_block)

/* offset + bias * scale[j] * sums[j] over the 16 sub-blocks, lane by lane */
static inline vf add_bias16(vf offset, float bias, const float *scale, const float *sums) {
    for (int j = 0; j < 16; j += LANES) offset = vf_fma(vf_mul(vf_load(scale + j), vf_set1(bias)), vf_load(sums + j), offset);
    return offset;
}

static inline void dequant_unpacked(const uint8_t *q, const float *scale, const float *min, int bias, int sub,
                                    float *out) {
    for (int j = 0; j < 256 / sub; j++)
        for (int i = 0; i < sub; i += LANES) {
            vf v = vf_mul(vf_set1(scale[j]), vi_float(vi_add(vi_u8(q + sub * j + i), -bias)));
            vf_store(out + sub * j + i, min ? vf_sub(v, vf_set1(min[j])) : v);
        }
}

/* The two-bit fields of Q2_K and Q3_K: weight 128h + 32s + l is bits 2s..2s+1 of qs[32h + l]. */
static inline void two_bit_unpack(const uint8_t *qs, uint8_t *q) {
    for (int h = 0; h < 2; h++) {
        u8x32 packed = load_u8x32(qs + 32 * h);
        for (int s = 0; s < 4; s++) store_u8x32(q + 128 * h + 32 * s, (packed >> (2 * s)) & 3);
    }
}

#define LOW_NIBBLES 0x0F0F0F0F0F0F0F0Full

/* Q2_K, 84 bytes: scales[16] (low nibble: scale, high nibble: min), qs[64], d, dmin (f16).
 * Sub-block j (16 weights): w = (d * (scales[j] & 15)) * q - dmin * (scales[j] >> 4). */
static inline void q2_k_scales(const uint8_t *blk, float *scale, float *min) {
    uint64_t low = load_u64(blk), high = load_u64(blk + 8);
    bytes8_scaled(low & LOW_NIBBLES, load_half(blk + 80), scale);
    bytes8_scaled(high & LOW_NIBBLES, load_half(blk + 80), scale + 8);
    if (min) {
        bytes8_scaled(low >> 4 & LOW_NIBBLES, load_half(blk + 82), min);
        bytes8_scaled(high >> 4 & LOW_NIBBLES, load_half(blk + 82), min + 8);
    }
}

BLOCK_FN void prepare_q2_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    q2_k_scales(blk, p->scale, NULL);
    two_bit_unpack(blk + 16, p->q);
    uint64_t low = load_u64(blk), high = load_u64(blk + 8);
    *offset = vf_bytes8_fma(*offset, low >> 4 & LOW_NIBBLES, load_half(blk + 82), sums);
    *offset = vf_bytes8_fma(*offset, high >> 4 & LOW_NIBBLES, load_half(blk + 82), sums + 8);
}

DEFINE_UNPACKED_ROWS(q2_k, 84, 16, 16)

static void dequant_q2_k(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 84, out += 256) {
        float scale[16], min[16];
        uint8_t q[256];
        q2_k_scales(blk, scale, min);
        two_bit_unpack(blk + 16, q);
        dequant_unpacked(q, scale, min, 0, 16, out);
    }
}

/* Q3_K, 110 bytes: hmask[32], qs[64], scales[12], d (f16). Weight 128h + 32s + l: the two-bit field
 * as in Q2_K plus bit 4h + s of hmask[l] as bit 2, q = that - 4; sub-block j (16 weights) has a 6-bit
 * scale: w = (d * (sc_j - 32)) * q. The scales' low 4 bits are nibbles of bytes 0-7, their high 2 bits
 * pairs of bits of bytes 8-11 (ggml's word shuffle below). */
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint64_t u64x2 __attribute__((vector_size(16)));

static inline void q3_k_scales(const uint8_t *packed, float d, float *scale) {
    uint32_t a0 = load_u32(packed), a1 = load_u32(packed + 4), high = load_u32(packed + 8);
    u32x4 low = {a0, a1, a0 >> 4, a1 >> 4}, top = {high, high >> 2, high >> 4, high >> 6};
    u32x4 words = (low & 0x0F0F0F0F) | (top & 0x03030303) << 4; /* in registers: no store-to-load stall */
    u64x2 halves = (u64x2)((u8x16)words - 32); /* bytewise: 0..63 becomes the signed -32..31 */
    sbytes8_scaled(halves[0], d, scale);
    sbytes8_scaled(halves[1], d, scale + 8);
}

static inline void q3_k_unpack(const uint8_t *blk, uint8_t *q) {
    u8x32 hmask = load_u8x32(blk);
    for (int h = 0; h < 2; h++) {
        u8x32 packed = load_u8x32(blk + 32 + 32 * h);
        for (int s = 0; s < 4; s++)
            store_u8x32(q + 128 * h + 32 * s, ((packed >> (2 * s)) & 3) | ((hmask >> (4 * h + s)) & 1) << 2);
    }
}

BLOCK_FN void prepare_q3_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    q3_k_scales(blk + 96, load_half(blk + 108), p->scale);
    q3_k_unpack(blk, p->q);
    *offset = add_bias16(*offset, 4.0f, p->scale, sums);
}

DEFINE_UNPACKED_ROWS(q3_k, 110, 16, 16)

static void dequant_q3_k(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 110, out += 256) {
        float scale[16];
        uint8_t q[256];
        q3_k_scales(blk + 96, load_half(blk + 108), scale);
        q3_k_unpack(blk, q);
        dequant_unpacked(q, scale, NULL, 4, 16, out);
    }
}

/* Q4_K and Q5_K share a 12-byte field of eight 6-bit scales and eight 6-bit mins (ggml's
 * get_scale_min_k4): for j < 4 the low 6 bits of bytes j and j + 4; for j >= 4 a nibble of byte j + 4
 * plus the top 2 bits of bytes j - 4 and j. Sub-block j has 32 weights: w = (d * sc_j) * q - dmin * m_j. */
static inline void k4_scales_mins(const uint8_t *s, float d, float dmin, float *scale, float *min) {
    uint64_t scales, mins;
    k4_unpack(s, &scales, &mins);
    bytes8_scaled(scales, d, scale);
    bytes8_scaled(mins, dmin, min);
}

/* the scales into scale[8]; the mins' share of the dot product added to *offset */
static inline void k4_scales_offset(const uint8_t *blk, const float *sums, float *scale, vf *offset) {
    uint64_t scales, mins;
    k4_unpack(blk + 4, &scales, &mins);
    bytes8_scaled(scales, load_half(blk), scale);
    *offset = vf_bytes8_fma(*offset, mins, load_half(blk + 2), sums);
}

/* Q4_K, 144 bytes: d, dmin (f16), scales[12], qs[128]. Sub-blocks 2c and 2c + 1 are the low and the high
 * nibbles of qs[32c .. 32c + 31]. */
BLOCK_FN void prepare_q4_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    k4_scales_offset(blk, sums, p->scale, offset);
}

BLOCK_FN vf body_q4_k(const uint8_t *blk, const float *x, const prepared_block *p, vf acc) {
    const uint8_t *qs = blk + 16;
    for (int c = 0; c < 4; c++) {
        vf low = vf_zero(), high = vf_zero();
        for (int i = 0; i < 32; i += LANES) {
            vi q = vi_u8(qs + 32 * c + i);
            low = vf_fma(vf_nibble_low(q), vf_load(x + 64 * c + i), low);
            high = vf_fma(vi_float(vi_srl(q, 4)), vf_load(x + 64 * c + 32 + i), high);
        }
        acc = vf_fma(low, vf_set1(p->scale[2 * c]), acc);
        acc = vf_fma(high, vf_set1(p->scale[2 * c + 1]), acc);
    }
    return acc;
}
DEFINE_PIPELINED_ROWS(q4_k, 144, 8)

static void dequant_q4_k(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 144, out += 256) {
        float scale[8], min[8];
        k4_scales_mins(blk + 4, load_half(blk), load_half(blk + 2), scale, min);
        for (int c = 0; c < 4; c++) {
            vf s0 = vf_set1(scale[2 * c]), m0 = vf_set1(min[2 * c]);
            vf s1 = vf_set1(scale[2 * c + 1]), m1 = vf_set1(min[2 * c + 1]);
            for (int i = 0; i < 32; i += LANES) {
                vi q = vi_u8(blk + 16 + 32 * c + i);
                vf_store(out + 64 * c + i, vf_sub(vf_mul(s0, vf_nibble_low(q)), m0));
                vf_store(out + 64 * c + 32 + i, vf_sub(vf_mul(s1, vi_float(vi_srl(q, 4))), m1));
            }
        }
    }
}

/* Q5_K, 176 bytes: d, dmin (f16), scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit: bit 2c of
 * qh[l] for weight 64c + l, bit 2c + 1 for weight 64c + 32 + l. */

BLOCK_FN void prepare_q5_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    k4_scales_offset(blk, sums, p->scale, offset);
    q5_k_unpack(blk, p->q);
}

DEFINE_UNPACKED_ROWS(q5_k, 176, 8, 32)

static void dequant_q5_k(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 176, out += 256) {
        float scale[8], min[8];
        uint8_t q[256];
        k4_scales_mins(blk + 4, load_half(blk), load_half(blk + 2), scale, min);
        q5_k_unpack(blk, q);
        dequant_unpacked(q, scale, min, 0, 32, out);
    }
}

/* Q6_K, 210 bytes: ql[128], qh[64], scales[16] (int8), d (f16). In half h, for l < 32 and k < 4,
 * weight 128h + 32k + l takes the low (k = 0, 1) or high (k = 2, 3) nibble of ql[64h + 32(k % 2) + l]
 * and bits 2k.. of qh[32h + l]: q = (nibble | bits << 4) - 32, w = (d * scales[8h + 2k + l / 16]) * q. */

static inline void q6_k_scales(const uint8_t *blk, float *scale) {
    sbytes8_scaled(load_u64(blk + 192), load_half(blk + 208), scale);
    sbytes8_scaled(load_u64(blk + 200), load_half(blk + 208), scale + 8);
}

BLOCK_FN void prepare_q6_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    q6_k_scales(blk, p->scale);
    q6_k_unpack(blk, p->q);
    *offset = add_bias16(*offset, 32.0f, p->scale, sums);
}

DEFINE_UNPACKED_ROWS(q6_k, 210, 16, 16)

static void dequant_q6_k(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 210, out += 256) {
        float scale[16];
        uint8_t q[256];
        q6_k_scales(blk, scale);
        q6_k_unpack(blk, q);
        dequant_unpacked(q, scale, NULL, 32, 16, out);
    }
}

/* IQ4_XS, 136 bytes: d (f16), scales_h (uint16), scales_l[4], qs[128]. Sub-block i (32 weights) has the
 * 6-bit scale ls = nibble i of scales_l | bits 2i..2i+1 of scales_h << 4, and
 * w[32i + j] = (d * (ls - 32)) * kvalues_iq4nl[qs[16i + j] & 15], w[32i + 16 + j] likewise with >> 4. */
static inline float iq4_xs_scale(const uint8_t *blk, float d, int i) {
    int ls = ((blk[4 + i / 2] >> (4 * (i % 2))) & 15) | ((load_u16(blk + 2) >> (2 * i)) & 3) << 4;
    return d * (float)(ls - 32);
}

BLOCK_FN vf block_iq4_xs(const uint8_t *blk, const float *x, const float *sums, vf acc, vf *offset) {
    (void)sums, (void)offset;
    vtable table = vtable_load(IQ4_NL_VALUES);
    float d = load_half(blk);
    for (int i = 0; i < 8; i++)
        acc = vf_fma(table_nibbles(table, blk + 8 + 16 * i, x + 32 * i), vf_set1(iq4_xs_scale(blk, d, i)), acc);
    return acc;
}
DEFINE_ROWS(iq4_xs, 136, 256, 0)

static void dequant_iq4_xs(const uint8_t *blk, int64_t nb, float *out) {
    vtable table = vtable_load(IQ4_NL_VALUES);
    for (int64_t b = 0; b < nb; b++, blk += 136, out += 256) {
        float d = load_half(blk);
        for (int i = 0; i < 8; i++) dequant_table_nibbles(table, blk + 8 + 16 * i, iq4_xs_scale(blk, d, i), out + 32 * i);
    }
}

/* ------------------------------------------------------------------ dequantize-only formats */
/* The formats below have no fused row product: a matmul dequantizes their rows into a scratch buffer
 * and multiplies with `tile` (runtime.c), for one activation row as for many. */

/* n weights (a multiple of LANES) from bytes q: out[i] = d * (q[i] - bias), one multiply each */
static inline void scale_bytes(const uint8_t *q, int n, int bias, float d, float *out) {
    vf scale = vf_set1(d);
    for (int i = 0; i < n; i += LANES) vf_store(out + i, vf_mul(scale, vi_float(vi_add(vi_u8(q + i), -bias))));
}

/* TQ2_0, 66 bytes: qs[64], d (f16). Weight 128h + 32s + l is bits 2s..2s+1 of qs[32h + l], minus one
 * (Q2_K's layout): w = d * (q - 1). */
static void dequant_tq2_0(const uint8_t *blk, int64_t nb, float *out) {
    uint8_t q[256];
    for (int64_t b = 0; b < nb; b++, blk += 66, out += 256) {
        two_bit_unpack(blk, q);
        scale_bytes(q, 256, 1, load_half(blk + 64), out);
    }
}

/* TQ1_0, 54 bytes: qs[48], qh[4], d (f16). Each byte packs base-3 digits, read as ggml reads them:
 * digit k of byte v is ((v * 3^k mod 256) * 3) >> 8. Digit k (< 5) of qs[p] is weight 32k + p for
 * p < 32, 160 + 16k + (p - 32) after; digit k (< 4) of qh[p] is weight 240 + 4k + p. w = d * (digit - 1). */
static const uint8_t POWERS_OF_3[5] = {1, 3, 9, 27, 81};

/* digits 0..digits-1 of LANES bytes at p, each scaled: out[stride * k + i] = d * (digit k of p[i] - 1). The
 * byte times 3^(k+1) mod 256 is the byte times 3^k mod 256 (kept in m) times 3, so each digit costs a shift,
 * two adds and a mask in int32 lanes. */
static inline void tq1_0_digits(const uint8_t *p, int digits, int stride, vf d, float *out) {
    vi m = vi_u8(p);
    for (int k = 0; k < digits; k++) {
        vi tripled = vi_plus(m, vi_sll(m, 1));
        vf_store(out + stride * k, vf_mul(d, vi_float(vi_add(vi_srl(tripled, 8), -1))));
        m = vi_and(tripled, 0xFF);
    }
}

static void dequant_tq1_0(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 54, out += 256) {
        vf d = vf_set1(load_half(blk + 52));
        for (int p = 0; p < 32; p += LANES) tq1_0_digits(blk + p, 5, 32, d, out + p);
        for (int p = 32; p < 48; p += LANES) tq1_0_digits(blk + p, 5, 16, d, out + 160 + (p - 32));
        float ds = load_half(blk + 52);
        for (int k = 0; k < 4; k++)
            for (int p = 0; p < 4; p++)
                out[240 + 4 * k + p] = ds * (float)(((uint8_t)(blk[48 + p] * POWERS_OF_3[k]) * 3 >> 8) - 1);
    }
}

/* Q2_0, 18 bytes, 64 weights: d (f16), qs[16]. Weight j is bits 2(j % 4).. of qs[j / 4]: w = d * (q - 1).
 * Each byte spreads into a uint32 whose byte k is its k-th field. */
typedef uint32_t u32x16 __attribute__((vector_size(64)));

static void dequant_q2_0(const uint8_t *blk, int64_t nb, float *out) {
    uint8_t q[64];
    for (int64_t b = 0; b < nb; b++, blk += 18, out += 64) {
        u8x16 bytes;
        memcpy(&bytes, blk + 2, 16);
        u32x16 v = __builtin_convertvector(bytes, u32x16);
        v = (v | v << 6 | v << 12 | v << 18) & 0x03030303;
        memcpy(q, &v, 64);
        scale_bytes(q, 64, 1, load_half(blk), out);
    }
}

/* Q1_0, 18 bytes, 128 weights: d (f16), qs[16]. Bit j (low bit first) is weight j: +d where set, -d where
 * clear, i.e. d * (2 * bit - 1). Each byte spreads into a uint64 whose byte k is 2 * bit k. */
static void dequant_q1_0(const uint8_t *blk, int64_t nb, float *out) {
    uint8_t q[128];
    for (int64_t b = 0; b < nb; b++, blk += 18, out += 128) {
        for (int i = 0; i < 16; i++) {
            uint64_t bits = (blk[2 + i] * 0x0101010101010101ull) & 0x8040201008040201ull; /* byte k: bit k alone */
            bits = ((bits + 0x7F7F7F7F7F7F7F7Full) >> 7 & 0x0101010101010101ull) * 2; /* no carry between bytes */
            memcpy(q + 8 * i, &bits, 8);
        }
        scale_bytes(q, 128, 1, load_half(blk), out);
    }
}

/* NVFP4, 36 bytes, 64 weights: d[4] (UE4M3, one per 16 weights), qs[32]. Sub-block s is the low, then the
 * high nibbles of qs[8s .. 8s + 7], through kvalues_mxfp4 (E2M1 doubled), times ggml_ue4m3_to_fp32's
 * value halved (ue4m3_half, unpack.h). */

/* out[0..7] = kvalues_mxfp4[low nibble of qs[j]] * scale, out[8..15] the same for the high nibbles */
static inline void fp4_nibbles8(const uint8_t *qs, float scale, float *out) {
#if LANES >= 8
    /* vpermps reads an index's low 3 bits; bit 3, shifted into the sign bit, picks the table half */
    __m256 low = _mm256_loadu_ps(MXFP4_VALUES), high = _mm256_loadu_ps(MXFP4_VALUES + 8), d = _mm256_set1_ps(scale);
    __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    for (int h = 0; h < 2; h++, q = _mm256_srli_epi32(q, 4)) {
        __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, q), _mm256_permutevar8x32_ps(high, q),
                                    _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
        _mm256_storeu_ps(out + 8 * h, _mm256_mul_ps(v, d));
    }
#else
    for (int j = 0; j < 8; j++) {
        out[j] = MXFP4_VALUES[qs[j] & 15] * scale;
        out[8 + j] = MXFP4_VALUES[qs[j] >> 4] * scale;
    }
#endif
}

static void dequant_nvfp4(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 36, out += 64)
        for (int s = 0; s < 4; s++) fp4_nibbles8(blk + 4 + 8 * s, ue4m3_half(blk[s]), out + 16 * s);
}

/* The codebook formats expand groups of 8 weights from a grid row: grids.h, generated at build time from
 * tfb/quant/grids.py (tables.py), holds each row as 8 bytes (or 4 for the IQ3 grids, two rows a group). */
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

/* The eight unsigned (bytes8_f) or signed (sbytes8_f) bytes of a uint64 as floats: one widening and one
 * conversion with AVX2 (GCC's generic conversion of an 8-byte vector goes byte by byte). */
#if LANES >= 8
static inline f32x8 bytes8_f(uint64_t b) { return (f32x8)bytes8_float(b); }
static inline f32x8 sbytes8_f(uint64_t b) { return (f32x8)sbytes8_float(b); }
#else
static inline f32x8 bytes8_f(uint64_t b) {
    f32x8 v = {(uint8_t)b, (uint8_t)(b >> 8), (uint8_t)(b >> 16), (uint8_t)(b >> 24),
               (uint8_t)(b >> 32), (uint8_t)(b >> 40), (uint8_t)(b >> 48), (uint8_t)(b >> 56)};
    return v;
}
static inline f32x8 sbytes8_f(uint64_t b) {
    f32x8 v = {(int8_t)b, (int8_t)(b >> 8), (int8_t)(b >> 16), (int8_t)(b >> 24),
               (int8_t)(b >> 32), (int8_t)(b >> 40), (int8_t)(b >> 48), (int8_t)(b >> 56)};
    return v;
}
#endif

/* out[j] = scale * byte j of `row`, negated where bit j of `signs` is set. The reference computes
 * scale * (grid * sign); a sign flip is exact and rounding symmetric, so flipping the sign bit of the
 * product gives its value bit for bit (signed zeros included). */
static inline void put8_signed(float *out, uint64_t row, float scale, uint32_t signs) {
    const i32x8 lane_bit = {1, 2, 4, 8, 16, 32, 64, 128};
    f32x8 v = bytes8_f(row) * scale;
    i32x8 flip = ((lane_bit & (int32_t)signs) != 0) & INT32_MIN;
    v = (f32x8)((i32x8)v ^ flip);
    memcpy(out, &v, 32);
}

/* out[j] = scale * (signed byte j of `row` + delta): the IQ1 grids hold -1, 0, 1 and shift by +-1/8 */
static inline void put8_delta(float *out, uint64_t row, float delta, float scale) {
    f32x8 v = (sbytes8_f(row) + delta) * scale;
    memcpy(out, &v, 32);
}


/* IQ2_XXS/IQ2_XS/IQ2_S scales: d * (s + 0.5) * 0.25 (IQ3_XXS: * 0.5), evaluated left to right as the
 * reference does */
static inline float half_step_scale(float d, uint32_t s, float step) { return d * ((float)s + 0.5f) * step; }

/* IQ2_XXS, 66 bytes: d (f16), then per 32 weights two uint32: four grid indices (bytes), and four 7-bit
 * sign indices under a 4-bit scale (bits 28-31). Group l: iq2xxs_grid[index l], signs ksigns(sign index l). */
static void dequant_iq2_xxs(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 66, out += 256) {
        float d = load_half(blk);
        for (int i = 0; i < 8; i++) {
            const uint8_t *q = blk + 2 + 8 * i;
            uint32_t aux = load_u32(q + 4);
            float scale = half_step_scale(d, aux >> 28, 0.25f);
            for (int l = 0; l < 4; l++)
                put8_signed(out + 32 * i + 8 * l, GRID_IQ2XXS[q[l]], scale, ksigns(aux >> (7 * l) & 127));
        }
    }
}

/* the 4-bit scale of the 16 weights s of IQ2_XS and IQ2_S (low nibble first) */
static inline float iq2_scale(const uint8_t *scales, float d, int s) {
    return half_step_scale(d, scales[s / 2] >> (4 * (s % 2)) & 15, 0.25f);
}

/* IQ2_XS, 74 bytes: d (f16), qs[32] (uint16: 9-bit grid index, 7-bit sign index), scales[8]. */
static void dequant_iq2_xs(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 74, out += 256) {
        float d = load_half(blk);
        for (int s = 0; s < 16; s++) {
            float scale = iq2_scale(blk + 66, d, s);
            for (int l = 2 * s; l < 2 * s + 2; l++) {
                uint32_t v = load_u16(blk + 2 + 2 * l);
                put8_signed(out + 8 * l, GRID_IQ2XS[v & 511], scale, ksigns(v >> 9));
            }
        }
    }
}

/* IQ2_S, 82 bytes: d (f16), qs[32] (grid index bits 0-7), signs[32] (a whole byte per group), qh[8]
 * (index bits 8-9: bits 2(l % 4).. of qh[l / 4] for group l), scales[8]. */
static void dequant_iq2_s(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 82, out += 256) {
        float d = load_half(blk);
        for (int s = 0; s < 16; s++) {
            float scale = iq2_scale(blk + 74, d, s);
            for (int l = 2 * s; l < 2 * s + 2; l++) {
                uint32_t index = blk[2 + l] | (blk[66 + l / 4] >> (2 * (l % 4)) & 3) << 8;
                put8_signed(out + 8 * l, GRID_IQ2S[index], scale, blk[34 + l]);
            }
        }
    }
}

/* IQ3_XXS, 98 bytes: d (f16), qs[64] (grid indices, 4 weights each), then per 32 weights a uint32: four
 * 7-bit sign indices (ksigns, one per 8 weights) and a 4-bit scale: d * (s + 0.5) * 0.5. */
static void dequant_iq3_xxs(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 98, out += 256) {
        float d = load_half(blk);
        for (int i = 0; i < 8; i++) {
            uint32_t aux = load_u32(blk + 66 + 4 * i);
            float scale = half_step_scale(d, aux >> 28, 0.5f);
            for (int l = 0; l < 4; l++) {
                const uint8_t *q = blk + 2 + 8 * i + 2 * l;
                uint64_t row = GRID_IQ3XXS[q[0]] | (uint64_t)GRID_IQ3XXS[q[1]] << 32;
                put8_signed(out + 32 * i + 8 * l, row, scale, ksigns(aux >> (7 * l) & 127));
            }
        }
    }
}

/* IQ3_S, 110 bytes: d (f16), qs[64] (grid index bits 0-7), qh[8] (bit 8 of index r: bit r % 8 of
 * qh[r / 8]), signs[32] (a byte per 8 weights), scales[4] (a nibble per 32 weights, low first):
 * scale d * (1 + 2s). */

static void dequant_iq3_s(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 110, out += 256) {
        float d = load_half(blk);
        for (int i = 0; i < 8; i++) {
            float scale = d * (float)(1 + 2 * (blk[106 + i / 2] >> (4 * (i % 2)) & 15));
            for (int g = 4 * i; g < 4 * i + 4; g++) {
                uint64_t row = GRID_IQ3S[iq3_s_index(blk, 2 * g)] | (uint64_t)GRID_IQ3S[iq3_s_index(blk, 2 * g + 1)] << 32;
                put8_signed(out + 8 * g, row, scale, blk[74 + g]);
            }
        }
    }
}

/* The IQ1 delta: +1/8, or -1/8 where bit `bit` of `flags` is set, built from its bits: a select on the
 * flag compiles to a branch, which random flags mispredict half the time. */
static inline float iq1_delta(uint32_t flags, int bit) {
    uint32_t bits = 0x3E000000u | (flags >> bit & 1) << 31; /* 0x3E000000 is 0.125f */
    float delta;
    memcpy(&delta, &bits, 4);
    return delta;
}

/* IQ1_S, 50 bytes: d (f16), qs[32] (grid index bits 0-7), qh[8] (uint16 per 32 weights: 3 index bits
 * 8-10 per group, a 3-bit scale s at bits 12-14, the delta's sign at bit 15). Group l:
 * (d * (2s + 1)) * (iq1s_grid[index] + delta), delta = -1/8 where bit 15 is set, else +1/8. */
static void dequant_iq1_s(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 50, out += 256) {
        float d = load_half(blk);
        for (int i = 0; i < 8; i++) {
            uint32_t qh = load_u16(blk + 34 + 2 * i);
            float scale = d * (float)(2 * (qh >> 12 & 7) + 1), delta = iq1_delta(qh, 15);
            for (int l = 0; l < 4; l++)
                put8_delta(out + 32 * i + 8 * l, GRID_IQ1S[blk[2 + 4 * i + l] | (qh >> (3 * l) & 7) << 8], delta, scale);
        }
    }
}

/* IQ1_M, 56 bytes: qs[32] (grid index bits 0-7), qh[16] (a nibble per group, low first: index bits 8-10,
 * then the delta's sign), scales[4] (uint16: four 3-bit scales, one per 16 weights, under a nibble of d,
 * the float16 whose nibble k tops scales[k]). Group l: (d * (2s + 1)) * (iq1s_grid[index] + delta). */

static void dequant_iq1_m(const uint8_t *blk, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++, blk += 56, out += 256) {
        float d = iq1_m_d(blk);
        for (int i = 0; i < 8; i++) { /* 32 weights: two scales, four groups */
            uint32_t sc = load_u16(blk + 48 + 2 * (i / 2)) >> (6 * (i % 2)), qh = load_u16(blk + 32 + 2 * i);
            float scale[2] = {d * (float)(2 * (sc & 7) + 1), d * (float)(2 * (sc >> 3 & 7) + 1)};
            for (int l = 0; l < 4; l++) {
                uint32_t nibble = qh >> (4 * l) & 15;
                put8_delta(out + 32 * i + 8 * l, GRID_IQ1S[blk[4 * i + l] | (nibble & 7) << 8],
                           iq1_delta(nibble, 3), scale[l / 2]);
            }
        }
    }
}

/* ----------------------------------------------------------------------------- dense float tile */

/* y[m, r] = w[r] . x[m] for a few dequantized rows w (rows x K) and all activation rows x (M x K).
 * Register blocking: 4 weight rows x TILE_M activation rows per step, so that each loaded vector feeds
 * several multiply-adds (TILE_M = 6 where there are 32 vector registers, else 2; 6 rather than 4: Q4_K
 * [3072 x 1024], 256 rows, one thread, 14.5 -> 12.9 ms). Activation rows go in
 * blocks of M_BLOCK, which stay in L2 while every weight row of the tile passes over them. */
#define TILE_M (LANES == 16 ? 6 : 2)
#define M_BLOCK 64

static inline float dot_tail(const float *a, const float *b, int64_t from, int64_t K) {
    float s = 0.0f;
    for (int64_t k = from; k < K; k++) s += a[k] * b[k];
    return s;
}

#define DEFINE_MICRO(NM)                                                                                     \
    static inline void micro_4x##NM(const float *w, int64_t K, const float *x, float *y, int64_t ldy) {      \
        int64_t body = K - K % LANES;                                                                        \
        vf acc[4][NM];                                                                                       \
        for (int i = 0; i < 4; i++)                                                                          \
            for (int j = 0; j < NM; j++) acc[i][j] = vf_zero();                                              \
        for (int64_t k = 0; k < body; k += LANES) {                                                          \
            vf c[4];                                                                                         \
            for (int i = 0; i < 4; i++) c[i] = vf_load(w + i * K + k);                                       \
            for (int j = 0; j < NM; j++) {                                                                   \
                vf u = vf_load(x + j * K + k);                                                               \
                for (int i = 0; i < 4; i++) acc[i][j] = vf_fma(c[i], u, acc[i][j]);                          \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < 4; i++)                                                                          \
            for (int j = 0; j < NM; j++)                                                                     \
                y[j * ldy + i] = vf_sum(acc[i][j]) + dot_tail(w + i * K, x + j * K, body, K);                \
    }
DEFINE_MICRO(6)
DEFINE_MICRO(4)
DEFINE_MICRO(2)
DEFINE_MICRO(1)

static inline float dot_row(const float *w, const float *x, int64_t K) {
    int64_t body = K - K % LANES;
    vf a = vf_zero();
    for (int64_t k = 0; k < body; k += LANES) a = vf_fma(vf_load(w + k), vf_load(x + k), a);
    return vf_sum(a) + dot_tail(w, x, body, K);
}

static void tile(const float *w, int64_t rows, int64_t K, const float *x, int64_t M, float *y, int64_t ldy) {
    for (int64_t m0 = 0; m0 < M; m0 += M_BLOCK) {
        int64_t m_end = M - m0 < M_BLOCK ? M : m0 + M_BLOCK;
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) {
            int64_t m = m0;
            for (; m + TILE_M <= m_end; m += TILE_M) {
#if TILE_M == 6
                micro_4x6(w + r * K, K, x + m * K, y + m * ldy + r, ldy);
#else
                micro_4x2(w + r * K, K, x + m * K, y + m * ldy + r, ldy);
#endif
            }
            if (TILE_M == 6 && m + 4 <= m_end) micro_4x4(w + r * K, K, x + m * K, y + m * ldy + r, ldy), m += 4;
            if (TILE_M == 6 && m + 2 <= m_end) micro_4x2(w + r * K, K, x + m * K, y + m * ldy + r, ldy), m += 2;
            if (m < m_end) micro_4x1(w + r * K, K, x + m * K, y + m * ldy + r, ldy);
        }
        for (; r < rows; r++)
            for (int64_t m = m0; m < m_end; m++) y[m * ldy + r] = dot_row(w + r * K, x + m * K, K);
    }
}

/* ------------------------------------------------------------------------- one query's attention */

/* Keys and values are float32 or, in a float16 KV cache, float16: element c of a row, and LANES of them. */
static inline float kv_scalar(const void *row, int64_t c, int half) {
    return half ? half_to_float(load_u16((const uint8_t *)row + 2 * c)) : ((const float *)row)[c];
}
static inline vf kv_vector(const void *row, int64_t c, int half) {
    return half ? vf_f16((const uint8_t *)row + 2 * c) : vf_load((const float *)row + c);
}
static inline const void *kv_row(const void *base, int64_t j, int64_t row, int half) {
    return (const uint8_t *)base + j * row * (half ? 2 : 4);
}

static inline float kv_dot(const void *k, const float *q, int64_t d, int half) {
    int64_t body = d - d % LANES;
    vf a = vf_zero();
    for (int64_t c = 0; c < body; c += LANES) a = vf_fma(kv_vector(k, c, half), vf_load(q + c), a);
    float tail = 0.0f;
    for (int64_t c = body; c < d; c++) tail += kv_scalar(k, c, half) * q[c];
    return vf_sum(a) + tail;
}

/* e^x for x <= 0 (softmax's shifted scores) to within a few ulp, Cephes' expf: x = n ln 2 + r with
 * |r| <= ln 2 / 2, e^r by a degree-6 polynomial, times 2^n built in the exponent bits. Below -87.3 (where e^x
 * leaves the normal floats) the result is e^-87.3, about 1e-38: nothing next to the top score's 1. */
static inline vf vf_exp_negative(vf x) {
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    x = vf_max(x, vf_set1(-87.3f));
    vf n = vf_sub(vf_add(vf_mul(x, vf_set1(1.44269504088896341f)), vf_set1(magic)), vf_set1(magic));
    vf r = vf_sub(vf_sub(x, vf_mul(n, vf_set1(0.693359375f))), vf_mul(n, vf_set1(-2.12194440e-4f)));
    vf p = vf_set1(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
    p = vf_fma(p, vf_mul(r, r), vf_add(r, vf_set1(1.0f)));
    return vf_mul(p, vi_as_float(vi_sll(vi_add(vf_trunc(n), 127), 23)));
}

/* out[r][c0 + LANES * i] for i < NV, two query rows at a time (p0, p1: their probabilities over the s values):
 * the accumulators stay in registers while the values stream past once, each value vector serving both rows. */
#define DEFINE_WEIGHTED_SUM(NV)                                                                               \
    static inline void weighted_sum_##NV(const float *p0, const float *p1, const void *v, int64_t v_row,       \
                                         int64_t s, int half, int64_t c0, float *o0, float *o1) {             \
        vf a0[NV], a1[NV];                                                                                     \
        for (int i = 0; i < NV; i++) a0[i] = a1[i] = vf_zero();                                                \
        for (int64_t j = 0; j < s; j++) {                                                                      \
            const void *vj = kv_row(v, j, v_row, half);                                                        \
            vf s0 = vf_set1(p0[j]), s1 = vf_set1(p1[j]);                                                       \
            for (int i = 0; i < NV; i++) {                                                                     \
                vf x = kv_vector(vj, c0 + LANES * i, half);                                                    \
                a0[i] = vf_fma(s0, x, a0[i]);                                                                  \
                a1[i] = vf_fma(s1, x, a1[i]);                                                                  \
            }                                                                                                  \
        }                                                                                                      \
        for (int i = 0; i < NV; i++) {                                                                         \
            vf_store(o0 + c0 + LANES * i, a0[i]);                                                              \
            if (o1) vf_store(o1 + c0 + LANES * i, a1[i]);                                                      \
        }                                                                                                      \
    }
DEFINE_WEIGHTED_SUM(8)
DEFINE_WEIGHTED_SUM(4)
DEFINE_WEIGHTED_SUM(1)

/* out[r] = softmax_j(score(q[r] . k[j])) v[j] for the `rows` queries of one KV head (the query heads that
 * share it), over its s keys. score(x) = x * scale, then softcap * tanh(score / softcap) where softcap >
 * 0; sinks (one logit per query row, or NULL) join the softmax's denominator only. `scores` holds rows * s
 * floats. Keys and values (float16 where `half`) are rows `k_row` and `v_row` elements apart; q and out
 * are dense float32. Each key and each value row is read once for all the query rows. (Sixteen
 * registers of AVX2 hold four value vectors for two rows; AVX-512's thirty-two hold eight.) */
static void attend_rows(const float *q, int64_t rows, int64_t d, const void *k, int64_t k_row, const void *v,
                        int64_t v_row, int64_t dv, int64_t s, int half, float scale, float softcap,
                        const float *sinks, float *scores, float *out) {
    for (int64_t j = 0; j < s; j++) {
        const void *kj = kv_row(k, j, k_row, half);
        for (int64_t r = 0; r < rows; r++) scores[r * s + j] = kv_dot(kj, q + r * d, d, half) * scale;
    }
    for (int64_t r = 0; r < rows; r++) { /* scores into probabilities */
        float *p = scores + r * s;
        float top = sinks ? sinks[r] : -INFINITY;
        for (int64_t j = 0; j < s; j++) {
            if (softcap > 0.0f) p[j] = tanhf(p[j] / softcap) * softcap;
            top = p[j] > top ? p[j] : top;
        }
        vf sum = vf_zero();
        int64_t j = 0;
        for (; j + LANES <= s; j += LANES) {
            vf e = vf_exp_negative(vf_sub(vf_load(p + j), vf_set1(top)));
            vf_store(p + j, e);
            sum = vf_add(sum, e);
        }
        float total = vf_sum(sum) + (sinks ? expf(sinks[r] - top) : 0.0f);
        for (; j < s; j++) total += p[j] = expf(p[j] - top);
        float inv_total = 1.0f / total;
        for (j = 0; j < s; j++) p[j] *= inv_total;
    }
    int64_t body = dv - dv % LANES;
    for (int64_t r = 0; r < rows; r += 2) {
        const float *p0 = scores + r * s, *p1 = r + 1 < rows ? p0 + s : p0;
        float *o0 = out + r * dv, *o1 = r + 1 < rows ? o0 + dv : NULL;
        int64_t c = 0;
        for (; LANES >= 16 && c + 8 * LANES <= body; c += 8 * LANES) weighted_sum_8(p0, p1, v, v_row, s, half, c, o0, o1);
        for (; c + 4 * LANES <= body; c += 4 * LANES) weighted_sum_4(p0, p1, v, v_row, s, half, c, o0, o1);
        for (; c < body; c += LANES) weighted_sum_1(p0, p1, v, v_row, s, half, c, o0, o1);
        for (; c < dv; c++) {
            float acc0 = 0.0f, acc1 = 0.0f;
            for (int64_t j = 0; j < s; j++) {
                float x = kv_scalar(kv_row(v, j, v_row, half), c, half);
                acc0 += p0[j] * x;
                acc1 += p1[j] * x;
            }
            o0[c] = acc0;
            if (o1) o1[c] = acc1;
        }
    }
}

/* ----------------------------------------------------------------------------------- RMS norm */

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for `rows` dense rows of n (w NULL: no weight). */
static void rms_norm_rows(const float *x, int64_t rows, int64_t n, const float *w, float eps, float *y) {
    int64_t body = n - n % LANES;
    for (int64_t r = 0; r < rows; r++, x += n, y += n) {
        float inv = 1.0f / sqrtf(dot_row(x, x, n) / (float)n + eps);
        for (int64_t c = 0; c < body; c += LANES) {
            vf h = vf_mul(vf_load(x + c), vf_set1(inv));
            vf_store(y + c, w ? vf_mul(h, vf_load(w + c)) : h);
        }
        for (int64_t c = body; c < n; c++) y[c] = x[c] * inv * (w ? w[c] : 1.0f);
    }
}

/* ----------------------------------------------------------------------------------- the table */

static const format_kernels FORMATS[] = {
    {TYPE_F16, 1, 2, 0, rows_f16, dequant_f16},
    {TYPE_BF16, 1, 2, 0, rows_bf16, dequant_bf16},
    {TYPE_Q8_0, 32, 34, 0, rows_q8_0, dequant_q8_0},
    {TYPE_Q4_0, 32, 18, 0, rows_q4_0, dequant_q4_0},
    {TYPE_Q4_1, 32, 20, 32, rows_q4_1, dequant_q4_1},
    {TYPE_Q5_0, 32, 22, 0, rows_q5_0, dequant_q5_0},
    {TYPE_Q5_1, 32, 24, 32, rows_q5_1, dequant_q5_1},
    {TYPE_Q2_K, 256, 84, 16, rows_q2_k, dequant_q2_k},
    {TYPE_Q3_K, 256, 110, 16, rows_q3_k, dequant_q3_k},
    {TYPE_Q4_K, 256, 144, 32, rows_q4_k, dequant_q4_k},
    {TYPE_Q5_K, 256, 176, 32, rows_q5_k, dequant_q5_k},
    {TYPE_Q6_K, 256, 210, 16, rows_q6_k, dequant_q6_k},
    {TYPE_IQ4_NL, 32, 18, 0, rows_iq4_nl, dequant_iq4_nl},
    {TYPE_IQ4_XS, 256, 136, 0, rows_iq4_xs, dequant_iq4_xs},
    {TYPE_MXFP4, 32, 17, 0, rows_mxfp4, dequant_mxfp4},
    {TYPE_IQ2_XXS, 256, 66, 0, NULL, dequant_iq2_xxs},
    {TYPE_IQ2_XS, 256, 74, 0, NULL, dequant_iq2_xs},
    {TYPE_IQ2_S, 256, 82, 0, NULL, dequant_iq2_s},
    {TYPE_IQ3_XXS, 256, 98, 0, NULL, dequant_iq3_xxs},
    {TYPE_IQ3_S, 256, 110, 0, NULL, dequant_iq3_s},
    {TYPE_IQ1_S, 256, 50, 0, NULL, dequant_iq1_s},
    {TYPE_IQ1_M, 256, 56, 0, NULL, dequant_iq1_m},
    {TYPE_TQ1_0, 256, 54, 0, NULL, dequant_tq1_0},
    {TYPE_TQ2_0, 256, 66, 0, NULL, dequant_tq2_0},
    {TYPE_NVFP4, 64, 36, 0, NULL, dequant_nvfp4},
    {TYPE_Q1_0, 128, 18, 0, NULL, dequant_q1_0},
    {TYPE_Q2_0, 64, 18, 0, NULL, dequant_q2_0},
    {0, 0, 0, 0, 0, 0},
};

extern const int8_kernels INT8_TABLE(TFB_ISA_SYMBOL)[]; /* int8.c, compiled in the same pass */

const isa_kernels TFB_ISA_SYMBOL = {ISA_NAME, FORMATS, INT8_TABLE(TFB_ISA_SYMBOL), tile, attend_rows, rms_norm_rows};
