/*
 * laquant's ggml oracle: calls ggml's own quantizer (ggml_quantize_chunk) and
 * dequantizer (the type traits' to_float) so laquant's Rust kernels can be
 * compared with ggml bit for bit.
 *
 * Modes:
 *   oracle golden OUTDIR
 *       Regenerates the golden vectors (fixtures/golden/<TYPE>.bin) for every
 *       type laquant writes. The inputs are not stored: they come from the
 *       deterministic generator below, which src/quant/golden.rs mirrors using
 *       only exactly rounded IEEE operations (+ - * /, int->float), so both
 *       sides build the same floats. File format: see src/quant/golden.rs.
 *   oracle quant TYPE WIDTH IN.f32 OUT.bin OUT.f32 [IMATRIX.f32]
 *       Quantizes raw little-endian f32 rows of WIDTH with ggml_quantize_chunk,
 *       writes the bytes and their to_float dequantization.
 *   oracle case ID OUT.f32 [OUT_IMATRIX.f32]
 *       Writes the inputs of golden case ID (for debugging).
 *   oracle bench TYPE WIDTH ROWS ITERS THREADS [imatrix]
 *       Times ggml_quantize_chunk over ROWS rows of normal data split over
 *       THREADS threads; prints "TYPE THREADS GB/s" (GB of f32 input per second).
 *
 * Built by scripts/gen-golden.sh / scripts/bench.sh quant against
 * libggml-base.so from the llama.cpp build.
 */
#include "ggml.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------- deterministic inputs (mirrored by src/quant/golden.rs) ---------- */

static uint64_t sm_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* uniform in [0, 1): 24 random bits, exact */
static float unif(uint64_t *s) { return (float)(sm_next(s) >> 40) * 0x1p-24f; }

/* approximately N(0,1): Irwin-Hall sum of 4 uniforms, fixed evaluation order */
static float gauss(uint64_t *s) {
    float a = unif(s);
    float b = unif(s);
    float c = unif(s);
    float d = unif(s);
    float sum = a + b;
    sum = sum + c;
    sum = sum + d;
    return (sum - 2.0f) * 1.7320508f;
}

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

enum { DIST_NORMAL = 0, DIST_HEAVY = 1, DIST_OUTLIER = 2, DIST_HOSTILE = 3 };
#define N_HOSTILE 16

typedef struct { int dist; int width; int rows; int pattern; } gcase;

static const int WIDTHS[4][2] = { {256, 2}, {512, 1}, {4096, 1}, {11008, 1} };

static int n_cases(void) { return 3 * 4 + N_HOSTILE; }

static gcase get_case(int id) {
    gcase c;
    if (id < 12) {
        c.dist = id / 4;
        c.width = WIDTHS[id % 4][0];
        c.rows = WIDTHS[id % 4][1];
        c.pattern = 0;
    } else {
        c.dist = DIST_HOSTILE;
        c.width = 256;
        c.rows = 1;
        c.pattern = id - 12;
    }
    return c;
}

static void hostile_row(int p, uint64_t *s, float *x, int n) {
    for (int j = 0; j < n; ++j) {
        float g = gauss(s);
        float v;
        switch (p) {
            case 0: v = 0.0f; break;                                   /* all zeros */
            case 1: v = 0.5f; break;                                   /* constant */
            case 2: v = -3.0f; break;                                  /* negative constant */
            case 3: v = j == 37 ? 1.0e4f : g * 0.01f; break;           /* one huge value */
            case 4: v = j == 200 ? -3.0e38f : g * 0.01f; break;        /* one value near FLT_MAX */
            case 5: v = g * bits_f32(0x00010000u); break;              /* subnormals (x 2^-133) */
            case 6: v = g * 0x1p-60f; break;                           /* below GROUP_MAX_EPS */
            case 7: v = g * 0x1p-40f; break;                           /* tiny but above it */
            case 8: v = (j & 1 ? -1.0f : 1.0f) * (1.0f + (float)(j % 7) * 0.25f); break; /* alternating */
            case 9: v = (float)((j % 32) - 16) * 0.5f; break;          /* rounding ties */
            case 10: v = unif(s) * 0.1f + 0.05f; break;                /* all positive */
            case 11: v = -(unif(s) * 0.1f) - 0.05f; break;             /* all negative */
            case 12: v = (j == 5 || j == 100) ? bits_f32(0x7fc00000u) : g * 0.02f; break; /* NaN */
            case 13: v = j == 70 ? INFINITY : j == 180 ? -INFINITY : g * 0.02f; break;   /* +-Inf */
            case 14: v = (j % 32) == 3 ? g : 0.0f; break;              /* one nonzero per block */
            default: {                                                  /* blocks of very different scale */
                int e = (j / 32) * 6;
                float sc = 0x1p-20f;
                for (int k = 0; k < e; ++k) sc = sc * 2.0f;
                v = g * sc;
            } break;
        }
        x[j] = v;
    }
}

/* Fills rows*width inputs and width importance weights for case id. */
static void make_case(int id, float *x, float *imat) {
    gcase c = get_case(id);
    uint64_t s = 0x5EEDULL + (uint64_t)id * 0x100000001B3ULL;
    int n = c.width * c.rows;
    if (c.dist == DIST_HOSTILE) {
        hostile_row(c.pattern, &s, x, n);
    } else {
        for (int j = 0; j < n; ++j) {
            float g = gauss(&s);
            float v;
            if (c.dist == DIST_NORMAL) {
                v = g * 0.02f;
            } else if (c.dist == DIST_HEAVY) {
                float u = unif(&s);
                v = g / (u + 0.05f) * 0.01f;
            } else {
                uint64_t r = sm_next(&s);
                v = g * 0.02f;
                if (r % 64 == 0) v = v * 30.0f;
            }
            x[j] = v;
        }
    }
    uint64_t t = 0x1A7E11ULL + (uint64_t)id * 0x9E3779B97F4A7C15ULL;
    for (int j = 0; j < c.width; ++j) {
        float u = unif(&t);
        float w = unif(&t);
        imat[j] = u * u * w * 50.0f + 0.001f;
    }
}

/* ---------- helpers ---------- */

static uint64_t fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; ++i) { h ^= b[i]; h *= 0x100000001b3ULL; }
    return h;
}

static int type_by_name(const char *name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const struct ggml_type_traits *tr = ggml_get_type_traits((enum ggml_type)t);
        if (tr && tr->type_name && strcasecmp(tr->type_name, name) == 0 && tr->blck_size > 0) return t;
    }
    fprintf(stderr, "oracle: unknown ggml type '%s'\n", name);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) { fprintf(stderr, "oracle: out of memory\n"); exit(1); }
    return p;
}

static void put32(FILE *f, uint32_t v) { fwrite(&v, 4, 1, f); }
static void put64(FILE *f, uint64_t v) { fwrite(&v, 8, 1, f); }

/* quantize with ggml and dequantize with to_float */
static size_t run(int t, const float *x, int width, int rows, const float *imat, uint8_t **q, float **deq) {
    size_t rs = ggml_row_size((enum ggml_type)t, width);
    *q = xmalloc(rs * rows);
    *deq = xmalloc(sizeof(float) * (size_t)width * rows);
    ggml_quantize_init((enum ggml_type)t);
    size_t got = ggml_quantize_chunk((enum ggml_type)t, x, *q, 0, rows, width, imat);
    if (got != rs * rows) { fprintf(stderr, "oracle: size mismatch\n"); exit(1); }
    ggml_get_type_traits((enum ggml_type)t)->to_float(*q, *deq, (int64_t)width * rows);
    return got;
}

/* run() in a child process: ggml aborts (GGML_ASSERT) on some inputs of the i-quants (NaN rows,
 * or no importance weights where ggml_quantize_requires_imatrix), and the golden file records
 * that instead of dying. Returns 0 with *q / *deq filled, or 1 when ggml aborted. */
static int run_guarded(int t, const float *x, int width, int rows, const float *imat, uint8_t **q, float **deq,
                       size_t *nb) {
    size_t rs = ggml_row_size((enum ggml_type)t, width);
    size_t nq = rs * rows, nd = sizeof(float) * (size_t)width * rows;
    uint8_t *shared = mmap(NULL, nq + nd, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) { perror("mmap"); exit(1); }
    ggml_quantize_init((enum ggml_type)t); /* the grids are built once, in the parent */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(1); }
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) { dup2(devnull, 1); dup2(devnull, 2); } /* ggml's abort message and backtrace */
        uint8_t *cq; float *cd;
        run(t, x, width, rows, imat, &cq, &cd);
        memcpy(shared, cq, nq);
        memcpy(shared + nq, cd, nd);
        _exit(0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) { perror("waitpid"); exit(1); }
    *nb = nq;
    *q = xmalloc(nq);
    *deq = xmalloc(nd);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) {
        memcpy(*q, shared, nq);
        memcpy(*deq, shared + nq, nd);
    }
    munmap(shared, nq + nd);
    return ok ? 0 : 1;
}

/* ---------- golden ---------- */

static const char *GOLDEN_TYPES[] = {
    "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
    "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs",
    "tq1_0", "tq2_0", "mxfp4", "q1_0", "q2_0",
    "iq2_xxs", "iq2_xs", "iq3_xxs", "iq3_s",
    "iq2_s", "iq1_s", "iq1_m", "nvfp4",
};

/* cases whose quantized bytes are stored in full; the rest store hashes */
#define FULL_LIMIT 1024

static int golden(const char *dir) {
    int nt = sizeof(GOLDEN_TYPES) / sizeof(GOLDEN_TYPES[0]);
    for (int ti = 0; ti < nt; ++ti) {
        int t = type_by_name(GOLDEN_TYPES[ti]);
        const char *tn = ggml_type_name((enum ggml_type)t);
        char path[4096];
        char up[64];
        size_t k = 0;
        for (; tn[k] && k < sizeof(up) - 1; ++k) up[k] = (tn[k] >= 'a' && tn[k] <= 'z') ? tn[k] - 32 : tn[k];
        up[k] = 0;
        snprintf(path, sizeof(path), "%s/%s.bin", dir, up);
        FILE *f = fopen(path, "wb");
        if (!f) { perror(path); return 1; }
        int is_float = t == GGML_TYPE_F16 || t == GGML_TYPE_BF16;
        int nvar = is_float ? 1 : 2;
        fwrite("LQGOLD1\0", 8, 1, f);
        put32(f, (uint32_t)t);
        put32(f, (uint32_t)(n_cases() * nvar));
        for (int id = 0; id < n_cases(); ++id) {
            gcase c = get_case(id);
            size_t n = (size_t)c.width * c.rows;
            float *x = xmalloc(n * sizeof(float));
            float *im = xmalloc((size_t)c.width * sizeof(float));
            make_case(id, x, im);
            for (int v = 0; v < nvar; ++v) {
                uint8_t *q; float *deq;
                size_t nb;
                int aborted = run_guarded(t, x, c.width, c.rows, v ? im : NULL, &q, &deq, &nb);
                int full = n <= FULL_LIMIT && !aborted;
                put32(f, (uint32_t)id);
                put32(f, (uint32_t)v | ((uint32_t)full << 8) | ((uint32_t)aborted << 9));
                put32(f, (uint32_t)c.width);
                put32(f, (uint32_t)c.rows);
                put64(f, fnv1a(x, n * sizeof(float)));
                put64(f, v ? fnv1a(im, (size_t)c.width * sizeof(float)) : 0);
                put32(f, (uint32_t)nb);
                put64(f, fnv1a(q, nb));
                put64(f, fnv1a(deq, n * sizeof(float)));
                if (full) fwrite(q, 1, nb, f);
                free(q); free(deq);
            }
            free(x); free(im);
        }
        fclose(f);
    }
    return 0;
}

/* ---------- raw file mode ---------- */

static float *read_f32(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *x = xmalloc((size_t)len);
    if (fread(x, 1, (size_t)len, f) != (size_t)len) { perror(path); exit(1); }
    fclose(f);
    *n = (size_t)len / 4;
    return x;
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

/* ---------- bench ---------- */

typedef struct { int t; const float *x; uint8_t *q; int width; int rows; const float *im; } job;

static void *bench_worker(void *arg) {
    job *j = arg;
    ggml_quantize_chunk((enum ggml_type)j->t, j->x, j->q, 0, j->rows, j->width, j->im);
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench(int t, int width, int rows, int iters, int threads, int use_im) {
    size_t n = (size_t)width * rows;
    float *x = xmalloc(n * sizeof(float));
    float *im = xmalloc((size_t)width * sizeof(float));
    uint64_t s = 42;
    for (size_t i = 0; i < n; ++i) x[i] = gauss(&s) * 0.02f;
    for (int i = 0; i < width; ++i) im[i] = unif(&s) + 0.01f;
    size_t rs = ggml_row_size((enum ggml_type)t, width);
    uint8_t *q = xmalloc(rs * rows);
    ggml_quantize_init((enum ggml_type)t);
    pthread_t th[256];
    job jobs[256];
    if (threads > 256) threads = 256;
    double best = 1e30;
    for (int it = 0; it < iters; ++it) {
        double t0 = now();
        int r0 = 0;
        for (int k = 0; k < threads; ++k) {
            int r1 = (int)((long)rows * (k + 1) / threads);
            jobs[k] = (job){ t, x + (size_t)r0 * width, q + (size_t)r0 * rs, width, r1 - r0, use_im ? im : NULL };
            r0 = r1;
            pthread_create(&th[k], NULL, bench_worker, &jobs[k]);
        }
        for (int k = 0; k < threads; ++k) pthread_join(th[k], NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("%s %d %.6f\n", ggml_type_name((enum ggml_type)t), threads, (double)n * 4 / best / 1e9);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "golden") == 0) return golden(argv[2]);
    if (argc >= 7 && strcmp(argv[1], "quant") == 0) {
        int t = type_by_name(argv[2]);
        int width = atoi(argv[3]);
        size_t n, ni = 0;
        float *x = read_f32(argv[4], &n);
        float *im = argc >= 8 ? read_f32(argv[7], &ni) : NULL;
        if (width <= 0 || n % (size_t)width || (im && ni != (size_t)width)) {
            fprintf(stderr, "oracle: bad shape\n");
            return 1;
        }
        uint8_t *q; float *deq;
        size_t nb = run(t, x, width, (int)(n / width), im, &q, &deq);
        write_file(argv[5], q, nb);
        write_file(argv[6], deq, n * sizeof(float));
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "case") == 0) {
        int id = atoi(argv[2]);
        if (id < 0 || id >= n_cases()) { fprintf(stderr, "oracle: no case %d\n", id); return 1; }
        gcase c = get_case(id);
        size_t n = (size_t)c.width * c.rows;
        float *x = xmalloc(n * sizeof(float));
        float *im = xmalloc((size_t)c.width * sizeof(float));
        make_case(id, x, im);
        write_file(argv[3], x, n * sizeof(float));
        if (argc >= 5) write_file(argv[4], im, (size_t)c.width * sizeof(float));
        return 0;
    }
    if (argc >= 7 && strcmp(argv[1], "bench") == 0) {
        return bench(type_by_name(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                     argc >= 8 && strcmp(argv[7], "imatrix") == 0);
    }
    fprintf(stderr,
            "usage: oracle golden OUTDIR\n"
            "       oracle quant TYPE WIDTH IN.f32 OUT.bin OUT.f32 [IMATRIX.f32]\n"
            "       oracle case ID OUT.f32 [OUT_IMATRIX.f32]\n"
            "       oracle bench TYPE WIDTH ROWS ITERS THREADS [imatrix]\n");
    return 2;
}
