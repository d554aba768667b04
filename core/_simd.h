/* The C side of the scoring kernels (core/_scoring.pyx includes it: `cdef extern from "_simd.h"`).
 *
 * EDGEWISE_PREFETCH(p): a software prefetch for reading (a no-op where the compiler has no builtin).
 *
 * Half-precision blocked scan (edgewise.core.scoring.half_index): rows are grouped 8 at a time and each
 * group is stored dimension-major in IEEE binary16, [n_blocks, d, 8], so one group's 8 scores are the 8
 * lanes of one vector: per dimension, convert 8 halves to floats and multiply-add them by query[j], with
 * no horizontal sums. Four groups go through the loop together, each with two partial sums (even and odd
 * j): eight independent multiply-add chains hide the instruction latency. The scan reads half the bytes
 * of the float32 matrix, which matters because the matrix rarely stays in L2 between requests. On
 * x86-64 CPUs with AVX2, FMA and F16C (checked once at run time) an intrinsics version runs; elsewhere a
 * portable one converts halves in software (`ew_portable_only` = 1 forces it: set_portable in
 * _scoring.pyx, for tests). `ew_ge8` compares 8 scores with a threshold and returns one bit per lane:
 * top-k scans skip whole groups of 8 that cannot enter the heap with one test.
 *
 * Everything here is static: the header belongs to the one module that includes it. The build compiles
 * it with that module's flags (setup.py: -O3 -ffast-math, no -march unless EDGEWISE_NATIVE=1); the
 * AVX2/FMA/F16C code is enabled per function (target attribute), so the module stays portable.
 */
#ifndef EDGEWISE_SIMD_H
#define EDGEWISE_SIMD_H

#include <Python.h>  /* Py_ssize_t */
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define EDGEWISE_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define EDGEWISE_PREFETCH(p) ((void)(p))
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#if defined(__GNUC__) || defined(__clang__)
typedef float ew_v8 __attribute__((vector_size(32)));
typedef int32_t ew_i8 __attribute__((vector_size(32)));
static inline __attribute__((always_inline)) ew_v8 ew_load8(const float* p) { ew_v8 v; memcpy(&v, p, sizeof v); return v; }
static inline __attribute__((always_inline)) void ew_store8(float* p, ew_v8 v) { memcpy(p, &v, sizeof v); }

#define ew_ctz(x) ((Py_ssize_t)__builtin_ctz(x))
#if defined(__x86_64__)
/* SSE2 is part of x86-64: two compares and two movemasks. (GCC turns the generic version below
   into eight scalar compares and shifts, which cost about as much as the half scan's arithmetic.) */
#include <emmintrin.h>
static inline unsigned ew_ge8(const float* s, float thr) {
    const __m128 t = _mm_set1_ps(thr);
    const unsigned lo = (unsigned)_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(s), t));
    const unsigned hi = (unsigned)_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(s + 4), t));
    return lo | (hi << 4);
}
#else
static inline unsigned ew_ge8(const float* s, float thr) {
    ew_v8 v = ew_load8(s);
    ew_v8 t = {thr, thr, thr, thr, thr, thr, thr, thr};
    ew_i8 ge = (ew_i8)(v >= t);
    unsigned bits = 0;
    for (int l = 0; l < 8; l++) bits |= (ge[l] != 0) << l;
    return bits;
}
#endif
#else
static inline Py_ssize_t ew_ctz(unsigned x) { Py_ssize_t n = 0; while (!(x & 1u)) { x >>= 1; n++; } return n; }
static inline unsigned ew_ge8(const float* s, float thr) {
    unsigned bits = 0;
    for (int l = 0; l < 8; l++) bits |= (s[l] >= thr) << l;
    return bits;
}
#endif

/* Half-precision blocked scores: the same [n_blocks, d, 8] layout holding IEEE binary16 bits. */
static inline float ew_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float out;
    if (exp == 0) {
        out = (float)man * (1.0f / 16777216.0f);  /* zero or subnormal: man * 2^-24 */
        memcpy(&bits, &out, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    memcpy(&out, &bits, 4);
    return out;
}

static void ew_half_scores_generic(const uint16_t* blocks, const float* q, Py_ssize_t d,
                                   Py_ssize_t n_blocks, float* out) {
    for (Py_ssize_t b = 0; b < n_blocks; b++) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const uint16_t* p = blocks + b * d * 8;
        for (Py_ssize_t j = 0; j < d; j++)
            for (int l = 0; l < 8; l++) acc[l] += ew_h2f(p[j * 8 + l]) * q[j];
        memcpy(out + b * 8, acc, sizeof acc);
    }
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(EDGEWISE_NO_CLONES)
#include <immintrin.h>
#include <cpuid.h>
#define EW_HAVE_V3 1
__attribute__((target("avx2,fma,f16c")))
static void ew_half_scores_v3(const uint16_t* blocks, const float* q, Py_ssize_t d,
                              Py_ssize_t n_blocks, float* out) {
    const Py_ssize_t stride = d * 8;
    Py_ssize_t b = 0, j;
    #define EW_H8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p)))
    for (; b + 4 <= n_blocks; b += 4) {
        const uint16_t* p0 = blocks + b * stride;
        const uint16_t* p1 = p0 + stride;
        const uint16_t* p2 = p1 + stride;
        const uint16_t* p3 = p2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0;
        for (j = 0; j + 2 <= d; j += 2) {
            const __m256 qa = _mm256_set1_ps(q[j]), qb = _mm256_set1_ps(q[j + 1]);
            a0 = _mm256_fmadd_ps(EW_H8(p0 + j * 8), qa, a0); c0 = _mm256_fmadd_ps(EW_H8(p0 + j * 8 + 8), qb, c0);
            a1 = _mm256_fmadd_ps(EW_H8(p1 + j * 8), qa, a1); c1 = _mm256_fmadd_ps(EW_H8(p1 + j * 8 + 8), qb, c1);
            a2 = _mm256_fmadd_ps(EW_H8(p2 + j * 8), qa, a2); c2 = _mm256_fmadd_ps(EW_H8(p2 + j * 8 + 8), qb, c2);
            a3 = _mm256_fmadd_ps(EW_H8(p3 + j * 8), qa, a3); c3 = _mm256_fmadd_ps(EW_H8(p3 + j * 8 + 8), qb, c3);
        }
        if (j < d) {
            const __m256 qa = _mm256_set1_ps(q[j]);
            a0 = _mm256_fmadd_ps(EW_H8(p0 + j * 8), qa, a0); a1 = _mm256_fmadd_ps(EW_H8(p1 + j * 8), qa, a1);
            a2 = _mm256_fmadd_ps(EW_H8(p2 + j * 8), qa, a2); a3 = _mm256_fmadd_ps(EW_H8(p3 + j * 8), qa, a3);
        }
        _mm256_storeu_ps(out + b * 8, _mm256_add_ps(a0, c0));
        _mm256_storeu_ps(out + b * 8 + 8, _mm256_add_ps(a1, c1));
        _mm256_storeu_ps(out + b * 8 + 16, _mm256_add_ps(a2, c2));
        _mm256_storeu_ps(out + b * 8 + 24, _mm256_add_ps(a3, c3));
    }
    for (; b < n_blocks; b++) {
        const uint16_t* p0 = blocks + b * stride;
        __m256 a0 = _mm256_setzero_ps();
        for (j = 0; j < d; j++) a0 = _mm256_fmadd_ps(EW_H8(p0 + j * 8), _mm256_set1_ps(q[j]), a0);
        _mm256_storeu_ps(out + b * 8, a0);
    }
    #undef EW_H8
}

static int ew_v3_supported(void) {
    static int known = -1;  /* a benign race: every thread computes the same answer */
    if (known < 0) {
        unsigned a, b, c, d;
        int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
        __builtin_cpu_init();
        known = f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#endif

static int ew_portable_only = 0;  /* set by set_portable(True), for tests */
static void ew_half_scores(const uint16_t* blocks, const float* q, Py_ssize_t d,
                           Py_ssize_t n_blocks, float* out) {
#ifdef EW_HAVE_V3
    if (!ew_portable_only && ew_v3_supported()) { ew_half_scores_v3(blocks, q, d, n_blocks, out); return; }
#endif
    ew_half_scores_generic(blocks, q, d, n_blocks, out);
}

/* Int8 blocked scan (edgewise.core.scoring.int8_index, topk_int8_kernel in _scoring.pyx): each row is
 * stored as unsigned bytes u = x~ + 128 with x ~= s_r * x~, |x~| <= 127, grouped 8 rows at a time and
 * 4 dimensions at a time: a block is [groups, 8 rows, 4 dims] bytes, so 32 bytes hold 4 dimensions of 8
 * rows, one 256-bit register. The query is quantized per call to signed bytes q^ (q ~= s_q * q^); one
 * `vpdpbusd` per group adds u . q^ over the 4 dimensions into each row's int32 lane, and the caller
 * subtracts 128 * sum(q^) (the same for every row) to get x~ . q^ exactly. Three code paths give the same
 * integers: AVX-VNNI (`_mm256_dpbusd_avx_epi32`), AVX2 (`_mm256_maddubs_epi16` + `_mm256_madd_epi16`,
 * which needs |q^| <= 63 so a pair of u8 x s8 products cannot saturate int16: 2 * 255 * 63 < 32767),
 * and portable C. `ew_i8_level()` says which one runs (2, 1, 0), checked once at run time; the caller
 * quantizes the query to `ew_i8_qmax(level)` levels. `ew_i8_forced` >= 0 forces a level (tests). */
static int ew_i8_forced = -1;

static void ew_i8_dots_generic(const uint8_t* blocks, const int8_t* q, Py_ssize_t groups,
                               Py_ssize_t n_blocks, int32_t* out) {
    for (Py_ssize_t b = 0; b < n_blocks; b++) {
        const uint8_t* p = blocks + b * groups * 32;
        int32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (Py_ssize_t g = 0; g < groups; g++)
            for (int l = 0; l < 8; l++)
                for (int t = 0; t < 4; t++) acc[l] += (int32_t)p[g * 32 + l * 4 + t] * (int32_t)q[g * 4 + t];
        memcpy(out + b * 8, acc, sizeof acc);
    }
}

#ifdef EW_HAVE_V3
static inline int32_t ew_load_i32(const int8_t* p) { int32_t v; memcpy(&v, p, 4); return v; }

/* Per 8-row block the approximate score's upper bound hi = A + B (see ew_i8_chunk) from the int32 dots
 * in `acc`, stored, and the lanes with hi >= limit as a bit mask. */
#define EW_I8_FINISH(acc, bb)                                                                           \
    do {                                                                                                \
        const __m256 sc = _mm256_loadu_ps(scale + (bb) * 8);                                            \
        const __m256 a = _mm256_mul_ps(sc, _mm256_mul_ps(vsq, _mm256_cvtepi32_ps(_mm256_sub_epi32((acc), vcorr)))); \
        const __m256 bnd = _mm256_fmadd_ps(sc, vk, _mm256_fmadd_ps(_mm256_loadu_ps(tl1 + (bb) * 8), vc2, vc0)); \
        const __m256 h = _mm256_add_ps(a, bnd);                                                         \
        _mm256_storeu_ps(hi + (bb) * 8, h);                                                             \
        masks[bb] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(h, vlim, _CMP_GE_OQ));                    \
    } while (0)

/* Four blocks at a time: four independent accumulator chains hide the instruction latency. */
#define EW_I8_BODY(MAC)                                                                                 \
    const Py_ssize_t stride = groups * 32;                                                              \
    const __m256i vcorr = _mm256_set1_epi32(corr);                                                      \
    const __m256 vsq = _mm256_set1_ps(sq), vk = _mm256_set1_ps(big_k), vc2 = _mm256_set1_ps(c2);        \
    const __m256 vc0 = _mm256_set1_ps(c0), vlim = _mm256_set1_ps(limit);                                \
    Py_ssize_t b = 0, g;                                                                                \
    for (; b + 4 <= n_blocks; b += 4) {                                                                 \
        const uint8_t* p0 = blocks + b * stride;                                                        \
        const uint8_t* p1 = p0 + stride;                                                                \
        const uint8_t* p2 = p1 + stride;                                                                \
        const uint8_t* p3 = p2 + stride;                                                                \
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;                                 \
        for (g = 0; g < groups; g++) {                                                                  \
            const __m256i qv = _mm256_set1_epi32(ew_load_i32(q + g * 4));                               \
            a0 = MAC(a0, _mm256_loadu_si256((const __m256i*)(p0 + g * 32)), qv);                        \
            a1 = MAC(a1, _mm256_loadu_si256((const __m256i*)(p1 + g * 32)), qv);                        \
            a2 = MAC(a2, _mm256_loadu_si256((const __m256i*)(p2 + g * 32)), qv);                        \
            a3 = MAC(a3, _mm256_loadu_si256((const __m256i*)(p3 + g * 32)), qv);                        \
        }                                                                                               \
        EW_I8_FINISH(a0, b);                                                                            \
        EW_I8_FINISH(a1, b + 1);                                                                        \
        EW_I8_FINISH(a2, b + 2);                                                                        \
        EW_I8_FINISH(a3, b + 3);                                                                        \
    }                                                                                                   \
    for (; b < n_blocks; b++) {                                                                         \
        const uint8_t* p0 = blocks + b * stride;                                                        \
        __m256i a0 = _mm256_setzero_si256();                                                            \
        for (g = 0; g < groups; g++)                                                                    \
            a0 = MAC(a0, _mm256_loadu_si256((const __m256i*)(p0 + g * 32)),                             \
                     _mm256_set1_epi32(ew_load_i32(q + g * 4)));                                        \
        EW_I8_FINISH(a0, b);                                                                            \
    }

#define EW_I8_ARGS const uint8_t* blocks, const int8_t* q, Py_ssize_t groups, Py_ssize_t n_blocks,        \
    const float* scale, const float* tl1, int32_t corr, float sq, float big_k, float c2, float c0,       \
    float limit, float* hi, uint8_t* masks

#define EW_MAC_AVX2(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), ones))
__attribute__((target("avx2,fma")))
static void ew_i8_chunk_avx2(EW_I8_ARGS) {
    const __m256i ones = _mm256_set1_epi16(1);
    EW_I8_BODY(EW_MAC_AVX2)
}
#undef EW_MAC_AVX2

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define EW_HAVE_VNNI 1
#define EW_MAC_VNNI(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
__attribute__((target("avx2,fma,avxvnni")))
static void ew_i8_chunk_vnni(EW_I8_ARGS) {
    EW_I8_BODY(EW_MAC_VNNI)
}
#undef EW_MAC_VNNI
#endif
#undef EW_I8_BODY
#undef EW_I8_FINISH

static int ew_avxvnni_supported(void) {
    static int known = -1;
    if (known < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0;
        /* CPUID leaf 7 sub-leaf 1, EAX bit 4: AVX-VNNI (VEX-encoded; the OS state is AVX2's) */
        known = ew_v3_supported() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
    }
    return known;
}
#endif

/* The code path the int8 scan runs: 2 AVX-VNNI, 1 AVX2, 0 portable. */
static int ew_i8_level(void) {
    int best = 0;
#ifdef EW_HAVE_V3
    if (!ew_portable_only && ew_v3_supported()) {
        best = 1;
#ifdef EW_HAVE_VNNI
        if (ew_avxvnni_supported()) best = 2;
#endif
    }
#endif
    if (ew_i8_forced >= 0 && ew_i8_forced < best) return ew_i8_forced;
    return best;
}

/* Largest |q^| of the query's quantization on a code path (see above). */
static inline int ew_i8_qmax(int level) { return level == 1 ? 63 : 127; }

/* One chunk of the scan: for each of the n_blocks * 8 rows the upper bound hi = A + B of its exact score,
 * A = s_r * (s_q * (dot - corr)), B = s_r * K + t_r * c2 + c0 (topk_int8_kernel), and per block the
 * bit mask of the lanes with hi >= limit. */
static void ew_i8_chunk(int level, const uint8_t* blocks, const int8_t* q, Py_ssize_t groups,
                        Py_ssize_t n_blocks, const float* scale, const float* tl1, int32_t corr, float sq,
                        float big_k, float c2, float c0, float limit, float* hi, uint8_t* masks) {
#ifdef EW_HAVE_VNNI
    if (level == 2) {
        ew_i8_chunk_vnni(blocks, q, groups, n_blocks, scale, tl1, corr, sq, big_k, c2, c0, limit, hi, masks);
        return;
    }
#endif
#ifdef EW_HAVE_V3
    if (level >= 1) {
        ew_i8_chunk_avx2(blocks, q, groups, n_blocks, scale, tl1, corr, sq, big_k, c2, c0, limit, hi, masks);
        return;
    }
#endif
    int32_t dots[8];
    for (Py_ssize_t b = 0; b < n_blocks; b++) {
        unsigned bits = 0;
        ew_i8_dots_generic(blocks + b * groups * 32, q, groups, 1, dots);
        for (int l = 0; l < 8; l++) {
            const Py_ssize_t i = b * 8 + l;
            const float a = scale[i] * (sq * (float)(dots[l] - corr));
            hi[i] = a + (scale[i] * big_k + tl1[i] * c2 + c0);
            bits |= (unsigned)(hi[i] >= limit) << l;
        }
        masks[b] = (uint8_t)bits;
    }
}

#endif  /* EDGEWISE_SIMD_H */
