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

#endif  /* EDGEWISE_SIMD_H */
