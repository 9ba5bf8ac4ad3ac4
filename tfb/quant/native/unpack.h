/* Unpacking block formats' integer fields and scales, shared by the float kernels (kernels.c) and the 8-bit
 * activation products (int8.c). Block layouts are described next to each format's kernels in kernels.c.
 */
#ifndef TFB_UNPACK_H
#define TFB_UNPACK_H

#include <stdint.h>
#include <string.h>

typedef uint8_t u8x32 __attribute__((vector_size(32)));

static inline u8x32 load_u8x32(const uint8_t *p) {
    u8x32 v;
    memcpy(&v, p, 32);
    return v;
}

static inline void store_u8x32(uint8_t *p, u8x32 v) { memcpy(p, &v, 32); }

/* Q4_K and Q5_K's eight 6-bit scales and mins, one per byte of *scales and *mins (ggml's get_scale_min_k4) */
static inline void k4_unpack(const uint8_t *s, uint64_t *scales, uint64_t *mins) {
    uint32_t u0 = load_u32(s), u1 = load_u32(s + 4), u2 = load_u32(s + 8);  /* 4 fields at a time */
    uint32_t scales47 = (u2 & 0x0F0F0F0F) | (u0 >> 6 & 0x03030303) << 4;
    uint32_t mins47 = (u2 >> 4 & 0x0F0F0F0F) | (u1 >> 6 & 0x03030303) << 4;
    *scales = (u0 & 0x3F3F3F3F) | (uint64_t)scales47 << 32;
    *mins = (u1 & 0x3F3F3F3F) | (uint64_t)mins47 << 32;
}

/* Q4_K's nibbles in weight order: sub-blocks 2c and 2c + 1 are the low and high nibbles of qs[32c ..] */
static inline void q4_k_unpack(const uint8_t *blk, uint8_t *q) {
    for (int c = 0; c < 4; c++) {
        u8x32 packed = load_u8x32(blk + 16 + 32 * c);
        store_u8x32(q + 64 * c, packed & 15);
        store_u8x32(q + 64 * c + 32, packed >> 4);
    }
}

/* Q5_K's five-bit values in weight order */
static inline void q5_k_unpack(const uint8_t *blk, uint8_t *q) {
    u8x32 high = load_u8x32(blk + 16);
    for (int c = 0; c < 4; c++) {
        u8x32 low = load_u8x32(blk + 48 + 32 * c);
        store_u8x32(q + 64 * c, (low & 15) | ((high >> (2 * c)) & 1) << 4);
        store_u8x32(q + 64 * c + 32, (low >> 4) | ((high >> (2 * c + 1)) & 1) << 4);
    }
}

/* Q6_K's six-bit values (0..63, before the bias of 32) in weight order */
static inline void q6_k_unpack(const uint8_t *blk, uint8_t *q) {
    for (int h = 0; h < 2; h++) {
        u8x32 a = load_u8x32(blk + 64 * h), b = load_u8x32(blk + 64 * h + 32), bits = load_u8x32(blk + 128 + 32 * h);
        store_u8x32(q + 128 * h, (a & 15) | ((bits << 4) & 0x30));
        store_u8x32(q + 128 * h + 32, (b & 15) | ((bits << 2) & 0x30));
        store_u8x32(q + 128 * h + 64, (a >> 4) | (bits & 0x30));
        store_u8x32(q + 128 * h + 96, (b >> 4) | ((bits >> 2) & 0x30));
    }
}

/* MXFP4's scale: 2^(e - 128) as ggml's ggml_e8m0_to_fp32_half builds it (e < 2 gives a subnormal) */
static inline float e8m0_half(uint8_t e) {
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* The eighth sign bit of IQ2_XXS, IQ2_XS and IQ3_XXS groups makes the count of minus signs even
 * (ggml's ksigns_iq2xs table, computed rather than stored). */
static inline uint32_t ksigns(uint32_t low7) { return low7 | (uint32_t)__builtin_parity(low7) << 7; }

/* IQ3_S's 9-bit grid index r: qs[r] with bit r % 8 of qh[r / 8] on top */
static inline uint32_t iq3_s_index(const uint8_t *blk, int r) { return blk[2 + r] | (blk[66 + r / 8] >> (r % 8) & 1) << 8; }

/* IQ1_M's block scale: the float16 whose nibble k tops scales[k] (the uint16 at 48 + 2k) */
static inline float iq1_m_d(const uint8_t *blk) {
    uint16_t bits = 0;
    for (int k = 0; k < 4; k++) bits |= (uint16_t)(load_u16(blk + 48 + 2 * k) >> 12 << (4 * k));
    return half_to_float(bits);
}

/* NVFP4's scale: ggml_ue4m3_to_fp32's value halved: 0 for 0x7F, else bit 7 ignored, (8 + m) * 2^(e - 11), or
 * m * 2^-10 for e = 0. Without branches on the exponent (random scales would mispredict): e = 0 reads as
 * (0 + m) * 2^-10. */
static inline float ue4m3_half(uint8_t x) {
    uint32_t exponent = x >> 3 & 15, normal = exponent != 0;
    uint32_t power_bits = (127 - 11 + exponent + !normal) << 23;
    float power;
    memcpy(&power, &power_bits, 4);
    float value = (float)((x & 7) | normal << 3) * power; /* exact: a 4-bit integer times a power of two */
    return x == 0x7F ? 0.0f : value; /* 0x00 is 0 already */
}

#endif
