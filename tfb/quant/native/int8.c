/* Matrix-vector products with the activations rounded to 8 bits, as llama.cpp computes them for quantized
 * weights: within a block, integer products of the weights' integer fields and the activations' (u8 x s8
 * pairs summed in int16, then int32), scaled once per block in float32 by the weight's and the activation's
 * scales. Much less work per weight than widening every weight to float, at the cost of rounding each
 * activation to 1/254 of its block's largest magnitude (runtime.c, quantize_activations).
 *
 * Compiled in the same passes as kernels.c. The AVX2 branch (taken by the AVX-512 passes too, with VNNI's
 * dot-product instructions in the avx512vnni pass) works on 32 bytes at a time and decodes each weight block
 * once for several activation rows (multi_<fmt>); the AVX-512 passes decode the k-quants' weights once per
 * thread for a prompt's many rows (gemm_k); the portable branch is plain C, one row at a time. Every
 * integer sum is exact in every branch (bounds below), so the branches differ only in the order of the
 * float32 block sums; a row's result never depends on the other rows multiplied with it.
 */
#include "formats.h"
#include "grids.h" /* generated into the build directory (tables.py) */
#include "simd.h"
#include "unpack.h"

#include <stdlib.h>

#ifndef TFB_ISA_SYMBOL
#error "compile with -DTFB_ISA_SYMBOL=<exported table name>"
#endif

/* The weights PREFETCH_BYTES ahead of those being read, asked for into L2 as the rows go (weights streamed
 * from memory, an output layer, otherwise arrive only as the kernel stalls on them; spread over the row, not
 * asked for in bursts, which stall the loads). Measured, one thread, Q4_0 [151936 x 1024]: one activation
 * row 25 -> 9 ms, 4 rows 45 -> 17 ms (prefetching whole 4 KiB tiles two ahead from runtime.c instead: 13
 * and 22 ms, and slower on weights in cache; Q2_K [151936 x 1024]: 10.8 -> 4.5 ms). Past the last row:
 * prefetches do not fault. Every pass and section uses it. */
#define PREFETCH_BYTES 4096
static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *p) {
    __builtin_prefetch(p + PREFETCH_BYTES, 0, 2); /* locality 2: into L2, as _MM_HINT_T1 */
}

#if defined(__AVX2__)
/* ----------------------------------------------------------------------------------------- AVX2 */
/* Every kernel is written once for M activation rows (M a compile-time constant after inlining, up to
 * MULTI_GROUP at a time): each weight block is decoded once, then met by the M rows, each row with its own
 * accumulators and the very operations the single-row kernel (M = 1) gives it. So a row's result does not
 * depend on how many rows were multiplied with it.
 *
 * The integer dot products: with AVX512_VNNI (the avx512vnni pass), vpdpbusd sums four u8 x s8 products
 * into each int32 lane in one instruction, and vpdpwssd two int16 x int16 products; without it, maddubs
 * (u8 x s8 pairs summed in int16) and madd (int16 pairs into int32) do the same in two or three. Within
 * the bounds stated at each use no int16 sum saturates, so both give the same int32 lanes, and the float32
 * arithmetic after them is the same: the avx2, avx512 and avx512vnni passes give the same bits. */
#define ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__AVX512F__)
#define MULTI_GROUP 8 /* rows a kernel keeps in registers at once: 32 vector registers */
#else
#define MULTI_GROUP 4 /* 16 vector registers */
#endif
#define UNROLL _Pragma("GCC unroll 8")

static ALWAYS_INLINE __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* acc + in each int32 lane the sum of its four u8 x s8 byte products (pair sums within int16) */
static ALWAYS_INLINE __m256i dot_bytes(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* acc + in each int32 lane the sum of its two int16 x int16 products */
static ALWAYS_INLINE __m256i dot_words(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__)
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

static ALWAYS_INLINE float acc_sum(__m256 a, __m256 b) {
    __m256 v = _mm256_add_ps(a, b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 nibbles of qs[16] in weight order: the low nibbles are weights 0-15, the high ones 16-31 */
static ALWAYS_INLINE __m256i nibbles32(const uint8_t *qs) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs), nibbles = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), nibbles), _mm_and_si128(packed, nibbles));
}

/* Q5_0 / Q5_1's 32 five-bit values: the nibbles as nibbles32, bit 4 of value j from bit j of qh (byte j / 8
 * of qh broadcast to byte j, kept where it has bit j % 8, then compared to that bit); minus `bias` */
static ALWAYS_INLINE __m256i q5_values(const uint8_t *qh, const uint8_t *qs, int bias) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i bytes = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)load_u32(qh)), spread), bit);
    __m256i fifth = _mm256_and_si256(_mm256_cmpeq_epi8(bytes, bit), _mm256_set1_epi8(16));
    return _mm256_sub_epi8(_mm256_or_si256(nibbles32(qs), fifth), _mm256_set1_epi8((char)bias));
}

/* ------------------------------------------------------------------------- 32-weight formats */

/* A 32-weight block as the dot products take it: bytes `u` read unsigned; for the signed formats (Q8_0,
 * Q4_0, Q5_0) u = |w| and the activations take the signs of `sign` = w first (pair sums within 2 * 128 * 127
 * < 2^15; the unsigned Q4_1 / Q5_1 values within 2 * 31 * 128). d: its scale; m: Q4_1 / Q5_1's offset. */
typedef struct {
    __m256i u, sign;
    float d, m;
} block32;

static ALWAYS_INLINE int signed32(int type) { return type == TYPE_Q8_0 || type == TYPE_Q4_0 || type == TYPE_Q5_0; }
static ALWAYS_INLINE int offset32(int type) { return type == TYPE_Q4_1 || type == TYPE_Q5_1; }

/* Layouts: Q8_0 (34 bytes) d, qs[32] int8; Q4_0 (18) d, qs[16], q - 8; Q4_1 (20) d, m, qs[16], d * q + m;
 * Q5_0 (22) d, qh[4], qs[16], q - 16; Q5_1 (24) d, m, qh[4], qs[16], d * q + m (d, m float16) */
static ALWAYS_INLINE block32 decode32(int type, const uint8_t *blk) {
    block32 v = {_mm256_setzero_si256(), _mm256_setzero_si256(), load_half(blk), 0.0f};
    switch (type) {
    case TYPE_Q8_0: v.sign = load32(blk + 2); break;
    case TYPE_Q4_0: v.sign = _mm256_sub_epi8(nibbles32(blk + 2), _mm256_set1_epi8(8)); break;
    case TYPE_Q4_1: v.m = load_half(blk + 2), v.u = nibbles32(blk + 4); break;
    case TYPE_Q5_0: v.sign = q5_values(blk + 2, blk + 6, 16); break;
    case TYPE_Q5_1: v.m = load_half(blk + 2), v.u = q5_values(blk + 4, blk + 8, 0); break;
    }
    if (signed32(type)) v.u = _mm256_sign_epi8(v.sign, v.sign);
    return v;
}

/* acc + (d * d_a) * (the block's dot product with activation block b, eight int32 lanes); Q4_1 / Q5_1 also
 * add m * d_a * sum(a), lane by lane: m * (d_a * the sum of the lane's four activations) (int8_row.dsum4) */
static ALWAYS_INLINE __m256 dot32(int type, block32 v, __m256 acc, const int8_row *a, int64_t b) {
    __m256i av = load32(a->q + 32 * b);
    if (signed32(type)) av = _mm256_sign_epi8(av, v.sign);
    __m256 scale = _mm256_mul_ps(_mm256_set1_ps(v.d), _mm256_broadcast_ss(a->d + b));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_bytes(_mm256_setzero_si256(), v.u, av)), scale, acc);
    return offset32(type) ? _mm256_fmadd_ps(_mm256_set1_ps(v.m), _mm256_loadu_ps(a->dsum4 + 8 * b), acc) : acc;
}


#if defined(__AVX512VNNI__)
/* With VNNI, two blocks at a time in 512-bit registers: the lower half is block b (acc0's lanes below), the
 * upper half block b + 1 (acc1's), so each lane sees the very operations of the form below. The signed
 * formats take the activations unsigned instead, q + 128 (int8_row.qu), against the signed weights w: per
 * lane sum (q + 128) w - 128 sum w = sum q w, the weights' part worked out once for all rows; each row then
 * costs one vpdpbusd, one conversion and two float32 operations per 64 weights. */
static ALWAYS_INLINE __m512i pair512(__m256i low, __m256i high) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}
static ALWAYS_INLINE __m512 pair512_ps(__m256 low, __m256 high) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(low)), _mm256_castps_pd(high), 1));
}

/* the weights' values: signed formats their signed values, else the unsigned ones */
static ALWAYS_INLINE __m256i values32(int type, block32 v) { return signed32(type) ? v.sign : v.u; }

/* acc (lanes of one block) + scale * (its dot product with activation block b): the tail of an odd row */
static ALWAYS_INLINE __m256 dot32_vnni(int type, __m256i values, __m256i start, __m256 d, __m256 offset,
                                       __m256 acc, const int8_row *a, int64_t b) {
    __m256i sums = signed32(type) ? _mm256_dpbusd_epi32(start, load32(a->qu + 32 * b), values)
                                  : _mm256_dpbusd_epi32(start, values, load32(a->q + 32 * b));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(d, _mm256_loadu_ps(a->d8 + 8 * b)), acc);
    return offset32(type) ? _mm256_fmadd_ps(offset, _mm256_loadu_ps(a->dsum4 + 8 * b), acc) : acc;
}

/* -128 sum w over each lane's four weights: where the signed formats' products start */
static ALWAYS_INLINE __m256i start32(int type, __m256i values) {
    if (!signed32(type)) return _mm256_setzero_si256();
    __m256i bias = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), values);
    return _mm256_sub_epi32(_mm256_setzero_si256(), bias);
}

static ALWAYS_INLINE void multi32_zmm(int type, int size, const uint8_t *w, int64_t stride, int64_t nrows,
                                      int64_t nb, const int8_row *a, int M, float *const *y) {
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        __m512 acc[MULTI_GROUP];
        UNROLL for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 1 < nb; b += 2) {
            prefetch_ahead(row + size * b);
            block32 v0 = decode32(type, row + size * b), v1 = decode32(type, row + size * (b + 1));
            __m256i w0 = values32(type, v0), w1 = values32(type, v1);
            __m512i values = pair512(w0, w1), start = pair512(start32(type, w0), start32(type, w1));
            __m512 d = pair512_ps(_mm256_set1_ps(v0.d), _mm256_set1_ps(v1.d));
            __m512 offset = pair512_ps(_mm256_set1_ps(v0.m), _mm256_set1_ps(v1.m));
            UNROLL for (int m = 0; m < M; m++) {
                __m512i sums = signed32(type)
                                   ? _mm512_dpbusd_epi32(start, _mm512_loadu_si512(a[m].qu + 32 * b), values)
                                   : _mm512_dpbusd_epi32(start, values, _mm512_loadu_si512(a[m].q + 32 * b));
                __m512 scale = _mm512_mul_ps(d, _mm512_loadu_ps(a[m].d8 + 8 * b));
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[m]);
                if (offset32(type)) acc[m] = _mm512_fmadd_ps(offset, _mm512_loadu_ps(a[m].dsum4 + 8 * b), acc[m]);
            }
        }
        if (b < nb) {
            block32 v0 = decode32(type, row + size * b);
            __m256i w0 = values32(type, v0), start = start32(type, w0);
            __m256 d = _mm256_set1_ps(v0.d), offset = _mm256_set1_ps(v0.m);
            UNROLL for (int m = 0; m < M; m++) {
                __m256 low = dot32_vnni(type, w0, start, d, offset, _mm512_castps512_ps256(acc[m]), a + m, b);
                acc[m] = _mm512_mask_mov_ps(acc[m], 0x00FF, _mm512_castps256_ps512(low));
            }
        }
        UNROLL for (int m = 0; m < M; m++) {
            __m256 acc0 = _mm512_castps512_ps256(acc[m]);
            __m256 acc1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[m]), 1));
            y[m][r] = acc_sum(acc0, acc1);
        }
    }
}
#endif

/* Each row: two accumulators over alternate blocks (even blocks in acc0), then their sum. */
static ALWAYS_INLINE void multi32_ymm(int type, int size, const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb,
                                  const int8_row *a, int M, float *const *y) {
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        __m256 acc0[MULTI_GROUP], acc1[MULTI_GROUP];
        UNROLL for (int m = 0; m < M; m++) acc0[m] = acc1[m] = _mm256_setzero_ps();
        int64_t b = 0;
        for (; b + 1 < nb; b += 2) {
            prefetch_ahead(row + size * b);
            block32 v0 = decode32(type, row + size * b), v1 = decode32(type, row + size * (b + 1));
            UNROLL for (int m = 0; m < M; m++) {
                acc0[m] = dot32(type, v0, acc0[m], a + m, b);
                acc1[m] = dot32(type, v1, acc1[m], a + m, b + 1);
            }
        }
        if (b < nb) {
            block32 v0 = decode32(type, row + size * b);
            UNROLL for (int m = 0; m < M; m++) acc0[m] = dot32(type, v0, acc0[m], a + m, b);
        }
        UNROLL for (int m = 0; m < M; m++) y[m][r] = acc_sum(acc0[m], acc1[m]);
    }
}


/* The VNNI form pays for the weights' part of the sums and for pairing blocks, once per block pair: from
 * ZMM_ROWS activation rows on that is less than what it saves (measured, tools/bench_matmul.py --sweep) */
#define ZMM_ROWS 4
static ALWAYS_INLINE void multi32(int type, int size, const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb,
                                  const int8_row *a, int M, float *const *y) {
#if defined(__AVX512VNNI__)
    if (M >= ZMM_ROWS) {
        multi32_zmm(type, size, w, stride, nrows, nb, a, M, y);
        return;
    }
#endif
    multi32_ymm(type, size, w, stride, nrows, nb, a, M, y);
}

/* ------------------------------------------------------------------------------------ k-quants */
/* The blocks' bit fields go straight into registers; a sub-block's integer scale reaches the int16 lanes of
 * its weights by one byte shuffle of the block's scales, held as int16 in both 128-bit lanes. A block's
 * integer sums are summed over the lanes (exact), and the row's float32 sum takes them one block after
 * another: per block acc = fma(dot, d * d_a, acc), then (Q4_K, Q5_K) acc = fma(offset, -dmin * d_a, acc).
 * One float32 sum per row, so that the many-row products (gemm_k, below), whose vector lanes are weight rows,
 * do the very same operations in each lane. */

/* lane i: the sum of v[i]'s eight int32 lanes, for v[4] */
static ALWAYS_INLINE __m128i sum_lanes4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* The float32 sums of M activation rows' products with one weight row: one float alone, else four rows to a
 * vector (lane i: row 4 g + i). Per block each row's acc = fma(dot, d * d_a, acc), rounded once. */
typedef struct {
    float one;
    __m128 four[(MULTI_GROUP + 3) / 4];
} k_sums;

/* Block b's terms for M rows: first[m] (the dot products), times d * d_a; then, unless second is NULL,
 * second[m] (the mins' sums) times dmin * d_a; each vector summed over its lanes first. */
static ALWAYS_INLINE void k_terms(k_sums *acc, int M, const __m256i *first, const __m256i *second, float d,
                                  float dmin, const int8_row *a, int64_t b) {
    if (M == 1) { /* lanes 0 and 1 of `sums`: first[0]'s lanes summed, second[0]'s */
        __m256i other = second ? second[0] : _mm256_setzero_si256();
        __m256i pairs = _mm256_add_epi32(_mm256_unpacklo_epi32(first[0], other), _mm256_unpackhi_epi32(first[0], other));
        __m128i halves = _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
        __m128 sums = _mm_cvtepi32_ps(_mm_add_epi32(halves, _mm_unpackhi_epi64(halves, halves)));
        float da = a[0].d[b];
        acc->one = __builtin_fmaf(_mm_cvtss_f32(sums), d * da, acc->one);
        if (second) acc->one = __builtin_fmaf(_mm_cvtss_f32(_mm_movehdup_ps(sums)), dmin * da, acc->one);
        return;
    }
    const __m256i zero = _mm256_setzero_si256();
    if (M == 2 && second) { /* one sum for both: lanes D0, D1, O0, O1 */
        __m128 sums = _mm_cvtepi32_ps(sum_lanes4(first[0], first[1], second[0], second[1]));
        __m128 da = _mm_setr_ps(a[0].d[b], a[1].d[b], a[0].d[b], a[1].d[b]);
        __m128 scale = _mm_mul_ps(_mm_setr_ps(d, d, dmin, dmin), da);
        acc->four[0] = _mm_fmadd_ps(sums, scale, acc->four[0]); /* lanes 2, 3: unused */
        acc->four[0] = _mm_fmadd_ps(_mm_movehl_ps(sums, sums), _mm_movehl_ps(scale, scale), acc->four[0]);
        return;
    }
    UNROLL for (int g = 0; g < (M + 3) / 4; g++) {
#define ROW(v, i) (4 * g + (i) < M ? (v)[4 * g + (i)] : zero)
#define SCALE(i) (4 * g + (i) < M ? a[4 * g + (i)].d[b] : 0.0f)
        __m128 da = _mm_setr_ps(SCALE(0), SCALE(1), SCALE(2), SCALE(3));
        __m128 sum = _mm_cvtepi32_ps(sum_lanes4(ROW(first, 0), ROW(first, 1), ROW(first, 2), ROW(first, 3)));
        acc->four[g] = _mm_fmadd_ps(sum, _mm_mul_ps(_mm_set1_ps(d), da), acc->four[g]);
        if (second) {
            sum = _mm_cvtepi32_ps(sum_lanes4(ROW(second, 0), ROW(second, 1), ROW(second, 2), ROW(second, 3)));
            acc->four[g] = _mm_fmadd_ps(sum, _mm_mul_ps(_mm_set1_ps(dmin), da), acc->four[g]);
        }
#undef ROW
#undef SCALE
    }
}

static ALWAYS_INLINE void k_sums_zero(k_sums *acc) {
    acc->one = 0.0f;
    UNROLL for (int g = 0; g < (MULTI_GROUP + 3) / 4; g++) acc->four[g] = _mm_setzero_ps();
}

static ALWAYS_INLINE void k_sums_store(const k_sums *acc, int M, float *const *y, int64_t r) {
    if (M == 1) {
        y[0][r] = acc->one;
        return;
    }
    float all[4 * ((MULTI_GROUP + 3) / 4)];
    UNROLL for (int g = 0; g < (M + 3) / 4; g++) _mm_storeu_ps(all + 4 * g, acc->four[g]);
    UNROLL for (int m = 0; m < M; m++) y[m][r] = all[m];
}

/* the shuffle control that puts int16 `low` of each 128-bit lane in every int16 of the lower lane and int16
 * `high` in every int16 of the upper lane (low = high for Q4_K's 32-weight sub-blocks, low + 1 = high for
 * Q6_K's 16-weight ones) */
static ALWAYS_INLINE __m256i scale_control(int low, int high) {
    return _mm256_setr_epi8(2 * low, 2 * low + 1, 2 * low, 2 * low + 1, 2 * low, 2 * low + 1, 2 * low, 2 * low + 1,
                            2 * low, 2 * low + 1, 2 * low, 2 * low + 1, 2 * low, 2 * low + 1, 2 * low, 2 * low + 1,
                            2 * high, 2 * high + 1, 2 * high, 2 * high + 1, 2 * high, 2 * high + 1, 2 * high,
                            2 * high + 1, 2 * high, 2 * high + 1, 2 * high, 2 * high + 1, 2 * high, 2 * high + 1,
                            2 * high, 2 * high + 1);
}

/* eight bytes as int16 in both 128-bit lanes (unsigned, or signed for sbytes8_int16) */
static ALWAYS_INLINE __m256i bytes8_int16(uint64_t b) {
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)b)));
}
static ALWAYS_INLINE __m256i sbytes8_int16(uint64_t b) {
    return _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_cvtsi64_si128((long long)b)));
}

/* Q4_K (144 bytes: d, dmin, scales[12], qs[128]) and Q5_K (176: qh[32] before qs): for each pair of
 * sub-blocks (2c, 2c + 1), the low and high nibbles of qs[32c ..] (Q5_K: plus the fifth bits of qh) times the
 * activations (pair sums within 2 * 31 * 127), scaled by the sub-block's 6-bit scale; a block adds
 * d_a * (d * sum_j sc_j (q_j . a_j) - dmin * sum_j m_j sum(a_j)). */
static ALWAYS_INLINE void multi_k4(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,
                                   int M, float *const *y, int type_size, int five_bits) {
    const __m256i nibbles = _mm256_set1_epi8(15), fifth = _mm256_set1_epi8(16);
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        k_sums acc;
        k_sums_zero(&acc);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + type_size * b, *qs = blk + (five_bits ? 48 : 16);
            for (int line = 0; line < type_size; line += 64) prefetch_ahead(blk + line);
            uint64_t scales, mins;
            k4_unpack(blk + 4, &scales, &mins);
            __m256i sc = bytes8_int16(scales);
            __m256i dot[MULTI_GROUP];
            UNROLL for (int m = 0; m < M; m++) dot[m] = _mm256_setzero_si256();
            __m256i high_bits = five_bits ? load32(blk + 16) : _mm256_setzero_si256();
            _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {
                __m256i packed = load32(qs + 32 * c);
                __m256i low = _mm256_and_si256(packed, nibbles);
                __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibbles);
                if (five_bits) {
                    low = _mm256_or_si256(low, _mm256_and_si256(_mm256_slli_epi16(high_bits, 4), fifth));
                    high = _mm256_or_si256(high, _mm256_and_si256(_mm256_slli_epi16(high_bits, 3), fifth));
                    high_bits = _mm256_srli_epi16(high_bits, 2);
                }
                __m256i sc_low = _mm256_shuffle_epi8(sc, scale_control(2 * c, 2 * c));
                __m256i sc_high = _mm256_shuffle_epi8(sc, scale_control(2 * c + 1, 2 * c + 1));
                UNROLL for (int m = 0; m < M; m++) {
                    const int8_t *ab = a[m].q + 256 * b + 64 * c;
                    dot[m] = dot_words(dot[m], _mm256_maddubs_epi16(low, load32(ab)), sc_low);
                    dot[m] = dot_words(dot[m], _mm256_maddubs_epi16(high, load32(ab + 32)), sc_high);
                }
            }
            /* the mins' share: m_j * (sums of runs 2j and 2j + 1), m_j duplicated into both runs' lanes */
            __m128i m8 = _mm_cvtsi64_si128((long long)mins);
            __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
            __m256i offset[MULTI_GROUP];
            UNROLL for (int m = 0; m < M; m++) offset[m] = _mm256_madd_epi16(m16, load32(a[m].sums + 16 * b));
            k_terms(&acc, M, dot, offset, load_half(blk), -load_half(blk + 2), a, b);
        }
        k_sums_store(&acc, M, y, r);
    }
}

/* Q6_K, 210 bytes (ql[128], qh[64], scales[16] int8, d): per half h, four runs of 32 weights built from ql's
 * nibbles and qh's bit pairs (as q6_k_unpack), each two sub-blocks of 16 (pair sums within 2 * 63 * 127);
 * the bias of 32 through the activation sums: d_a * d * sum_j sc_j (q_j . a_j - 32 sum(a_j)). */
static ALWAYS_INLINE void multi_q6_k_m(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb,
                                       const int8_row *a, int M, float *const *y) {
    const __m256i nibbles = _mm256_set1_epi8(15), pair = _mm256_set1_epi8(0x30);
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        k_sums acc;
        k_sums_zero(&acc);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 210 * b;
            for (int line = 0; line < 210; line += 64) prefetch_ahead(blk + line);
            __m256i dot[MULTI_GROUP];
            UNROLL for (int m = 0; m < M; m++) dot[m] = _mm256_setzero_si256();
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                __m256i sc = sbytes8_int16(load_u64(blk + 192 + 8 * h));
                __m256i lo = load32(blk + 64 * h), hi = load32(blk + 64 * h + 32), bits = load32(blk + 128 + 32 * h);
                __m256i q[4] = {
                    _mm256_or_si256(_mm256_and_si256(lo, nibbles), _mm256_and_si256(_mm256_slli_epi16(bits, 4), pair)),
                    _mm256_or_si256(_mm256_and_si256(hi, nibbles), _mm256_and_si256(_mm256_slli_epi16(bits, 2), pair)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo, 4), nibbles), _mm256_and_si256(bits, pair)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(hi, 4), nibbles),
                                    _mm256_and_si256(_mm256_srli_epi16(bits, 2), pair)),
                };
                _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
                    __m256i s = _mm256_shuffle_epi8(sc, scale_control(2 * k, 2 * k + 1));
                    UNROLL for (int m = 0; m < M; m++) {
                        __m256i p = _mm256_maddubs_epi16(q[k], load32(a[m].q + 256 * b + 128 * h + 32 * k));
                        dot[m] = dot_words(dot[m], p, s);
                    }
                }
            }
            __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
            UNROLL for (int m = 0; m < M; m++) {
                __m256i bias = _mm256_madd_epi16(sc16, load32(a[m].sums + 16 * b));
                dot[m] = _mm256_sub_epi32(dot[m], _mm256_slli_epi32(bias, 5));
            }
            k_terms(&acc, M, dot, NULL, load_half(blk + 208), 0.0f, a, b);
        }
        k_sums_store(&acc, M, y, r);
    }
}

/* multi_<fmt>_m: the M-row kernel of each format, as the row loops above compute it */
#define MULTI_M(fmt, call)                                                                                    \
    static ALWAYS_INLINE void multi_##fmt##_m(const uint8_t *w, int64_t s, int64_t n, int64_t nb, const int8_row *a, \
                                              int M, float *const *y) {                                        \
        call;                                                                                                  \
    }
MULTI_M(q8_0, multi32(TYPE_Q8_0, 34, w, s, n, nb, a, M, y))
MULTI_M(q4_0, multi32(TYPE_Q4_0, 18, w, s, n, nb, a, M, y))
MULTI_M(q4_1, multi32(TYPE_Q4_1, 20, w, s, n, nb, a, M, y))
MULTI_M(q5_0, multi32(TYPE_Q5_0, 22, w, s, n, nb, a, M, y))
MULTI_M(q5_1, multi32(TYPE_Q5_1, 24, w, s, n, nb, a, M, y))
MULTI_M(q4_k, multi_k4(w, s, n, nb, a, M, y, 144, 0))
MULTI_M(q5_k, multi_k4(w, s, n, nb, a, M, y, 176, 1))

/* --------------------------------------------------------------------- k-quants, many activation rows */
#if defined(__AVX512F__)
/* A prompt's products (many activation rows): the weights decoded once per thread into a panel of PANEL_ROWS
 * weight rows laid out for the dot-product instructions, then multiplied with every activation row, several
 * at a time. In the panel the int32 lanes of a vector are weight rows: for each group of four weights of a
 * block, the four unsigned values (Q4_K 0..15, Q5_K 0..31, Q6_K 0..63) of 16 rows side by side, so one
 * dot-product instruction, with the activation row's four bytes broadcast, sums 64 products into 16 rows'
 * lanes. Per sub-block the lanes are scaled by the rows' integer scales (exact) and summed into the block's
 * integer dot product; the mins' (Q4_K, Q5_K) or the bias' (Q6_K) share comes from the activations' sums of
 * 16 (int8_row.sums) in one int16 pair product per two sums. Each lane then gets the float32 operations the
 * single-row kernels above give its row (k_terms), in the same order: bit for bit the same result.
 *
 * Bounds: the int16 pair sums of the AVX-512 pass without VNNI within 2 * 63 * 127 < 2^15; a sub-block's sum
 * within 32 * 31 * 127, times a scale of at most 63 (Q6_K: 16 * 63 * 127, times 128), a block's within
 * 256 * 63 * 127 * 128 < 2^31. */
#define PANEL_ROWS 32 /* weight rows a panel holds: two vectors' lanes (48 run out of registers) */
#define GEMM_TILE 4 /* activation rows multiplied at once: 2 x 4 int32 sums, 2 x 4 block sums, 2 x 4 float sums */

/* One block of a panel: values[group g][row][4 bytes]; scale[sub-block j][row] (int32); pairs[i][row]: two
 * int16 that meet the activations' sums 2i and 2i + 1 (Q4_K, Q5_K: (m_i, m_i) of sub-block i of 32 values;
 * Q6_K: its scales 2i and 2i + 1); d[row] and (Q4_K, Q5_K) -dmin[row]. Rows past the weights: zeros. */
typedef struct {
    uint8_t values[64][PANEL_ROWS][4];
    int32_t scale[16][PANEL_ROWS];
    int32_t pairs[8][PANEL_ROWS];
    float d[PANEL_ROWS], dmin[PANEL_ROWS];
} panel_block;

static ALWAYS_INLINE __m512i dot_bytes512(__m512i acc, __m512i u, __m512i s) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(acc, u, s);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#endif
}

static ALWAYS_INLINE __m512i dot_words512(__m512i acc, __m512i a, __m512i b) {
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

/* r[i] (16 int32 each) transposed in place: lane j of r[i] becomes lane i of r[j] */
static ALWAYS_INLINE void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* u[4i + k]'s 128-bit lane L: column 4L + k of rows 4i .. 4i + 3 */
    for (int k = 0; k < 4; k++) {
        __m512i even = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88), odd = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);
        __m512i even2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
        __m512i odd2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_i32x4(even, even2, 0x88);
        r[8 + k] = _mm512_shuffle_i32x4(even, even2, 0xDD);
        r[4 + k] = _mm512_shuffle_i32x4(odd, odd2, 0x88);
        r[12 + k] = _mm512_shuffle_i32x4(odd, odd2, 0xDD);
    }
}

/* 16 rows' int32 at byte `offset` of their blocks (rows `stride` bytes apart: lane i at i * stride), zero
 * in the lanes past `live` */
static ALWAYS_INLINE __m512i gather16(const uint8_t *base, __m512i rows, __mmask16 live, int offset) {
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, rows, base + offset, 1);
}

/* byte k of each int32 lane, zero- / sign-extended */
static ALWAYS_INLINE __m512i byte_u(__m512i v, int k) {
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * k), _mm512_set1_epi32(0xFF));
}
static ALWAYS_INLINE __m512i byte_s(__m512i v, int k) {
    return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * k), 24);
}

/* the float16 in the low (high) half of each int32 lane, as float32 */
static ALWAYS_INLINE __m512 half_low(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)); }
static ALWAYS_INLINE __m512 half_high(__m512i v) { return half_low(_mm512_srli_epi32(v, 16)); }

/* Weight rows [0, rows) (rows <= PANEL_ROWS) of `type`, nb blocks each, into panel[0 .. nb): the values
 * unpacked row by row (unpack.h) and turned into groups of four by 16 x 16 int32 transposes; the scales,
 * mins and d gathered from 16 rows at once, each lane a row (the bit fields as k4_unpack takes them apart). */
static void decode_panel(int type, const uint8_t *w, int64_t stride, int64_t rows, int64_t nb, panel_block *panel) {
    int halves = PANEL_ROWS / 16;
    int type_size = type == TYPE_Q4_K ? 144 : type == TYPE_Q5_K ? 176 : 210;
    uint8_t q[16][256] __attribute__((aligned(64)));
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i low6 = _mm512_set1_epi32(0x3F3F3F3F), low4 = _mm512_set1_epi32(0x0F0F0F0F);
    const __m512i top2 = _mm512_set1_epi32(0x03030303);
    for (int half = 0; half < halves; half++) {
        int64_t live_rows = rows - 16 * half < 0 ? 0 : rows - 16 * half > 16 ? 16 : rows - 16 * half;
        __mmask16 live = (__mmask16)((1u << live_rows) - 1);
        __m512i offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)stride));
        const uint8_t *first = w + 16 * half * stride;
        for (int i = (int)live_rows; i < 16; i++) memset(q[i], 0, 256);
        for (int64_t b = 0; b < nb; b++) {
            panel_block *p = panel + b;
            const uint8_t *base = first + (int64_t)type_size * b;
            int at = 16 * half;
            for (int i = 0; i < live_rows; i++) {
                const uint8_t *blk = base + i * stride;
                if (type == TYPE_Q6_K) q6_k_unpack(blk, q[i]);
                else if (type == TYPE_Q4_K) q4_k_unpack(blk, q[i]);
                else q5_k_unpack(blk, q[i]);
            }
            if (type == TYPE_Q6_K) {
                __m512i sc[4];
                for (int k = 0; k < 4; k++) sc[k] = gather16(base, offsets, live, 192 + 4 * k);
                for (int j = 0; j < 16; j++) _mm512_storeu_si512(p->scale[j] + at, byte_s(sc[j / 4], j % 4));
                for (int j = 0; j < 8; j++) {
                    __m512i low = _mm512_and_si512(byte_s(sc[j / 2], 2 * (j % 2)), _mm512_set1_epi32(0xFFFF));
                    __m512i high = _mm512_slli_epi32(byte_s(sc[j / 2], 2 * (j % 2) + 1), 16);
                    _mm512_storeu_si512(p->pairs[j] + at, _mm512_or_si512(low, high));
                }
                /* d: bytes 208-209, the high half of the int32 at 206 (one at 208 would read past the block) */
                _mm512_storeu_ps(p->d + at, half_high(gather16(base, offsets, live, 206)));
                _mm512_storeu_ps(p->dmin + at, _mm512_setzero_ps());
            } else {
                __m512i u0 = gather16(base, offsets, live, 4), u1 = gather16(base, offsets, live, 8);
                __m512i u2 = gather16(base, offsets, live, 12);
                __m512i scales[2] = {
                    _mm512_and_si512(u0, low6),
                    _mm512_or_si512(_mm512_and_si512(u2, low4),
                                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), top2), 4))};
                __m512i mins[2] = {
                    _mm512_and_si512(u1, low6),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), low4),
                                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), top2), 4))};
                for (int j = 0; j < 8; j++) {
                    __m512i m = byte_u(mins[j / 4], j % 4);
                    _mm512_storeu_si512(p->scale[j] + at, byte_u(scales[j / 4], j % 4));
                    _mm512_storeu_si512(p->pairs[j] + at, _mm512_or_si512(m, _mm512_slli_epi32(m, 16)));
                }
                __m512i dd = gather16(base, offsets, live, 0);
                _mm512_storeu_ps(p->d + at, half_low(dd));
                _mm512_storeu_ps(p->dmin + at, _mm512_sub_ps(_mm512_setzero_ps(), half_high(dd)));
            }
            for (int quarter = 0; quarter < 4; quarter++) {
                __m512i r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_load_si512(q[i] + 64 * quarter);
                transpose16(r);
                for (int g = 0; g < 16; g++) _mm512_storeu_si512(p->values[16 * quarter + g][at], r[g]);
            }
        }
    }
}

/* Activation rows a[0 .. M) (M <= GEMM_TILE) times a panel: y[m][0 .. rows). Per block, sub-block j's
 * products (sub) are scaled into the block's (dot), the mins' or bias' products (offset) come apart; the
 * vectors H of the panel's rows apart, 16 rows each. */
static ALWAYS_INLINE void gemm_tile(int q6, const panel_block *panel, int64_t nb, const int8_row *a, int M,
                                    float *const *y, int64_t rows) {
    const int subs = q6 ? 16 : 8, groups = q6 ? 4 : 8; /* sub-blocks, and groups of four values in each */
    const int H = PANEL_ROWS / 16;
    __m512 acc[GEMM_TILE][PANEL_ROWS / 16];
    UNROLL for (int m = 0; m < M; m++) UNROLL for (int h = 0; h < H; h++) acc[m][h] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const panel_block *p = panel + b;
        __m512i dot[GEMM_TILE][PANEL_ROWS / 16];
        UNROLL for (int m = 0; m < M; m++) UNROLL for (int h = 0; h < H; h++) dot[m][h] = _mm512_setzero_si512();
        for (int j = 0; j < subs; j++) {
            __m512i sub[GEMM_TILE][PANEL_ROWS / 16];
            UNROLL for (int m = 0; m < M; m++) UNROLL for (int h = 0; h < H; h++) sub[m][h] = _mm512_setzero_si512();
            _Pragma("GCC unroll 8") for (int g = groups * j; g < groups * (j + 1); g++) {
                __m512i v[PANEL_ROWS / 16];
                UNROLL for (int h = 0; h < H; h++) v[h] = _mm512_loadu_si512(p->values[g][16 * h]);
                UNROLL for (int m = 0; m < M; m++) {
                    __m512i x = _mm512_set1_epi32((int)load_u32((const uint8_t *)a[m].q + 256 * b + 4 * g));
                    UNROLL for (int h = 0; h < H; h++) sub[m][h] = dot_bytes512(sub[m][h], v[h], x);
                }
            }
            UNROLL for (int h = 0; h < H; h++) {
                __m512i scale = _mm512_loadu_si512(p->scale[j] + 16 * h);
                UNROLL for (int m = 0; m < M; m++)
                    dot[m][h] = _mm512_add_epi32(dot[m][h], _mm512_mullo_epi32(sub[m][h], scale));
            }
        }
        __m512i offset[GEMM_TILE][PANEL_ROWS / 16];
        UNROLL for (int m = 0; m < M; m++) UNROLL for (int h = 0; h < H; h++) offset[m][h] = _mm512_setzero_si512();
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
            UNROLL for (int h = 0; h < H; h++) {
                __m512i pairs = _mm512_loadu_si512(p->pairs[i] + 16 * h);
                UNROLL for (int m = 0; m < M; m++) {
                    __m512i s = _mm512_set1_epi32((int)load_u32((const uint8_t *)(a[m].sums + 16 * b + 2 * i)));
                    offset[m][h] = dot_words512(offset[m][h], pairs, s);
                }
            }
        }
        UNROLL for (int h = 0; h < H; h++) {
            __m512 d = _mm512_loadu_ps(p->d + 16 * h), dmin = _mm512_loadu_ps(p->dmin + 16 * h);
            UNROLL for (int m = 0; m < M; m++) {
                __m512 da = _mm512_set1_ps(a[m].d[b]);
                if (q6) {
                    __m512i total = _mm512_sub_epi32(dot[m][h], _mm512_slli_epi32(offset[m][h], 5));
                    acc[m][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(d, da), acc[m][h]);
                } else {
                    acc[m][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m][h]), _mm512_mul_ps(d, da), acc[m][h]);
                    acc[m][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(offset[m][h]), _mm512_mul_ps(dmin, da), acc[m][h]);
                }
            }
        }
    }
    UNROLL for (int h = 0; h < H; h++) {
        int64_t n = rows - 16 * h;
        __mmask16 keep = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
        UNROLL for (int m = 0; m < M; m++) _mm512_mask_storeu_ps(y[m] + 16 * h, keep, acc[m][h]);
    }
}

/* the panel each thread decodes into, kept for its next products (freed with the thread: never; it is as
 * large as a panel of the longest rows met, PANEL_ROWS * 11.5 KiB a block) */
static __thread panel_block *panel_memory;
static __thread int64_t panel_blocks;

/* y[m][r] for all M activation rows and weight rows r < nrows: panel by panel, GEMM_TILE rows at a time.
 * 0 where the panel memory cannot be had (the caller then uses the row kernels, which give the same bits). */
static int gemm_k(int type, const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,
                  int64_t M, float *const *y) {
    if ((int64_t)PANEL_ROWS * stride > INT32_MAX) return 0; /* decode_panel's int32 row offsets */
    if (nb > panel_blocks) {
        panel_block *more = aligned_alloc(64, (size_t)nb * sizeof(panel_block));
        if (!more) return 0;
        free(panel_memory);
        panel_memory = more, panel_blocks = nb;
    }
    for (int64_t r = 0; r < nrows; r += PANEL_ROWS) {
        int64_t rows = nrows - r < PANEL_ROWS ? nrows - r : PANEL_ROWS;
        decode_panel(type, w + r * stride, stride, rows, nb, panel_memory);
        for (int64_t m = 0; m < M; m += GEMM_TILE) {
            float *out[GEMM_TILE];
            int count = M - m < GEMM_TILE ? (int)(M - m) : GEMM_TILE;
            for (int i = 0; i < count; i++) out[i] = y[m + i] + r;
            int q6 = type == TYPE_Q6_K;
#define TILE(rows_at_once)                                                                                     \
    case rows_at_once:                                                                                         \
        if (q6) gemm_tile(1, panel_memory, nb, a + m, rows_at_once, out, rows);                                \
        else gemm_tile(0, panel_memory, nb, a + m, rows_at_once, out, rows);                                   \
        break;
            switch (count) {
                TILE(1) TILE(2) TILE(3) TILE(4)
            }
#undef TILE
        }
    }
    return 1;
}

/* From `from` activation rows on, the k-quants' products take gemm_k (measured: tools/bench_matmul.py). Up to 8
 * rows the row kernels stay ahead in a whole model's decoding step (one thread, Qwen3-0.6B-shaped Q4_K_M, 8 rows:
 * 81 ms a step against 98 through gemm_k, whose panels pay off on weights that stay in cache; 12 rows: 130
 * against 120), so a batch of 8 sequences, serving's default, keeps them. */
#define GEMM(fmt, type, from)                                                                                  \
    static ALWAYS_INLINE int gemm_##fmt(const uint8_t *w, int64_t s, int64_t n, int64_t nb, const int8_row *a, \
                                        int64_t M, float *const *y) {                                          \
        return M >= (from) && gemm_k(type, w, s, n, nb, a, M, y);                                              \
    }
GEMM(q4_k, TYPE_Q4_K, 9)
GEMM(q5_k, TYPE_Q5_K, 9)
GEMM(q6_k, TYPE_Q6_K, 9)
#endif
/* the other formats' products (and without AVX-512 the k-quants') stay with the row kernels */
#define NO_GEMM(fmt)                                                                                           \
    static ALWAYS_INLINE int gemm_##fmt(const uint8_t *w, int64_t s, int64_t n, int64_t nb, const int8_row *a, \
                                        int64_t M, float *const *y) {                                          \
        (void)w, (void)s, (void)n, (void)nb, (void)a, (void)M, (void)y;                                        \
        return 0;                                                                                              \
    }
#if !defined(__AVX512F__)
NO_GEMM(q4_k)
NO_GEMM(q5_k)
NO_GEMM(q6_k)
#endif
NO_GEMM(q8_0)
NO_GEMM(q4_0)
NO_GEMM(q4_1)
NO_GEMM(q5_0)
NO_GEMM(q5_1)

/* The exported forms: rows_<fmt> (one activation row) and multi_<fmt> (any number, MULTI_GROUP at a time),
 * both the same inlined kernel with M fixed at compile time. */
#define DEFINE_INT8_KERNELS(fmt)                                                                               \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        float *out[1] = {y};                                                                                    \
        multi_##fmt##_m(w, stride, nrows, nb, a, 1, out);                                                       \
    }                                                                                                           \
    static void multi_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,    \
                            int64_t M, float *const *y) {                                                       \
        if (gemm_##fmt(w, stride, nrows, nb, a, M, y)) return;                                                  \
        for (int64_t m = 0; m < M; m += MULTI_GROUP) {                                                          \
            switch (M - m < MULTI_GROUP ? M - m : MULTI_GROUP) {                                                \
            case 1: multi_##fmt##_m(w, stride, nrows, nb, a + m, 1, y + m); break;                              \
            case 2: multi_##fmt##_m(w, stride, nrows, nb, a + m, 2, y + m); break;                              \
            case 3: multi_##fmt##_m(w, stride, nrows, nb, a + m, 3, y + m); break;                              \
            case 4: multi_##fmt##_m(w, stride, nrows, nb, a + m, 4, y + m); break;                              \
            MORE_GROUP_CASES(fmt)                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }
#if MULTI_GROUP == 8
#define MORE_GROUP_CASES(fmt)                                                                                  \
    case 5: multi_##fmt##_m(w, stride, nrows, nb, a + m, 5, y + m); break;                                      \
    case 6: multi_##fmt##_m(w, stride, nrows, nb, a + m, 6, y + m); break;                                      \
    case 7: multi_##fmt##_m(w, stride, nrows, nb, a + m, 7, y + m); break;                                      \
    case 8: multi_##fmt##_m(w, stride, nrows, nb, a + m, 8, y + m); break;
#else
#define MORE_GROUP_CASES(fmt)
#endif

#else
/* ------------------------------------------------------------------------------------- portable */
typedef float acc_f32;

static inline acc_f32 acc_f32_zero(void) { return 0.0f; }
static inline float acc_f32_sum(acc_f32 a, acc_f32 b) { return a + b; }

static inline acc_f32 dot32_signed(acc_f32 acc, const int8_t *w, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int i = 0; i < 32; i++) s += w[i] * a[i];
    return acc + (float)s * scale;
}

static inline acc_f32 q4_0_dot(acc_f32 acc, const uint8_t *qs, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int i = 0; i < 16; i++) s += ((qs[i] & 15) - 8) * a[i] + ((qs[i] >> 4) - 8) * a[i + 16];
    return acc + (float)s * scale;
}

static inline acc_f32 q4_1_dot(acc_f32 acc, const uint8_t *qs, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int i = 0; i < 16; i++) s += (qs[i] & 15) * a[i] + (qs[i] >> 4) * a[i + 16];
    return acc + (float)s * scale;
}

/* value j of a Q5 block: nibble j (layout as Q4_0's) with bit j of qh as bit 4 */
static inline int32_t q5_value(const uint8_t *qh, const uint8_t *qs, int j) {
    uint32_t high = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    int nibble = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
    return nibble | (int)((high >> j) & 1) << 4;
}

static inline acc_f32 q5_0_dot(acc_f32 acc, const uint8_t *qh, const uint8_t *qs, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += (q5_value(qh, qs, j) - 16) * a[j];
    return acc + (float)s * scale;
}

static inline acc_f32 q5_1_dot(acc_f32 acc, const uint8_t *qh, const uint8_t *qs, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += q5_value(qh, qs, j) * a[j];
    return acc + (float)s * scale;
}

/* ------------------------------------------------------------------------- 32-weight formats */

/* The row loop of the 32-weight formats: two accumulators over alternate blocks, block b added by
 * block_<fmt>(acc, block, its 32 activations, their scale). */
#define DEFINE_INT8_ROWS(fmt, type_size)                                                                      \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        for (int64_t r = 0; r < nrows; r++) {                                                                   \
            const uint8_t *row = w + r * stride;                                                                \
            acc_f32 acc0 = acc_f32_zero(), acc1 = acc_f32_zero();                                               \
            int64_t b = 0;                                                                                      \
            for (; b + 1 < nb; b += 2) {                                                                        \
                acc0 = block_##fmt(acc0, row + (type_size) * b, a->q + 32 * b, a->d[b]);                        \
                acc1 = block_##fmt(acc1, row + (type_size) * (b + 1), a->q + 32 * (b + 1), a->d[b + 1]);        \
            }                                                                                                   \
            if (b < nb) acc0 = block_##fmt(acc0, row + (type_size) * b, a->q + 32 * b, a->d[b]);                \
            y[r] = acc_f32_sum(acc0, acc1);                                                                     \
        }                                                                                                       \
    }

/* Q8_0, 34 bytes: d (f16), qs[32] (int8) */
static inline acc_f32 block_q8_0(acc_f32 acc, const uint8_t *blk, const int8_t *a, float da) {
    return dot32_signed(acc, (const int8_t *)blk + 2, a, load_half(blk) * da);
}
DEFINE_INT8_ROWS(q8_0, 34)

/* Q4_0, 18 bytes: d (f16), qs[16]; weight j < 16 is the low nibble of qs[j], weight j + 16 the high one,
 * minus 8 */
static inline acc_f32 block_q4_0(acc_f32 acc, const uint8_t *blk, const int8_t *a, float da) {
    return q4_0_dot(acc, blk + 2, a, load_half(blk) * da);
}
DEFINE_INT8_ROWS(q4_0, 18)

/* Q4_1, 20 bytes: d (f16), m (f16), qs[16] as Q4_0's; weight = d * q + m with q = 0..15. A block adds
 * d * da * sum(q * a) + m * da * sum(a), the activations' sum from their runs of 16 (as llama.cpp's Q8_1
 * blocks carry it); the offset terms are summed apart, in float32. The
 * row loop of the offset formats: two accumulators over alternate blocks as DEFINE_INT8_ROWS's, the offsets
 * apart; dot_<fmt>(acc, block, activations, scale) adds a block's integer product. */
#define DEFINE_INT8_OFFSET_ROWS(fmt, type_size)                                                               \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        for (int64_t r = 0; r < nrows; r++) {                                                                   \
            const uint8_t *row = w + r * stride;                                                                \
            acc_f32 acc0 = acc_f32_zero(), acc1 = acc_f32_zero();                                               \
            float offsets = 0.0f;                                                                               \
            for (int64_t b = 0; b < nb; b++) {                                                                  \
                const uint8_t *blk = row + (type_size) * b;                                                     \
                if (b & 1)                                                                                      \
                    acc1 = dot_##fmt(acc1, blk, a->q + 32 * b, load_half(blk) * a->d[b]);                       \
                else                                                                                            \
                    acc0 = dot_##fmt(acc0, blk, a->q + 32 * b, load_half(blk) * a->d[b]);                       \
                offsets += load_half(blk + 2) * a->d[b] * (float)(a->sums[2 * b] + a->sums[2 * b + 1]);         \
            }                                                                                                   \
            y[r] = acc_f32_sum(acc0, acc1) + offsets;                                                           \
        }                                                                                                       \
    }
static inline acc_f32 dot_q4_1(acc_f32 acc, const uint8_t *blk, const int8_t *a, float scale) {
    return q4_1_dot(acc, blk + 4, a, scale);
}
DEFINE_INT8_OFFSET_ROWS(q4_1, 20)

/* Q5_0, 22 bytes: d (f16), qh[4], qs[16]; weight = d * (q - 16), q the 5-bit value (q5_values) */
static inline acc_f32 block_q5_0(acc_f32 acc, const uint8_t *blk, const int8_t *a, float da) {
    return q5_0_dot(acc, blk + 2, blk + 6, a, load_half(blk) * da);
}
DEFINE_INT8_ROWS(q5_0, 22)

/* Q5_1, 24 bytes: d (f16), m (f16), qh[4], qs[16]; weight = d * q + m, q = 0..31: as Q4_1, offsets apart */
static inline acc_f32 dot_q5_1(acc_f32 acc, const uint8_t *blk, const int8_t *a, float scale) {
    return q5_1_dot(acc, blk + 4, blk + 8, a, scale);
}
DEFINE_INT8_OFFSET_ROWS(q5_1, 24)

/* ------------------------------------------------------------------------------------ k-quants */

/* sum over the sub-blocks j (of `sub` = 16 or 32 values) of scale[j] * (q . a over sub-block j), for 256
 * unsigned q below 128 and |scale| <= 128: within 256 * 127 * 127 * 128 < 2^31 */
static inline int32_t dot256_scaled(const uint8_t *q, const int8_t *a, const int16_t *scale, int sub) {
    int32_t total = 0;
    for (int j = 0; j < 256 / sub; j++) {
        int32_t s = 0;
        for (int i = sub * j; i < sub * (j + 1); i++) s += q[i] * a[i];
        total += scale[j] * s;
    }
    return total;
}

/* Q4_K (144 bytes) and Q5_K (176): eight sub-blocks of 32 with 6-bit scales and mins. A block contributes
 * d_a * (d * sum_j sc_j (q_j . a_j) - dmin * sum_j m_j sum(a_j)). */
static inline __attribute__((always_inline)) void rows_k4(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb,
                                                          const int8_row *a, float *y, int type_size,
                                                          void (*unpack)(const uint8_t *, uint8_t *)) {
    uint8_t q[256] __attribute__((aligned(32)));
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + type_size * b;
            const int16_t *sums = a->sums + 16 * b;
            uint64_t scales, mins;
            k4_unpack(blk + 4, &scales, &mins);
            int16_t sc[8];
            int32_t offset = 0;
            for (int j = 0; j < 8; j++) {
                sc[j] = (int16_t)(uint8_t)(scales >> 8 * j);
                offset += (int32_t)(uint8_t)(mins >> 8 * j) * (sums[2 * j] + sums[2 * j + 1]);
            }
            unpack(blk, q);
            int32_t dot = dot256_scaled(q, a->q + 256 * b, sc, 32);
            sum += a->d[b] * (load_half(blk) * (float)dot - load_half(blk + 2) * (float)offset);
        }
        y[r] = sum;
    }
}

static void rows_q4_k(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    rows_k4(w, stride, nrows, nb, a, y, 144, q4_k_unpack);
}

static void rows_q5_k(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    rows_k4(w, stride, nrows, nb, a, y, 176, q5_k_unpack);
}

/* Q6_K, 210 bytes: sixteen sub-blocks of 16, int8 scales, values q - 32:
 * d_a * d * sum_j sc_j (q_j . a_j - 32 sum(a_j)) */
static void rows_q6_k(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    uint8_t q[256] __attribute__((aligned(32)));
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 210 * b;
            const int16_t *sums = a->sums + 16 * b;
            int16_t sc[16];
            int32_t bias = 0;
            for (int j = 0; j < 16; j++) {
                sc[j] = (int8_t)blk[192 + j];
                bias += sc[j] * sums[j];
            }
            q6_k_unpack(blk, q);
            int32_t dot = dot256_scaled(q, a->q + 256 * b, sc, 16) - 32 * bias;
            sum += a->d[b] * load_half(blk + 208) * (float)dot;
        }
        y[r] = sum;
    }
}


/* Several activation rows: one after another, each as alone */
#define DEFINE_INT8_KERNELS(fmt)                                                                               \
    static void multi_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,    \
                            int64_t M, float *const *y) {                                                       \
        for (int64_t m = 0; m < M; m++) rows_##fmt(w, stride, nrows, nb, a + m, y[m]);                          \
    }
#endif

/* the kernels each branch defines its way */
DEFINE_INT8_KERNELS(q8_0)
DEFINE_INT8_KERNELS(q4_0)
DEFINE_INT8_KERNELS(q4_1)
DEFINE_INT8_KERNELS(q5_0)
DEFINE_INT8_KERNELS(q5_1)
DEFINE_INT8_KERNELS(q4_k)
DEFINE_INT8_KERNELS(q5_k)
DEFINE_INT8_KERNELS(q6_k)

/* Up to how many activation rows each multi-row kernel beats the float32 dequantize-and-tile products, and so
 * takes them (runtime.c): measured on one thread, [3072 x 1024] weights, by CPU time (tools/bench_matmul.py
 * --sweep TYPE --int8 --cpu-time; docs/benchmarks.md). The k-quants' scales come once per 256 weights, and
 * their 8-bit products stay ahead to long prompts on the AVX-512 passes (gemm_k: Q4_K [3072 x 1024], 256 rows,
 * 4.7 ms with VNNI, 7.8 without, against the float32 products' 14.5); the 32-weight formats pay a float32 scale, and
 * conversion, per 32 weights and row, as much float work as the float32 products do past a few rows. */
#if defined(__AVX512VNNI__)
enum { MULTI_Q8_0 = 8, MULTI_Q4_0 = 8, MULTI_Q4_1 = 4, MULTI_Q5_0 = 8, MULTI_Q5_1 = 8, MULTI_K = 2048 };
#elif defined(__AVX512F__)
enum { MULTI_Q8_0 = 2, MULTI_Q4_0 = 2, MULTI_Q4_1 = 2, MULTI_Q5_0 = 4, MULTI_Q5_1 = 2, MULTI_K = 2048 };
#elif defined(__AVX2__)
enum { MULTI_Q8_0 = 2, MULTI_Q4_0 = 2, MULTI_Q4_1 = 2, MULTI_Q5_0 = 4, MULTI_Q5_1 = 2, MULTI_K = 16 };
#else /* one row at a time: as the single-row products, up to two rows */
enum { MULTI_Q8_0 = 2, MULTI_Q4_0 = 2, MULTI_Q4_1 = 2, MULTI_Q5_0 = 2, MULTI_Q5_1 = 2, MULTI_K = 2 };
#endif

/* =========================================================================================================
 * More formats (issue 20): Q2_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4, TQ2_0, TQ1_0 and the codebook formats, with the
 * activations llama.cpp pairs them with (ggml-cpu's type traits, vec_dot_type): 32 values a scale (q8_0) for
 * IQ4_NL and MXFP4, 256 (q8_K) for the others. Block layouts are described next to each format's float
 * kernels in kernels.c.
 * ========================================================================================================= */

/* This section's own small helpers (besides prefetch_ahead, nothing from the sections above): a float32 accumulator `acc32`
 * (eight lanes with AVX2, one float otherwise), its zero and its sum. */
#if defined(__AVX2__)
typedef __m256 acc32;
static inline acc32 acc32_zero(void) { return _mm256_setzero_ps(); }
static inline float acc32_sum(acc32 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline __m256i bytes32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* acc + scale * (w . a) over 32 signed bytes each: maddubs multiplies unsigned by signed bytes, so |w| meets a
 * with w's sign; pair sums within 2 * 128 * 127 < 2^15 */
static inline acc32 add_dot32(acc32 acc, __m256i w, __m256i a, float scale) {
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1))), _mm256_set1_ps(scale), acc);
}

/* the byte shuffle that puts int16 `low` of a register holding eight int16 in both 128-bit lanes into every
 * int16 of the lower lane, and int16 `high` into every int16 of the upper one */
static inline __m256i pick_scales(int low, int high) {
    const __m256i pair = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                          0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1);
    return _mm256_add_epi8(pair, _mm256_set_m128i(_mm_set1_epi8((char)(2 * high)), _mm_set1_epi8((char)(2 * low))));
}
#else
typedef float acc32;
static inline acc32 acc32_zero(void) { return 0.0f; }
static inline float acc32_sum(acc32 v) { return v; }
#endif

/* The 4-bit tables as signed bytes: IQ4_NL's kvalues, and MXFP4's E2M1 values doubled (kvalues_mxfp4) */
static const int8_t IQ4_NL_I8[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const int8_t MXFP4_I8[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* Q3_K's sixteen 6-bit scales (plus 32) as the bytes of words[4], in sub-block order: low 4 bits from the
 * nibbles of bytes 0-7, high 2 bits from bit pairs of bytes 8-11 */
static inline void q3_k_scale_words(const uint8_t *p, uint32_t words[4]) {
    uint32_t a0 = load_u32(p), a1 = load_u32(p + 4), high = load_u32(p + 8);
    words[0] = (a0 & 0x0F0F0F0F) | (high & 0x03030303) << 4;
    words[1] = (a1 & 0x0F0F0F0F) | (high >> 2 & 0x03030303) << 4;
    words[2] = (a0 >> 4 & 0x0F0F0F0F) | (high >> 4 & 0x03030303) << 4;
    words[3] = (a1 >> 4 & 0x0F0F0F0F) | (high >> 6 & 0x03030303) << 4;
}

/* IQ4_XS's 6-bit scale of sub-block i (32 weights), minus 32 */
static inline int iq4_xs_scale_i(const uint8_t *blk, int i) {
    return (((blk[4 + i / 2] >> (4 * (i % 2))) & 15) | ((load_u16(blk + 2) >> (2 * i)) & 3) << 4) - 32;
}

/* A 256-weight block as signed bytes under sixteen integer scales: weight i = unit * scale[i / 16] * q[i],
 * unit the float the unpacker returns. With |q| <= 127 and |scale| <= 32 a block's integer sum stays within
 * 256 * 127 * 127 * 32 < 2^31 (and an AVX2 pair of products within 2 * 127 * 127 < 2^15). The portable
 * branch (and TQ1_0 in every branch) unpacks each block into one, then block_i8_dot multiplies it; the AVX2
 * branch builds the other formats' values in registers. */
typedef struct {
    int8_t q[256] __attribute__((aligned(32)));
    int16_t scale[16];
} block_i8;

/* The two-bit fields of Q2_K, Q3_K and TQ2_0: weight 128h + 32s + l is bits 2s..2s+1 of qs[32h + l] */
static inline void two_bits_i8(const uint8_t *qs, int8_t *q) {
    for (int h = 0; h < 2; h++) {
        u8x32 packed = load_u8x32(qs + 32 * h);
        for (int s = 0; s < 4; s++) store_u8x32((uint8_t *)q + 128 * h + 32 * s, (packed >> (2 * s)) & 3);
    }
}

/* eight grid values (the bytes of `row`), negated where bit j of `signs` is set */
static inline void grid8_signed(int8_t *q, uint64_t row, uint32_t signs) {
    for (int j = 0; j < 8; j++) {
        int v = (int8_t)(row >> (8 * j));
        q[j] = (int8_t)(signs >> j & 1 ? -v : v);
    }
}

static inline void scale_pair(block_i8 *u, int i, int value) { u->scale[2 * i] = u->scale[2 * i + 1] = (int16_t)value; }

/* Q2_K: the two-bit values 0..3 under the scales' low nibbles (the mins apart, rows_q2_k) */
static inline float unpack_q2_k(const uint8_t *blk, block_i8 *u) {
    two_bits_i8(blk + 16, u->q);
    for (int j = 0; j < 16; j++) u->scale[j] = blk[j] & 15;
    return load_half(blk + 80);
}

/* Q3_K: the two-bit value plus 4 * its hmask bit, minus 4 (-4..3), under the scales minus 32 */
static inline float unpack_q3_k(const uint8_t *blk, block_i8 *u) {
    u8x32 hmask = load_u8x32(blk);
    for (int h = 0; h < 2; h++) {
        u8x32 packed = load_u8x32(blk + 32 + 32 * h);
        for (int s = 0; s < 4; s++) /* bytewise, wrapping: 0..7 - 4 is the signed -4..3 */
            store_u8x32((uint8_t *)u->q + 128 * h + 32 * s,
                        (((packed >> (2 * s)) & 3) | ((hmask >> (4 * h + s)) & 1) << 2) - 4);
    }
    uint32_t words[4];
    q3_k_scale_words(blk + 96, words);
    for (int j = 0; j < 16; j++) u->scale[j] = (int16_t)((words[j / 4] >> (8 * (j % 4)) & 0xFF) - 32);
    return load_half(blk + 108);
}

/* IQ4_XS: kvalues under the 6-bit scales minus 32 */
static inline float unpack_iq4_xs(const uint8_t *blk, block_i8 *u) {
    for (int i = 0; i < 8; i++) {
        scale_pair(u, i, iq4_xs_scale_i(blk, i));
        for (int j = 0; j < 16; j++) {
            u->q[32 * i + j] = IQ4_NL_I8[blk[8 + 16 * i + j] & 15];
            u->q[32 * i + 16 + j] = IQ4_NL_I8[blk[8 + 16 * i + j] >> 4];
        }
    }
    return load_half(blk);
}

/* TQ2_0: the two-bit values minus one */
static inline float unpack_tq2_0(const uint8_t *blk, block_i8 *u) {
    two_bits_i8(blk, u->q);
    for (int i = 0; i < 256; i++) u->q[i] = (int8_t)(u->q[i] - 1);
    for (int j = 0; j < 16; j++) u->scale[j] = 1;
    return load_half(blk + 64);
}

/* TQ1_0: base-3 digits minus one, digit k of byte v read as ggml reads it: ((v * 3^k mod 256) * 3) >> 8, with
 * m = v * 3^k mod 256 carried from digit to digit as 3m mod 256. Sixteen bytes at a time: with AVX2 in bytes,
 * the digit being [m >= 86] + [m >= 171] (a comparison is 0 or -1, so digit - 1 = ~(the two added)); else in
 * uint16 lanes, which every instruction set multiplies natively. */
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef int8_t i8x16 __attribute__((vector_size(16)));

/* digits 0 .. digits-1 of the 16 bytes at p, minus one, digit k to q + stride * k */
static inline void tq1_digits16(const uint8_t *p, int digits, int8_t *q, int stride) {
    u8x16 m;
    memcpy(&m, p, 16);
#if defined(__AVX2__)
    for (int k = 0; k < digits; k++, m = m + m + m) {
        u8x16 digit_minus_one = ~((u8x16)(m >= 86) + (u8x16)(m >= 171));
        memcpy(q + stride * k, &digit_minus_one, 16);
    }
#else
    u16x16 wide = __builtin_convertvector(m, u16x16);
    for (int k = 0; k < digits; k++, wide = (wide * 3) & 255) {
        i8x16 digit_minus_one = __builtin_convertvector((wide * 3) >> 8, i8x16) - 1;
        memcpy(q + stride * k, &digit_minus_one, 16);
    }
#endif
}

static inline float unpack_tq1_0(const uint8_t *blk, block_i8 *u) {
    tq1_digits16(blk, 5, u->q, 32);
    tq1_digits16(blk + 16, 5, u->q + 16, 32);
    tq1_digits16(blk + 32, 5, u->q + 160, 16);
    for (int p = 0; p < 4; p++) {
        uint8_t v = blk[48 + p];
        for (int k = 0; k < 4; k++, v = (uint8_t)(3 * v)) u->q[240 + 4 * k + p] = (int8_t)((v * 3 >> 8) - 1);
    }
    for (int j = 0; j < 16; j++) u->scale[j] = 1;
    return load_half(blk + 52);
}

/* The codebook formats: grid values with signs under (2s + 1) (IQ3_S: 1 + 2s); the reference's
 * d * (s + 0.5) * 0.25 is d / 8 * (2s + 1) (IQ3_XXS's * 0.5: d / 4 * (2s + 1)). */
static inline float unpack_iq2_xxs(const uint8_t *blk, block_i8 *u) {
    for (int i = 0; i < 8; i++) {
        const uint8_t *q = blk + 2 + 8 * i;
        uint32_t aux = load_u32(q + 4);
        scale_pair(u, i, 2 * (int)(aux >> 28) + 1);
        for (int l = 0; l < 4; l++) grid8_signed(u->q + 32 * i + 8 * l, GRID_IQ2XXS[q[l]], ksigns(aux >> (7 * l) & 127));
    }
    return load_half(blk) * 0.125f;
}

static inline float unpack_iq2_xs(const uint8_t *blk, block_i8 *u) {
    for (int s = 0; s < 16; s++) {
        u->scale[s] = (int16_t)(2 * (blk[66 + s / 2] >> (4 * (s % 2)) & 15) + 1);
        for (int l = 2 * s; l < 2 * s + 2; l++) {
            uint32_t v = load_u16(blk + 2 + 2 * l);
            grid8_signed(u->q + 8 * l, GRID_IQ2XS[v & 511], ksigns(v >> 9));
        }
    }
    return load_half(blk) * 0.125f;
}

static inline float unpack_iq2_s(const uint8_t *blk, block_i8 *u) {
    for (int s = 0; s < 16; s++) {
        u->scale[s] = (int16_t)(2 * (blk[74 + s / 2] >> (4 * (s % 2)) & 15) + 1);
        for (int l = 2 * s; l < 2 * s + 2; l++) {
            uint32_t index = blk[2 + l] | (blk[66 + l / 4] >> (2 * (l % 4)) & 3) << 8;
            grid8_signed(u->q + 8 * l, GRID_IQ2S[index], blk[34 + l]);
        }
    }
    return load_half(blk) * 0.125f;
}

static inline float unpack_iq3_xxs(const uint8_t *blk, block_i8 *u) {
    for (int i = 0; i < 8; i++) {
        uint32_t aux = load_u32(blk + 66 + 4 * i);
        scale_pair(u, i, 2 * (int)(aux >> 28) + 1);
        for (int l = 0; l < 4; l++) {
            const uint8_t *q = blk + 2 + 8 * i + 2 * l;
            uint64_t row = GRID_IQ3XXS[q[0]] | (uint64_t)GRID_IQ3XXS[q[1]] << 32;
            grid8_signed(u->q + 32 * i + 8 * l, row, ksigns(aux >> (7 * l) & 127));
        }
    }
    return load_half(blk) * 0.25f;
}

static inline float unpack_iq3_s(const uint8_t *blk, block_i8 *u) {
    for (int i = 0; i < 8; i++) {
        scale_pair(u, i, 1 + 2 * (blk[106 + i / 2] >> (4 * (i % 2)) & 15));
        for (int g = 4 * i; g < 4 * i + 4; g++) {
            uint64_t row = GRID_IQ3S[iq3_s_index(blk, 2 * g)] | (uint64_t)GRID_IQ3S[iq3_s_index(blk, 2 * g + 1)] << 32;
            grid8_signed(u->q + 8 * g, row, blk[74 + g]);
        }
    }
    return load_half(blk);
}

/* The IQ1 grids hold -1, 0, 1 and shift by delta = +-1/8: eight times a weight's value is the integer
 * 8 * grid + 1, or 8 * grid - 1 where the delta's sign bit is set */
static inline void grid8_delta(int8_t *q, uint64_t row, int negative) {
    for (int j = 0; j < 8; j++) q[j] = (int8_t)(8 * (int8_t)(row >> (8 * j)) + (negative ? -1 : 1));
}

static inline float unpack_iq1_s(const uint8_t *blk, block_i8 *u) {
    for (int i = 0; i < 8; i++) {
        uint32_t qh = load_u16(blk + 34 + 2 * i);
        scale_pair(u, i, 2 * (int)(qh >> 12 & 7) + 1);
        for (int l = 0; l < 4; l++)
            grid8_delta(u->q + 32 * i + 8 * l, GRID_IQ1S[blk[2 + 4 * i + l] | (qh >> (3 * l) & 7) << 8], qh >> 15 & 1);
    }
    return load_half(blk) * 0.125f;
}

static inline float unpack_iq1_m(const uint8_t *blk, block_i8 *u) {
    for (int i = 0; i < 8; i++) {
        uint32_t sc = load_u16(blk + 48 + 2 * (i / 2)) >> (6 * (i % 2)), qh = load_u16(blk + 32 + 2 * i);
        u->scale[2 * i] = (int16_t)(2 * (sc & 7) + 1);
        u->scale[2 * i + 1] = (int16_t)(2 * (sc >> 3 & 7) + 1);
        for (int l = 0; l < 4; l++) {
            uint32_t nibble = qh >> (4 * l) & 15;
            grid8_delta(u->q + 32 * i + 8 * l, GRID_IQ1S[blk[4 * i + l] | (nibble & 7) << 8], nibble >> 3 & 1);
        }
    }
    return iq1_m_d(blk) * 0.125f;
}

#if defined(__AVX2__)
static inline int32_t sum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* sum over the sixteen runs j of scale[j] * (q . a over run j), 32 signed bytes at a time (add_dot32's
 * sign trick) */
static inline int32_t block_i8_dot(const block_i8 *u, const int8_t *a) {
    __m256i dot = _mm256_setzero_si256();
    for (int k = 0; k < 8; k++) {
        __m256i w = bytes32(u->q + 32 * k);
        __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(bytes32(a + 32 * k), w));
        __m256i scale = _mm256_set_m128i(_mm_set1_epi16(u->scale[2 * k + 1]), _mm_set1_epi16(u->scale[2 * k]));
        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(pairs, scale));
    }
    return sum_i32(dot);
}

/* 32 weights of a 4-bit table format (qs[16] laid out as Q4_0's) as signed bytes: one byte shuffle */
static inline __m256i table4_values(const uint8_t *qs, __m256i table) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs), nibbles = _mm_set1_epi8(15);
    __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), nibbles), _mm_and_si128(packed, nibbles));
    return _mm256_shuffle_epi8(table, q);
}

static inline acc32 table4_dot(acc32 acc, const int8_t *values, const uint8_t *qs, const int8_t *a, float scale) {
    __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)values));
    return add_dot32(acc, table4_values(qs, table), bytes32(a), scale);
}

/* Q2_K in registers: per half h the four two-bit planes of qs[32h ..], unsigned, times the activations under
 * the scales (as rows_q6_k); the mins through the activations' sums of 16 */
static void rows_q2_k(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    const __m256i three = _mm256_set1_epi8(3);
    const __m128i low4 = _mm_set1_epi8(15);
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 84 * b;
            const int8_t *ab = a->q + 256 * b;
            prefetch_ahead(blk);
            __m128i fields = _mm_loadu_si128((const __m128i *)blk);
            __m128i scales = _mm_and_si128(fields, low4), mins = _mm_and_si128(_mm_srli_epi16(fields, 4), low4);
            __m256i dot = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(h ? _mm_srli_si128(scales, 8) : scales));
                __m256i packed = bytes32(blk + 16 + 32 * h);
                for (int s = 0; s < 4; s++, packed = _mm256_srli_epi16(packed, 2)) {
                    __m256i p = _mm256_maddubs_epi16(_mm256_and_si256(packed, three), bytes32(ab + 128 * h + 32 * s));
                    dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, pick_scales(2 * s, 2 * s + 1))));
                }
            }
            __m256i offset = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), bytes32(a->sums + 16 * b));
            float da = a->d[b];
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(load_half(blk + 80) * da), acc);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(offset), _mm256_set1_ps(-load_half(blk + 82) * da), acc);
        }
        y[r] = acc32_sum(acc);
    }
}

/* Q3_K in registers: the two-bit planes with 4 * the hmask bit (0..7, unsigned) under the signed scales;
 * the bias of 4 through the activations' sums of 16 */
static void rows_q3_k(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    const __m256i three = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 110 * b;
            const int8_t *ab = a->q + 256 * b;
            prefetch_ahead(blk);
            uint32_t words[4];
            q3_k_scale_words(blk + 96, words);
            __m128i s8 = _mm_sub_epi8(_mm_setr_epi32((int)words[0], (int)words[1], (int)words[2], (int)words[3]),
                                      _mm_set1_epi8(32)); /* in registers: no store-to-load stall */
            __m256i hmask = bytes32(blk), dot = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(h ? _mm_srli_si128(s8, 8) : s8));
                __m256i packed = bytes32(blk + 32 + 32 * h);
                for (int s = 0; s < 4; s++, packed = _mm256_srli_epi16(packed, 2), hmask = _mm256_srli_epi16(hmask, 1)) {
                    __m256i q = _mm256_or_si256(_mm256_and_si256(packed, three),
                                                _mm256_and_si256(_mm256_slli_epi16(hmask, 2), four));
                    __m256i p = _mm256_maddubs_epi16(q, bytes32(ab + 128 * h + 32 * s));
                    dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, pick_scales(2 * s, 2 * s + 1))));
                }
            }
            __m256i bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s8), bytes32(a->sums + 16 * b));
            dot = _mm256_sub_epi32(dot, _mm256_slli_epi32(bias, 2));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(load_half(blk + 108) * a->d[b]), acc);
        }
        y[r] = acc32_sum(acc);
    }
}

/* IQ4_XS in registers: per sub-block of 32, the kvalues by one shuffle, under the scale minus 32 */
static void rows_iq4_xs(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_NL_I8));
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 136 * b;
            const int8_t *ab = a->q + 256 * b;
            prefetch_ahead(blk);
            __m256i dot = _mm256_setzero_si256();
            for (int i = 0; i < 8; i++) {
                __m256i v = table4_values(blk + 8 + 16 * i, table);
                __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(bytes32(ab + 32 * i), v));
                dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, _mm256_set1_epi16((short)iq4_xs_scale_i(blk, i))));
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(load_half(blk) * a->d[b]), acc);
        }
        y[r] = acc32_sum(acc);
    }
}

/* The ternary and codebook formats in registers: group_<fmt>(block, i, &scale) gives weights 32i .. 32i + 31
 * as signed bytes (|q| <= 127) and, in the int16 lanes of each 16-weight half, its integer scale (<= 32);
 * the block's float unit multiplies the integer sum once. */
#define DEFINE_GROUP_ROWS(fmt, type_size, unit)                                                               \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        for (int64_t r = 0; r < nrows; r++) {                                                                  \
            const uint8_t *row = w + r * stride;                                                               \
            __m256 acc = _mm256_setzero_ps();                                                                  \
            for (int64_t b = 0; b < nb; b++) {                                                                 \
                const uint8_t *blk = row + (type_size) * b;                                                    \
                const int8_t *ab = a->q + 256 * b;                                                             \
                prefetch_ahead(blk);                                                                           \
                __m256i dot = _mm256_setzero_si256();                                                          \
                for (int i = 0; i < 8; i++) {                                                                  \
                    __m256i scale, v = group_##fmt(blk, i, &scale);                                            \
                    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(bytes32(ab + 32 * i), v)); \
                    dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, scale));                                  \
                }                                                                                              \
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps((unit) * a->d[b]), acc);         \
            }                                                                                                  \
            y[r] = acc32_sum(acc);                                                      \
        }                                                                                                      \
    }

/* 0xFF in byte j where bit j of `bits` is set (q5_values' spread) */
static inline __m256i bit_mask32(uint32_t bits) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread), bit), bit);
}

static inline __m256i rows4(uint64_t r0, uint64_t r1, uint64_t r2, uint64_t r3) {
    return _mm256_set_epi64x((long long)r3, (long long)r2, (long long)r1, (long long)r0);
}

/* four grid rows, byte j negated where bit j of `signs` is set: (v ^ m) - m */
static inline __m256i signed_rows(__m256i v, uint32_t signs) {
    __m256i m = bit_mask32(signs);
    return _mm256_sub_epi8(_mm256_xor_si256(v, m), m);
}

/* one scale for each 16-weight half */
static inline __m256i scale_halves(int low, int high) {
    return _mm256_set_m128i(_mm_set1_epi16((short)high), _mm_set1_epi16((short)low));
}

/* the four 7-bit sign indices of a uint32 (bits 0-27) as 32 sign bits */
static inline uint32_t ksigns4(uint32_t aux) {
    return ksigns(aux & 127) | ksigns(aux >> 7 & 127) << 8 | ksigns(aux >> 14 & 127) << 16 | ksigns(aux >> 21 & 127) << 24;
}

static inline int iq2_scale_i(const uint8_t *scales, int s) { return 2 * (scales[s / 2] >> (4 * (s % 2)) & 15) + 1; }

static inline __m256i group_tq2_0(const uint8_t *blk, int i, __m256i *scale) {
    *scale = _mm256_set1_epi16(1);
    __m256i packed = _mm256_srl_epi16(bytes32(blk + 32 * (i / 4)), _mm_cvtsi32_si128(2 * (i % 4)));
    return _mm256_sub_epi8(_mm256_and_si256(packed, _mm256_set1_epi8(3)), _mm256_set1_epi8(1));
}
DEFINE_GROUP_ROWS(tq2_0, 66, load_half(blk + 64))

static inline __m256i group_iq2_xxs(const uint8_t *blk, int i, __m256i *scale) {
    const uint8_t *q = blk + 2 + 8 * i;
    uint32_t aux = load_u32(q + 4);
    *scale = _mm256_set1_epi16((short)(2 * (aux >> 28) + 1));
    return signed_rows(rows4(GRID_IQ2XXS[q[0]], GRID_IQ2XXS[q[1]], GRID_IQ2XXS[q[2]], GRID_IQ2XXS[q[3]]), ksigns4(aux));
}
DEFINE_GROUP_ROWS(iq2_xxs, 66, load_half(blk) * 0.125f)

static inline __m256i group_iq2_xs(const uint8_t *blk, int i, __m256i *scale) {
    *scale = scale_halves(iq2_scale_i(blk + 66, 2 * i), iq2_scale_i(blk + 66, 2 * i + 1));
    uint64_t v = load_u64(blk + 2 + 8 * i); /* four uint16: 9-bit grid index, 7-bit sign index */
    uint32_t signs = 0;
    for (int l = 0; l < 4; l++) signs |= ksigns(v >> (16 * l + 9) & 127) << (8 * l);
    return signed_rows(rows4(GRID_IQ2XS[v & 511], GRID_IQ2XS[v >> 16 & 511], GRID_IQ2XS[v >> 32 & 511],
                             GRID_IQ2XS[v >> 48 & 511]), signs);
}
DEFINE_GROUP_ROWS(iq2_xs, 74, load_half(blk) * 0.125f)

static inline __m256i group_iq2_s(const uint8_t *blk, int i, __m256i *scale) {
    *scale = scale_halves(iq2_scale_i(blk + 74, 2 * i), iq2_scale_i(blk + 74, 2 * i + 1));
    const uint8_t *q = blk + 2 + 4 * i;
    uint32_t high = blk[66 + i]; /* index bits 8-9 of the four groups */
    return signed_rows(rows4(GRID_IQ2S[q[0] | (high & 3) << 8], GRID_IQ2S[q[1] | (high >> 2 & 3) << 8],
                             GRID_IQ2S[q[2] | (high >> 4 & 3) << 8], GRID_IQ2S[q[3] | (high >> 6 & 3) << 8]),
                       load_u32(blk + 34 + 4 * i));
}
DEFINE_GROUP_ROWS(iq2_s, 82, load_half(blk) * 0.125f)

static inline __m256i group_iq3_xxs(const uint8_t *blk, int i, __m256i *scale) {
    uint32_t aux = load_u32(blk + 66 + 4 * i);
    *scale = _mm256_set1_epi16((short)(2 * (aux >> 28) + 1));
    const uint8_t *q = blk + 2 + 8 * i;
    __m256i v = _mm256_setr_epi32((int)GRID_IQ3XXS[q[0]], (int)GRID_IQ3XXS[q[1]], (int)GRID_IQ3XXS[q[2]],
                                  (int)GRID_IQ3XXS[q[3]], (int)GRID_IQ3XXS[q[4]], (int)GRID_IQ3XXS[q[5]],
                                  (int)GRID_IQ3XXS[q[6]], (int)GRID_IQ3XXS[q[7]]);
    return signed_rows(v, ksigns4(aux));
}
DEFINE_GROUP_ROWS(iq3_xxs, 98, load_half(blk) * 0.25f)

static inline __m256i group_iq3_s(const uint8_t *blk, int i, __m256i *scale) {
    *scale = _mm256_set1_epi16((short)(1 + 2 * (blk[106 + i / 2] >> (4 * (i % 2)) & 15)));
    int r = 8 * i;
    __m256i v = _mm256_setr_epi32((int)GRID_IQ3S[iq3_s_index(blk, r)], (int)GRID_IQ3S[iq3_s_index(blk, r + 1)],
                                  (int)GRID_IQ3S[iq3_s_index(blk, r + 2)], (int)GRID_IQ3S[iq3_s_index(blk, r + 3)],
                                  (int)GRID_IQ3S[iq3_s_index(blk, r + 4)], (int)GRID_IQ3S[iq3_s_index(blk, r + 5)],
                                  (int)GRID_IQ3S[iq3_s_index(blk, r + 6)], (int)GRID_IQ3S[iq3_s_index(blk, r + 7)]);
    return signed_rows(v, load_u32(blk + 74 + 4 * i));
}
DEFINE_GROUP_ROWS(iq3_s, 110, load_half(blk))

/* IQ1: 8 * grid (-1, 0, 1), bytewise (the 16-bit shift's carry into the next byte masked off), plus the
 * delta's sign as +-1 per group of 8 (`deltas`) */
static inline __m256i iq1_values(__m256i grid, __m256i deltas) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(grid, 3), _mm256_set1_epi8((char)0xF8)), deltas);
}

static inline long long iq1_delta8(uint32_t negative) { return negative ? -1LL : 0x0101010101010101LL; }

static inline __m256i group_iq1_s(const uint8_t *blk, int i, __m256i *scale) {
    uint32_t qh = load_u16(blk + 34 + 2 * i);
    *scale = _mm256_set1_epi16((short)(2 * (qh >> 12 & 7) + 1));
    const uint8_t *q = blk + 2 + 4 * i;
    __m256i grid = rows4(GRID_IQ1S[q[0] | (qh & 7) << 8], GRID_IQ1S[q[1] | (qh >> 3 & 7) << 8],
                         GRID_IQ1S[q[2] | (qh >> 6 & 7) << 8], GRID_IQ1S[q[3] | (qh >> 9 & 7) << 8]);
    return iq1_values(grid, _mm256_set1_epi64x(iq1_delta8(qh >> 15 & 1)));
}
DEFINE_GROUP_ROWS(iq1_s, 50, load_half(blk) * 0.125f)

static inline __m256i group_iq1_m(const uint8_t *blk, int i, __m256i *scale) {
    uint32_t sc = load_u16(blk + 48 + 2 * (i / 2)) >> (6 * (i % 2)), qh = load_u16(blk + 32 + 2 * i);
    *scale = scale_halves(2 * (int)(sc & 7) + 1, 2 * (int)(sc >> 3 & 7) + 1);
    const uint8_t *q = blk + 4 * i;
    __m256i grid = rows4(GRID_IQ1S[q[0] | (qh & 7) << 8], GRID_IQ1S[q[1] | (qh >> 4 & 7) << 8],
                         GRID_IQ1S[q[2] | (qh >> 8 & 7) << 8], GRID_IQ1S[q[3] | (qh >> 12 & 7) << 8]);
    __m256i deltas = _mm256_set_epi64x(iq1_delta8(qh >> 15 & 1), iq1_delta8(qh >> 11 & 1), iq1_delta8(qh >> 7 & 1),
                                       iq1_delta8(qh >> 3 & 1));
    return iq1_values(grid, deltas);
}
DEFINE_GROUP_ROWS(iq1_m, 56, iq1_m_d(blk) * 0.125f)

#else
static inline int32_t block_i8_dot(const block_i8 *u, const int8_t *a) {
    int32_t total = 0;
    for (int j = 0; j < 16; j++) {
        int32_t s = 0;
        for (int i = 16 * j; i < 16 * j + 16; i++) s += u->q[i] * a[i];
        total += u->scale[j] * s;
    }
    return total;
}

static inline acc32 table4_dot(acc32 acc, const int8_t *values, const uint8_t *qs, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int i = 0; i < 16; i++) s += values[qs[i] & 15] * a[i] + values[qs[i] >> 4] * a[i + 16];
    return acc + (float)s * scale;
}

/* IQ4_XS: d_a * d * sum_i (ls_i - 32) * (kvalues . a over sub-block i), the table read straight from the block */
static void rows_iq4_xs(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 136 * b, *qs = blk + 8;
            const int8_t *ab = a->q + 256 * b;
            prefetch_ahead(blk);
            int32_t dot = 0;
            for (int i = 0; i < 8; i++) {
                int32_t s = 0;
                for (int j = 0; j < 16; j++)
                    s += IQ4_NL_I8[qs[16 * i + j] & 15] * ab[32 * i + j] + IQ4_NL_I8[qs[16 * i + j] >> 4] * ab[32 * i + 16 + j];
                dot += iq4_xs_scale_i(blk, i) * s;
            }
            sum += a->d[b] * load_half(blk) * (float)dot;
        }
        y[r] = sum;
    }
}

/* Q2_K: d_a * (d * sum_j sc_j (q_j . a_j) - dmin * sum_j m_j sum(a_j)) */
static void rows_q2_k(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
    block_i8 u;
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 84 * b;
            prefetch_ahead(blk);
            float d = unpack_q2_k(blk, &u);
            int32_t offset = 0;
            for (int j = 0; j < 16; j++) offset += (blk[j] >> 4) * a->sums[16 * b + j];
            int32_t dot = block_i8_dot(&u, a->q + 256 * b);
            sum += a->d[b] * (d * (float)dot - load_half(blk + 82) * (float)offset);
        }
        y[r] = sum;
    }
}
#endif

/* The rows of a format whose blocks unpack into block_i8 (unpack_<fmt>) */
#define DEFINE_BLOCK_I8_ROWS(fmt, type_size)                                                                  \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        block_i8 u;                                                                                            \
        for (int64_t r = 0; r < nrows; r++) {                                                                  \
            const uint8_t *row = w + r * stride;                                                               \
            float sum = 0.0f;                                                                                  \
            for (int64_t b = 0; b < nb; b++) {                                                                 \
                prefetch_ahead(row + (type_size) * b);                                                         \
                float unit = unpack_##fmt(row + (type_size) * b, &u);                                          \
                sum += a->d[b] * unit * (float)block_i8_dot(&u, a->q + 256 * b);                               \
            }                                                                                                  \
            y[r] = sum;                                                                                        \
        }                                                                                                      \
    }

DEFINE_BLOCK_I8_ROWS(tq1_0, 54)
#if !defined(__AVX2__)
DEFINE_BLOCK_I8_ROWS(q3_k, 110)
DEFINE_BLOCK_I8_ROWS(tq2_0, 66)
DEFINE_BLOCK_I8_ROWS(iq2_xxs, 66)
DEFINE_BLOCK_I8_ROWS(iq2_xs, 74)
DEFINE_BLOCK_I8_ROWS(iq2_s, 82)
DEFINE_BLOCK_I8_ROWS(iq3_xxs, 98)
DEFINE_BLOCK_I8_ROWS(iq3_s, 110)
DEFINE_BLOCK_I8_ROWS(iq1_s, 50)
DEFINE_BLOCK_I8_ROWS(iq1_m, 56)
#endif

/* The row loop of the 32-weight table formats: DEFINE_INT8_ROWS's, asking for the weights ahead every two blocks */
#define DEFINE_TABLE4_ROWS(fmt, type_size)                                                                    \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        for (int64_t r = 0; r < nrows; r++) {                                                                   \
            const uint8_t *row = w + r * stride;                                                                \
            acc32 acc0 = acc32_zero(), acc1 = acc32_zero();                                               \
            int64_t b = 0;                                                                                      \
            for (; b + 1 < nb; b += 2) {                                                                        \
                prefetch_ahead(row + (type_size) * b);                                                          \
                acc0 = block_##fmt(acc0, row + (type_size) * b, a->q + 32 * b, a->d[b]);                        \
                acc1 = block_##fmt(acc1, row + (type_size) * (b + 1), a->q + 32 * (b + 1), a->d[b + 1]);        \
            }                                                                                                   \
            if (b < nb) acc0 = block_##fmt(acc0, row + (type_size) * b, a->q + 32 * b, a->d[b]);                \
            y[r] = acc32_sum(acc0 + acc1);                                                                     \
        }                                                                                                       \
    }

/* IQ4_NL, 18 bytes: d (f16), qs[16] through kvalues; MXFP4, 17 bytes: e (E8M0), qs[16] through kvalues_mxfp4 */
static inline acc32 block_iq4_nl(acc32 acc, const uint8_t *blk, const int8_t *a, float da) {
    return table4_dot(acc, IQ4_NL_I8, blk + 2, a, load_half(blk) * da);
}
DEFINE_TABLE4_ROWS(iq4_nl, 18)

static inline acc32 block_mxfp4(acc32 acc, const uint8_t *blk, const int8_t *a, float da) {
    return table4_dot(acc, MXFP4_I8, blk + 1, a, e8m0_half(blk[0]) * da);
}
DEFINE_TABLE4_ROWS(mxfp4, 17)


/* Q1_0, Q2_0 and NVFP4: blocks of 128 and 64 weights, multiplied (as llama.cpp does) with 32-value activation
 * blocks, `nb` of which make a row: each activation block meets a quarter of a Q1_0 block or half of a Q2_0 or
 * NVFP4 block. */
#if defined(__AVX2__)
/* Q1_0's 32 weights of bits (set: +1, clear: -1) */
static inline __m256i q1_0_values(const uint8_t *bits) {
    return _mm256_or_si256(_mm256_andnot_si256(bit_mask32(load_u32(bits)), _mm256_set1_epi8(-2)), _mm256_set1_epi8(1));
}

/* Q2_0's 32 weights from 8 bytes: each byte widened to a uint32 whose byte k is its k-th two-bit field, minus 1 */
static inline __m256i q2_0_values(const uint8_t *qs) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    v = _mm256_or_si256(_mm256_or_si256(v, _mm256_slli_epi32(v, 6)), _mm256_or_si256(_mm256_slli_epi32(v, 12), _mm256_slli_epi32(v, 18)));
    return _mm256_sub_epi8(_mm256_and_si256(v, _mm256_set1_epi32(0x03030303)), _mm256_set1_epi8(1));
}
#else
/* 32 weights as bytes, then one multiply-add loop the compiler vectorises */
static inline acc32 dot32_bytes(acc32 acc, const int8_t *q, const int8_t *a, float scale) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += q[j] * a[j];
    return acc + (float)s * scale;
}

/* each byte of bits spread over eight bytes (bit k alone in byte k, then 0 or 1), as 1 or -1: 0xFF - 0xFE * bit
 * bytewise, with no borrow between bytes */
static inline acc32 q1_0_dot(acc32 acc, const uint8_t *bits, const int8_t *a, float scale) {
    int8_t q[32];
    for (int i = 0; i < 4; i++) {
        uint64_t spread = (bits[i] * 0x0101010101010101ull) & 0x8040201008040201ull;
        spread = (spread + 0x7F7F7F7F7F7F7F7Full) >> 7 & 0x0101010101010101ull;
        uint64_t values = ~0ull - spread * 0xFE;
        memcpy(q + 8 * i, &values, 8);
    }
    return dot32_bytes(acc, q, a, scale);
}

/* each byte widened to a uint32 whose byte k is its k-th two-bit field (kernels.c, dequant_q2_0), minus 1 */
static inline acc32 q2_0_dot(acc32 acc, const uint8_t *qs, const int8_t *a, float scale) {
    typedef uint8_t u8x8 __attribute__((vector_size(8)));
    typedef uint32_t u32x8 __attribute__((vector_size(32)));
    u8x8 bytes;
    memcpy(&bytes, qs, 8);
    u32x8 v = __builtin_convertvector(bytes, u32x8);
    v = (v | v << 6 | v << 12 | v << 18) & 0x03030303;
    int8_t q[32];
    memcpy(q, &v, 32);
    for (int j = 0; j < 32; j++) q[j] = (int8_t)(q[j] - 1);
    return dot32_bytes(acc, q, a, scale);
}
#endif

/* The row loop of formats whose weight block of `type_size` bytes (f16 scale, then the values) spans `per`
 * activation blocks of 32, each reading `sub_bytes` of the values: activation block b is part b % per of
 * weight block b / per. */
#if defined(__AVX2__)
#define SUB_DOT(fmt, values, a, scale, acc) add_dot32(acc, fmt##_values(values), bytes32(a), scale)
#else
#define SUB_DOT(fmt, values, a, scale, acc) fmt##_dot(acc, values, a, scale)
#endif
#define DEFINE_SUBBLOCK_ROWS(fmt, type_size, per, sub_bytes)                                                  \
    static void rows_##fmt(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a,     \
                           float *y) {                                                                         \
        for (int64_t r = 0; r < nrows; r++) {                                                                   \
            const uint8_t *row = w + r * stride;                                                                \
            acc32 acc = acc32_zero();                                                                           \
            for (int64_t b = 0; b < nb; b++) {                                                                  \
                const uint8_t *blk = row + (type_size) * (b / (per));                                           \
                if (b % (per) == 0) prefetch_ahead(blk);                                                        \
                acc = SUB_DOT(fmt, blk + 2 + (sub_bytes) * (b % (per)), a->q + 32 * b, load_half(blk) * a->d[b], \
                              acc);                                                                             \
            }                                                                                                   \
            y[r] = acc32_sum(acc);                                                                              \
        }                                                                                                       \
    }

/* Q1_0, 18 bytes: d (f16), qs[16]; activation block k of a weight block: bits qs[4k .. 4k + 3] */
DEFINE_SUBBLOCK_ROWS(q1_0, 18, 4, 4)

/* Q2_0, 18 bytes: d (f16), qs[16]; activation block k of a weight block: qs[8k .. 8k + 7] */
DEFINE_SUBBLOCK_ROWS(q2_0, 18, 2, 8)

/* NVFP4, 36 bytes: d[4] (UE4M3), qs[32]; activation block k of a weight block holds sub-blocks 2k and 2k + 1
 * (qs[16k .. 16k + 15]), each with its own scale: two float multiply-adds per activation block */
static void rows_nvfp4(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nb, const int8_row *a, float *y) {
#if defined(__AVX2__)
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)MXFP4_I8));
    const __m128i nibbles = _mm_set1_epi8(15);
#endif
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = w + r * stride;
#if defined(__AVX2__)
        __m256 acc = _mm256_setzero_ps();
#else
        float acc = 0.0f;
#endif
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + 36 * (b / 2), *qs = blk + 4 + 16 * (b % 2);
            if (b % 2 == 0) prefetch_ahead(blk);
            float s0 = ue4m3_half(blk[2 * (b % 2)]) * a->d[b], s1 = ue4m3_half(blk[2 * (b % 2) + 1]) * a->d[b];
            const int8_t *ab = a->q + 32 * b;
#if defined(__AVX2__)
            /* weights in order: the low nibbles of qs[0..7], their high nibbles, then the same of qs[8..15] */
            __m128i packed = _mm_loadu_si128((const __m128i *)qs);
            __m128i low = _mm_and_si128(packed, nibbles), high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibbles);
            __m256i v = _mm256_shuffle_epi8(table, _mm256_set_m128i(_mm_unpackhi_epi64(low, high), _mm_unpacklo_epi64(low, high)));
            __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(bytes32(ab), v));
            __m256i sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)); /* lanes 0-3: sub-block 2k, 4-7: 2k + 1 */
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0)), acc);
#else
            int32_t sum[2] = {0, 0};
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < 8; j++)
                    sum[h] += MXFP4_I8[qs[8 * h + j] & 15] * ab[16 * h + j] + MXFP4_I8[qs[8 * h + j] >> 4] * ab[16 * h + 8 + j];
            acc += s0 * (float)sum[0] + s1 * (float)sum[1];
#endif
        }
#if defined(__AVX2__)
        y[r] = acc32_sum(acc);
#else
        y[r] = acc;
#endif
    }
}


const int8_kernels INT8_TABLE(TFB_ISA_SYMBOL)[] = {
    {TYPE_Q8_0, 32, rows_q8_0, multi_q8_0, MULTI_Q8_0},
    {TYPE_Q4_0, 32, rows_q4_0, multi_q4_0, MULTI_Q4_0},
    {TYPE_Q4_1, 32, rows_q4_1, multi_q4_1, MULTI_Q4_1},
    {TYPE_Q5_0, 32, rows_q5_0, multi_q5_0, MULTI_Q5_0},
    {TYPE_Q5_1, 32, rows_q5_1, multi_q5_1, MULTI_Q5_1},
    {TYPE_Q4_K, 256, rows_q4_k, multi_q4_k, MULTI_K},
    {TYPE_Q5_K, 256, rows_q5_k, multi_q5_k, MULTI_K},
    {TYPE_Q6_K, 256, rows_q6_k, multi_q6_k, MULTI_K},
    {TYPE_Q2_K, 256, rows_q2_k},
    {TYPE_Q3_K, 256, rows_q3_k},
    {TYPE_IQ4_NL, 32, rows_iq4_nl},
    {TYPE_IQ4_XS, 256, rows_iq4_xs},
    {TYPE_MXFP4, 32, rows_mxfp4},
    {TYPE_TQ2_0, 256, rows_tq2_0},
    {TYPE_TQ1_0, 256, rows_tq1_0},
    {TYPE_IQ2_XXS, 256, rows_iq2_xxs},
    {TYPE_IQ2_XS, 256, rows_iq2_xs},
    {TYPE_IQ2_S, 256, rows_iq2_s},
    {TYPE_IQ3_XXS, 256, rows_iq3_xxs},
    {TYPE_IQ3_S, 256, rows_iq3_s},
    {TYPE_IQ1_S, 256, rows_iq1_s},
    {TYPE_IQ1_M, 256, rows_iq1_m},
    {TYPE_Q1_0, 32, rows_q1_0},
    {TYPE_Q2_0, 32, rows_q2_0},
    {TYPE_NVFP4, 32, rows_nvfp4},
    {0, 0, 0, 0, 0},
};
