/* Fused kernels for ggml block formats: a matrix-vector product that expands each block in registers,
 * and a bit-exact dequantizer, per format.
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
#include "formats.h"
#include "simd.h"

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
static inline float e8m0_half(uint8_t e) {
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

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
typedef uint8_t u8x32 __attribute__((vector_size(32)));

static inline u8x32 load_u8x32(const uint8_t *p) {
    u8x32 v;
    memcpy(&v, p, 32);
    return v;
}

static inline void store_u8x32(uint8_t *p, u8x32 v) { memcpy(p, &v, 32); }

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

BLOCK_FN vf body_q2_k(const uint8_t *blk, const float *x, const prepared_block *p, vf acc) {
    (void)blk;
    return dot_unpacked(p->q, x, p->scale, 16, acc);
}
DEFINE_PIPELINED_ROWS(q2_k, 84, 16)

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

BLOCK_FN vf body_q3_k(const uint8_t *blk, const float *x, const prepared_block *p, vf acc) {
    (void)blk;
    return dot_unpacked(p->q, x, p->scale, 16, acc);
}
DEFINE_PIPELINED_ROWS(q3_k, 110, 16)

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
static inline void k4_unpack(const uint8_t *s, uint64_t *scales, uint64_t *mins) {
    uint32_t u0 = load_u32(s), u1 = load_u32(s + 4), u2 = load_u32(s + 8);  /* 4 fields at a time */
    uint32_t scales47 = (u2 & 0x0F0F0F0F) | (u0 >> 6 & 0x03030303) << 4;
    uint32_t mins47 = (u2 >> 4 & 0x0F0F0F0F) | (u1 >> 6 & 0x03030303) << 4;
    *scales = (u0 & 0x3F3F3F3F) | (uint64_t)scales47 << 32;
    *mins = (u1 & 0x3F3F3F3F) | (uint64_t)mins47 << 32;
}

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
static inline void q5_k_unpack(const uint8_t *blk, uint8_t *q) {
    u8x32 high = load_u8x32(blk + 16);
    for (int c = 0; c < 4; c++) {
        u8x32 low = load_u8x32(blk + 48 + 32 * c);
        store_u8x32(q + 64 * c, (low & 15) | ((high >> (2 * c)) & 1) << 4);
        store_u8x32(q + 64 * c + 32, (low >> 4) | ((high >> (2 * c + 1)) & 1) << 4);
    }
}

BLOCK_FN void prepare_q5_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    k4_scales_offset(blk, sums, p->scale, offset);
    q5_k_unpack(blk, p->q);
}

BLOCK_FN vf body_q5_k(const uint8_t *blk, const float *x, const prepared_block *p, vf acc) {
    (void)blk;
    return dot_unpacked(p->q, x, p->scale, 32, acc);
}
DEFINE_PIPELINED_ROWS(q5_k, 176, 8)

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
static inline void q6_k_unpack(const uint8_t *blk, uint8_t *q) {
    for (int h = 0; h < 2; h++) {
        u8x32 a = load_u8x32(blk + 64 * h), b = load_u8x32(blk + 64 * h + 32), bits = load_u8x32(blk + 128 + 32 * h);
        store_u8x32(q + 128 * h, (a & 15) | ((bits << 4) & 0x30));
        store_u8x32(q + 128 * h + 32, (b & 15) | ((bits << 2) & 0x30));
        store_u8x32(q + 128 * h + 64, (a >> 4) | (bits & 0x30));
        store_u8x32(q + 128 * h + 96, (b >> 4) | ((bits >> 2) & 0x30));
    }
}

static inline void q6_k_scales(const uint8_t *blk, float *scale) {
    sbytes8_scaled(load_u64(blk + 192), load_half(blk + 208), scale);
    sbytes8_scaled(load_u64(blk + 200), load_half(blk + 208), scale + 8);
}

BLOCK_FN void prepare_q6_k(const uint8_t *blk, const float *sums, prepared_block *p, vf *offset) {
    q6_k_scales(blk, p->scale);
    q6_k_unpack(blk, p->q);
    *offset = add_bias16(*offset, 32.0f, p->scale, sums);
}

BLOCK_FN vf body_q6_k(const uint8_t *blk, const float *x, const prepared_block *p, vf acc) {
    (void)blk;
    return dot_unpacked(p->q, x, p->scale, 16, acc);
}
DEFINE_PIPELINED_ROWS(q6_k, 210, 16)

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

/* ----------------------------------------------------------------------------- dense float tile */

/* y[m, r] = w[r] . x[m] for a few dequantized rows w (rows x K) and all activation rows x (M x K).
 * Register blocking: 4 weight rows x TILE_M activation rows per step, so that each loaded vector feeds
 * several multiply-adds (TILE_M = 4 where there are 32 vector registers, else 2). Activation rows go in
 * blocks of M_BLOCK, which stay in L2 while every weight row of the tile passes over them. */
#define TILE_M (LANES == 16 ? 4 : 2)
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
#if TILE_M == 4
                micro_4x4(w + r * K, K, x + m * K, y + m * ldy + r, ldy);
#else
                micro_4x2(w + r * K, K, x + m * K, y + m * ldy + r, ldy);
#endif
            }
            if (TILE_M == 4 && m + 2 <= m_end) micro_4x2(w + r * K, K, x + m * K, y + m * ldy + r, ldy), m += 2;
            if (m < m_end) micro_4x1(w + r * K, K, x + m * K, y + m * ldy + r, ldy);
        }
        for (; r < rows; r++)
            for (int64_t m = m0; m < m_end; m++) y[m * ldy + r] = dot_row(w + r * K, x + m * K, K);
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
    {0, 0, 0, 0, 0, 0},
};

const isa_kernels TFB_ISA_SYMBOL = {ISA_NAME, FORMATS, tile};
