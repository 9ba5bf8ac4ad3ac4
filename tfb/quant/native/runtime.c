/* The exported entry points: instruction-set dispatch, threads, matmul, dequantize, attention and RMS norm.
 *
 * Threads. A job is split into chunks (contiguous ranges of rows or blocks) that threads claim one at
 * a time. The threads come from one of two places:
 *
 * - torch's OpenMP runtime, when the caller hands over its GOMP_parallel (tfb_use_openmp). The
 *   library links no OpenMP of its own: it borrows the team torch already runs. That matters on a
 *   machine with as many cores as threads: after each of its parallel regions (attention, every layer)
 *   torch's OpenMP threads spin for a while waiting for more work, and a second set of threads,
 *   ours, would have to fight them for the cores. Borrowed, they pick up our chunks at once instead.
 * - otherwise a small persistent pool of (threads - 1) pthreads plus the calling thread, whose idle
 *   workers spin briefly (a decode step issues hundreds of small matmuls back to back, and waking a
 *   sleeping thread costs more than such a matmul) and then sleep on a condition variable.
 *
 * Jobs too small to pay for the hand-off run on the calling thread alone, as does a job that arrives
 * while another thread's job holds the threads.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "formats.h"

#define EXPORT __attribute__((visibility("default")))

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_X86_ISAS 1
#include <immintrin.h>
extern const isa_kernels tfb_kernels_avx512, tfb_kernels_avx2;
/* weak: a compiler without -mavx512vnni builds the library without that pass (library.py, OPTIONAL_ISAS) */
extern const isa_kernels tfb_kernels_avx512vnni __attribute__((weak));
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif
extern const isa_kernels tfb_kernels_portable;

enum { OK = 0, ERR_TYPE = -1, ERR_SHAPE = -2, ERR_MEMORY = -3, ERR_ISA = -4 };

/* ------------------------------------------------------------------------------------- dispatch */

static const isa_kernels *active;
static const format_kernels *by_type[64];
static const int8_kernels *int8_by_type[64];

static int cpu_has(const char *isa) {
#ifdef HAVE_X86_ISAS
    __builtin_cpu_init();
    if (!strcmp(isa, "avx512vnni"))
        return cpu_has("avx512") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (!strcmp(isa, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return !strcmp(isa, "portable");
}

static void use(const isa_kernels *isa) {
    memset(by_type, 0, sizeof by_type);
    for (const format_kernels *f = isa->formats; f->type; f++) by_type[f->type] = f;
    memset(int8_by_type, 0, sizeof int8_by_type);
    for (const int8_kernels *f = isa->int8; f->type; f++) int8_by_type[f->type] = f;
    active = isa;
}

/* Select the kernels by name ("avx512vnni", "avx512", "avx2", "portable") or, for NULL or "", the best the
 * CPU runs. */
EXPORT int tfb_set_isa(const char *name) {
    const isa_kernels *all[] = {
#ifdef HAVE_X86_ISAS
        &tfb_kernels_avx512vnni, &tfb_kernels_avx512, &tfb_kernels_avx2,
#endif
        &tfb_kernels_portable};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (!all[i]) continue; /* a pass left out of the build */
        if (name && *name && strcmp(name, all[i]->name)) continue;
        if (!cpu_has(all[i]->name)) continue;
        use(all[i]);
        return OK;
    }
    return ERR_ISA;
}

/* The first choice: $TFB_ISA where it names a set the CPU runs (to compare or test one), else the best. */
static void pick_isa(void) {
    if (tfb_set_isa(getenv("TFB_ISA")) != OK) tfb_set_isa(NULL);
}

static const format_kernels *format(int type) {
    if (!active) pick_isa();
    return type > 0 && type < 64 ? by_type[type] : NULL;
}

EXPORT const char *tfb_isa(void) {
    if (!active) pick_isa();
    return active->name;
}

EXPORT int tfb_supports(int type) { return format(type) != NULL; }

static const int8_kernels *int8_format(int type) {
    if (!active) pick_isa();
    return type > 0 && type < 64 ? int8_by_type[type] : NULL;
}

/* Whether `type` has products with 8-bit activations (tfb_matmul_int8). */
EXPORT int tfb_supports_int8(int type) { return int8_format(type) != NULL; }

/* Up to how many activation rows tfb_matmul_int8 rounds them to 8 bits for `type` (0: never); more take the
 * float32 products. Defined below, with the row counts. */
EXPORT int tfb_int8_rows(int type);

/* ----------------------------------------------------------------------------------- thread pool */

/* A job is `parts` chunks (contiguous ranges of rows or blocks), claimed one at a time by whichever
 * thread is free: a worker that another process keeps off its core delays a job by at most the chunk
 * it holds, and one that has not woken yet by nothing (the caller takes its chunks). */
typedef void (*part_fn)(void *ctx, int part, int parts);

/* GOMP_parallel(fn, data, threads, flags): run fn(data) on a team of `threads` threads, the caller
 * included, and return when all are done. GCC's libgomp, LLVM's libomp and Intel's libiomp export it. */
typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned threads, unsigned flags);

#define MAX_WORKERS 255
#define CHUNKS_PER_THREAD 8
#define MIN_CHUNK_WORK (32 * 1024) /* bytes touched: below that, handing a chunk over costs more than it saves */

static struct {
    pthread_mutex_t busy; /* held by the thread whose job owns the pool */
    pthread_mutex_t lock; /* guards sleeping and waking */
    pthread_cond_t wake, done;
    pthread_t threads[MAX_WORKERS];
    int workers, quit;
    part_fn fn;
    void *ctx;
    /* parts << 32 | next part to claim. Claims past the end are refused, so one fetch-and-add tells a
     * thread both which part it has and whether it is a part at all (a late worker may claim from the
     * next job: the job's fields are written before its ticket and stay until all its parts are done). */
    _Atomic uint64_t ticket;
    atomic_int finished; /* parts of the current job done */
    atomic_uint generation; /* bumped for each job: what sleeping workers wait for */
    atomic_int sleepers, main_waiting;
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static int64_t spin_ns = 100 * 1000;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static _Thread_local unsigned seen_generation;
static int new_job(void) { return atomic_load(&pool.generation) != seen_generation; }
static int64_t wanted_parts;
static int all_done(void) { return atomic_load(&pool.finished) == wanted_parts; }

/* Spin up to spin_ns for `ready` to return true; false if it did not. */
static int spin_until(int (*ready)(void)) {
    int64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (ready()) return 1;
        cpu_relax();
        if (i % 256 == 0) {
            int64_t t = now_ns();
            if (!start) start = t;
            else if (t - start > spin_ns) return 0;
        }
    }
}

/* Claim and run parts until there are none left. */
static void work(void) {
    for (;;) {
        uint64_t ticket = atomic_fetch_add(&pool.ticket, 1);
        int parts = (int)(ticket >> 32), part = (int)(ticket & 0xFFFFFFFF);
        if (part >= parts) return;
        pool.fn(pool.ctx, part, parts);
        if (atomic_fetch_add(&pool.finished, 1) + 1 == parts && atomic_load(&pool.main_waiting)) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_broadcast(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
}

static void *worker(void *arg) {
    seen_generation = (unsigned)(uintptr_t)arg; /* the generation at its start: a later one might hide a job */
    for (;;) {
        if (!spin_until(new_job)) {
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while (!new_job()) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        seen_generation = atomic_load(&pool.generation);
        if (pool.quit) return NULL;
        work();
    }
}

static void wake_workers(void) {
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
}

/* Run the `parts` parts of fn with the workers (pool.busy held); return when all are done. */
static void dispatch(part_fn fn, void *ctx, int parts) {
    pool.fn = fn;
    pool.ctx = ctx;
    wanted_parts = parts;
    atomic_store(&pool.finished, 0);
    atomic_store(&pool.ticket, (uint64_t)parts << 32);
    wake_workers();
    work();
    if (!spin_until(all_done)) {
        pthread_mutex_lock(&pool.lock);
        atomic_store(&pool.main_waiting, 1);
        while (!all_done()) pthread_cond_wait(&pool.done, &pool.lock);
        atomic_store(&pool.main_waiting, 0);
        pthread_mutex_unlock(&pool.lock);
    }
}

static void stop_workers(void) {
    if (!pool.workers) return;
    pool.quit = 1;
    wake_workers();
    for (int i = 0; i < pool.workers; i++) pthread_join(pool.threads[i], NULL);
    pool.workers = pool.quit = 0;
}

/* A forked child has none of the parent's threads: start over with an empty pool (started again on first
 * use), and leave OpenMP alone: an OpenMP runtime used before the fork waits in the child for threads that
 * are gone (libgomp does; torch's own parallel regions hang there too). */
static gomp_parallel_fn gomp_parallel;

static void after_fork_in_child(void) {
    pthread_mutex_init(&pool.busy, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = pool.quit = 0;
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.main_waiting, 0);
    gomp_parallel = NULL;
}

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
static void install_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_in_child); }

static int thread_count = 1;

/* Grow the pool to `workers` threads (pool.busy held). */
static void start_workers(int workers) {
    void *generation = (void *)(uintptr_t)atomic_load(&pool.generation);
    for (int i = pool.workers; i < workers && !pthread_create(&pool.threads[i], NULL, worker, generation); i++)
        pool.workers = i + 1;
}

/* Use `threads` threads in all (the caller's included); returns the number in effect. */
EXPORT int tfb_set_threads(int threads) {
    pthread_once(&fork_handler_once, install_fork_handler);
    threads = threads < 1 ? 1 : threads > MAX_WORKERS + 1 ? MAX_WORKERS + 1 : threads;
    pthread_mutex_lock(&pool.busy);
    int workers = gomp_parallel ? 0 : threads - 1;
    if (workers != pool.workers) {
        stop_workers();
        start_workers(workers);
    }
    thread_count = gomp_parallel || !workers ? threads : pool.workers + 1;
    pthread_mutex_unlock(&pool.busy);
    return thread_count;
}

EXPORT int tfb_threads(void) { return thread_count; }

/* Take threads from an OpenMP runtime's GOMP_parallel (NULL: back to the library's own pool). */
EXPORT int tfb_use_openmp(void *gomp_parallel_address) {
    int threads = thread_count;
    pthread_mutex_lock(&pool.busy);
    gomp_parallel = (gomp_parallel_fn)gomp_parallel_address;
    pthread_mutex_unlock(&pool.busy);
    return tfb_set_threads(threads);
}

EXPORT int tfb_uses_openmp(void) { return gomp_parallel != NULL; }

/* How long an idle worker of the library's own pool spins before it sleeps, in microseconds. */
EXPORT void tfb_set_spin_us(int us) { spin_ns = us < 0 ? 0 : (int64_t)us * 1000; }

static void team_member(void *unused) {
    (void)unused;
    work();
}

/* Run fn over as many parts as `work` (bytes touched) is worth, with the threads when they are free. */
static void run(part_fn fn, void *ctx, int64_t work) {
    int64_t parts = work / MIN_CHUNK_WORK, most = (int64_t)thread_count * CHUNKS_PER_THREAD;
    parts = parts > most ? most : parts;
    if (thread_count > 1 && parts > 1 && pthread_mutex_trylock(&pool.busy) == 0) {
        if (gomp_parallel) {
            pool.fn = fn;
            pool.ctx = ctx;
            atomic_store(&pool.finished, 0);
            atomic_store(&pool.ticket, (uint64_t)parts << 32);
            gomp_parallel(team_member, NULL, (unsigned)thread_count, 0); /* returns when the team is done */
        } else {
            if (pool.workers < thread_count - 1) start_workers(thread_count - 1); /* first use after a fork */
            if (pool.workers) dispatch(fn, ctx, (int)parts);
            else fn(ctx, 0, 1);
        }
        pthread_mutex_unlock(&pool.busy);
        return;
    }
    fn(ctx, 0, 1);
}

/* The part'th of `parts` near-equal ranges of [0, n), boundaries on multiples of `align`. */
static void range(int64_t n, int64_t align, int part, int parts, int64_t *begin, int64_t *end) {
    int64_t units = (n + align - 1) / align;
    *begin = units * part / parts * align;
    *end = units * (part + 1) / parts * align;
    if (*begin > n) *begin = n;
    if (*end > n) *end = n;
}

/* --------------------------------------------------------------------------------------- matmul */

typedef struct {
    const format_kernels *f;
    const uint8_t *w;
    int64_t stride, N, K, M, nb;
    const float *x, *sums;
    float *y;
} matmul_job;

/* Weight rows dequantized at a time: the activation block is reused over them. A few activation rows (up to
 * FEW_ROWS: continuous batching's decode steps) take FEW_TILE_ROWS at a time instead, whose dequantized
 * floats (4 x K) stay in L1 between the dequantizer's stores and the tile's loads; with so few activation
 * rows there is little reuse of them for larger tiles to gain. Measured (tools/bench_matmul.py --sweep, one
 * thread, Q4_K [3072 x 1024]): 8 rows 0.69 -> 0.57 ms, 4 rows 0.47 -> 0.38 ms; from 24 rows on, no
 * difference beyond the noise. */
#define TILE_ROWS 16
#define FEW_ROWS 16
#define FEW_TILE_ROWS 4

static void matvec_part(void *arg, int part, int parts) {
    const matmul_job *j = arg;
    int64_t begin, end;
    range(j->N, 8, part, parts, &begin, &end);
    if (end > begin) j->f->rows(j->w + begin * j->stride, j->stride, end - begin, j->nb, j->x, j->sums, j->y + begin);
}

/* Per-thread scratch for dequantized rows, kept between calls (pool threads live as long as the process). */
static _Thread_local float *scratch;
static _Thread_local size_t scratch_floats;

static float *scratch_for(size_t floats) {
    if (floats > scratch_floats) {
        free(scratch);
        scratch = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        scratch_floats = scratch ? floats : 0;
    }
    return scratch;
}

/* Several activation rows: dequantize TILE_ROWS weight rows at a time, then dense float dots. The
 * activations go in panels of about PANEL_BYTES, which stay in L2 while every weight row passes over them;
 * the weights are dequantized again for each panel, which costs little next to the multiply-adds. Half of a
 * 2 MiB L2: Q4_K [1024 x 3072], 256 rows, one thread, 19 -> 15 ms against 256 KiB (21 rows a panel). */
#define PANEL_BYTES (1024 * 1024)

/* A later tile's weight rows (from row n), asked for into L2 while this tile multiplies: weights streamed from
 * memory (an output layer) otherwise arrive only when the dequantizer stalls on them, a short tile's worth
 * at a time. Measured two tiles ahead (one thread, Q4_K [151936 x 1024], 4 activation rows): 30 -> 20 ms;
 * no change beyond the noise where the weights stay in cache ([3072 x 1024]). */
static inline void prefetch_rows(const matmul_job *j, int64_t n, int64_t end) {
    int64_t rows = j->M <= FEW_ROWS ? FEW_TILE_ROWS : TILE_ROWS;
    rows = end - n < rows ? end - n : rows;
    if (rows <= 0) return;
    const uint8_t *from = j->w + n * j->stride;
    for (int64_t byte = 0; byte < rows * j->stride; byte += 64) __builtin_prefetch(from + byte, 0, 1);
}

static void matmul_part(void *arg, int part, int parts) {
    const matmul_job *j = arg;
    int64_t begin, end;
    range(j->N, 4, part, parts, &begin, &end);
    if (end <= begin) return;
    float *buf = scratch_for((size_t)(TILE_ROWS * j->K));
    if (!buf) abort(); /* a few pages: nothing sensible is left to do if even that fails */
    int64_t panel = PANEL_BYTES / (4 * j->K);
    panel = panel < 4 ? 4 : panel;
    for (int64_t m = 0; m < j->M; m += panel) {
        int64_t rows_m = j->M - m < panel ? j->M - m : panel;
        int64_t tile_rows = j->M <= FEW_ROWS ? FEW_TILE_ROWS : TILE_ROWS;
        for (int64_t n = begin; n < end; n += tile_rows) {
            int64_t rows = end - n < tile_rows ? end - n : tile_rows;
            for (int64_t r = 0; r < rows; r++) j->f->dequant(j->w + (n + r) * j->stride, j->nb, buf + r * j->K);
            prefetch_rows(j, n + 2 * rows, end);
            active->tile(buf, rows, j->K, j->x + m * j->K, rows_m, j->y + m * j->N + n, j->N);
        }
    }
}

/* Up to MATVEC_ROWS activation rows take one fused matrix-vector product each; formats without one
 * dequantize and tile. Measured with FEW_TILE_ROWS (one thread, [3072 x 1024]): two rows dequantized and
 * tiled take 0.31 ms on Q4_K against two fused products' 0.30, 0.37 against 0.46 on Q6_K. */
#define MATVEC_ROWS 1

/* y[M, N] = x[M, K] . W[N, K]^T for W stored as ggml blocks, `stride` bytes per row. */
EXPORT int tfb_matmul(int type, const uint8_t *w, int64_t stride, int64_t N, int64_t K, const float *x, int64_t M,
                      float *y) {
    const format_kernels *f = format(type);
    if (!f) return ERR_TYPE;
    if (K <= 0 || K % f->block_size || N < 0 || M < 0 || stride < K / f->block_size * f->type_size) return ERR_SHAPE;
    matmul_job job = {f, w, stride, N, K, M, K / f->block_size, x, NULL, y};
    if (M > MATVEC_ROWS || !f->rows) {
        run(matmul_part, &job, N * stride + N * M * K / 8);
        return OK;
    }
    float local[1024], *sums = local;
    int64_t groups = f->sum_group ? K / f->sum_group : 0;
    if (groups > 1024 && !(sums = malloc((size_t)groups * sizeof(float)))) return ERR_MEMORY;
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * K;
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t k = 0; k < f->sum_group; k++) s += xm[g * f->sum_group + k];
            sums[g] = s;
        }
        job.x = xm, job.y = y + m * N, job.sums = sums;
        run(matvec_part, &job, N * stride);
    }
    if (sums != local) free(sums);
    return OK;
}

/* ------------------------------------------------------------------------- 8-bit activations */

/* x[K] rounded to 8 bits per block of `block` values, as llama.cpp's quantize_row_q8_0 / q8_K round it (the
 * scale kept in float32): d = max|x| / 127, q = rint(x * (127 / max|x|)) (0 where the block is all zero),
 * and the sums of q over each run of 16. Returns 0 where x holds a NaN or an infinity, which 8 bits cannot
 * carry: the caller then multiplies in float32 and the NaN or infinity shows in the result as it should. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) /* ifunc */
/* compiled for AVX-512 and AVX2 as well, picked at load time: the loops below vectorise (a prompt's rows are
 * rounded at ~1.3 ns a value otherwise, 1/8 of the products' time) */
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static int quantize_activations(const float *x, int64_t K, int block, int8_t *q, float *d, int16_t *sums) {
    for (int64_t b = 0; b < K / block; b++) {
        const float *xb = x + b * block;
        /* max |x| as the largest bit pattern of |x|: the same order for finite floats, above FLT_MAX's for
         * infinities and NaNs; an integer maximum, which vectorises */
        uint32_t top_bits = 0;
        for (int i = 0; i < block; i++) {
            uint32_t u;
            memcpy(&u, xb + i, 4);
            u &= 0x7FFFFFFFu;
            top_bits = u > top_bits ? u : top_bits;
        }
        if (top_bits > 0x7F7FFFFFu) return 0;
        float top;
        memcpy(&top, &top_bits, 4);
        float inverse = top > 0.0f ? 127.0f / top : 0.0f;
        d[b] = top / 127.0f;
        /* rint for |v| <= 127 without a libm call per value (and so vectorised): adding and subtracting
         * 1.5 * 2^23 rounds to an integer, half to even, as rint does in the default rounding mode */
        for (int i = 0; i < block; i++) {
            float v = xb[i] * inverse;
            q[b * block + i] = (int8_t)(int32_t)((v + 12582912.0f) - 12582912.0f);
        }
    }
    for (int64_t g = 0; g < K / 16; g++) {
        int s = 0;
        for (int i = 0; i < 16; i++) s += q[g * 16 + i];
        sums[g] = (int16_t)s;
    }
    return 1;
}

/* Bytes of memory quantize_row needs for a row of K values rounded in blocks of `block` */
static size_t int8_row_bytes(int64_t K, int block) {
    size_t extra = block == 32 ? (size_t)K + (size_t)K / 2 * sizeof(float) : 0; /* qu, d8, dsum4 */
    return (size_t)K + (size_t)(K / block) * sizeof(float) + (size_t)(K / 16) * sizeof(int16_t) + extra;
}

/* x[K] rounded into `memory` (int8_row_bytes of it, 4-byte aligned) and described by *row; 0 where x holds a
 * NaN or an infinity (quantize_activations) */
static int quantize_row(const float *x, int64_t K, int block, char *memory, int8_row *row) {
    float *d8 = block == 32 ? (float *)memory : NULL, *dsum4 = block == 32 ? d8 + K / 4 : NULL;
    float *d = block == 32 ? dsum4 + K / 4 : (float *)memory;
    int16_t *sums = (int16_t *)(d + K / block);
    int8_t *q = (int8_t *)(sums + K / 16);
    uint8_t *qu = block == 32 ? (uint8_t *)(q + K) : NULL;
    if (!quantize_activations(x, K, block, q, d, sums)) return 0;
    if (block == 32) {
        for (int64_t i = 0; i < K; i++) qu[i] = (uint8_t)(q[i] + 128);
        for (int64_t i = 0; i < K / 4; i++) {
            d8[i] = d[i / 8];
            dsum4[i] = d[i / 8] * (float)(q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
        }
    }
    *row = (int8_row){q, d, sums, qu, d8, dsum4};
    return 1;
}

typedef struct {
    const int8_kernels *f;
    const uint8_t *w;
    int64_t stride, N, nb, M;
    const int8_row *a; /* M activation rows ... */
    float *const *y;   /* ... and their M result rows */
} int8_job;

/* Weight rows a thread takes at a time when more activation rows than one pass of a multi-row kernel keeps
 * in registers (8) meet them: the kernel goes over the tile once per 8 rows, so it stays in L1 / L2. (The
 * kernels prefetch the weights ahead themselves: int8.c, prefetch_ahead.) Such tiles, and the threads'
 * parts, are whole multiples of PANEL_ALIGN rows: the k-quants' many-row products (int8.c, gemm_k) decode
 * panels of 32 weight rows, once per call. */
#define INT8_TILE_BYTES (32 * 1024)
#define PANEL_ALIGN 32
#define INT8_PASS 256 /* activation rows handed to a multi-row kernel per call: a prompt's, or a good part */

static void int8_part(void *arg, int part, int parts) {
    const int8_job *j = arg;
    int64_t begin, end;
    range(j->N, j->M <= 8 ? 8 : PANEL_ALIGN, part, parts, &begin, &end);
    if (end <= begin) return;
    if (!j->f->multi) {
        for (int64_t m = 0; m < j->M; m++)
            j->f->rows(j->w + begin * j->stride, j->stride, end - begin, j->nb, j->a + m, j->y[m] + begin);
        return;
    }
    int64_t tile = j->M <= 8 ? end - begin : (INT8_TILE_BYTES / j->stride + PANEL_ALIGN - 1) / PANEL_ALIGN * PANEL_ALIGN;
    float *out[INT8_PASS];
    for (int64_t n = begin; n < end; n += tile) {
        int64_t rows = end - n < tile ? end - n : tile;
        for (int64_t m = 0; m < j->M; m += INT8_PASS) {
            int64_t count = j->M - m < INT8_PASS ? j->M - m : INT8_PASS;
            for (int64_t i = 0; i < count; i++) out[i] = j->y[m + i] + n;
            j->f->multi(j->w + n * j->stride, j->stride, rows, j->nb, j->a + m, count, out);
        }
    }
}

/* The M activation rows rounded (quantize_row) by the threads, row m into a[m]; a[m].q NULL where row m holds a
 * NaN or an infinity. A prompt's rows: 256 x 1024 values take ~0.1 ms on one thread. */
typedef struct {
    const float *x;
    int64_t K, M;
    int block;
    size_t row8;
    char *rounded;
    int8_row *a;
} quantize_job;

static void quantize_part(void *arg, int part, int parts) {
    const quantize_job *j = arg;
    int64_t begin, end;
    range(j->M, 1, part, parts, &begin, &end);
    for (int64_t m = begin; m < end; m++)
        if (!quantize_row(j->x + m * j->K, j->K, j->block, j->rounded + (size_t)m * j->row8, j->a + m)) j->a[m].q = NULL;
}

/* Formats without a multi-row kernel take up to INT8_ROWS activation rows as one fused product each, as
 * measured before multi-row kernels existed; those with one, up to its multi_rows (int8.c). */
#define INT8_ROWS 2

EXPORT int tfb_int8_rows(int type) {
    const int8_kernels *f = int8_format(type);
    return !f ? 0 : f->multi ? f->multi_rows : INT8_ROWS;
}

/* tfb_matmul with each activation row rounded to 8 bits first (quantize_activations) where the format has
 * such products (tfb_supports_int8) and there are at most INT8_ROWS rows (the format's multi_rows where it has
 * a multi-row kernel); otherwise, and for rows with a NaN or an infinity, exactly tfb_matmul. Up to those
 * counts, a row's result is the same whichever other rows come with it. */
EXPORT int tfb_matmul_int8(int type, const uint8_t *w, int64_t stride, int64_t N, int64_t K, const float *x,
                           int64_t M, float *y) {
    const int8_kernels *f = int8_format(type);
    const format_kernels *ff = format(type);
    if (!f || !ff || M > tfb_int8_rows(type)) return tfb_matmul(type, w, stride, N, K, x, M, y);
    if (K <= 0 || K % f->block || N < 0 || M < 0 || stride < K / ff->block_size * ff->type_size) return ERR_SHAPE;
    /* per activation row: its int8_row, its result row, and its rounded form (quantize_row) */
    size_t row8 = int8_row_bytes(K, f->block);
    size_t bytes = (size_t)M * (sizeof(int8_row) + sizeof(float *) + row8);
    char local[16384] __attribute__((aligned(16))), *buffer = bytes <= sizeof local ? local : malloc(bytes);
    if (!buffer) return ERR_MEMORY;
    int8_row *a = (int8_row *)buffer;
    float **out = (float **)(a + M);
    char *rounded = (char *)(out + M);
    quantize_job rounding = {x, K, M, f->block, row8, rounded, a};
    run(quantize_part, &rounding, M * K * (int64_t)sizeof(float));
    int64_t good = 0;
    int status = OK;
    for (int64_t m = 0; m < M && status == OK; m++) {
        if (a[m].q) {
            a[good] = a[m];
            out[good++] = y + m * N;
        } else {
            status = tfb_matmul(type, w, stride, N, K, x + m * K, 1, y + m * N);
        }
    }
    if (status == OK && good) {
        int8_job job = {f, w, stride, N, K / f->block, good, a, out};
        run(int8_part, &job, N * stride * ((good + 7) / 8) + good * K);
    }
    if (buffer != local) free(buffer);
    return status;
}

/* --------------------------------------------------------------------------------------- experts */

/* A mixture of experts' chosen products in one job: P pairs, pair p the matrix-vector product of
 * activation row p / share with the weights of expert ids[p] (each expert `expert_stride` bytes after
 * the one before). A decoding step's token meets its k experts in one call per projection instead of
 * k, and the threads share the k products' rows; each row's arithmetic is that of tfb_matmul(_int8). */
typedef struct {
    const format_kernels *f;
    const int8_kernels *f8;
    const uint8_t *w;
    int64_t expert_stride, stride, N, K, nb, P, share, groups;
    const int64_t *ids;
    const float *x, *sums; /* sums: `groups` per activation row */
    const int8_row *a;     /* NULL, or per activation row (q NULL: that row is multiplied in float32) */
    float *y;              /* [P, N] */
} experts_job;

static void experts_part(void *arg, int part, int parts) {
    const experts_job *j = arg;
    int64_t begin, end;
    range(j->P * j->N, 8, part, parts, &begin, &end);
    while (begin < end) {
        int64_t p = begin / j->N, r = begin % j->N, stop = (p + 1) * j->N < end ? (p + 1) * j->N : end;
        int64_t row = p / j->share;
        const uint8_t *w = j->w + j->ids[p] * j->expert_stride + r * j->stride;
        if (j->a && j->a[row].q)
            j->f8->rows(w, j->stride, stop - begin, j->K / j->f8->block, j->a + row, j->y + begin);
        else
            j->f->rows(w, j->stride, stop - begin, j->nb, j->x + row * j->K, j->sums + row * j->groups, j->y + begin);
        begin = stop;
    }
}

/* y[p, :] = W[ids[p]] . x[p / share] for p < P: W [experts, N, K] stored as ggml blocks, rows `stride`
 * bytes apart and experts `expert_stride`; x [P / share, K]. int8: round the activation rows to 8 bits
 * first where the format has such products (as tfb_matmul_int8). ERR_TYPE for formats without a fused
 * matrix-vector product: the caller takes another path. */
EXPORT int tfb_matmul_experts(int type, const uint8_t *w, int64_t experts, int64_t expert_stride, int64_t stride,
                              int64_t N, int64_t K, int int8, const int64_t *ids, int64_t P, const float *x,
                              int64_t share, float *y) {
    const format_kernels *f = format(type);
    if (!f || !f->rows) return ERR_TYPE;
    if (K <= 0 || K % f->block_size || N < 0 || P < 0 || share < 1 || P % share ||
        stride < K / f->block_size * f->type_size || expert_stride < N * stride)
        return ERR_SHAPE;
    for (int64_t p = 0; p < P; p++)
        if (ids[p] < 0 || ids[p] >= experts) return ERR_SHAPE;
    const int8_kernels *f8 = int8 ? int8_format(type) : NULL; /* its block is the format's: K is a multiple */
    int64_t rows = P / share, groups = f->sum_group ? K / f->sum_group : 0;
    /* per activation row: its sums, and with 8 bits its rounded values, scales and sums of 16 */
    size_t row8 = f8 ? int8_row_bytes(K, f8->block) : 0;
    size_t bytes = (size_t)rows * ((size_t)groups * sizeof(float) + (f8 ? sizeof(int8_row) + row8 : 0));
    char local[32768] __attribute__((aligned(16))), *buffer = bytes <= sizeof local ? local : malloc(bytes);
    if (!buffer) return ERR_MEMORY;
    int8_row *a = f8 ? (int8_row *)buffer : NULL;
    float *sums = (float *)(buffer + (f8 ? (size_t)rows * sizeof(int8_row) : 0));
    char *rounded = (char *)(sums + rows * groups);
    for (int64_t m = 0; m < rows; m++) {
        const float *xm = x + m * K;
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t k = 0; k < f->sum_group; k++) s += xm[g * f->sum_group + k];
            sums[m * groups + g] = s;
        }
        if (!a) continue;
        if (!quantize_row(xm, K, f8->block, rounded + (size_t)m * row8, a + m)) a[m].q = NULL;
    }
    experts_job job = {f, f8, w, expert_stride, stride, N, K, K / f->block_size, P, share, groups, ids, x, sums, a, y};
    run(experts_part, &job, P * N * stride);
    if (buffer != local) free(buffer);
    return OK;
}

/* ----------------------------------------------------------------------------------- dequantize */

typedef struct {
    const format_kernels *f;
    const uint8_t *blocks;
    int64_t nblocks;
    float *out;
} dequant_job;

static void dequant_part(void *arg, int part, int parts) {
    const dequant_job *j = arg;
    int64_t begin, end;
    range(j->nblocks, 64, part, parts, &begin, &end);
    if (end > begin)
        j->f->dequant(j->blocks + begin * j->f->type_size, end - begin, j->out + begin * j->f->block_size);
}

/* out[nblocks * block_size] = the float32 weights of `nblocks` consecutive blocks (bit-exact). */
EXPORT int tfb_dequantize(int type, const uint8_t *blocks, int64_t nblocks, float *out) {
    const format_kernels *f = format(type);
    if (!f) return ERR_TYPE;
    if (nblocks < 0) return ERR_SHAPE;
    dequant_job job = {f, blocks, nblocks, out};
    run(dequant_part, &job, nblocks * (f->type_size + 4 * f->block_size));
    return OK;
}

/* ------------------------------------------------------------------------------------ attention */

typedef struct {
    const float *q, *sinks;
    const uint8_t *k, *v;
    int64_t heads, kv_heads, rows, d, dv, s, k_head, k_row, v_head, v_row;
    int half;
    float scale, softcap;
    float *out;
    int failed;
} attend_job;

static void attend_part(void *arg, int part, int parts) {
    attend_job *j = arg;
    int64_t begin, end, bytes = j->half ? 2 : 4;
    range(j->heads, 1, part, parts, &begin, &end);
    if (end <= begin) return;
    int64_t need = j->rows * j->s;
    float local[4096], *scores = need <= 4096 ? local : malloc((size_t)need * sizeof(float));
    if (!scores) {
        j->failed = 1;
        return;
    }
    for (int64_t h = begin; h < end; h++)
        active->attend(j->q + h * j->rows * j->d, j->rows, j->d, j->k + h * j->k_head * bytes, j->k_row,
                       j->v + h * j->v_head * bytes, j->v_row, j->dv, j->s, j->half, j->scale, j->softcap,
                       j->sinks ? j->sinks + (h % j->kv_heads) * j->rows : NULL, scores, j->out + h * j->rows * j->dv);
    if (scores != local) free(scores);
}

/* One decoding step's attention: for each of batch * kv_heads KV heads h (heads of a batch row
 * consecutive), out[h] ([rows, dv], dense) = attention of q[h] ([rows, d], dense: the query heads that
 * share KV head h) over keys k + h * k_head and values v + h * v_head (elements, float16 where half, else
 * float32), rows k_row / v_row elements apart, s of them. sinks: a logit per query head
 * ([kv_heads * rows]) or NULL; softcap 0: none. */
EXPORT int tfb_attend(const float *q, int64_t batch, int64_t kv_heads, int64_t rows, int64_t d, const void *k,
                      int64_t k_head, int64_t k_row, const void *v, int64_t v_head, int64_t v_row, int64_t dv,
                      int64_t s, int half, float scale, float softcap, const float *sinks, float *out) {
    if (batch < 1 || kv_heads < 1 || rows < 1 || d < 1 || dv < 1 || s < 1) return ERR_SHAPE;
    if (!active) pick_isa();
    attend_job job = {q, sinks, k, v, batch * kv_heads, kv_heads, rows, d, dv, s, k_head, k_row, v_head, v_row,
                      half != 0, scale, softcap, out, 0};
    run(attend_part, &job, job.heads * s * (d + dv) * (half ? 2 : 4));
    return job.failed ? ERR_MEMORY : OK;
}

/* --------------------------------------------------------------------------------------- RMS norm */

typedef struct {
    const float *x, *w;
    int64_t rows, n;
    float eps;
    float *y;
} rms_norm_job;

static void rms_norm_part(void *arg, int part, int parts) {
    const rms_norm_job *j = arg;
    int64_t begin, end;
    range(j->rows, 1, part, parts, &begin, &end);
    if (end > begin) active->rms_norm(j->x + begin * j->n, end - begin, j->n, j->w, j->eps, j->y + begin * j->n);
}

/* y = x / sqrt(mean(x^2) + eps) * w over each of `rows` dense rows of n floats (w NULL: no weight). */
EXPORT int tfb_rms_norm(const float *x, int64_t rows, int64_t n, const float *w, float eps, float *y) {
    if (rows < 0 || n < 1) return ERR_SHAPE;
    if (!active) pick_isa();
    rms_norm_job job = {x, w, rows, n, eps, y};
    run(rms_norm_part, &job, rows * n * 8);
    return OK;
}

/* ------------------------------------------------------------------------------------------ rope */

/* Rotary position embedding: y = x with the leading `dims` of each head rotated, for x [tokens, heads,
 * head_dim] (dense float32) and cos, sin [tokens, dims / 2]. Pairs are (i, i + dims / 2) ("half", GGML's
 * NEOX) or (2i, 2i + 1) ("adjacent"): (a, b) -> (a cos - b sin, a sin + b cos), each product and sum rounded
 * to float32 as torch rounds them (no fused multiply-add: -ffp-contract=off). */
EXPORT int tfb_rope(const float *x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t dims, const float *cos,
                    const float *sin, int adjacent, float *y) {
    if (tokens < 0 || heads < 1 || dims < 2 || dims % 2 || dims > head_dim) return ERR_SHAPE;
    int64_t half = dims / 2, step = adjacent ? 1 : half, stride = adjacent ? 2 : 1;
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * half, *s = sin + t * half;
        for (int64_t h = 0; h < heads; h++) {
            const float *xh = x + (t * heads + h) * head_dim;
            float *yh = y + (t * heads + h) * head_dim;
            for (int64_t i = 0; i < half; i++) {
                float a = xh[i * stride], b = xh[i * stride + step];
                float ac = a * c[i], bs = b * s[i], as = a * s[i], bc = b * c[i];
                yh[i * stride] = ac - bs;
                yh[i * stride + step] = as + bc;
            }
            for (int64_t i = dims; i < head_dim; i++) yh[i] = xh[i];
        }
    }
    return OK;
}
