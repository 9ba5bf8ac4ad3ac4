/* A small vector vocabulary, so that each block format's kernels are written once.
 *
 * kernels.c is compiled once per instruction set; the compiler flags of that pass select the branch
 * below: AVX-512 (16 float lanes), AVX2 + FMA + F16C (8 lanes), or portable C with GCC vector
 * extensions (4 lanes: SSE2 on x86-64, NEON on arm64, plain code elsewhere).
 *
 *   vf   LANES float32            vi   LANES int32
 *   vi_u8 / vi_i8    LANES bytes, zero- / sign-extended to int32
 *   vf_nibble_low    float of the low 4 bits of each int32 lane (the byte's low nibble)
 *   vf_table16       lookup of the low 4 bits of each lane in a 16-entry float table
 *   vi_or_bits       lane i gains `value` where bit i of `bits` is set (the high bit of 5-bit quants)
 *   bytes8_scaled    eight (sbytes8_: signed) bytes packed in a uint64, each times a float: sub-block scales
 *   vf_bytes8_fma    acc + (eight bytes times d) * eight floats, in the first eight lanes (sub-block mins)
 *   vf_first         a float in lane 0, zeros elsewhere
 *   vf_trunc / vi_as_float   float to int32 (truncating) / int32 bits read as float
 *
 * Everything here is exact except vf_fma (one rounding where the hardware fuses, two in portable C)
 * and vf_sum's order: the dequantizers use only vf_mul / vf_add / vf_sub, which round once each, as the
 * reference does (kernels.c is compiled with -ffp-contract=off, so no mul+add is silently fused).
 */
#ifndef TFB_SIMD_H
#define TFB_SIMD_H

#include <stdint.h>
#include <string.h>

static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t load_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__FMA__) && defined(__F16C__)
/* ------------------------------------------------------------------------------------- AVX-512 */
#include <immintrin.h>
#define LANES 16
#if defined(__AVX512VNNI__)
#define ISA_NAME "avx512vnni" /* the same float kernels; int8.c's dot products use VNNI */
#else
#define ISA_NAME "avx512"
#endif
typedef __m512 vf;
typedef __m512i vi;
typedef __m512 vtable;

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float v) { return _mm512_set1_ps(v); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
static inline vi vi_u8(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
static inline vi vi_i8(const uint8_t *p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)); }
static inline vi vi_and(vi v, int32_t m) { return _mm512_and_si512(v, _mm512_set1_epi32(m)); }
static inline vi vi_or(vi a, vi b) { return _mm512_or_si512(a, b); }
static inline vi vi_add(vi v, int32_t n) { return _mm512_add_epi32(v, _mm512_set1_epi32(n)); }
static inline vi vi_plus(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline vi vi_srl(vi v, int n) { return _mm512_srli_epi32(v, (unsigned)n); }
static inline vi vi_sll(vi v, int n) { return _mm512_slli_epi32(v, (unsigned)n); }
static inline vf vi_float(vi v) { return _mm512_cvtepi32_ps(v); }
static inline vi vf_trunc(vf v) { return _mm512_cvttps_epi32(v); }
static inline vf vi_as_float(vi v) { return _mm512_castsi512_ps(v); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vi vi_or_bits(vi v, uint32_t bits, int32_t value) {
    return _mm512_mask_or_epi32(v, (__mmask16)bits, v, _mm512_set1_epi32(value));
}
static inline vtable vtable_load(const float *t) { return _mm512_loadu_ps(t); }
/* vpermps reads only the low 4 bits of each index: no mask needed */
static inline vf vf_table16(vtable t, vi idx) { return _mm512_permutexvar_ps(idx, t); }
static const float IOTA16[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static inline vf vf_nibble_low(vi v) { return _mm512_permutexvar_ps(v, _mm512_loadu_ps(IOTA16)); }
static inline vf vf_f16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vf vf_bf16(const uint8_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vf vf_first(float v) { return _mm512_maskz_mov_ps(1, _mm512_set1_ps(v)); }
static inline vf vf_bytes8_fma(vf acc, uint64_t b, float d, const float *x) {
    /* bytes 8-15 of the widened register are zero, and the load leaves lanes 8-15 of x zero too */
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_cvtsi64_si128((long long)b))), _mm512_set1_ps(d));
    return _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(0xFF, x), acc);
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* ----------------------------------------------------------------------------------------- AVX2 */
#include <immintrin.h>
#define LANES 8
#define ISA_NAME "avx2"
typedef __m256 vf;
typedef __m256i vi;
typedef struct { __m256 low, high; } vtable;

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_set1(float v) { return _mm256_set1_ps(v); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vf_sum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vi vi_u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline vi vi_i8(const uint8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline vi vi_and(vi v, int32_t m) { return _mm256_and_si256(v, _mm256_set1_epi32(m)); }
static inline vi vi_or(vi a, vi b) { return _mm256_or_si256(a, b); }
static inline vi vi_add(vi v, int32_t n) { return _mm256_add_epi32(v, _mm256_set1_epi32(n)); }
static inline vi vi_plus(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vi_srl(vi v, int n) { return _mm256_srli_epi32(v, n); }
static inline vi vi_sll(vi v, int n) { return _mm256_slli_epi32(v, n); }
static inline vf vi_float(vi v) { return _mm256_cvtepi32_ps(v); }
static inline vi vf_trunc(vf v) { return _mm256_cvttps_epi32(v); }
static inline vf vi_as_float(vi v) { return _mm256_castsi256_ps(v); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vi vi_or_bits(vi v, uint32_t bits, int32_t value) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), lane_bit), lane_bit);
    return _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi32(value)));
}
static inline vtable vtable_load(const float *t) { vtable r = {_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)}; return r; }
/* vpermps reads the low 3 bits; bit 3, shifted into the sign bit, picks the table half */
static inline vf vf_table16(vtable t, vi idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.low, idx), _mm256_permutevar8x32_ps(t.high, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
static inline vf vf_nibble_low(vi v) { return _mm256_cvtepi32_ps(vi_and(v, 15)); }
static inline vf vf_f16(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline vf vf_bf16(const uint8_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline vf vf_first(float v) { return _mm256_setr_ps(v, 0, 0, 0, 0, 0, 0, 0); }
static inline vf vf_bytes8_fma(vf acc, uint64_t b, float d, const float *x) {
    __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)b)));
    return _mm256_fmadd_ps(_mm256_mul_ps(v, _mm256_set1_ps(d)), _mm256_loadu_ps(x), acc);
}

#else
/* ---------------------------------------------------------------------- portable (GCC vectors) */
#define LANES 4
#define ISA_NAME "portable"
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
typedef struct { float v[16]; } vtable;

/* IEEE half -> single, exact for every input, without branches: the half's exponent and mantissa placed
 * in a float and scaled by 2^112 (exact, subnormal halves included), infinities and NaNs patched. */
static inline float half_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7FFF) << 13, sign = (uint32_t)(h & 0x8000) << 16;
    float f;
    memcpy(&f, &bits, 4);
    f *= 0x1p112f;
    memcpy(&bits, &f, 4);
    bits = (h & 0x7C00) == 0x7C00 ? (uint32_t)(h & 0x3FF) << 13 | 0x7F800000u : bits;
    bits |= sign;
    memcpy(&f, &bits, 4);
    return f;
}
static inline vf vf_zero(void) { vf v = {0, 0, 0, 0}; return v; }
static inline vf vf_set1(float s) { vf v = {s, s, s, s}; return v; }
static inline vf vf_load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
static inline float vf_sum(vf v) { return (v[0] + v[1]) + (v[2] + v[3]); }
typedef uint8_t u8x4 __attribute__((vector_size(4)));
typedef int8_t i8x4 __attribute__((vector_size(4)));
static inline vi vi_u8(const uint8_t *p) { u8x4 v; memcpy(&v, p, 4); return __builtin_convertvector(v, vi); }
static inline vi vi_i8(const uint8_t *p) { i8x4 v; memcpy(&v, p, 4); return __builtin_convertvector(v, vi); }
static inline vi vi_and(vi v, int32_t m) { return v & m; }
static inline vi vi_or(vi a, vi b) { return a | b; }
static inline vi vi_add(vi v, int32_t n) { return v + n; }
static inline vi vi_plus(vi a, vi b) { return a + b; }
static inline vi vi_srl(vi v, int n) { return (vi)((uint32_t __attribute__((vector_size(16))))v >> n); }
static inline vi vi_sll(vi v, int n) { return v << n; }
static inline vf vi_float(vi v) { return __builtin_convertvector(v, vf); }
static inline vi vf_trunc(vf v) { return __builtin_convertvector(v, vi); }
static inline vf vi_as_float(vi v) { return (vf)v; }
static inline vf vf_max(vf a, vf b) {
    vi a_larger = a > b; /* all ones where true */
    return (vf)(((vi)a & a_larger) | ((vi)b & ~a_larger));
}
static inline vi vi_or_bits(vi v, uint32_t bits, int32_t value) {
    vi set = {bits & 1 ? value : 0, bits & 2 ? value : 0, bits & 4 ? value : 0, bits & 8 ? value : 0};
    return v | set;
}
static inline vtable vtable_load(const float *t) { vtable r; memcpy(r.v, t, sizeof r.v); return r; }
static inline vf vf_table16(vtable t, vi idx) {
    vf v = {t.v[idx[0] & 15], t.v[idx[1] & 15], t.v[idx[2] & 15], t.v[idx[3] & 15]};
    return v;
}
static inline vf vf_nibble_low(vi v) { return vi_float(v & 15); }
static inline vf vf_f16(const uint8_t *p) {
    vf v = {half_to_float(load_u16(p)), half_to_float(load_u16(p + 2)), half_to_float(load_u16(p + 4)),
            half_to_float(load_u16(p + 6))};
    return v;
}
static inline vf vf_first(float v) { vf r = {v, 0, 0, 0}; return r; }
static inline vf vf_bytes8_fma(vf acc, uint64_t b, float d, const float *x) {
    vf low = {(float)(uint8_t)b, (float)(uint8_t)(b >> 8), (float)(uint8_t)(b >> 16), (float)(uint8_t)(b >> 24)};
    vf high = {(float)(uint8_t)(b >> 32), (float)(uint8_t)(b >> 40), (float)(uint8_t)(b >> 48), (float)(uint8_t)(b >> 56)};
    return acc + low * d * vf_load(x) + high * d * vf_load(x + 4);
}
static inline vf vf_bf16(const uint8_t *p) {
    uint32_t bits[4] = {(uint32_t)load_u16(p) << 16, (uint32_t)load_u16(p + 2) << 16,
                        (uint32_t)load_u16(p + 4) << 16, (uint32_t)load_u16(p + 6) << 16};
    vf v;
    memcpy(&v, bits, sizeof v);
    return v;
}
#endif

/* Sub-block scales: bytes 0-7 of `b` (unsigned, or signed for sbytes8_) times d into out[0..7], one
 * multiply each. */
#if LANES >= 8
static inline __m256 bytes8_float(uint64_t b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)b)));
}
static inline __m256 sbytes8_float(uint64_t b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128((long long)b)));
}
static inline void bytes8_scaled(uint64_t b, float d, float *out) {
    _mm256_storeu_ps(out, _mm256_mul_ps(bytes8_float(b), _mm256_set1_ps(d)));
}
static inline void sbytes8_scaled(uint64_t b, float d, float *out) {
    _mm256_storeu_ps(out, _mm256_mul_ps(sbytes8_float(b), _mm256_set1_ps(d)));
}
#else
static inline void bytes8_scaled(uint64_t b, float d, float *out) {
    for (int i = 0; i < 8; i++) out[i] = (float)(uint8_t)(b >> 8 * i) * d;
}
static inline void sbytes8_scaled(uint64_t b, float d, float *out) {
    for (int i = 0; i < 8; i++) out[i] = (float)(int8_t)(b >> 8 * i) * d;
}
#endif

static inline float load_half(const uint8_t *p) { return half_to_float(load_u16(p)); }

#endif
