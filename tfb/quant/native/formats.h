/* The storage types with native kernels, and the table each instruction-set pass of kernels.c exports.
 *
 * Type ids are ggml's (ggml.h, enum ggml_type); block layouts are described next to each kernel.
 */
#ifndef TFB_FORMATS_H
#define TFB_FORMATS_H

#include <stdint.h>

enum {
    TYPE_F16 = 1, TYPE_Q4_0 = 2, TYPE_Q4_1 = 3, TYPE_Q5_0 = 6, TYPE_Q5_1 = 7, TYPE_Q8_0 = 8,
    TYPE_Q2_K = 10, TYPE_Q3_K = 11, TYPE_Q4_K = 12, TYPE_Q5_K = 13, TYPE_Q6_K = 14,
    TYPE_IQ4_NL = 20, TYPE_IQ4_XS = 23, TYPE_BF16 = 30, TYPE_MXFP4 = 39,
    /* dequantize-only (no fused `rows`) */
    TYPE_IQ2_XXS = 16, TYPE_IQ2_XS = 17, TYPE_IQ3_XXS = 18, TYPE_IQ1_S = 19, TYPE_IQ3_S = 21, TYPE_IQ2_S = 22,
    TYPE_IQ1_M = 29, TYPE_TQ1_0 = 34, TYPE_TQ2_0 = 35, TYPE_NVFP4 = 40, TYPE_Q1_0 = 41, TYPE_Q2_0 = 42,
};

/* y[r] = row r . x for `nrows` rows `stride` bytes apart, each `nblocks` blocks long. `sums` holds the
 * sums of x over runs of `sum_group` weights, for formats whose weights carry an additive offset. */
typedef void (*rows_fn)(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nblocks, const float *x,
                        const float *sums, float *y);
/* out[0 .. nblocks * block_size) = the weights of `nblocks` consecutive blocks, bit-exact */
typedef void (*dequant_fn)(const uint8_t *blocks, int64_t nblocks, float *out);

typedef struct {
    int type;
    int block_size;  /* weights per block */
    int type_size;   /* bytes per block */
    int sum_group;   /* 0, or the run length of the sums `rows` needs */
    rows_fn rows;    /* NULL: products dequantize rows into scratch and use `tile`, for any row count */
    dequant_fn dequant;
} format_kernels;

/* An activation row rounded to 8 bits as llama.cpp rounds it for quantized weights (runtime.c,
 * quantize_activations): per block of `block` values (32, or 256 for the k-quants) a scale d = max|x| / 127
 * and q = rint(x / d) in [-127, 127]; and the sums of q over each run of 16. For 32-value blocks also q + 128
 * as unsigned bytes, each d repeated 8 times (the int32 lanes of its block's dot products), and d times the
 * sum of q over each run of 4 (those lanes' share of a weight offset), which the x86 kernels take straight
 * from memory; NULL for other blocks. */
typedef struct {
    const int8_t *q;
    const float *d;      /* one per block */
    const int16_t *sums; /* one per 16 values */
    const uint8_t *qu;   /* 32-value blocks: q + 128 */
    const float *d8;     /* 32-value blocks: d[b] at 8 b .. 8 b + 7 */
    const float *dsum4;  /* 32-value blocks: d[i / 32] * (q[i] + .. + q[i + 3]) at i / 4 */
} int8_row;

/* y[r] = row r . a as `rows_fn`, with the activations rounded to 8 bits: integer dot products within a block,
 * scaled in float32 (int8.c) */
typedef void (*rows_int8_fn)(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nblocks, const int8_row *a,
                             float *y);

/* Several activation rows at once: y[m][r] = row r . a[m] for m < M, each weight block decoded once for all M
 * rows. Each row's result is bit for bit what `rows` gives it alone (the same per-row arithmetic; only the
 * loop over rows is inside). */
typedef void (*rows_int8_multi_fn)(const uint8_t *w, int64_t stride, int64_t nrows, int64_t nblocks,
                                   const int8_row *a, int64_t M, float *const *y);

typedef struct {
    int type;
    int block;  /* activation values per scale: the weight format's block size */
    rows_int8_fn rows;
    rows_int8_multi_fn multi; /* optional (NULL: more than INT8_ROWS activation rows take the float32 path) */
    int multi_rows;           /* with multi: up to how many activation rows it beats the float32 products */
} int8_kernels;

/* The name int8.c exports its table under in the pass that builds the kernels of `isa` */
#define INT8_TABLE_CONCAT(isa, suffix) isa##suffix
#define INT8_TABLE(isa) INT8_TABLE_CONCAT(isa, _int8)

/* y[m * ldy + r] = w[r] . x[m] for r < rows, m < M: w is rows x K floats, x is M x K floats */
typedef void (*tile_fn)(const float *w, int64_t rows, int64_t K, const float *x, int64_t M, float *y, int64_t ldy);

/* The attention of `rows` queries that share one KV head, over s keys and values of float32 or (half)
 * float16 (kernels.c, attend_rows). */
typedef void (*attend_fn)(const float *q, int64_t rows, int64_t d, const void *k, int64_t k_row, const void *v,
                          int64_t v_row, int64_t dv, int64_t s, int half, float scale, float softcap,
                          const float *sinks, float *scores, float *out);

/* RMS norm of `rows` dense rows of n, times w unless w is NULL (kernels.c, rms_norm_rows). */
typedef void (*rms_norm_fn)(const float *x, int64_t rows, int64_t n, const float *w, float eps, float *y);

typedef struct {
    const char *name;
    const format_kernels *formats;  /* ends with type 0 */
    const int8_kernels *int8;       /* the formats with 8-bit activation products; ends with type 0 */
    tile_fn tile;
    attend_fn attend;
    rms_norm_fn rms_norm;
} isa_kernels;

#endif
