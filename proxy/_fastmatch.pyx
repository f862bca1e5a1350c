# cython: language_level=3
"""The compiled hot path: framing, decoding dispatch and the decision, per chunk.

One call to :meth:`Engine.feed` takes a received chunk, cuts it into frames, decodes
and decides every complete frame, and returns the chunk's log lines (already encoded),
the bytes to forward and the ER replies to its denials.  The Python layer makes one call per
chunk, and the engine makes no Python object per message: the decoders read a payload
into spans of its bytes, the matcher looks the spans up in C tables, and the log line
is written from the spans into one buffer.

The matcher turns each rule condition into a bit per rule: each value of a message
field (agency, key, purpose ...) maps to a row saying which rules that value
satisfies.  Deciding a message is then an AND of a few rows and a find-first-set.  Its
plain-Python twin is :func:`proxy._policy.decide`; the tests require the two to agree.
"""

cimport cython
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport abort, calloc, malloc, free, realloc
from libc.string cimport memchr, memcmp, memcpy, memset
from libc.time cimport gmtime_r, strftime, time_t, tm
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec
from cpython.dict cimport PyDict_GetItem
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeLatin1

import os as _os

import msgspec

from ._decode import Malformed, decode_json, decode_text, decode_xml
from ._pipeline import Batch
from ._reply import Denial, ReplyWriter
from ._types import LogRecord, Message

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

cdef extern from *:
    """
    static inline int sg_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    /* A load into cache that nothing waits for.  On x86 an asm statement: gcc 12 drops
       a __builtin_prefetch once the function around it is inlined. */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define sg_prefetch(p) __asm__ volatile("prefetcht0 %0" : : "m"(*(const char*) (p)))
    #elif defined(__GNUC__)
    #define sg_prefetch(p) __builtin_prefetch((p))
    #else
    #define sg_prefetch(p) ((void) (p))
    #endif
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* The index of the first byte of p[i:n] that is below 0x20, 0x7f or above, or
       equal to a, b, c or d; n if none.  Sixteen bytes at a time where SSE2 is there. */
    static inline Py_ssize_t sg_find_special4(const unsigned char* p, Py_ssize_t i,
                                              Py_ssize_t n, unsigned char a, unsigned char b,
                                              unsigned char c, unsigned char d) {
    #if defined(__SSE2__)
        const __m128i lo = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
        const __m128i va = _mm_set1_epi8((char) a), vb = _mm_set1_epi8((char) b);
        const __m128i vc = _mm_set1_epi8((char) c), vd = _mm_set1_epi8((char) d);
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*) (p + i));
            /* signed: bytes of 0x80 and above are negative, so below 0x20 too */
            __m128i m = _mm_or_si128(_mm_cmplt_epi8(v, lo), _mm_cmpeq_epi8(v, del));
            m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, va), _mm_cmpeq_epi8(v, vb)));
            m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, vc), _mm_cmpeq_epi8(v, vd)));
            int bits = _mm_movemask_epi8(m);
            if (bits)
                return i + __builtin_ctz(bits);
            i += 16;
        }
    #endif
        for (; i < n; i++) {
            unsigned char x = p[i];
            if (x < 0x20 || x >= 0x7f || x == a || x == b || x == c || x == d)
                return i;
        }
        return n;
    }
    /* The same for two bytes, a and b. */
    static inline Py_ssize_t sg_find_special(const unsigned char* p, Py_ssize_t i,
                                             Py_ssize_t n, unsigned char a, unsigned char b) {
        return sg_find_special4(p, i, n, a, b, b, b);
    }
    /* The index of the first c in p[i:n], n if none; p[0:n] may be read.  The fast
       paths look for a byte a few dozen bytes ahead at most, where a call to memchr
       costs more than the looking: sixteen bytes at a time, the last sixteen of
       p[:n] once (those before i masked off), a byte loop only when n < 16. */
    static inline Py_ssize_t sg_next_byte(const unsigned char* p, Py_ssize_t i,
                                          Py_ssize_t n, unsigned char c) {
    #if defined(__SSE2__)
        if (n >= 16) {
            const __m128i vc = _mm_set1_epi8((char) c);
            int bits;
            while (i + 16 <= n) {
                bits = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*) (p + i)), vc));
                if (bits)
                    return i + __builtin_ctz(bits);
                i += 16;
            }
            if (i < n) {
                bits = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*) (p + n - 16)), vc));
                bits >>= 16 - (n - i);  /* bit 0 is now p[i] */
                if (bits)
                    return i + __builtin_ctz(bits);
            }
            return n;
        }
    #endif
        for (; i < n; i++)
            if (p[i] == c)
                return i;
        return n;
    }
    /* Bit masks of a text payload p[:n], a bit a byte, 64 bytes a word (word w holds
       bytes 64w to 64w + 63, bit 0 the first): lf marks LF, stop LF or '.', tag the
       '/' of what may be one of the four elements read for the decision (PUR/, RSN/,
       ATN/, IMQ/: a '/' after a letter of P R A I, one of U S T M, one of R N Q, in
       that order), bad every byte that is neither printable ASCII nor LF (CR among
       them).  Each array has (n + 63) / 64 words; no bit is set at or past n.  The
       text fast path finds its lines, parts and elements in these instead of scanning
       bytes again and again.  The tag mask is the slashes filtered by their letters:
       the path compares the four bytes at each of its bits, where it once stepped
       through every element's slash (NAM/, DOB/, OLN/ ...), branches that cachegrind's
       model put at two in five of the text reader's mispredictions; the decision path
       took x0.975 of the time (bench/README, "the tag mask"). */
    /* The letter classes of the tag mask, one bit each, the classes split by the
       letter's high nibble so that a low-nibble and a high-nibble lookup, ANDed, are
       exact: bits 0-1 R N Q (the letter before '/'), 2-3 U S T M, 4-5 P R A I. */
    static const unsigned char sg_tag_lo[16] = {0x10, 0x21, 0x11, 0x04, 0x04, 0x04, 0, 0,
                                                0, 0x20, 0, 0, 0, 0x08, 0x02, 0};
    static const unsigned char sg_tag_hi[16] = {0, 0, 0, 0, 0x2a, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    /* The tag word from word w's slashes and classes c1 (R N Q), c2 (U S T M), c3
       (P R A I), and the classes of the word before (*carry: 0 at the first word). */
    static inline uint64_t sg_tag_word(uint64_t slash, uint64_t c1, uint64_t c2, uint64_t c3,
                                       uint64_t* carry) {
        uint64_t p1 = carry[0], p2 = carry[1], p3 = carry[2];
        carry[0] = c1; carry[1] = c2; carry[2] = c3;
        return slash & (c1 << 1 | p1 >> 63) & (c2 << 2 | p2 >> 62) & (c3 << 3 | p3 >> 61);
    }
    #define SG_CMP(v, c) _mm_cmpeq_epi8((v), _mm_set1_epi8(c))
    static inline void sg_text_block(const unsigned char* q, unsigned* out) {
    #if defined(__SSE2__)
        __m128i v = _mm_loadu_si128((const __m128i*) q);
        __m128i l = SG_CMP(v, 10);
        __m128i r = SG_CMP(v, 'R');
        /* signed: bytes of 0x80 and above are negative, so below 0x20 too */
        __m128i b = _mm_or_si128(_mm_andnot_si128(l, _mm_cmplt_epi8(v, _mm_set1_epi8(0x20))),
                                 SG_CMP(v, 0x7f));
        out[0] = (unsigned) _mm_movemask_epi8(l);
        out[1] = (unsigned) _mm_movemask_epi8(_mm_or_si128(l, SG_CMP(v, '.')));
        out[2] = (unsigned) _mm_movemask_epi8(SG_CMP(v, '/'));
        out[3] = (unsigned) _mm_movemask_epi8(b);
        out[4] = (unsigned) _mm_movemask_epi8(_mm_or_si128(r, _mm_or_si128(SG_CMP(v, 'N'), SG_CMP(v, 'Q'))));
        out[5] = (unsigned) _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(SG_CMP(v, 'U'), SG_CMP(v, 'S')),
                                                           _mm_or_si128(SG_CMP(v, 'T'), SG_CMP(v, 'M'))));
        out[6] = (unsigned) _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(SG_CMP(v, 'P'), r),
                                                           _mm_or_si128(SG_CMP(v, 'A'), SG_CMP(v, 'I'))));
    #else
        int t, j;
        for (j = 0; j < 7; j++)
            out[j] = 0;
        for (t = 0; t < 16; t++) {
            unsigned char c = q[t];
            out[0] |= (unsigned) (c == 10) << t;
            out[1] |= (unsigned) (c == 10 || c == '.') << t;
            out[2] |= (unsigned) (c == '/') << t;
            out[3] |= (unsigned) ((c < 0x20 && c != 10) || c >= 0x7f) << t;
            out[4] |= (unsigned) (c == 'R' || c == 'N' || c == 'Q') << t;
            out[5] |= (unsigned) (c == 'U' || c == 'S' || c == 'T' || c == 'M') << t;
            out[6] |= (unsigned) (c == 'P' || c == 'R' || c == 'A' || c == 'I') << t;
        }
    #endif
    }
    static void sg_text_masks_sse2(const unsigned char* p, Py_ssize_t n, uint64_t* lf,
                                   uint64_t* stop, uint64_t* tag, uint64_t* bad) {
        Py_ssize_t w, i, words = (n + 63) >> 6;
        uint64_t carry[3] = {0, 0, 0}, m[7];
        unsigned out[7];
        int j, k;
        for (w = 0; w < words; w++) {
            for (k = 0; k < 7; k++)
                m[k] = 0;
            for (i = 64 * w, j = 0; i < n && j < 4; i += 16, j++) {
                if (i + 16 <= n) {
                    sg_text_block(p + i, out);
                } else if (n >= 16) {
                    /* the last sixteen bytes, those before i shifted out */
                    int shift = (int) (i + 16 - n);
                    sg_text_block(p + n - 16, out);
                    for (k = 0; k < 7; k++)
                        out[k] >>= shift;
                } else {
                    /* a payload shorter than sixteen bytes, padded with spaces */
                    unsigned char pad[16];
                    memset(pad, ' ', 16);
                    memcpy(pad, p, (size_t) n);
                    sg_text_block(pad, out);
                }
                for (k = 0; k < 7; k++)
                    m[k] |= (uint64_t) out[k] << (16 * j);
            }
            lf[w] = m[0]; stop[w] = m[1]; bad[w] = m[3];
            tag[w] = sg_tag_word(m[2], m[4], m[5], m[6], carry);
        }
    }
    /* sg_text_masks 64 bytes at a time, with AVX-512BW: one load (masked at the end,
       so no byte past n is read), five compares and, for the tag mask's letters, two
       nibble lookups and three tests, whose results are the words.  A text message of
       the mix is some 70 bytes, two words: this makes its masks in a few dozen
       instructions where sixteen bytes at a time take hundreds.  Built for
       any x86-64 and run only where the CPU and the OS have AVX-512BW
       (sg_simd_init); elsewhere sg_text_masks_sse2. */
    #if defined(__GNUC__) && defined(__x86_64__)
    #define SG_HAVE_AVX512 1
    #include <immintrin.h>
    __attribute__((target("avx512f,avx512bw")))
    static void sg_text_masks_avx512(const unsigned char* p, Py_ssize_t n, uint64_t* lf,
                                     uint64_t* stop, uint64_t* tag, uint64_t* bad) {
        const __m512i nl = _mm512_set1_epi8(10), dot = _mm512_set1_epi8('.');
        const __m512i sl = _mm512_set1_epi8('/'), space = _mm512_set1_epi8(0x20);
        const __m512i del = _mm512_set1_epi8(0x7f), nibble = _mm512_set1_epi8(0x0f);
        const __m512i lo_classes = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*) sg_tag_lo));
        const __m512i hi_classes = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*) sg_tag_hi));
        uint64_t carry[3] = {0, 0, 0};
        Py_ssize_t w, words = (n + 63) >> 6;
        for (w = 0; w < words; w++) {
            Py_ssize_t left = n - 64 * w;
            __mmask64 k = left >= 64 ? ~(__mmask64) 0 : (((__mmask64) 1 << left) - 1);
            __m512i v = _mm512_maskz_loadu_epi8(k, p + 64 * w);
            __mmask64 l = _mm512_mask_cmpeq_epi8_mask(k, v, nl);
            /* each byte's letter classes: bytes past n are 0, of no class */
            __m512i c = _mm512_and_si512(
                _mm512_shuffle_epi8(lo_classes, _mm512_and_si512(v, nibble)),
                _mm512_shuffle_epi8(hi_classes, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble)));
            lf[w] = l;
            stop[w] = l | _mm512_mask_cmpeq_epi8_mask(k, v, dot);
            /* signed: bytes of 0x80 and above are negative, so below 0x20 too */
            bad[w] = (_mm512_mask_cmplt_epi8_mask(k, v, space) & ~l) | _mm512_mask_cmpeq_epi8_mask(k, v, del);
            tag[w] = sg_tag_word(_mm512_mask_cmpeq_epi8_mask(k, v, sl),
                                 _mm512_test_epi8_mask(c, _mm512_set1_epi8(0x03)),
                                 _mm512_test_epi8_mask(c, _mm512_set1_epi8(0x0c)),
                                 _mm512_test_epi8_mask(c, _mm512_set1_epi8(0x30)), carry);
        }
    }
    #endif
    /* sg_avx512: this CPU and OS can run sg_text_masks_avx512; sg_wide: sg_text_masks
       does.  Both set once, at import, by sg_simd_init. */
    static int sg_avx512 = 0, sg_wide = 0;
    /* want_wide 0 keeps the portable way where AVX-512BW is there too (the environment's
       STATEGATE_AVX512=0).  Returns sg_avx512. */
    static int sg_simd_init(int want_wide) {
        sg_avx512 = 0;
    #ifdef SG_HAVE_AVX512
        __builtin_cpu_init();
        /* libgcc's check includes the OS's: XCR0 must enable the AVX-512 state */
        sg_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    #endif
        sg_wide = want_wide && sg_avx512;
        return sg_avx512;
    }
    /* The masks of p[:n], the wide way (only where sg_avx512) or the portable one;
       both give the same. */
    static inline void sg_text_masks_way(int wide, const unsigned char* p, Py_ssize_t n,
                                         uint64_t* lf, uint64_t* stop, uint64_t* tag,
                                         uint64_t* bad) {
    #ifdef SG_HAVE_AVX512
        if (wide) {
            sg_text_masks_avx512(p, n, lf, stop, tag, bad);
            return;
        }
    #endif
        sg_text_masks_sse2(p, n, lf, stop, tag, bad);
    }
    /* Whether a packed party passes one of the agency sieve's tests for its length:
       (key & mask[i]) == want[i] for some i < count (count at most 16; the slots from
       count to the next multiple of eight hold mask 0 and want 1, which no key passes).
       With AVX-512F eight tests are one compare, where the plain loop takes some ten
       instructions a test: an ORI of the example policy meets seven, and the loop was
       74 of the 209 instructions a text message's decision took (cachegrind); the
       decision path took x0.953 of the time (bench/README, "the sieve eight tests at
       a time"). */
    #ifdef SG_HAVE_AVX512
    __attribute__((target("avx512f")))
    static int sg_sieve_hit_avx512(const uint64_t* mask, const uint64_t* want, int count,
                                   uint64_t key) {
        const __m512i k = _mm512_set1_epi64((long long) key);
        __mmask8 hit = _mm512_cmpeq_epi64_mask(_mm512_and_si512(k, _mm512_loadu_si512(mask)),
                                               _mm512_loadu_si512(want));
        if (count > 8)
            hit |= _mm512_cmpeq_epi64_mask(_mm512_and_si512(k, _mm512_loadu_si512(mask + 8)),
                                           _mm512_loadu_si512(want + 8));
        return hit != 0;
    }
    #endif
    static inline int sg_sieve_hit_way(int wide, const uint64_t* mask, const uint64_t* want,
                                       int count, uint64_t key) {
        int i, hit = 0;
    #ifdef SG_HAVE_AVX512
        if (wide)
            return count > 0 && sg_sieve_hit_avx512(mask, want, count, key);
    #endif
        for (i = 0; i < count; i++)
            hit |= (key & mask[i]) == want[i];
        return hit;
    }
    /* The masks of p[:n], the widest way this machine has. */
    static inline void sg_text_masks(const unsigned char* p, Py_ssize_t n, uint64_t* lf,
                                     uint64_t* stop, uint64_t* tag, uint64_t* bad) {
        sg_text_masks_way(sg_wide, p, n, lf, stop, tag, bad);
    }
    /* The first set bit of mask m at or after i and before limit; limit if none.
       Words past (limit - 1) / 64 are never read. */
    static inline __attribute__((always_inline)) Py_ssize_t sg_next_bit(const uint64_t* m, Py_ssize_t i,
                                                                        Py_ssize_t limit) {
        Py_ssize_t w, last, r;
        uint64_t x;
        if (i >= limit)
            return limit;
        w = i >> 6;
        last = (limit - 1) >> 6;
        x = m[w] & (~0ULL << (i & 63));
        while (!x) {
            if (w == last)
                return limit;
            x = m[++w];
        }
        r = (w << 6) + __builtin_ctzll(x);
        return r < limit ? r : limit;
    }
    /* The set bits of a mask in order, from a start to a limit, where the next is
       always wanted after the last: the header line's periods.  Each step costs a
       test, a count and a clear of the lowest bit, where sg_next_bit from the last
       position finds the word and masks it again every time. */
    typedef struct {
        const uint64_t* m;
        Py_ssize_t w, last, limit;
        uint64_t x;
    } SgWalk;
    static inline __attribute__((always_inline)) void sg_walk_start(SgWalk* k, const uint64_t* m,
                                                                    Py_ssize_t i, Py_ssize_t limit) {
        k->m = m;
        k->limit = limit;
        if (i >= limit) {
            k->w = k->last = 0;
            k->x = 0;
            return;
        }
        k->w = i >> 6;
        k->last = (limit - 1) >> 6;
        k->x = m[k->w] & (~0ULL << (i & 63));
    }
    /* The next set bit of the walk's mask before its limit; the limit if none (and
       at every step after). */
    static inline __attribute__((always_inline)) Py_ssize_t sg_walk_next(SgWalk* k) {
        Py_ssize_t r;
        while (!k->x) {
            if (k->w >= k->last)
                return k->limit;
            k->x = k->m[++k->w];
        }
        r = (k->w << 6) + __builtin_ctzll(k->x);
        k->x &= k->x - 1;
        return r < k->limit ? r : k->limit;
    }
    /* Four bytes as one word, in memory order. */
    static inline uint32_t sg_load4(const unsigned char* p) {
        uint32_t x;
        memcpy(&x, p, 4);
        return x;
    }
    /* Eight bytes as one word, in memory order (byte 0 lowest on little-endian). */
    static inline uint64_t sg_load8(const unsigned char* p) {
        uint64_t x;
        memcpy(&x, p, 8);
        return x;
    }
    /* Whether all eight bytes of x are A-Z or 0-9: per byte, the top bit is set where
       m < c < k (exact for every byte value; Bit Twiddling Hacks' hasbetween). */
    #define SG_ONES 0x0101010101010101ULL
    #define SG_BETWEEN(x, m, k) ((SG_ONES * (127 + (k)) - ((x) & SG_ONES * 127)) & ~(x) \
                                 & (((x) & SG_ONES * 127) + SG_ONES * (127 - (m))) & (SG_ONES * 128))
    static inline int sg_alnum8(uint64_t x) {
        return (SG_BETWEEN(x, '0' - 1, '9' + 1) | SG_BETWEEN(x, 'A' - 1, 'Z' + 1)) == SG_ONES * 128;
    }
    /* The low six bits of each byte of x, packed into 48 bits.  A-Z and 0-9 have
       distinct, non-zero low six bits, so this is one-to-one on them. */
    static inline uint64_t sg_pack6(uint64_t x) {
        x &= 0x3F3F3F3F3F3F3F3FULL;
        x = (x & 0x003F003F003F003FULL) | ((x & 0x3F003F003F003F00ULL) >> 2);
        x = (x & 0x00000FFF00000FFFULL) | ((x & 0x0FFF00000FFF0000ULL) >> 4);
        return (x & 0xFFFFFFULL) | ((x >> 8) & 0xFFFFFF000000ULL);
    }
    /* Whether a[:n] and b[:n] are equal: names and prefixes are short, where a call
       to memcmp costs more than the comparing. */
    static inline int sg_eq(const unsigned char* a, const unsigned char* b, Py_ssize_t n) {
        Py_ssize_t k;
        uint32_t x, y, z, t;
        if (n >= 8) {
            /* eight bytes at a time, the last eight once (overlapping) */
            for (k = 0; k + 8 < n; k += 8)
                if (sg_load8(a + k) != sg_load8(b + k))
                    return 0;
            return sg_load8(a + n - 8) == sg_load8(b + n - 8);
        }
        if (n >= 4) {
            /* the first four and the last four (overlapping) */
            memcpy(&x, a, 4); memcpy(&y, b, 4); memcpy(&z, a + n - 4, 4); memcpy(&t, b + n - 4, 4);
            return x == y && z == t;
        }
        for (k = 0; k < n; k++)
            if (a[k] != b[k])
                return 0;
        return 1;
    }
    /* sg_eq for an end tag's name against its start tag's: names of 8 to 32 bytes
       are compared as their first and last eight or sixteen bytes (overlapping),
       without a loop or a branch per word (a[:n] and b[:n] only are read). */
    static inline int sg_eq_name(const unsigned char* a, const unsigned char* b, Py_ssize_t n) {
        if (n >= 8 && n <= 16)
            return ((sg_load8(a) ^ sg_load8(b)) | (sg_load8(a + n - 8) ^ sg_load8(b + n - 8))) == 0;
    #if defined(__SSE2__)
        if (n > 16 && n <= 32) {
            __m128i head = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*) a),
                                          _mm_loadu_si128((const __m128i*) b));
            __m128i tail = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*) (a + n - 16)),
                                          _mm_loadu_si128((const __m128i*) (b + n - 16)));
            return _mm_movemask_epi8(_mm_and_si128(head, tail)) == 0xFFFF;
        }
    #endif
        return sg_eq(a, b, n);
    }
    /* An XML name, as the fast path reads names: A-Z a-z _ to start (bit 1), then
       those, 0-9, '-' and '.' (bit 2). */
    static const unsigned char sg_name_class[256] = {
        ['A' ... 'Z'] = 3, ['a' ... 'z'] = 3, ['_'] = 3, ['0' ... '9'] = 2, ['-'] = 2, ['.'] = 2,
    };
    static inline int sg_name_start(unsigned char c) {
        return sg_name_class[c] & 1;
    }
    static inline int sg_name_char(unsigned char c) {
        return sg_name_class[c] & 2;
    }
    /* The end of the XML name at p[i] (A-Z a-z _ to start, then those, 0-9, '-' and
       '.', with at most one colon, which a name start must follow), or -1.
       colon: the colon's index, or -1.  Sixteen bytes at a time: the name characters
       and the colons in one pass. */
    static inline Py_ssize_t sg_qname(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                      Py_ssize_t* colon) {
        Py_ssize_t c = -1;
        *colon = -1;
        if (i >= n || !sg_name_start(p[i]))
            return -1;
        i++;
    #if defined(__SSE2__)
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*) (p + i));
            __m128i lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
            __m128i alpha = _mm_and_si128(_mm_cmpgt_epi8(lower, _mm_set1_epi8('a' - 1)),
                                          _mm_cmplt_epi8(lower, _mm_set1_epi8('z' + 1)));
            __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                                          _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
            __m128i col = _mm_cmpeq_epi8(v, _mm_set1_epi8(':'));
            __m128i other = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('_')),
                                                      _mm_cmpeq_epi8(v, _mm_set1_epi8('.'))),
                                         _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('-')), col));
            unsigned ok = (unsigned) _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(alpha, digit), other));
            unsigned cols = (unsigned) _mm_movemask_epi8(col);
            unsigned stop = ~ok & 0xFFFF;
            if (stop)
                cols &= (1u << __builtin_ctz(stop)) - 1;
            if (cols) {
                if (c >= 0 || (cols & (cols - 1)))
                    return -1;
                c = i + __builtin_ctz(cols);
            }
            if (stop) {
                i += __builtin_ctz(stop);
                goto end;
            }
            i += 16;
        }
    #endif
        for (; i < n; i++) {
            unsigned char x = p[i];
            if (x == ':') {
                if (c >= 0)
                    return -1;
                c = i;
            } else if (!sg_name_char(x)) {
                break;
            }
        }
    end:
        if (c >= 0) {
            if (c + 1 >= i || !sg_name_start(p[c + 1]))
                return -1;
            *colon = c;
        }
        return i;
    }
    /* From i, the first byte of p[:n] that is s1 or s2, where XML character data or an
       attribute value ends; -1 at a byte the fast path declines on the way (a control
       but tab and LF, a byte of 0x7f or above, '&', or "]]>"); n if neither comes.
       Every byte of character data and of attribute values passes through here, which
       is how the fast path checks them. */
    static inline Py_ssize_t sg_xml_scan(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                         unsigned char s1, unsigned char s2) {
        unsigned char c;
        /* Markup follows markup at once in most documents ("</a><b>"): no search */
        if (i < n && (p[i] == s1 || p[i] == s2))
            return i;
        for (;;) {
            i = sg_find_special4(p, i, n, s1, s2, '&', ']');
            if (i >= n)
                return n;
            c = p[i];
            if (c == s1 || c == s2)
                return i;
            if (c == ']') {
                if (i + 2 < n && p[i + 1] == ']' && p[i + 2] == '>')
                    return -1;
            } else if (c != 9 && c != 10) {
                return -1;  /* '&', a control, DEL or a non-ASCII byte */
            }
            i++;
        }
    }
    /* The C library's memcpy, always called.  For a copy whose size is known only at
       run time, gcc may instead write `rep movsq` in line (the profile-guided build
       did, for a log line's longer pieces and each forwarded message), which is slow
       to start on some CPUs (on one, the running proxy spent a seventh of its CPU time
       a message on it: bench/README.md, "a new machine"); the library picks its copy
       for the CPU it runs on.  Called through a volatile pointer so that gcc cannot
       see, and so cannot inline, which function it is. */
    static void* (*volatile sg_memcpy)(void*, const void*, size_t) = memcpy;
    /* Copy n bytes, s to q.  A log line is mostly short pieces (a key name, a code,
       a rule id), each of which a call to memcpy costs more than it copies; up to 32
       bytes go as two fixed-size moves that overlap in the middle, which read and write
       no byte outside either range. */
    static inline void sg_copy(char* q, const char* s, size_t n) {
        if (n >= 16) {
            if (n > 32) { sg_memcpy(q, s, n); return; }
            char a[16], b[16];
            memcpy(a, s, 16); memcpy(b, s + n - 16, 16);
            memcpy(q, a, 16); memcpy(q + n - 16, b, 16);
        } else if (n >= 8) {
            uint64_t a, b;
            memcpy(&a, s, 8); memcpy(&b, s + n - 8, 8);
            memcpy(q, &a, 8); memcpy(q + n - 8, &b, 8);
        } else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, s, 4); memcpy(&b, s + n - 4, 4);
            memcpy(q, &a, 4); memcpy(q + n - 4, &b, 4);
        } else if (n) {
            q[0] = s[0]; q[n / 2] = s[n / 2]; q[n - 1] = s[n - 1];
        }
    }
    /* p[a:e], printable ASCII, as a JSON string (quote and backslash escaped) to q, which has
       room for 2 * (e - a) + 2 bytes and 16 more: sixteen bytes at a time are looked at
       and stored whole (the store may run past what it writes, into that room), while
       reading them stays inside p[:limit]; the last bytes go one at a time. */
    static inline char* sg_json_str(char* q, const unsigned char* p, Py_ssize_t a,
                                    Py_ssize_t e, Py_ssize_t limit) {
        *q++ = 34;
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8(34), slash = _mm_set1_epi8(92);
        while (a < e && a + 16 <= limit) {
            __m128i v = _mm_loadu_si128((const __m128i*) (p + a));
            Py_ssize_t len = e - a < 16 ? e - a : 16;
            int bits = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                      _mm_cmpeq_epi8(v, slash)));
            bits &= (1 << len) - 1;
            _mm_storeu_si128((__m128i*) q, v);
            if (bits) {
                int k = __builtin_ctz(bits);
                q += k;
                a += k;
                *q++ = 92;  /* backslash */
                *q++ = (char) p[a++];
            } else {
                q += len;
                a += len;
            }
        }
    #endif
        for (; a < e; a++) {
            unsigned char c = p[a];
            if (c == 34 || c == 92)
                *q++ = 92;  /* backslash */
            *q++ = (char) c;
        }
        *q++ = 34;
        return q;
    }
    """
    char* sg_json_str(char* q, const unsigned char* p, Py_ssize_t a, Py_ssize_t e,
                      Py_ssize_t limit) noexcept nogil
    void sg_copy(char* q, const char* s, size_t n) noexcept nogil
    Py_ssize_t sg_next_byte(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                            unsigned char c) noexcept nogil
    int sg_ctz64(unsigned long long x) noexcept nogil
    void sg_prefetch(const void* p) noexcept nogil
    Py_ssize_t sg_find_special(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                               unsigned char a, unsigned char b) noexcept nogil
    void sg_text_masks(const unsigned char* p, Py_ssize_t n, uint64_t* lf, uint64_t* stop,
                       uint64_t* tag, uint64_t* bad) noexcept nogil
    void sg_text_masks_way(int wide, const unsigned char* p, Py_ssize_t n, uint64_t* lf,
                           uint64_t* stop, uint64_t* tag, uint64_t* bad) noexcept nogil
    int sg_simd_init(int want_wide) noexcept nogil
    bint sg_sieve_hit_way(int wide, const uint64_t* mask, const uint64_t* want, int count,
                          uint64_t key) noexcept nogil
    int sg_wide
    Py_ssize_t sg_next_bit(const uint64_t* m, Py_ssize_t i, Py_ssize_t limit) noexcept nogil
    ctypedef struct SgWalk:
        pass
    void sg_walk_start(SgWalk* k, const uint64_t* m, Py_ssize_t i, Py_ssize_t limit) noexcept nogil
    Py_ssize_t sg_walk_next(SgWalk* k) noexcept nogil
    uint32_t sg_load4(const unsigned char* p) noexcept nogil
    uint64_t sg_load8(const unsigned char* p) noexcept nogil
    bint sg_alnum8(uint64_t x) noexcept nogil
    uint64_t sg_pack6(uint64_t x) noexcept nogil
    bint sg_eq(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil
    bint sg_eq_name(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil
    bint sg_name_char(unsigned char c) noexcept nogil
    Py_ssize_t sg_qname(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                        Py_ssize_t* colon) noexcept nogil
    Py_ssize_t sg_xml_scan(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                           unsigned char s1, unsigned char s2) noexcept nogil

#: Whether this machine can classify a text payload's bytes 64 at a time (AVX-512BW);
#: where it can, the text fast path does, unless STATEGATE_AVX512=0 is set.
AVX512 = bool(sg_simd_init(_os.environ.get("STATEGATE_AVX512", "1") != "0"))


def text_masks_in_use() -> str:
    """How the text fast path classifies bytes here: "avx512bw" or "sse2"."""
    return "avx512bw" if sg_wide else "sse2"


def text_masks(bytes payload, bint wide):
    """The text fast path's four bit masks of payload (LF; LF or '.'; the '/' of a
    possible PUR/, RSN/, ATN/ or IMQ/, by the letters' classes; neither printable ASCII
    nor LF), each a list of 64-bit words, made 64 bytes at a time with
    AVX-512BW (wide; ValueError where this machine cannot) or sixteen at a time.  For
    the tests, which hold both ways to a plain reading of the bytes."""
    cdef Py_ssize_t n = len(payload), words = (n + 63) >> 6, w
    cdef uint64_t* m
    if wide and not AVX512:
        raise ValueError("this machine has no AVX-512BW")
    m = <uint64_t*> calloc(max(1, 4 * words), sizeof(uint64_t))
    if m == NULL:
        raise MemoryError()
    try:
        sg_text_masks_way(wide, <const unsigned char*> PyBytes_AS_STRING(payload), n, m, m + words,
                          m + 2 * words, m + 3 * words)
        return tuple([m[k * words + w] for w in range(words)] for k in range(4))
    finally:
        free(m)


# Keep per-value mask caches bounded: a hostile stream of distinct ORIs must not grow
# memory without end.
DEF CACHE_LIMIT = 65536

cdef enum:
    ACT_ALLOW = 0
    ACT_DENY = 1

cdef enum:
    DIR_IN = 0
    DIR_OUT = 1


cdef bint pattern_match(str entry, str value):
    """'?' any one character, a trailing '*' any rest."""
    cdef Py_ssize_t n = len(entry), m = len(value), i
    cdef Py_UCS4 c
    if n and entry[n - 1] == u'*':
        n -= 1
        if m < n:
            return False
    elif m != n:
        return False
    for i in range(n):
        c = entry[i]
        if c != u'?' and c != value[i]:
            return False
    return True


def pattern_matches(str entry, str value):
    """Python-visible for tests."""
    return pattern_match(entry, value)


def xml_body_names(fields):
    """The XML fast path's ``names``: the body element local names for pur, rsn, atn
    and imq in ``fields`` (an XmlFields), each a tuple of bytes."""
    return tuple(tuple(n.encode() for n in getattr(fields, f)) for f in ("pur", "rsn", "atn", "imq"))


# ------------------------------------------------------------ text fast path
#
# Most traffic is legacy text, printable ASCII with LF or CR LF line ends.  For exactly
# that, in either header form, the fast path below reads the header and the four
# decision elements with byte loops.  For anything else (a control byte, a non-ASCII
# byte, a header form it cannot place) it declines and the reference decoder in
# _decode.py decides, with its exact error; a first line whose key or ORI is wrong it
# rejects itself, as the reference would.  Where the fast path answers, its answer is
# the reference's: tests/test_fastdecode.py holds it to that on generated, mutated and
# random payloads.

cdef inline Py_ssize_t _next_byte(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                  unsigned char c) noexcept nogil:
    """The index of the next c from i, or n; p[0:n] may be read."""
    return sg_next_byte(p, i, n, c)

cdef unsigned char[256] _WS
for _c in range(256):
    _WS[_c] = _c in (32, 9, 10)

#: The element read for the decision that a text tag starting with this letter can be:
#: 0 PUR, 1 RSN, 2 ATN, 3 IMQ, 4 none; and each one's four bytes, tag and slash, as
#: sg_load4 reads them (4: none, a word no four bytes with a slash can be).
cdef unsigned char[256] _TAG_OF
cdef uint32_t[5] _TAG_WORD
for _c in range(256):
    _TAG_OF[_c] = 4
for _c, _tag in enumerate((b"PUR/", b"RSN/", b"ATN/", b"IMQ/")):
    _TAG_OF[_tag[0]] = _c
    _TAG_WORD[_c] = sg_load4(_tag)
_TAG_WORD[4] = 0

cdef inline bint _ws(unsigned char c) noexcept nogil:
    """Whitespace the fast paths can meet (they decline CR and other controls): a
    table, which the XML fast path's many short skips read without a branch."""
    return _WS[c]

cdef inline Py_ssize_t _strip_a(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while a < b and _ws(p[a]):
        a += 1
    return a

cdef inline Py_ssize_t _strip_b(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b > a and _ws(p[b - 1]):
        b -= 1
    return b

cdef inline bint _upper(unsigned char c) noexcept nogil:
    return 65 <= c <= 90

#: 1 for a party character, A-Z or 0-9; else 0.
cdef unsigned char[256] _ALNUM
for _c in range(256):
    _ALNUM[_c] = 65 <= _c <= 90 or 48 <= _c <= 57

cdef inline bint _alnum(unsigned char c) noexcept nogil:
    """A-Z or 0-9."""
    return _ALNUM[c]

cdef inline bint _is_ori(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """p[a:b] is an originating ORI: 9 characters of A-Z 0-9, the first two letters."""
    return (b - a == 9 and _upper(p[a]) and _upper(p[a + 1]) and sg_alnum8(sg_load8(p + a))
            and _alnum(p[a + 8]))

cdef inline bint _is_dst(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """p[a:b] is 2 or 9 characters of A-Z 0-9."""
    if b - a == 2:
        return _alnum(p[a]) and _alnum(p[a + 1])
    return b - a == 9 and sg_alnum8(sg_load8(p + a)) and _alnum(p[a + 8])

cdef inline str _ascii(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    return PyUnicode_DecodeASCII(<const char*> p + a, b - a, NULL)

cdef bint _yes(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Y, YES, TRUE or 1, in any case, after stripping spaces."""
    cdef Py_ssize_t n
    a = _strip_a(p, a, b)
    b = _strip_b(p, a, b)
    n = b - a
    if n == 1:
        return (p[a] | 32) == 121 or p[a] == 49  # y, 1
    if n == 3:
        return (p[a] | 32) == 121 and (p[a + 1] | 32) == 101 and (p[a + 2] | 32) == 115  # yes
    if n == 4:
        return ((p[a] | 32) == 116 and (p[a + 1] | 32) == 114 and (p[a + 2] | 32) == 117
                and (p[a + 3] | 32) == 101)  # true
    return False


# ------------------------------------------------------------ decoded fields
#
# The fast paths read a payload into spans of its bytes, never Python objects: the
# decision reads the spans through the matcher's tables and the log line copies them.
# Python objects are made from them only where a caller asks (fast_decode_*).

cdef enum:
    # what a fast path makes of a payload
    READ = 1         # read: the fields are the reference decoder's
    DECLINED = 0     # not the simple shape: for the reference decoder to answer
    REJECTED = -1    # certainly malformed: the reference decoder would raise

cdef enum:
    FMT_TEXT = 0
    FMT_XML = 1
    FMT_JSON = 2

cdef struct Fields:
    int fmt
    int mke_slot                     # _mke_slot of the key, which the fast path checked
    Py_ssize_t mke_a, mke_b, ori_a, ori_b
    Py_ssize_t ctl_a, ctl_b          # -1: none
    int ndst
    Py_ssize_t dst_a[6]              # one spare: see _text_spans
    Py_ssize_t dst_b[6]
    Py_ssize_t code_a[3]             # pur, rsn, atn, stripped; -1: none
    Py_ssize_t code_b[3]
    bint imq
    const uint64_t* hint_table       # the matcher's party table, for _hint_party; or NULL
    int hint_bits
    uint64_t ori_key                 # _party_packed of a 9-byte ORI span (_hint_ori), else 0

DEF XML_MAX_NAMES = 32
DEF XML_PROLOGUE_MAX = 1024          # bytes of a prologue _xml_spans keeps (XmlNames.prologue)
DEF XML_PROLOGUE_NS = 16             # namespaces the root of a kept prologue may declare
DEF XML_TAG_BITS = 7                 # 2**7 start tags kept (XmlNames.tag), a slot each by a hash
DEF XML_TAG_SLOTS = 1 << XML_TAG_BITS
DEF XML_TAG_MAX = 64                 # the longest start tag kept, '<' to '>'
DEF XML_TPL_RUNS = 48                # character data runs a document may have to be kept
DEF XML_TPL_NODES = 1024             # segments the kept documents' markup may take ...
DEF XML_TPL_BYTES = 65536            # ... and bytes
DEF XML_TPL_SIBLINGS = 16            # segments kept after any one: the most a document tries there
DEF XML_TPL_PATIENCE = 64            # documents in a row not read by a path, and then ...
DEF XML_TPL_REST = 4096              # ... documents read without trying the paths

cdef enum:
    # what a local name is in the XML header (XmlName.header)
    XH_NONE = 0
    XH_HEADER = 1                    # NLETSMessageHeader
    XH_MKE = 2                       # MessageKeyCodeText
    XH_ORI = 3                       # OriginatingORIID
    XH_DST = 4                       # DestinationORIID
    XH_CTL = 5                       # DocumentControlFieldText

cdef struct XmlName:                 # a local name the XML fast path looks for
    Py_ssize_t length
    const char* name                 # a C literal, or in a bytes object the owner keeps
    int header                       # XH_*
    int fields                       # a bit per body field it is read for: 1 pur, 2 rsn, 4 atn, 8 imq

cdef struct XmlTag:                  # a start tag read before, in the kept prologue's scope
    unsigned long long gen           # XmlNames.tag_gen when it was kept; another: an empty slot
    int length                       # its bytes, '<' to the first '>', which ends it
    int name_end                     # where its name ends, from the '<'
    int local_a                      # where its local name starts, from the '<'
    int known                        # its local name's entry in XmlNames.name, -1: none
    bint self_closing
    unsigned char text[XML_TAG_MAX]

cdef struct XmlTplNode:              # a run of markup kept from documents read before
    int seg, seg_len                 # its bytes: XmlTemplates.text[seg:seg + seg_len]
    uint64_t tail                    # its last eight bytes, if it has eight
    int child, sibling               # the segments read after it (-1: none), and the next
                                     # segment that may stand where it does (-1: none)
    int children                     # how many segments are read after it
    bint last                        # the document ends with it; then the runs it read:
    signed char mke, ori, ctl, ndst  # which run (by its number among those of its
    signed char dst[5]               # document) each header value was, -1: none
    signed char el[4]                # ... and each body element (pur, rsn, atn, imq)

cdef struct XmlTemplates:
    # The markup of documents read before in the kept prologue's scope, as a tree of
    # the runs of markup between their character data: a document whose markup is a
    # path's, byte for byte, reads as that path's did (_xml_spans).
    unsigned long long gen           # XmlNames.tag_gen when they were read; another: none
    int nodes                        # used; node 0 is the prologue's end, with no bytes
    int used                         # bytes of text used
    unsigned long long hits          # documents read by a path (Matcher.xml_markup_kept)
    int misses                       # documents since the last read by a path
    int resting                      # documents still to read without trying (XML_TPL_REST)
    XmlTplNode node[XML_TPL_NODES]
    unsigned char text[XML_TPL_BYTES]

cdef struct XmlNames:
    int count                        # -1: too many names, the fast path declines
    signed char first[64]            # per min(length, 63): the first name of that length, -1: none
    signed char next[XML_MAX_NAMES + 5]  # per name: the next of the same length, -1: none
    XmlName name[XML_MAX_NAMES + 5]  # the header's five names, then the body's
    # The prologue (XML declaration and root start tag) of the last document read,
    # and the state it left: a switch sends every message with the same one, whose
    # namespace declarations cost a fifth of a document's reading (_xml_spans).
    Py_ssize_t prologue_len          # 0: none kept
    unsigned char prologue[XML_PROLOGUE_MAX]
    Py_ssize_t root_a, root_len      # the root's name
    int nns                          # the namespaces the root declares
    Py_ssize_t ns_a[XML_PROLOGUE_NS]
    Py_ssize_t ns_len[XML_PROLOGUE_NS]
    # Start tags read inside documents that began with the kept prologue, where no
    # namespace was declared since: the same bytes read the same there (_xml_spans).
    unsigned long long tag_gen       # advanced when the prologue is replaced: its tags go
    XmlTag tag[XML_TAG_SLOTS]
    XmlTemplates* tpl                # whole documents' markup, where the owner keeps it; or NULL


#: The header's local names, in XH_HEADER, XH_MKE ... order.
cdef tuple _XML_HEADER_NAMES = (b"NLETSMessageHeader", b"MessageKeyCodeText", b"OriginatingORIID",
                                b"DestinationORIID", b"DocumentControlFieldText")


cdef int _xml_name_add(XmlNames* out, const char* name, Py_ssize_t length, int header,
                       int fields) noexcept:
    """Enter a local name (or add to an entered one's roles)."""
    cdef int k
    for k in range(out.count):
        if out.name[k].length == length and memcmp(out.name[k].name, name, length) == 0:
            out.name[k].header |= header
            out.name[k].fields |= fields
            return 0
    out.name[out.count].length = length
    out.name[out.count].name = name
    out.name[out.count].header = header
    out.name[out.count].fields = fields
    out.next[out.count] = out.first[length if length < 63 else 63]
    out.first[length if length < 63 else 63] = out.count
    out.count += 1
    return 0


cdef void _xml_names_c(tuple names, XmlNames* out):
    """The header's names and ``names`` (xml_body_names' tuple) as the C table
    _xml_spans reads, each distinct name once with all it is read for; names must
    outlive out."""
    cdef int f, k, body = 0
    cdef bytes name
    out.count = 0
    out.prologue_len = 0
    memset(out.first, -1, sizeof(out.first))
    memset(out.tag, 0, sizeof(out.tag))
    out.tag_gen = 1
    out.tpl = NULL
    for k, name in enumerate(_XML_HEADER_NAMES):
        _xml_name_add(out, PyBytes_AS_STRING(name), len(name), XH_HEADER + k, 0)
    for f in range(4):
        for name in names[f]:
            body += 1
            if body > XML_MAX_NAMES:
                out.count = -1
                return
            _xml_name_add(out, PyBytes_AS_STRING(name), len(name), XH_NONE, 1 << f)


cdef inline const XmlName* _xml_name(const XmlNames* names, const unsigned char* p,
                                     Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The entry of the local name p[a:b], or NULL: most names are told apart by their
    length alone, so only the names of that length are compared."""
    cdef Py_ssize_t n = b - a
    cdef int k = names.first[n if n < 63 else 63]
    while k >= 0:
        if names.name[k].length == n and sg_eq_name(p + a, <const unsigned char*> names.name[k].name, n):
            return &names.name[k]
        k = names.next[k]
    return NULL


cdef bint _code_span(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, Py_ssize_t limit,
                     Py_ssize_t* oa, Py_ssize_t* ob) noexcept nogil:
    """An element value stripped into [oa, ob), oa = -1 when empty; False when longer
    than limit or holding a tab or line break (not printable: the reference rejects)."""
    cdef Py_ssize_t i
    a = _strip_a(p, a, b)
    b = _strip_b(p, a, b)
    oa[0] = ob[0] = -1
    if a == b:
        return True
    if b - a > limit:
        return False
    for i in range(a, b):
        if p[i] < 32:
            return False
    oa[0] = a
    ob[0] = b
    return True


cdef bint _finish_codes(const unsigned char* p, Py_ssize_t* el_a, Py_ssize_t* el_b,
                        Fields* f) noexcept nogil:
    """The four body elements' raw spans (-1: absent) into f's codes and imq."""
    cdef int k
    cdef Py_ssize_t[3] limit = [10, 10, 100]
    for k in range(3):
        f.code_a[k] = f.code_b[k] = -1
        if el_a[k] >= 0 and not _code_span(p, el_a[k], el_b[k], limit[k], &f.code_a[k], &f.code_b[k]):
            return False
    f.imq = el_a[3] >= 0 and _yes(p, el_a[3], el_b[3])
    return True


cdef inline object _span_str(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    return None if a < 0 else PyUnicode_DecodeASCII(<const char*> p + a, b - a, NULL)


cdef tuple _fields_tuple(const unsigned char* p, Fields* f):
    """f as a tuple in Message's order."""
    cdef int i
    dst = PyTuple_New(f.ndst)
    for i in range(f.ndst):
        d = _span_str(p, f.dst_a[i], f.dst_b[i])
        Py_INCREF(d)
        PyTuple_SET_ITEM(dst, i, d)
    return (_FMT_NAMES[f.fmt], _span_str(p, f.mke_a, f.mke_b), _span_str(p, f.ori_a, f.ori_b),
            dst, _span_str(p, f.ctl_a, f.ctl_b), _span_str(p, f.code_a[0], f.code_b[0]),
            _span_str(p, f.code_a[1], f.code_b[1]), _span_str(p, f.code_a[2], f.code_b[2]),
            bool(f.imq))

cdef tuple _FMT_NAMES = ("text", "xml", "json")


cdef object _answer(int verdict, const unsigned char* p, Fields* f):
    if verdict == REJECTED:
        raise Malformed("rejected by the fast path")
    return Message(*_fields_tuple(p, f)) if verdict == READ else None


def fast_decode_text(bytes payload):
    """The reference's Message for a plain text payload; None where the fast path
    declines; Malformed where it knows the reference rejects the payload."""
    cdef Fields f
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(payload)
    f.hint_table = NULL
    return _answer(_text_spans(p, len(payload), &f), p, &f)


def fast_decode_xml(bytes payload, tuple names):
    """As fast_decode_text, for a simple XML payload.  ``names``: the body element
    local names for pur, rsn, atn and imq, each a tuple of bytes."""
    cdef Fields f
    cdef XmlNames xn
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(payload)
    _xml_names_c(names, &xn)
    f.hint_table = NULL
    return _answer(_xml_spans(p, len(payload), &xn, &f), p, &f)


def fast_decode_json(bytes payload):
    """As fast_decode_text, for a simple JSON payload."""
    cdef Fields f
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(payload)
    f.hint_table = NULL
    return _answer(_json_spans(p, len(payload), &f), p, &f)


# ------------------------------------------------------------ JSON fast path
#
# The reference decodes with msgspec into a strict Struct, then checks the fields.
# This scanner reads the common shape: ASCII without escapes or control characters,
# each known key at most once, integers without exponents.  It checks the JSON
# grammar as it goes (the body too, which msgspec validates while skipping it) and
# declines anything else, for the reference to answer with its own error.

DEF JSON_MAX_DEPTH = 32

cdef enum:
    JK_MKE = 0
    JK_ORI = 1
    JK_DST = 2
    JK_CTL = 3
    JK_PUR = 4
    JK_RSN = 5
    JK_ATN = 6
    JK_IMQ = 7
    JK_BODY = 8


cdef unsigned char[256] _JWS  # JSON's whitespace: space, tab, LF, CR
for _c in range(256):
    _JWS[_c] = _c in (32, 9, 10, 13)


cdef inline Py_ssize_t _jws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The index of the first byte from i that is not JSON whitespace, or n.  Between
    tokens there is usually none, and a byte above the space is never whitespace: one
    compare, inlined at each of the forty or so calls a message makes (they were a
    sixth of a JSON message's instructions), and a table read a byte only after a
    byte that may be whitespace."""
    if i < n and p[i] > 32:
        return i
    while i < n and _JWS[p[i]]:
        i += 1
    return i


cdef inline Py_ssize_t _jstring(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """p[i] is '"': the index after the closing quote, or -1 (escape, control
    character, non-ASCII or DEL: declined)."""
    i = sg_find_special(p, i + 1, n, 34, 92)
    return i + 1 if i < n and p[i] == 34 else -1


cdef Py_ssize_t _jnumber(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """-?(0|[1-9][0-9]{0,17})(.[0-9]+)?, else -1."""
    cdef Py_ssize_t d
    if i < n and p[i] == 45:
        i += 1
    if i >= n or not (48 <= p[i] <= 57):
        return -1
    if p[i] == 48:
        i += 1
    else:
        d = i
        while i < n and 48 <= p[i] <= 57:
            i += 1
        if i - d > 18:
            return -1
    if i < n and p[i] == 46:
        i += 1
        d = i
        while i < n and 48 <= p[i] <= 57:
            i += 1
        if i == d or i - d > 18:
            return -1
    if i < n and (p[i] == 101 or p[i] == 69):  # exponents: declined
        return -1
    return i


cdef Py_ssize_t _jvalue(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int depth) noexcept nogil:
    """The index after the JSON value at p[i] (no leading whitespace), or -1."""
    cdef unsigned char c, close
    if i >= n:
        return -1
    c = p[i]
    if c == 34:
        return _jstring(p, i, n)
    if c == 123 or c == 91:  # object, array
        if depth >= JSON_MAX_DEPTH:
            return -1
        close = 125 if c == 123 else 93
        i = _jws(p, i + 1, n)
        if i < n and p[i] == close:
            return i + 1
        while True:
            if c == 123:
                if i >= n or p[i] != 34:
                    return -1
                i = _jstring(p, i, n)
                if i < 0:
                    return -1
                i = _jws(p, i, n)
                if i >= n or p[i] != 58:
                    return -1
                i = _jws(p, i + 1, n)
            i = _jvalue(p, i, n, depth + 1)
            if i < 0:
                return -1
            i = _jws(p, i, n)
            if i >= n:
                return -1
            if p[i] == close:
                return i + 1
            if p[i] != 44:
                return -1
            i = _jws(p, i + 1, n)
    if c == 116:
        return i + 4 if i + 4 <= n and memcmp(p + i, b"true", 4) == 0 else -1
    if c == 102:
        return i + 5 if i + 5 <= n and memcmp(p + i, b"false", 5) == 0 else -1
    if c == 110:
        return i + 4 if i + 4 <= n and memcmp(p + i, b"null", 4) == 0 else -1
    return _jnumber(p, i, n)


cdef inline int _jkey(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The known key spelled p[a:b] (inside the quotes), or -1."""
    if b - a == 4:
        return JK_BODY if memcmp(p + a, b"body", 4) == 0 else -1
    if b - a != 3:
        return -1
    if memcmp(p + a, b"mke", 3) == 0: return JK_MKE
    if memcmp(p + a, b"ori", 3) == 0: return JK_ORI
    if memcmp(p + a, b"dst", 3) == 0: return JK_DST
    if memcmp(p + a, b"ctl", 3) == 0: return JK_CTL
    if memcmp(p + a, b"pur", 3) == 0: return JK_PUR
    if memcmp(p + a, b"rsn", 3) == 0: return JK_RSN
    if memcmp(p + a, b"atn", 3) == 0: return JK_ATN
    if memcmp(p + a, b"imq", 3) == 0: return JK_IMQ
    return -1


# Each known key as a switch writes it, quotes and colon (`"mke":`), as sg_load8 reads
# its bytes, with the mask of those bytes: the top-level loop first compares the
# eight bytes at a key with the key that usually comes next, in the order msgspec
# and switches write them (mke, ori, dst, ctl, pur, rsn, atn, imq, body), instead of
# scanning the key's string, matching its name and looking for the colon.  When the
# bytes are not that key the loop reads them as before.
# After a value, the same with the comma before it (`,"ori":`, eight bytes at most):
# one compare in place of the whitespace, the comma and the key read one by one.
cdef uint64_t[9] _JKEY_WORD
cdef uint64_t[9] _JKEY_MASK
cdef Py_ssize_t[9] _JKEY_LEN
cdef uint64_t[9] _JNEXT_WORD
cdef uint64_t[9] _JNEXT_MASK
cdef Py_ssize_t[9] _JNEXT_LEN
for _k, _name in enumerate((b"mke", b"ori", b"dst", b"ctl", b"pur", b"rsn", b"atn", b"imq", b"body")):
    _lit = b'"' + _name + b'":'
    _JKEY_WORD[_k] = sg_load8(_lit + bytes(8 - len(_lit)))
    _JKEY_MASK[_k] = sg_load8(b"\xff" * len(_lit) + bytes(8 - len(_lit)))
    _JKEY_LEN[_k] = len(_lit)
    _lit = b"," + _lit
    _JNEXT_WORD[_k] = sg_load8(_lit + bytes(8 - len(_lit)))
    _JNEXT_MASK[_k] = sg_load8(b"\xff" * len(_lit) + bytes(8 - len(_lit)))
    _JNEXT_LEN[_k] = len(_lit)


cdef int _json_spans(const unsigned char* p, Py_ssize_t n, Fields* f) noexcept nogil:
    """Read a simple JSON payload into f, exactly as the reference would: READ,
    DECLINED or REJECTED."""
    cdef Py_ssize_t i, e, ka
    cdef Py_ssize_t[5] el_a   # ctl, pur, rsn, atn as strings (-1: absent or null), then
    cdef Py_ssize_t[5] el_b   # IMQ's element for _finish_codes: always absent, imq is a bool
    cdef int k, seen = 0, expect = JK_MKE
    cdef bint ok, imq, bad = False
    for k in range(5):
        el_a[k] = el_b[k] = -1
    f.ndst = 0
    f.imq = False
    i = _jws(p, 0, n)
    if i >= n or p[i] != 123:
        return False
    i = _jws(p, i + 1, n)
    if i < n and p[i] == 125:
        return False  # required keys missing
    k = -1
    while True:
        if k >= 0:
            pass  # the key after the last value, found with its comma (_JNEXT_WORD)
        elif i + 8 <= n and (sg_load8(p + i) & _JKEY_MASK[expect]) == _JKEY_WORD[expect]:
            k = expect  # the key that usually comes next, and its colon (_JKEY_WORD)
            i += _JKEY_LEN[k]
        else:
            if i >= n or p[i] != 34:
                return False
            ka = i + 1
            i = _jstring(p, i, n)
            if i < 0:
                return False
            k = _jkey(p, ka, i - 1)
            if k < 0:
                return REJECTED  # an unknown key: msgspec raises
            i = _jws(p, i, n)
            if i >= n or p[i] != 58:
                return False
            i += 1
        if seen & (1 << k):
            return False  # repeated: the reference's answer
        seen |= 1 << k
        expect = k + 1 if k < JK_BODY else JK_BODY
        i = _jws(p, i, n)
        if i >= n:
            return False
        if k == JK_MKE or k == JK_ORI:
            if p[i] != 34:
                return False
            e = _jstring(p, i, n)
            if e < 0:
                return False
            if k == JK_MKE:
                f.mke_a, f.mke_b = i + 1, e - 1
            else:
                f.ori_a, f.ori_b = i + 1, e - 1
                _hint_ori(f, p, f.ori_a, f.ori_b)
        elif k == JK_DST:
            if p[i] != 91:
                return False
            i = _jws(p, i + 1, n)
            if i < n and p[i] == 93:
                return False  # no destination
            while True:
                if i >= n or p[i] != 34 or f.ndst == 5:
                    return False
                e = _jstring(p, i, n)
                if e < 0:
                    return False
                if not _is_dst(p, i + 1, e - 1):
                    bad = True  # after a clean parse, the reference's check rejects
                f.dst_a[f.ndst] = i + 1
                f.dst_b[f.ndst] = e - 1
                f.ndst += 1
                _hint_party(f, p, i + 1, e - 1)
                i = _jws(p, e, n)
                if i >= n:
                    return False
                if p[i] == 93:
                    e = i + 1
                    break
                if p[i] != 44:
                    return False
                i = _jws(p, i + 1, n)
        elif k == JK_IMQ:
            e = _jvalue(p, i, n, 1)
            if e < 0 or p[i] == 34 or p[i] == 123 or p[i] == 91 or (48 <= p[i] <= 57) or p[i] == 45:
                return False  # not a bool or null
            f.imq = p[i] == 116
        elif k == JK_BODY:
            e = _jvalue(p, i, n, 1)
            if e < 0:
                return False
        else:  # ctl, pur, rsn, atn: a string or null
            if p[i] == 34:
                e = _jstring(p, i, n)
                if e < 0:
                    return False
                el_a[k - JK_CTL] = i + 1
                el_b[k - JK_CTL] = e - 1
            elif i + 4 <= n and memcmp(p + i, b"null", 4) == 0:
                e = i + 4
            else:
                return False
        if e + 8 <= n and (sg_load8(p + e) & _JNEXT_MASK[expect]) == _JNEXT_WORD[expect]:
            k = expect  # the comma, the next key and its colon, as msgspec writes them
            i = e + _JNEXT_LEN[k]
            continue
        k = -1
        i = _jws(p, e, n)
        if i >= n:
            return False
        if p[i] == 125:
            break
        if p[i] != 44:
            return False
        i = _jws(p, i + 1, n)
    if _jws(p, i + 1, n) != n:
        return False  # trailing characters
    # The parse was clean: from here every failure is the reference's too.
    if (seen & 7) != 7:
        return REJECTED  # mke, ori and dst are required
    f.mke_slot = _mke_slot(p, f.mke_a, f.mke_b)
    if bad or f.mke_slot < 0 or not _is_ori(p, f.ori_a, f.ori_b):
        return REJECTED
    # ctl: not stripped; empty is none
    f.ctl_a = f.ctl_b = -1
    if el_a[0] >= 0 and el_b[0] > el_a[0]:
        if el_b[0] - el_a[0] > 10:
            return REJECTED
        f.ctl_a, f.ctl_b = el_a[0], el_b[0]
    imq = f.imq
    ok = _finish_codes(p, el_a + 1, el_b + 1, f)
    f.imq = imq
    f.fmt = FMT_JSON
    return READ if ok else REJECTED


# Values of a message field map to rows of rule masks in C tables, so that deciding a
# message that the fast paths read touches no Python object:
#  - a party (an agency or a destination: 2 or 9 characters of A-Z 0-9) is packed
#    into a 54-bit key (six bits a character) and found in an open-addressing table
#    of 64-bit words, each the key and, in the top ten bits, the party's class: the
#    row of its agency mask, its destination mask and its groups.  Parties that the
#    policy treats alike share a class, so thousands of ORIs need a handful of rows,
#    which stay in cache, and a lookup reads one word of the table.  A party that no
#    entry of the policy matches (most of them) is not looked up at all: the sieve
#    below gives its class.  Filled on first sight, cleared when CACHE_LIMIT parties
#    are in it (a hostile stream of new ORIs cannot grow it).  Where a policy has too
#    many entries for a sieve, every party is in the table, and the parser asks for
#    a party's slot as it reads the ORI (_hint_party; bench/README, "the party table
#    in one word");
#  - a message key (2-3 letters) indexes a table of 27**3 rows, filled at start;
#  - a purpose or reason code is compared with the few codes the rules name.

DEF PARTY_MIN_BITS = 10        # the party table starts at 1,024 slots, at most three quarters full
DEF SIEVE_MAX = 12             # more tests than this: no sieve, every party in the table ...
DEF SIEVE_MAX_WIDE = 16        # ... or than this, where the sieve tests eight at a time
DEF SIEVE_SLOTS = 16           # a length's slots: SIEVE_MAX_WIDE tests at most, in two blocks of eight
DEF MKE_SLOTS = 19683          # 27 ** 3

cdef enum:
    PARTY_CLASS_SHIFT = 54     # a slot's low 54 bits are the key, its top ten bits the class,
    PARTY_CLASS_FAR = 1023     # or this: the class is in party_class[slot]


# The sieve: which packed parties match an entry of the policy at all.  A state sees
# thousands of agencies and its policy names a few of them; every other agency matches
# no entry, so its class is the same one (`nobody`), and it needs no slot in the party
# table, whose slots for thousands of ORIs are a cache line apart and whose probes
# vary in length.  An entry (an ORI, a code, a pattern) matches a packed party exactly
# when the party's key, masked to the positions the entry fixes, equals the entry's,
# and the party's length is one the entry allows.  The sieve makes that test for each
# entry that allows the party's length, without a branch that depends on the party: a
# few words in L1.  With the example policy's seven entries the decision path ran at
# x0.97 to x0.99 of the table's time; one test at a time, at about a dozen tests the
# sieve costs what the table does, so a policy with more has none; eight at a time
# (AVX-512F) sixteen cost what seven do, so the limit there is sixteen (sieve_limit;
# bench/README, "the agency sieve" and "the sieve's limit eight at a time").


def sieve_limit():
    """The most tests a policy's sieve has; a policy with more has none.  One test at a
    time the sieve costs what the party table does at about a dozen; eight at a time
    (AVX-512F, where the masks are wide too) nine to sixteen cost one more compare
    (bench/README, "the agency sieve" and "the sieve's limit eight at a time")."""
    return SIEVE_MAX_WIDE if sg_wide else SIEVE_MAX


def sieve_entries(entries):
    """The sieve's tests for ``entries`` (the policy's ORIs, codes and patterns, no
    ``@group``): a sorted list of ``(mask, key, lengths)``, one for each distinct mask
    and key; a packed party n characters long passes when its key masked is ``key`` and
    bit n of ``lengths`` is set.  An entry that no packed party (1 to 9 characters of
    A-Z 0-9) can match is left out.  Python-visible for tests."""
    tests = {}
    for entry in entries:
        star = entry.endswith("*")
        body = entry[:len(entry) - 1] if star else entry
        if len(body) > 9 or (not star and not body):
            continue  # longer than any packed party, or only the empty one
        mask = key = 0
        for i, c in enumerate(body):
            if c == "?":
                continue
            if not ("A" <= c <= "Z" or "0" <= c <= "9"):
                break  # a character no packed party has
            mask |= 63 << (6 * i)
            key |= (ord(c) & 63) << (6 * i)
        else:
            lengths = range(max(1, len(body)), 10) if star else (len(body),)
            tests[mask, key] = tests.get((mask, key), 0) | sum(1 << n for n in lengths)
    return sorted((mask, key, lengths) for (mask, key), lengths in tests.items())


cdef inline uint64_t _slot_key(uint64_t word) noexcept nogil:
    return word & ((<uint64_t> 1 << PARTY_CLASS_SHIFT) - 1)


cdef enum:
    ROW_ABSENT = 0             # code rows: no code in the message
    ROW_OTHER = 1              # a code no rule names


cdef struct CodeTable:       # the codes the rules name for one code field, and their rows
    int count
    int[256] row1              # the row of each one-byte code, the common kind
    Py_ssize_t* length         # per named code: its length in UTF-8 ...
    const char** text          # ... and its bytes (in a bytes object the Matcher keeps)
    uint64_t* masks            # rows: ROW_ABSENT, ROW_OTHER, then each named code


cdef void _free_codes(CodeTable* t) noexcept:
    free(t.length)
    free(t.text)
    free(t.masks)


cdef inline Py_ssize_t _code_row(const CodeTable* t, const unsigned char* p, Py_ssize_t a,
                                 Py_ssize_t b) noexcept nogil:
    """The row of the code p[a:b] (a < 0: no code)."""
    cdef int k
    if a < 0:
        return ROW_ABSENT
    if b - a == 1:
        return t.row1[p[a]]
    for k in range(t.count):
        if t.length[k] == b - a and sg_eq(p + a, <const unsigned char*> t.text[k], b - a):
            return 2 + k
    return ROW_OTHER


cdef inline uint64_t _party_key(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """1 to 9 characters of A-Z 0-9 packed six bits a character (their low six bits,
    which are distinct and never 0, so the key is never 0 and no two lengths meet);
    0 if not packable.  An ORI, the common case, is one eight-byte word and a byte."""
    cdef uint64_t k = 0
    cdef Py_ssize_t i
    if b - a == 9 or b - a == 2:
        return _party_packed(p, a, b) if _is_dst(p, a, b) else 0
    if b - a < 1 or b - a > 9:
        return 0
    for i in range(b - a):
        if not _alnum(p[a + i]):
            return 0
        k |= <uint64_t> (p[a + i] & 63) << (6 * i)
    return k


cdef inline uint64_t _party_packed(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """_party_key of a span a fast path has checked (_is_ori, _is_dst): 2 or 9
    characters of A-Z 0-9, so packed without looking again."""
    if b - a == 9:
        return sg_pack6(sg_load8(p + a)) | (<uint64_t> (p[a + 8] & 63) << 48)
    return <uint64_t> (p[a] & 63) | (<uint64_t> (p[a + 1] & 63) << 6)


cdef inline Py_ssize_t _party_slot(uint64_t key, int bits) noexcept nogil:
    """A key's home slot in a party table of 2**bits slots."""
    return <Py_ssize_t> ((key * <uint64_t> 0x9E3779B97F4A7C15) >> (64 - bits))


cdef inline void _hint_party(const Fields* f, const unsigned char* p, Py_ssize_t a,
                             Py_ssize_t b) noexcept nogil:
    """Start loading the party table's slot of the ORI p[a:b] that a fast path has just
    found (an agency's, or a destination's), so that it is in cache when the decision
    looks it up after the rest of the message is read.  A state sees thousands of
    ORIs, and their table lives in L3: the lookup's wait was a sixth of a text
    message's time (bench/README, "the party table in one word").  Only a hint: a
    span that is no ORI costs one useless load.  Not given when the matcher has a
    sieve (f.hint_table NULL), which spares most parties the lookup."""
    if b - a == 9:
        _prefetch_party(f, _party_packed(p, a, b))


cdef inline void _prefetch_party(const Fields* f, uint64_t key) noexcept nogil:
    """Start loading the slot where the party table (if f has one) keeps key."""
    if f.hint_table != NULL:
        sg_prefetch(f.hint_table + _party_slot(key, f.hint_bits))


cdef inline void _hint_ori(Fields* f, const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """_hint_party for the span a fast path reads as the originating ORI, whose packed
    key it keeps in f.ori_key for the decision (0: not 9 bytes).  A message is only
    READ when that span, stripped, is an ORI: 9 characters of A-Z 0-9, so a kept key
    is always the final span's."""
    f.ori_key = 0
    if b - a == 9:
        f.ori_key = _party_packed(p, a, b)
        _prefetch_party(f, f.ori_key)


cdef inline int _mke_slot(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The table slot of a 2-3 letter key, or -1."""
    cdef int s = 0, i
    if b - a < 2 or b - a > 3:
        return -1
    for i in range(3):
        if a + i < b:
            if not (65 <= p[a + i] <= 90):
                return -1
            s = s * 27 + (p[a + i] - 64)
        else:
            s = s * 27
    return s


cdef int _mke_slot_of(str key):
    cdef Py_ssize_t n
    cdef const unsigned char* s = _str_bytes(key, &n)
    return _mke_slot(s, 0, n) if s != NULL else -1


cdef inline const unsigned char* _str_bytes(str s, Py_ssize_t* n):
    """An ASCII str's characters (its canonical data), or NULL if it is not ASCII."""
    if not s.isascii():
        return NULL
    n[0] = len(s)
    return <const unsigned char*> PyUnicode_AsUTF8AndSize(s, n)


@cython.final
cdef class Matcher:
    """A compiled :class:`~proxy._policy.Policy`."""

    cdef readonly object policy
    cdef readonly str rev
    cdef readonly str mode
    cdef readonly bint monitor
    cdef readonly bint deny_reply
    cdef readonly object xml_fields
    cdef readonly tuple xml_names  # the body element names, as bytes, for the fast path
    # One for each direction (DIR_IN, DIR_OUT): queries from Nlets and the switch's
    # responses may begin with different prologues, and one kept for both would be
    # replaced at every turn, with the start tags and markup kept in its scope.
    cdef XmlNames xml_c[2]
    cdef Py_ssize_t n_rules, n_words
    cdef list rules, rule_ids, group_entries
    # the keys of Sequencer.counts a decision adds to, built once: per direction, for
    # rule r (n_rules: the default) and action k (ACT_*) at 2 * r + k, then the rejects'
    # (REJ_*) after them
    cdef tuple count_keys
    cdef Py_ssize_t n_counts      # len(count_keys[d]): the slots of a chunk's counts array
    cdef int default_action
    cdef uint64_t* acc
    cdef uint64_t* dst_acc
    # constant masks, each n_words long, in one block
    cdef uint64_t* consts
    cdef uint64_t* decide_mask
    cdef uint64_t* shadow_mask
    cdef uint64_t* deny_mask
    cdef uint64_t* dst_free
    cdef uint64_t* agency_none
    cdef uint64_t* flag_masks     # [(direction * 2 + imq) * 2 + has_atn]: the three ANDed
    # message keys
    cdef int* mke_row
    cdef uint64_t* mke_masks
    # purpose and reason codes: rows ROW_ABSENT, ROW_OTHER, then one per named code
    cdef CodeTable pur, rsn
    cdef bytes code_text          # the named codes' bytes, which pur and rsn point into
    # parties
    cdef uint64_t* party_table    # slots: a packed party (_party_key) | class << 54; 0 empty
    cdef int* party_class         # each slot's class, read when the word says PARTY_CLASS_FAR
    cdef int party_bits
    cdef uint64_t* party_masks    # per class: agency mask, destination mask, group set
    cdef Py_ssize_t party_stride  # words per class: 2 * n_words + 1
    cdef dict class_index         # a class's row, as bytes: the class
    cdef list group_sets          # distinct (groups, groups as JSON), few in any policy
    cdef dict group_set_index
    cdef readonly int party_count  # parties in the table (readonly: for tests)
    # the sieve's tests (see above), a mask and a key each: for a party of length n
    # (1 to 9) sieve_count[n] of them from slot SIEVE_SLOTS * n on, the rest of its
    # slots never passed (sg_sieve_hit_way); none unless sieved
    cdef uint64_t sieve_mask[10 * SIEVE_SLOTS]
    cdef uint64_t sieve_key[10 * SIEVE_SLOTS]
    cdef int sieve_count[10]
    cdef readonly bint sieved     # whether the policy has a sieve (see _sieve_build)
    cdef int nobody               # the class of a party that matches no entry of the policy
    # the last destination looked up and its destination mask word (up to 64 rules):
    # nearly every message names the same one, the state's own code.  The word is the
    # policy's answer for that party, not its class's number, so it stays right when
    # the party table is emptied.  Key 0: none (a packed party is never 0).
    cdef uint64_t dst_last_key, dst_last_mask
    # log-line pieces, JSON-encoded once: rule ids and more
    cdef readonly list rule_json
    cdef readonly object reply_writer  # the policy's ER replies: XML ones, and these pieces
    cdef bytes rp_text_head, rp_text_denied, rp_json_head, rp_json_body
    cdef tuple rp_text_rule, rp_text_why, rp_json_rule
    cdef bytes line_mode, line_rev  # the log line's ,"mode":…,"forwarded": and ,"rev":…,"bytes":
    # results of the last decide call
    cdef Py_ssize_t last_rule, last_shadow
    cdef int last_party              # class of the agency, -1: none
    cdef object last_agency, last_groups

    def __cinit__(self):
        self.acc = NULL
        self.dst_acc = NULL
        self.consts = NULL
        self.flag_masks = NULL
        self.mke_row = NULL
        self.mke_masks = NULL
        memset(&self.pur, 0, sizeof(CodeTable))
        memset(&self.rsn, 0, sizeof(CodeTable))
        self.party_table = NULL
        self.party_class = NULL
        self.party_masks = NULL
        self.sieved = False

    def __init__(self, policy):
        cdef Py_ssize_t nw, i
        cdef int k, slot
        cdef Py_ssize_t n
        cdef const unsigned char* s
        cdef const char* text
        cdef const uint64_t* dir_masks    # [DIR_IN], [DIR_OUT]: for flag_masks alone
        cdef const uint64_t* imq_masks    # [False], [True]
        cdef const uint64_t* atn_masks    # [missing], [present]
        self.policy = policy
        self.rev = policy.rev
        self.mode = policy.mode
        self.monitor = policy.mode == "monitor"
        self.deny_reply = policy.deny_reply
        self.xml_fields = policy.xml
        self.xml_names = xml_body_names(policy.xml)
        for i in range(2):
            free(self.xml_c[i].tpl)
            _xml_names_c(self.xml_names, &self.xml_c[i])
            self.xml_c[i].tpl = <XmlTemplates*> calloc(1, sizeof(XmlTemplates))
            if self.xml_c[i].tpl == NULL:
                raise MemoryError()
        self.rules = list(policy.rules)
        self.rule_ids = [r.id for r in self.rules]
        self.count_keys = tuple(
            tuple([(direction, "deny" if k == ACT_DENY else "allow", rid)
                   for rid in self.rule_ids + ["default"] for k in range(2)]
                  + [(direction, "reject", rule) for rule in _REJECT_RULES])
            for direction in ("in", "out"))
        self.n_counts = len(self.count_keys[0])
        self.rule_json = [_json.encode(rid) for rid in self.rule_ids] + [b'"default"']
        self.line_mode = b',"mode":' + _json.encode(policy.mode) + b',"forwarded":'
        self.line_rev = b',"rev":' + _json.encode(policy.rev) + b',"bytes":'
        self.reply_writer = ReplyWriter(policy)
        (self.rp_text_head, self.rp_text_denied, self.rp_text_rule, self.rp_text_why,
         self.rp_json_head, self.rp_json_body, self.rp_json_rule) = self.reply_writer.pieces()
        self.n_rules = len(self.rules)
        self.n_words = nw = max(1, (self.n_rules + 63) // 64)
        self.group_entries = [(g.name, g.ori) for g in policy.groups]
        self.default_action = ACT_DENY if policy.default == "deny" else ACT_ALLOW
        self.acc = <uint64_t*> _alloc(nw)
        self.dst_acc = <uint64_t*> _alloc(nw)
        self.consts = <uint64_t*> _alloc(11 * nw)
        rules = self.rules
        self.decide_mask = self._fill(0, [not r.shadow for r in rules])
        self.shadow_mask = self._fill(1, [r.shadow for r in rules])
        self.deny_mask = self._fill(2, [r.action == "deny" for r in rules])
        dir_masks = self._fill(3, [r.direction in ("in", "any") for r in rules])
        self._fill(4, [r.direction in ("out", "any") for r in rules])
        imq_masks = self._fill(5, [r.photo is None or not r.photo for r in rules])
        self._fill(6, [r.photo is None or r.photo for r in rules])
        atn_masks = self._fill(7, [r.attention != "present" for r in rules])
        self._fill(8, [r.attention != "missing" for r in rules])
        self.dst_free = self._fill(9, [r.dst is None for r in rules])
        self.agency_none = self._fill(10, [r.agency is None for r in rules])
        self.flag_masks = _alloc(8 * nw)
        for k in range(8):
            for i in range(nw):
                self.flag_masks[k * nw + i] = (dir_masks[(k >> 2) * nw + i]
                                               & imq_masks[((k >> 1) & 1) * nw + i]
                                               & atn_masks[(k & 1) * nw + i])

        # message keys: row 0 for keys no rule names, then one row per named key
        named = [key for key in sorted({key for r in rules if r.mke is not None for key in r.mke})
                 if _mke_slot_of(key) >= 0]  # a key no message can have is never looked up
        self.mke_row = <int*> malloc(MKE_SLOTS * sizeof(int))
        self.mke_masks = _alloc((1 + len(named)) * nw)
        if self.mke_row == NULL:
            raise MemoryError()
        for slot in range(MKE_SLOTS):
            self.mke_row[slot] = 0
        self._set_row(self.mke_masks, 0, [r.mke is None for r in rules])
        for k, key in enumerate(named):
            self.mke_row[_mke_slot_of(key)] = k + 1
            self._set_row(self.mke_masks, k + 1, [r.mke is None or key in r.mke for r in rules])

        pur_named = self._code_table([r.purpose for r in rules], &self.pur)
        rsn_named = self._code_table([r.reason for r in rules], &self.rsn)
        self.code_text = b"".join(pur_named + rsn_named)
        text = PyBytes_AS_STRING(self.code_text)
        for k, code in enumerate(pur_named):
            self.pur.length[k] = len(code)
            self.pur.text[k] = text
            text += len(code)
        for k, code in enumerate(rsn_named):
            self.rsn.length[k] = len(code)
            self.rsn.text[k] = text
            text += len(code)

        self.party_bits = PARTY_MIN_BITS
        self.party_table = _alloc(1 << PARTY_MIN_BITS)
        self.party_class = <int*> calloc(1 << PARTY_MIN_BITS, sizeof(int))
        if self.party_class == NULL:
            raise MemoryError()
        self.party_stride = 2 * nw + 1
        self.party_masks = _alloc((CACHE_LIMIT + 1) * self.party_stride)  # the parties' and nobody's
        self.group_sets = []
        self.group_set_index = {}
        self.class_index = {}
        self.party_count = 0
        self.nobody = self._class_of(None)
        self.dst_last_key = 0
        self._sieve_build(policy.party_entries())

    def __dealloc__(self):
        free(self.acc)
        free(self.dst_acc)
        free(self.consts)
        free(self.flag_masks)
        free(self.mke_row)
        free(self.mke_masks)
        _free_codes(&self.pur)
        _free_codes(&self.rsn)
        free(self.party_table)
        free(self.party_class)
        free(self.party_masks)
        free(self.xml_c[DIR_IN].tpl)
        free(self.xml_c[DIR_OUT].tpl)

    # ------------------------------------------------------------ building masks

    cdef void _set_row(self, uint64_t* table, Py_ssize_t row, list bits):
        cdef Py_ssize_t i, nw = self.n_words
        cdef uint64_t* m = table + row * nw
        for i in range(nw):
            m[i] = 0
        for i in range(len(bits)):
            if bits[i]:
                m[i >> 6] |= (<uint64_t> 1) << (i & 63)

    cdef uint64_t* _fill(self, Py_ssize_t which, list bits):
        self._set_row(self.consts, which, bits)
        return self.consts + which * self.n_words

    cdef list _code_table(self, list conditions, CodeTable* out):
        """Rows for one code field into out: absent, a code no rule names, then each
        named code (``none`` in a rule names the absent code, never a code spelled
        ``none``); returns the named codes as UTF-8, for the caller to point out's
        length and text at."""
        named = sorted({c for cond in conditions if cond is not None for c in cond if c != "none"})
        out.length = <Py_ssize_t*> calloc(max(1, len(named)), sizeof(Py_ssize_t))
        out.text = <const char**> calloc(max(1, len(named)), sizeof(char*))
        if out.length == NULL or out.text == NULL:
            raise MemoryError()
        out.count = len(named)
        for k in range(256):
            out.row1[k] = ROW_OTHER
        cdef uint64_t* masks = _alloc((2 + len(named)) * self.n_words)
        out.masks = masks
        self._set_row(masks, ROW_ABSENT, [cond is None or "none" in cond for cond in conditions])
        self._set_row(masks, ROW_OTHER, [cond is None for cond in conditions])
        encoded = [c.encode("utf-8", "surrogatepass") for c in named]
        for k, code in enumerate(named):
            self._set_row(masks, 2 + k, [cond is None or code in cond for cond in conditions])
            if len(encoded[k]) == 1:
                out.row1[encoded[k][0]] = 2 + k  # a one-byte code: its row without a search
        return encoded

    # ------------------------------------------------------------- parties

    cdef tuple _groups(self, str value):
        return tuple([name for name, entries in self.group_entries
                      if any(pattern_match(e, value) for e in entries)])

    cdef bint _entry(self, str entry, str value, tuple groups):
        if entry[0] == u'@':
            return entry[1:] in groups
        return pattern_match(entry, value)

    cdef int _class_of(self, str value) except -1:
        """Compute the masks and groups of the party spelled value (None: a party that
        matches no entry of the policy) and find or make their class."""
        cdef int e
        cdef uint64_t* row
        groups = self._groups(value) if value is not None else ()
        e = len(self.class_index)  # never more classes than parties, and nobody
        row = self.party_masks + e * self.party_stride
        self._set_row(row, 0, [
            r.agency is None or (value is not None and any(self._entry(x, value, groups) for x in r.agency))
            for r in self.rules])
        self._set_row(row, 1, [
            r.dst is not None and value is not None and any(self._entry(x, value, groups) for x in r.dst)
            for r in self.rules])
        gid = self.group_set_index.get(groups)
        if gid is None:
            gid = self.group_set_index[groups] = len(self.group_sets)
            self.group_sets.append((groups, _json.encode(groups)))
        row[2 * self.n_words] = <uint64_t> gid
        return self.class_index.setdefault(
            PyBytes_FromStringAndSize(<const char*> row, self.party_stride * sizeof(uint64_t)), e)

    cdef int _party_add(self, uint64_t key, str value) except -1:
        """Find or make a party's class and enter the party (key 0: not packable, not
        entered); returns the class."""
        cdef int e
        if self.party_count >= CACHE_LIMIT:
            memset(self.party_table, 0, (<Py_ssize_t> 1 << self.party_bits) * sizeof(uint64_t))
            self.party_count = 0
            self.group_sets = []
            self.group_set_index = {}
            self.class_index = {}
            self.nobody = self._class_of(None)
        e = self._class_of(value)
        self.party_count += 1
        if key:
            if 4 * self.party_count > 3 * (1 << self.party_bits):
                self._party_grow()
            self._party_put(key, e)
        return e

    cdef int _sieve_build(self, list entries) except -1:
        """The sieve for the policy's entries; none if there are more than
        sieve_limit() (the sieve tries each for every party)."""
        tests = sieve_entries(entries)
        if len(tests) > sieve_limit():
            return 0
        cdef int i, n
        for i in range(10 * SIEVE_SLOTS):
            self.sieve_mask[i] = 0  # a slot past the tests: no key passes
            self.sieve_key[i] = 1
        for n in range(10):
            i = SIEVE_SLOTS * n
            for mask, key, lengths in tests:
                if n > 0 and (lengths >> n) & 1:
                    self.sieve_mask[i] = mask
                    self.sieve_key[i] = key
                    i += 1
            self.sieve_count[n] = i - SIEVE_SLOTS * n
        self.sieved = True
        return 0

    cdef inline bint _sieve_hit(self, uint64_t key, Py_ssize_t n) noexcept:
        """Whether the packed party key, n (1 to 9) characters long, matches an entry."""
        return self._sieve_hit_way(sg_wide, key, n)

    cdef inline bint _sieve_hit_way(self, bint wide, uint64_t key, Py_ssize_t n) noexcept:
        """_sieve_hit, eight tests at a time (wide: only where AVX512) or one at a time."""
        return sg_sieve_hit_way(wide, &self.sieve_mask[SIEVE_SLOTS * n], &self.sieve_key[SIEVE_SLOTS * n],
                                self.sieve_count[n], key)

    def sieve_passes(self, str party, bint wide):
        """Whether the sieve lets the party through (it may match an entry), tested
        eight at a time with AVX-512F (wide; ValueError where this machine cannot) or
        one at a time: for the tests, which hold both ways to the entries.  party: 1 to
        9 characters of A-Z 0-9; a matcher without a sieve lets every party through."""
        cdef Py_ssize_t n = len(party)
        cdef uint64_t key
        cdef bytes b = party.encode("ascii")
        if wide and not AVX512:
            raise ValueError("this machine has no AVX-512")
        key = _party_key(<const unsigned char*> PyBytes_AS_STRING(b), 0, n)
        if not key:
            raise ValueError(f"not a packable party: {party!r}")
        if not self.sieved:
            return True
        return self._sieve_hit_way(wide, key, n)

    cdef inline Py_ssize_t _party_home(self, uint64_t key) noexcept:
        return _party_slot(key, self.party_bits)

    cdef void _party_put(self, uint64_t key, int cls) noexcept:
        cdef Py_ssize_t h = self._party_home(key)
        cdef Py_ssize_t wrap = (<Py_ssize_t> 1 << self.party_bits) - 1
        while self.party_table[h] != 0:
            h = (h + 1) & wrap
        self.party_table[h] = key | (<uint64_t> (cls if cls < PARTY_CLASS_FAR else PARTY_CLASS_FAR)
                                     << PARTY_CLASS_SHIFT)
        self.party_class[h] = cls

    cdef int _party_grow(self) except -1:
        """Double the table (it stays at most three quarters full).  Its size, not the
        length of a probe, is what a lookup costs: a state's thousands of ORIs are
        looked up at random, and each a cache line away.  With the year's 18,012 ORIs
        the table is 256 KiB at most three quarters full, 512 KiB at most half, and
        `bench/ab.py --decide --one-process` put the first at x0.977 to x0.992 of the
        second and a quarter full at x1.075 (bench/README, "the party table smaller")."""
        cdef uint64_t* old = self.party_table
        cdef int* old_class = self.party_class
        cdef Py_ssize_t i, n = <Py_ssize_t> 1 << self.party_bits
        cdef int* classes = <int*> calloc(2 * n, sizeof(int))
        if classes == NULL:
            raise MemoryError()
        try:
            self.party_table = _alloc(2 * n)
        except MemoryError:
            free(classes)
            raise
        self.party_class = classes
        self.party_bits += 1
        for i in range(n):
            if old[i]:
                self._party_put(_slot_key(old[i]), old_class[i])
        free(old)
        free(old_class)
        return 0

    cdef inline int _party(self, const unsigned char* p, Py_ssize_t a, Py_ssize_t b) except -1:
        """The class of the party spelled p[a:b]."""
        return self._party_at(_party_key(p, a, b), p, a, b)

    cdef inline int _party_at(self, uint64_t key, const unsigned char* p, Py_ssize_t a,
                              Py_ssize_t b) except -1:
        """The class of the party spelled p[a:b], whose key is given (0: not packable)."""
        cdef uint64_t k
        cdef Py_ssize_t h, wrap
        cdef int cls
        if key:
            if self.sieved and not self._sieve_hit(key, b - a):
                return self.nobody
            h = self._party_home(key)
            wrap = (<Py_ssize_t> 1 << self.party_bits) - 1
            while True:
                k = self.party_table[h]
                if _slot_key(k) == key:
                    cls = <int> (k >> PARTY_CLASS_SHIFT)
                    return cls if cls != PARTY_CLASS_FAR else self.party_class[h]
                if k == 0:
                    break
                h = (h + 1) & wrap
        return self._party_add(key, PyUnicode_DecodeLatin1(<const char*> p + a, b - a, NULL))

    cdef int _party_str(self, str value) except -1:
        cdef Py_ssize_t n
        cdef const unsigned char* s = _str_bytes(value, &n)
        if s == NULL:
            return self._party_add(0, value)  # not packable: computed, never found again
        return self._party(s, 0, n)

    # ------------------------------------------------------------- code rows

    cdef Py_ssize_t _code_row_str(self, const CodeTable* t, object value) except -1:
        if value is None:
            return ROW_ABSENT
        b = (<str> value).encode("utf-8", "surrogatepass")
        return _code_row(t, <const unsigned char*> PyBytes_AS_STRING(b), 0, len(b))

    # ------------------------------------------------------------------ decide

    cdef inline int _decide(self, int agency, int mke, Py_ssize_t pur, Py_ssize_t rsn,
                            bint has_atn, bint imq, int direction) noexcept:
        """The decision from rows; dst_acc must hold the destinations' mask.  agency:
        the agency's class, -1 when there is none.  Sets last_rule (-1: default),
        last_shadow (-1: none); returns ACT_ALLOW or ACT_DENY."""
        cdef Py_ssize_t w, nw = self.n_words, idx = -1, s = -1
        cdef const uint64_t* am = (self.party_masks + agency * self.party_stride) if agency >= 0 else self.agency_none
        cdef const uint64_t* fm = self.flag_masks + ((direction * 2 + (1 if imq else 0)) * 2 + (1 if has_atn else 0)) * nw
        cdef const uint64_t* mm = self.mke_masks + mke * nw
        cdef const uint64_t* pm = self.pur.masks + pur * nw
        cdef const uint64_t* rm = self.rsn.masks + rsn * nw
        cdef uint64_t bits, d, sh
        if nw == 1:  # up to 64 rules, the common case: no loop
            bits = am[0] & fm[0] & mm[0] & pm[0] & rm[0] & self.dst_acc[0]
            d = bits & self.decide_mask[0]
            sh = bits & self.shadow_mask[0]
            if d:
                idx = sg_ctz64(d)
                sh &= (d & (~d + 1)) - 1  # shadow rules before the deciding one
            if sh:
                s = sg_ctz64(sh)
        else:
            for w in range(nw):
                bits = am[w] & fm[w] & mm[w] & pm[w] & rm[w] & self.dst_acc[w]
                if s < 0:
                    d = bits & self.shadow_mask[w]
                    if d:
                        s = w * 64 + sg_ctz64(d)
                d = bits & self.decide_mask[w]
                if d:
                    idx = w * 64 + sg_ctz64(d)
                    break
            if idx >= 0 and s > idx:
                s = -1
        self.last_rule = idx
        self.last_shadow = s
        if idx < 0:
            return self.default_action
        return ACT_DENY if (self.deny_mask[idx >> 6] >> (idx & 63)) & 1 else ACT_ALLOW

    cdef inline Py_ssize_t _group_set(self, int cls) noexcept:
        """The index in group_sets of a party's groups."""
        return <Py_ssize_t> self.party_masks[cls * self.party_stride + 2 * self.n_words]

    cdef inline void _dst_start(self) noexcept:
        cdef Py_ssize_t w
        for w in range(self.n_words):
            self.dst_acc[w] = self.dst_free[w]

    cdef inline void _dst_add(self, int cls) noexcept:
        cdef Py_ssize_t w, nw = self.n_words
        cdef const uint64_t* m = self.party_masks + cls * self.party_stride + nw
        for w in range(nw):
            self.dst_acc[w] |= m[w]

    cdef int _decide_fields(self, const unsigned char* p, Fields* f, int direction) except -2:
        """Decide what a fast path read (its ORI and destinations checked); sets
        last_party too."""
        cdef int i, agency
        cdef uint64_t dst, key, m
        if self.n_words == 1:
            dst = self.dst_free[0]
            for i in range(f.ndst):
                key = _party_packed(p, f.dst_a[i], f.dst_b[i])
                if key == self.dst_last_key:
                    dst |= self.dst_last_mask
                else:
                    m = self.party_masks[self._party_at(key, p, f.dst_a[i], f.dst_b[i]) * self.party_stride + 1]
                    self.dst_last_key = key
                    self.dst_last_mask = m
                    dst |= m
            self.dst_acc[0] = dst
        else:
            self._dst_start()
            for i in range(f.ndst):
                self._dst_add(self._party_at(_party_packed(p, f.dst_a[i], f.dst_b[i]), p, f.dst_a[i],
                                             f.dst_b[i]))
        # the agency last: entering a new party may clear the table
        if direction == DIR_IN:
            agency = self._party_at(f.ori_key if f.ori_key else _party_packed(p, f.ori_a, f.ori_b), p,
                                    f.ori_a, f.ori_b)
        else:
            agency = self._party_at(_party_packed(p, f.dst_a[0], f.dst_b[0]), p, f.dst_a[0], f.dst_b[0])
        self.last_party = agency
        return self._decide(agency, self.mke_row[f.mke_slot],
                            _code_row(&self.pur, p, f.code_a[0], f.code_b[0]),
                            _code_row(&self.rsn, p, f.code_a[1], f.code_b[1]),
                            f.code_a[2] >= 0, f.imq, direction)

    cdef int decide_c(self, str mke, str ori, tuple dst, object pur, object rsn,
                      bint has_atn, bint imq, int direction) except -1:
        """Decide from Python values.  Sets last_rule, last_shadow, last_agency and
        last_groups; returns ACT_ALLOW or ACT_DENY."""
        cdef int agency = -1, slot
        cdef Py_ssize_t n
        cdef const unsigned char* s
        self._dst_start()
        for d in dst:
            self._dst_add(self._party_str(d))
        agency_value = ori if direction == DIR_IN else (dst[0] if dst else None)
        if agency_value is not None:
            agency = self._party_str(agency_value)
        self.last_agency = agency_value
        self.last_groups = (<tuple> self.group_sets[self._group_set(agency)])[0] if agency >= 0 else ()
        s = _str_bytes(mke, &n) if mke is not None else NULL
        slot = _mke_slot(s, 0, n) if s != NULL else -1
        return self._decide(agency, self.mke_row[slot] if slot >= 0 else 0,
                            self._code_row_str(&self.pur, pur),
                            self._code_row_str(&self.rsn, rsn), has_atn, imq, direction)

    def decide(self, msg, str direction):
        """Python-visible: (action, rule, shadow, agency, groups) for one Message."""
        cdef int act = self.decide_c(msg.mke, msg.ori, msg.dst, msg.pur, msg.rsn,
                                     msg.atn is not None, msg.imq,
                                     DIR_IN if direction == "in" else DIR_OUT)
        return (
            "deny" if act == ACT_DENY else "allow",
            self.rule_ids[self.last_rule] if self.last_rule >= 0 else "default",
            self.rule_ids[self.last_shadow] if self.last_shadow >= 0 else None,
            self.last_agency,
            self.last_groups,
        )

    def xml_markup_kept(self, str direction):
        """(documents read by their markup's path, segments kept, bytes kept) in the
        direction given ("in" or "out"): how the XML fast path's kept markup
        (XmlTemplates) is doing, for tests and benchmarks."""
        cdef const XmlNames* names = &self.xml_c[DIR_IN if direction == "in" else DIR_OUT]
        cdef const XmlTemplates* t = names.tpl
        if t == NULL:
            return (0, 0, 0)
        if t.gen != names.tag_gen:
            return (t.hits, 0, 0)
        return (t.hits, t.nodes - 1, t.used)

    def rule(self, str rule_id):
        """The Rule with this id (for deny replies), or None."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None


cdef uint64_t* _alloc(Py_ssize_t words) except NULL:
    cdef uint64_t* m = <uint64_t*> calloc(max(1, words), sizeof(uint64_t))
    if m == NULL:
        raise MemoryError()
    return m


DEF STREAM_AHEAD = 1024        # how far past the frame decided the engine loads its chunk into cache
DEF TEXT_STACK_WORDS = 32      # the text masks of payloads up to 2 KiB live on the stack


cdef inline Py_ssize_t _destinations(const unsigned char* p, SgWalk* stops, Py_ssize_t a,
                              Py_ssize_t b, Fields* f, Py_ssize_t* ctl_a,
                              Py_ssize_t* ctl_b) noexcept nogil:
    """The reference's _split_destinations over the segments of p[a:b], one line:
    destinations (added to f's) and control field up to the TXT marker.  ``stops``
    walks the line's periods from a on, to b.  Returns where the rest after ``TXT``
    starts; -1 when there is no marker or the reference would reject (decline)."""
    cdef Py_ssize_t i, seg_a = a
    while True:
        i = sg_walk_next(stops)  # in a line, every stop is a '.'
        if i - seg_a >= 3 and p[seg_a] == 84 and p[seg_a + 1] == 88 and p[seg_a + 2] == 84 \
                and not _is_dst(p, seg_a, i):  # the TXT marker
            return seg_a + 3
        if i > seg_a and p[seg_a] == 42:  # '*': the control field
            if ctl_a[0] >= 0:
                return -1
            ctl_a[0] = seg_a + 1
            ctl_b[0] = i
        else:
            if ctl_a[0] >= 0 or f.ndst == 5 or not _is_dst(p, seg_a, i):
                return -1
            f.dst_a[f.ndst] = seg_a
            f.dst_b[f.ndst] = i
            f.ndst += 1
            _hint_party(f, p, seg_a, i)
        if i == b:
            return -1
        seg_a = i + 1


cdef inline Py_ssize_t _line(const unsigned char* p, const uint64_t* lf, Py_ssize_t n,
                             Py_ssize_t pos, Py_ssize_t* a, Py_ssize_t* b) noexcept nogil:
    """The line starting at pos, stripped of spaces and CR, as [a, b); returns the
    index of its LF (or n)."""
    cdef Py_ssize_t e = sg_next_bit(lf, pos, n)
    a[0] = pos
    b[0] = e
    while a[0] < b[0] and (p[a[0]] == 32 or p[a[0]] == 13):
        a[0] += 1
    while b[0] > a[0] and (p[b[0] - 1] == 32 or p[b[0] - 1] == 13):
        b[0] -= 1
    return e


cdef bint _clock(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The reference's ``\\d\\d:\\d\\d\\b`` at the start of p[a:b]."""
    cdef unsigned char c
    if b - a < 5:
        return False
    if not (48 <= p[a] <= 57 and 48 <= p[a + 1] <= 57 and p[a + 2] == 58
            and 48 <= p[a + 3] <= 57 and 48 <= p[a + 4] <= 57):
        return False
    if b - a == 5:
        return True
    c = p[a + 5]
    return not (_alnum(c) or (97 <= c <= 122) or c == 95)


cdef int _text_spans(const unsigned char* p, Py_ssize_t n, Fields* f) noexcept nogil:
    """Read a plain text payload into f, exactly as the reference would: READ,
    DECLINED or REJECTED.  The payload's bytes are classified once, sixteen at a time,
    into bit masks (sg_text_masks), in which lines, parts and elements are found."""
    cdef uint64_t[4 * TEXT_STACK_WORDS] stack
    cdef uint64_t* m = stack
    cdef Py_ssize_t words = (n + 63) >> 6
    cdef int verdict
    if n == 0:
        return DECLINED
    if words > TEXT_STACK_WORDS:
        m = <uint64_t*> malloc(4 * words * sizeof(uint64_t))
        if m == NULL:
            return DECLINED
    sg_text_masks(p, n, m, m + words, m + 2 * words, m + 3 * words)
    verdict = _text_read(p, n, m, m + words, m + 2 * words, m + 3 * words, f)
    if m != stack:
        free(m)
    return verdict


cdef int _text_read(const unsigned char* p, Py_ssize_t n, const uint64_t* lf,
                    const uint64_t* stop, const uint64_t* tags, const uint64_t* bad,
                    Fields* f) noexcept nogil:
    """_text_spans on the payload's masks."""
    cdef Py_ssize_t i, k, e, start, end, le, dot1, dot2, body
    cdef Py_ssize_t l1a, l1b, l2a, l2b, l3a, l3b, ta, tb, star, na, nb
    cdef Py_ssize_t ctl_a = -1, ctl_b = -1, cta = -1, ctb = -1
    cdef int which, ntok, clock_ndst, seen
    cdef Py_ssize_t w, words
    cdef uint64_t bits
    cdef bint output_form
    cdef SgWalk stops
    # Only printable ASCII, LF, and CR before LF or at the end.
    i = sg_next_bit(bad, 0, n)
    while i < n:
        if not (p[i] == 13 and (i + 1 == n or p[i + 1] == 10)):
            return DECLINED
        i = sg_next_bit(bad, i + 1, n)
    start = 0
    while start < n and (p[start] == 32 or p[start] == 13 or p[start] == 10):
        start += 1
    if start == n:
        return DECLINED
    le = _line(p, lf, n, start, &start, &end)
    # In plain ASCII this first line is the reference's, which checks MKE.ORI first.
    sg_walk_start(&stops, stop, start, end)
    dot1 = sg_walk_next(&stops)
    if dot1 == end:
        return REJECTED  # not MKE.ORI
    dot2 = sg_walk_next(&stops)
    f.mke_a, f.mke_b = start, dot1
    f.ori_a, f.ori_b = dot1 + 1, dot2
    # The reference's choice: the input form has a third segment, and a non-empty one
    # when there are exactly three.
    output_form = dot2 == end or dot2 == end - 1
    f.mke_slot = _mke_slot(p, f.mke_a, f.mke_b)
    if f.mke_slot < 0 or not _is_ori(p, f.ori_a, f.ori_b):
        return REJECTED
    _hint_ori(f, p, f.ori_a, f.ori_b)
    f.ndst = 0
    if not output_form:
        body = _destinations(p, &stops, dot2 + 1, end, f, &ctl_a, &ctl_b)  # the walk goes on
        if body < 0:
            return DECLINED
    else:
        # MKE.ORI, two clock lines (the second may end in DEST[*CTL]), then TXT.
        if le >= n:
            return DECLINED
        le = _line(p, lf, n, le + 1, &l1a, &l1b)
        if le >= n:
            return DECLINED
        le = _line(p, lf, n, le + 1, &l2a, &l2b)
        if le >= n:
            return DECLINED
        le = _line(p, lf, n, le + 1, &l3a, &l3b)
        if not _clock(p, l1a, l1b) or not _clock(p, l2a, l2b):
            return DECLINED
        # the last of four or more space-separated tokens on the second clock line
        ntok = 0
        i = l2a
        ta = tb = -1
        while i < l2b:
            while i < l2b and p[i] == 32:
                i += 1
            if i == l2b:
                break
            ta = i
            while i < l2b and p[i] != 32:
                i += 1
            tb = i
            ntok += 1
        if ntok >= 4:
            star = ta
            while star < tb and p[star] != 42:
                star += 1
            na, nb = ta, star
            while nb > na and p[nb - 1] == 46:
                nb -= 1
            if _is_dst(p, na, nb):
                f.dst_a[0] = na
                f.dst_b[0] = nb
                f.ndst = 1
                _hint_party(f, p, na, nb)
                if star < tb:
                    cta, ctb = star + 1, tb
        clock_ndst = f.ndst
        sg_walk_start(&stops, stop, l3a, l3b)
        body = _destinations(p, &stops, l3a, l3b, f, &ctl_a, &ctl_b)
        if body < 0:
            return DECLINED
        if clock_ndst > 0 and f.ndst > clock_ndst:
            return DECLINED  # destinations both on the clock line and the TXT line
        if ctl_a < 0:
            ctl_a, ctl_b = cta, ctb
    if f.ndst == 0 or (ctl_a >= 0 and ctl_b - ctl_a > 10):
        return DECLINED
    if ctl_a >= 0 and ctl_b > ctl_a:
        f.ctl_a, f.ctl_b = ctl_a, ctl_b
    else:
        f.ctl_a = f.ctl_b = -1
    # Body: from `body` on, lines split into period-separated parts, each stripped;
    # the first PUR/, RSN/, ATN/ and IMQ/ at a part's start count.  The tag mask has
    # the slash of each that may be one (its letters' classes), and the four bytes
    # before it tell which: the part's start is then right before them (a period, a
    # line's start or the body's, then only spaces).  Each code is taken, stripped
    # (printable already: the payload is) and held to its limit as it is found: the
    # reference checks every code, and an element found is never found again.
    f.code_a[0] = f.code_b[0] = f.code_a[1] = f.code_b[1] = f.code_a[2] = f.code_b[2] = -1
    f.imq = False
    seen = 0
    w = (body + 3) >> 6
    words = (n + 63) >> 6
    bits = tags[w] & (<uint64_t> ~0ULL << ((body + 3) & 63)) if w < words else 0
    while True:
        while bits == 0:
            w += 1
            if w >= words:
                break
            bits = tags[w]
        if bits == 0:
            break
        i = (w << 6) + sg_ctz64(bits)  # the next tag's slash
        bits &= bits - 1
        k = i - 3
        which = _TAG_OF[p[k]]
        if sg_load4(p + k) != _TAG_WORD[which] or seen & (1 << which):
            continue
        k -= 1
        while k >= body and p[k] == 32:
            k -= 1
        if k < body or p[k] == 46 or p[k] == 10:
            # the part ends at a '.' or the line's end, stripped of spaces (and of
            # the CR of a CR LF, the only place a CR can be)
            e = sg_next_bit(stop, i + 1, n)
            while e > i + 1 and (p[e - 1] == 32 or p[e - 1] == 13):
                e -= 1
            seen |= 1 << which
            if which == 3:
                f.imq = _yes(p, i + 1, e)
            else:
                # _finish_codes without its per-byte checks and right strip, which
                # text does not need (calling it costs text 4.4% more instructions,
                # bench/feedloop.py --format)
                i += 1
                while i < e and p[i] == 32:
                    i += 1
                if i < e:
                    if e - i > (100 if which == 2 else 10):
                        return DECLINED
                    f.code_a[which] = i
                    f.code_b[which] = e
            if seen == 15:
                break
    f.fmt = FMT_TEXT
    return READ


# ------------------------------------------------------------- XML fast path
#
# The reference parses XML with defusedxml (expat, DTDs forbidden): safe, and slow for
# a header.  This fast path reads the simple, common shape: ASCII, no DTD, comment,
# processing instruction, CDATA or entity reference, an optional plain XML declaration,
# namespace prefixes declared where they are used.  It checks well-formedness as it
# goes (tags nest and match, attributes are well formed and distinct, nothing but
# whitespace outside the root) and declines anything else, for the reference to
# decide; a document cut off inside its elements, or using an unbound prefix, it
# rejects as expat would.  tests/test_fastdecode.py holds it to the reference.
#
# A switch begins every document with the same declaration and root start tag, whose
# namespace declarations took a fifth of a document's instructions.  The matcher keeps
# the last prologue read (XmlNames.prologue) and the state it left: the open root and
# the namespaces it declares.  A document that begins with those very bytes starts from
# that state; everything after them is read as ever.  It is the prologue that is kept,
# never a message or its answer (tests/test_differential.py, the prologue test).

DEF XML_MAX_DEPTH = 64
DEF XML_MAX_NS = 32
DEF XML_MAX_ATTRS = 16

cdef inline bint _same(const unsigned char* p, Py_ssize_t a, Py_ssize_t alen,
                       Py_ssize_t b, Py_ssize_t blen) noexcept nogil:
    return alen == blen and sg_eq(p + a, p + b, alen)

cdef inline bint _is(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, const char* lit,
                     Py_ssize_t litlen) noexcept nogil:
    return b - a == litlen and sg_eq(p + a, <const unsigned char*> lit, litlen)

cdef inline XmlTag* _xml_tag_slot(XmlNames* names, const unsigned char* t,
                                  Py_ssize_t length) noexcept nogil:
    """The slot in names.tag of the start tag t[:length], 8 to XML_TAG_MAX bytes: a hash
    of its last eight bytes, eight from its middle and its length."""
    cdef uint64_t w = sg_load8(t + length - 8) ^ (sg_load8(t + ((length - 8) >> 1)) * <uint64_t> 0x100000001B3) \
        ^ <uint64_t> length
    return &names.tag[(w * <uint64_t> 0x9E3779B97F4A7C15) >> (64 - XML_TAG_BITS)]


cdef int _xml_tpl_match(const XmlTemplates* t, const unsigned char* p, Py_ssize_t i,
                        Py_ssize_t n, Py_ssize_t* run_a, Py_ssize_t* run_b) noexcept nogil:
    """The last node of a kept path whose segments are p[i:n]'s markup, byte for byte,
    with the character data between them (each a run sg_xml_scan passes, up to a
    '<') in run_a[k]:run_b[k]; -1: none, for the reader to read.

    One path's segment may be the start of another's (where one document had text
    between two tags and the other none), so a path that fails is left for the next
    sibling of its last node that matched, as in any search of a tree: each node is
    tried at most once."""
    cdef int c = t.node[0].child, level = 0
    cdef int[XML_TPL_RUNS] taken  # the node whose run is run_a[level]:run_b[level]
    cdef Py_ssize_t k, start = i
    cdef const XmlTplNode* node
    while True:
        if c < 0:
            if level == 0:
                return -1
            level -= 1  # no sibling left here: the next one a level up
            c = t.node[taken[level]].sibling
            continue
        node = &t.node[c]
        i = run_b[level - 1] if level else start
        # Siblings differ mostly in their last bytes, the start tag before a value:
        # those first, then the rest, mostly hundreds of bytes, by memcmp
        if node.seg_len <= n - i and (node.seg_len < 8 or sg_load8(p + i + node.seg_len - 8) == node.tail) \
                and memcmp(p + i, t.text + node.seg, node.seg_len) == 0 and (
                not node.last or node.seg_len == n - i):
            if node.last:
                return c
            i += node.seg_len
            k = sg_xml_scan(p, i, n, 60, 60)
            if k >= 0 and k < n and node.child >= 0:
                run_a[level] = i
                run_b[level] = k
                taken[level] = c
                level += 1
                c = node.child
                continue
        c = node.sibling


cdef inline int _xml_run_of(const Py_ssize_t* run_a, const Py_ssize_t* run_b, int nrun,
                            Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The number of the run that is p[a:b] exactly; -1: none, or a < 0 (no span)."""
    cdef int k
    if a >= 0:
        for k in range(nrun):
            if run_a[k] == a:
                return k if run_b[k] == b else -1
    return -1


cdef int _xml_tpl_child(XmlTemplates* t, int parent, const unsigned char* seg,
                        Py_ssize_t length, bint last) noexcept nogil:
    """The node after parent whose segment is seg[:length] (and last as given), added
    if there is none and parent has fewer than XML_TPL_SIBLINGS; -1 if it has that
    many.  The caller has checked there is room in the tree.

    A new node goes after its siblings, so that documents try them in the order they
    were first seen: a shape seen early is mostly a common one, and an order that does
    not change is one the branch predictors learn (the decision path took x0.992 to
    x0.997 of the time it took with the newest first: bench/README, "the stream
    ahead")."""
    cdef int c = t.node[parent].child, prev = -1
    cdef XmlTplNode* node
    while c >= 0:
        node = &t.node[c]
        if node.seg_len == length and node.last == last and sg_eq(seg, t.text + node.seg, length):
            return c
        prev = c
        c = node.sibling
    if t.node[parent].children == XML_TPL_SIBLINGS:
        return -1
    c = t.nodes
    t.nodes += 1
    node = &t.node[c]
    memset(node, -1, sizeof(XmlTplNode))
    node.children = 0
    node.seg = t.used
    node.seg_len = <int> length
    node.tail = sg_load8(seg + length - 8) if length >= 8 else 0
    node.last = last
    memcpy(t.text + t.used, seg, length)
    t.used += <int> length
    if prev < 0:
        t.node[parent].child = c
    else:
        t.node[prev].sibling = c
    t.node[parent].children += 1
    return c


cdef void _xml_tpl_keep(XmlTemplates* t, unsigned long long gen, const unsigned char* p,
                        Py_ssize_t i, Py_ssize_t n, const Py_ssize_t* run_a,
                        const Py_ssize_t* run_b, int nrun, XmlTplNode* read) noexcept nogil:
    """Keep the markup of the document p[:n], read from i (the kept prologue's end)
    with its character data in the nrun runs run_a[k]:run_b[k], and read's header
    values and body elements (as the numbers of those runs).

    A run that one of them is, or that holds more than whitespace, is left to vary:
    the markup between such runs makes the path's segments."""
    cdef signed char[XML_TPL_RUNS] number  # a varying run's number among them; -1: in a segment
    cdef int k, nvary = 0, parent = 0
    cdef Py_ssize_t a, e
    cdef XmlTplNode* node
    memset(number, -1, sizeof(number))
    number[read.mke] = number[read.ori] = 1
    if read.ctl >= 0:
        number[read.ctl] = 1
    for k in range(read.ndst):
        number[read.dst[k]] = 1
    for k in range(4):
        if read.el[k] >= 0:
            number[read.el[k]] = 1
    for k in range(nrun):
        if number[k] < 0:
            a = run_a[k]
            while a < run_b[k] and _ws(p[a]):
                a += 1
            if a == run_b[k]:
                continue
        number[k] = nvary
        nvary += 1
    if n - i > XML_TPL_BYTES:
        return  # more than the tree holds (its nvary + 1 segments always fit: XML_TPL_RUNS)
    if t.gen != gen or t.nodes + nvary + 1 > XML_TPL_NODES or t.used + (n - i) > XML_TPL_BYTES:
        t.gen = gen  # another prologue's, or full: start again
        t.nodes = 1
        t.used = 0
        t.node[0].child = -1
        t.node[0].children = 0
    a = i
    for k in range(nrun + 1):
        if k < nrun and number[k] < 0:
            continue
        e = run_a[k] if k < nrun else n
        parent = _xml_tpl_child(t, parent, p + a, e - a, k == nrun)
        if parent < 0:
            # Markup that differs from every kept segment's here, where there are
            # already as many as a document may try (an attribute that counts, say):
            # not kept.  Nothing is added before the first new segment, so nothing
            # is left half kept.
            return
        if k < nrun:
            a = run_b[k]
    node = &t.node[parent]
    node.mke = number[read.mke]
    node.ori = number[read.ori]
    node.ctl = number[read.ctl] if read.ctl >= 0 else -1
    node.ndst = read.ndst
    for k in range(read.ndst):
        node.dst[k] = number[read.dst[k]]
    for k in range(4):
        node.el[k] = number[read.el[k]] if read.el[k] >= 0 else -1


cdef int _xml_spans(const unsigned char* p, Py_ssize_t n, XmlNames* names,
                    Fields* out) noexcept nogil:
    """Read a simple XML payload into out, exactly as the reference would: READ,
    DECLINED or REJECTED.  names: the local names read (_xml_names_c), and the
    prologue of the last document read there, which this one's may repeat.

    Every byte is looked at once, by the part that reads it: markup character by
    character, character data and attribute values by sg_xml_scan, which declines
    what the fast path does not read (a control but tab and LF, non-ASCII, '&',
    "]]>").

    A start tag read in a document that began with the kept prologue, while only the
    prologue's namespaces were in scope, is kept (names.tag) with what its reading
    found: where its name and local name end, whether it closes itself, which known
    name it has.  The same bytes in the same scope read the same, so a later start
    tag whose bytes up to its first '>' are a kept tag's, in such a scope, takes
    those findings instead of being read again; a tag that declares a namespace is
    never kept.  A switch's documents repeat a few dozen start tags, whose reading
    was most of a document's instructions."""
    cdef Py_ssize_t i, j, k, e, colon, acolon, name_end, local_a
    cdef Py_ssize_t[XML_MAX_DEPTH] open_a
    cdef Py_ssize_t[XML_MAX_DEPTH] open_len
    cdef Py_ssize_t[XML_MAX_NS] ns_a
    cdef Py_ssize_t[XML_MAX_NS] ns_len
    cdef int[XML_MAX_NS] ns_depth
    cdef Py_ssize_t[XML_MAX_ATTRS] at_a
    cdef Py_ssize_t[XML_MAX_ATTRS] at_len
    cdef int depth = 0, nns = 0, nat, which, f, fields, header_depth = -1, ndst = 0
    cdef bint root_seen = False, self_closing, header_open = False, header_done = False
    cdef Py_ssize_t mke_a = -1, mke_b = -1, ori_a = -1, ori_b = -1, ctl_a = -1, ctl_b = -1
    cdef Py_ssize_t[5] dst_a
    cdef Py_ssize_t[5] dst_b
    cdef Py_ssize_t[4] el_a
    cdef Py_ssize_t[4] el_b
    cdef Py_ssize_t text_a, text_b
    cdef const XmlName* known
    cdef unsigned char c, q
    cdef bint in_prologue_scope = False  # began with the kept prologue (or has just kept its own)
    cdef bint kept_tag
    cdef XmlTag* tag
    cdef Py_ssize_t limit, tag_len = 0
    cdef Py_ssize_t[XML_TPL_RUNS] run_a  # the character data read after the kept prologue
    cdef Py_ssize_t[XML_TPL_RUNS] run_b
    cdef Py_ssize_t run_start
    cdef int nrun = 0, hit = -1
    cdef bint keep = False  # whether to keep this document's markup (names.tpl)
    cdef XmlTplNode read
    cdef const XmlTplNode* path
    if n == 0 or p[0] != 60 or names.count < 0:
        return False
    for f in range(4):
        el_a[f] = -1
        el_b[f] = -1
    i = 0
    if names.prologue_len and n > names.prologue_len and memcmp(p, names.prologue, names.prologue_len) == 0:
        # The last document's declaration and root start tag, byte for byte: they were
        # read without a fault then, and leave the same state now.  The root is no
        # name the fast path reads (else the prologue is not kept), so that state is
        # the open root and the namespaces it declares.
        nns = names.nns
        for f in range(nns):
            ns_a[f] = names.ns_a[f]
            ns_len[f] = names.ns_len[f]
            ns_depth[f] = 1
        open_a[0] = names.root_a
        open_len[0] = names.root_len
        depth = 1
        root_seen = True
        i = names.prologue_len
        in_prologue_scope = True
        if names.tpl != NULL and names.tpl.resting:
            names.tpl.resting -= 1
        elif names.tpl != NULL:
            keep = True
            if names.tpl.gen == names.tag_gen:
                hit = _xml_tpl_match(names.tpl, p, i, n, run_a, run_b)
            if hit < 0:
                # A switch whose markup never repeats (an attribute that counts, say)
                # would pay for trying and keeping on every document: after
                # XML_TPL_PATIENCE in a row, the next XML_TPL_REST are only read
                names.tpl.misses += 1
                if names.tpl.misses == XML_TPL_PATIENCE:
                    names.tpl.misses = 0
                    names.tpl.resting = XML_TPL_REST
            else:
                names.tpl.misses = 0
                # The markup of a document read before, byte for byte, in the same
                # state, and character data between it that reads as any would: read
                # as that one was, the header values and body elements its runs.
                names.tpl.hits += 1
                path = &names.tpl.node[hit]
                mke_a, mke_b = run_a[path.mke], run_b[path.mke]
                ori_a, ori_b = run_a[path.ori], run_b[path.ori]
                _hint_ori(out, p, ori_a, ori_b)
                if path.ctl >= 0:
                    ctl_a, ctl_b = run_a[path.ctl], run_b[path.ctl]
                ndst = path.ndst
                for f in range(ndst):
                    dst_a[f] = run_a[path.dst[f]]
                    dst_b[f] = run_b[path.dst[f]]
                    _hint_party(out, p, dst_a[f], dst_b[f])
                for f in range(4):
                    if path.el[f] >= 0:
                        el_a[f] = run_a[path.el[f]]
                        el_b[f] = run_b[path.el[f]]
                depth = 0
                keep = False
    elif n >= 5 and memcmp(p, b"<?xml", 5) == 0:
        if n >= 21 and memcmp(p, b'<?xml version="1.0"?>', 21) == 0:
            i = 21
        elif n >= 38 and (memcmp(p, b'<?xml version="1.0" encoding="UTF-8"?>', 38) == 0
                          or memcmp(p, b'<?xml version="1.0" encoding="utf-8"?>', 38) == 0):
            i = 38
        else:
            return False
    text_b = -1  # where the character data after a start tag ends, once scanned
    while hit < 0:
        # between markup
        if depth == 0:
            while i < n and _ws(p[i]):
                i += 1
            if i == n:
                break
            if p[i] != 60:
                return False  # text outside the root
        else:
            run_start = i
            if text_b >= 0:
                i = text_b  # the character data after a start tag: scanned already
            else:
                i = sg_xml_scan(p, i, n, 60, 60)
                if i < 0:
                    return False
            if i == n:
                return REJECTED  # cut off inside an element: not well-formed
            if keep:
                if nrun == XML_TPL_RUNS:
                    keep = False
                else:
                    run_a[nrun] = run_start
                    run_b[nrun] = i
                    nrun += 1
        text_b = -1
        # p[i] == '<'
        if i + 1 >= n:
            return False
        c = p[i + 1]
        if c == 47:  # end tag
            if depth == 0:
                return False
            # the open element's name (checked when it opened), and no more of a name
            j = i + 2 + open_len[depth - 1]
            if j >= n or not sg_eq_name(p + i + 2, p + open_a[depth - 1], open_len[depth - 1]) \
                    or sg_name_char(p[j]) or p[j] == 58:
                return False
            while j < n and _ws(p[j]):
                j += 1
            if j >= n or p[j] != 62:
                return False
            depth -= 1
            while nns > 0 and ns_depth[nns - 1] > depth:
                nns -= 1
            if header_open and depth == header_depth:
                header_open = False
                header_done = True
            i = j + 1
            continue
        if c == 33 or c == 63:  # <! or <?: DTD, comment, CDATA, PI
            return False
        # start tag
        if depth == 0 and root_seen:
            return False
        tag = NULL
        kept_tag = False
        if in_prologue_scope and depth > 0 and nns == names.nns:
            limit = min(n, i + XML_TAG_MAX)
            k = sg_next_byte(p, i + 1, limit, 62)  # the tag's first '>'
            tag_len = k + 1 - i
            if k < limit and tag_len >= 8:
                tag = _xml_tag_slot(names, p + i, tag_len)
                if tag.gen == names.tag_gen and tag.length == tag_len and sg_eq_name(p + i, tag.text, tag_len):
                    kept_tag = True
                    j = i + tag_len
                    name_end = i + tag.name_end
                    local_a = i + tag.local_a
                    self_closing = tag.self_closing
                    known = &names.name[tag.known] if tag.known >= 0 else NULL
        if not kept_tag:
            name_end = sg_qname(p, i + 1, n, &colon)
            if name_end < 0:
                return False
            j = name_end
            nat = 0
            self_closing = False
            while True:
                k = j
                while j < n and _ws(p[j]):
                    j += 1
                if j >= n:
                    return False
                if p[j] == 62:  # '>'
                    j += 1
                    break
                if p[j] == 47:  # '/>'
                    if j + 1 >= n or p[j + 1] != 62:
                        return False
                    self_closing = True
                    j += 2
                    break
                if j == k:
                    return False  # attributes need whitespace before them
                e = sg_qname(p, j, n, &acolon)
                if e < 0 or nat == XML_MAX_ATTRS:
                    return False
                for f in range(nat):
                    if _same(p, at_a[f], at_len[f], j, e - j):
                        return False  # duplicate attribute
                at_a[nat] = j
                at_len[nat] = e - j
                nat += 1
                k = e
                while k < n and _ws(p[k]):
                    k += 1
                if k >= n or p[k] != 61:  # '='
                    return False
                k += 1
                while k < n and _ws(p[k]):
                    k += 1
                if k >= n or (p[k] != 34 and p[k] != 39):
                    return False
                q = p[k]
                k += 1
                text_a = k
                k = sg_xml_scan(p, k, n, q, 60)
                if k < 0 or k >= n or p[k] != q:  # no '<' in a value
                    return False
                if acolon >= 0 or _is(p, j, e, b"xmlns", 5):
                    # A namespace declaration.  Left to the reference: a URI with '}', which
                    # ElementTree cannot name, and the reserved ones (the xml and xmlns
                    # prefixes, the W3C's namespace names), which expat refuses to bind.
                    if _next_byte(p, text_a, k, 125) < k or (
                            k - text_a >= 18 and sg_eq(p + text_a, <const unsigned char*> b"http://www.w3.org/", 18)):
                        return False
                if acolon >= 0:
                    if not _is(p, j, acolon, b"xmlns", 5):
                        return False  # prefixed attributes: left to the reference
                    if text_a == k or nns == XML_MAX_NS or (
                            e - acolon - 1 >= 3 and sg_eq(p + acolon + 1, <const unsigned char*> b"xml", 3)):
                        return False
                    ns_a[nns] = acolon + 1
                    ns_len[nns] = e - acolon - 1
                    ns_depth[nns] = depth + 1
                    nns += 1
                j = k + 1
            # the element's prefix must be declared here or above
            if colon >= 0:
                f = nns - 1
                while f >= 0 and not _same(p, ns_a[f], ns_len[f], i + 1, colon - (i + 1)):
                    f -= 1
                if f < 0:
                    if _is(p, i + 1, colon, b"xml", 3):
                        return False  # the predefined prefix: left to the reference
                    return REJECTED  # an unbound prefix: expat's namespace error
                local_a = colon + 1
            else:
                local_a = i + 1
            known = _xml_name(names, p, local_a, name_end)
            if tag != NULL and j - i == tag_len and nns == names.nns:
                # read in the prologue's scope and declaring nothing: kept
                tag.gen = names.tag_gen
                tag.length = <int> tag_len
                tag.name_end = <int> (name_end - i)
                tag.local_a = <int> (local_a - i)
                tag.known = <int> (known - &names.name[0]) if known != NULL else -1
                tag.self_closing = self_closing
                memcpy(tag.text, p + i, tag_len)
        text_a = j
        if self_closing:
            text_b = j
        else:
            text_b = sg_xml_scan(p, j, n, 60, 60)
            if text_b < 0:
                return False
        # what this element is
        if known != NULL:
            if known.header == XH_HEADER:
                if not header_done and not header_open:
                    header_open = True
                    header_depth = depth
            elif header_open:
                if known.header == XH_MKE:
                    if mke_a < 0:
                        mke_a, mke_b = text_a, text_b
                elif known.header == XH_ORI:
                    if ori_a < 0:
                        ori_a, ori_b = text_a, text_b
                        _hint_ori(out, p, ori_a, ori_b)
                elif known.header == XH_DST:
                    if ndst == 5:
                        return False
                    dst_a[ndst] = text_a
                    dst_b[ndst] = text_b
                    ndst += 1
                    _hint_party(out, p, text_a, text_b)
                elif known.header == XH_CTL:
                    if ctl_a < 0:
                        ctl_a, ctl_b = text_a, text_b
            fields = known.fields
            while fields:
                which = sg_ctz64(fields)
                fields &= fields - 1
                if el_a[which] < 0:
                    el_a[which] = text_a
                    el_b[which] = text_b
        root_seen = True
        if self_closing:
            text_b = -1
            if known != NULL and (known.header > XH_HEADER or known.fields):
                keep = False  # its value is empty, not the run after it
            while nns > 0 and ns_depth[nns - 1] > depth:
                nns -= 1
            if header_open and depth == header_depth:
                header_open = False
                header_done = True
        else:
            if depth == XML_MAX_DEPTH:
                return False
            open_a[depth] = i + 1
            open_len[depth] = name_end - (i + 1)
            depth += 1
            if depth == 1 and known == NULL and j <= XML_PROLOGUE_MAX and nns <= XML_PROLOGUE_NS:
                # the root's start tag, read: keep the prologue for the next document
                memcpy(names.prologue, p, j)
                names.prologue_len = j
                names.root_a = open_a[0]
                names.root_len = open_len[0]
                names.nns = nns
                for f in range(nns):
                    names.ns_a[f] = ns_a[f]
                    names.ns_len[f] = ns_len[f]
                names.tag_gen += 1  # the tags kept were read in the old prologue's scope
                in_prologue_scope = True
        i = j
    if not root_seen or depth != 0 or mke_a < 0 or ori_a < 0 or ndst == 0:
        return False
    if keep:
        # which runs the header values and body elements were, as the next document
        # with this markup takes them
        read.mke = _xml_run_of(run_a, run_b, nrun, mke_a, mke_b)
        read.ori = _xml_run_of(run_a, run_b, nrun, ori_a, ori_b)
        read.ctl = _xml_run_of(run_a, run_b, nrun, ctl_a, ctl_b)
        keep = read.mke >= 0 and read.ori >= 0 and (ctl_a < 0 or read.ctl >= 0)
        read.ndst = ndst
        for f in range(ndst):
            read.dst[f] = _xml_run_of(run_a, run_b, nrun, dst_a[f], dst_b[f])
            keep = keep and read.dst[f] >= 0
        for f in range(4):
            read.el[f] = _xml_run_of(run_a, run_b, nrun, el_a[f], el_b[f])
            keep = keep and (el_a[f] < 0 or read.el[f] >= 0)
        if keep:
            _xml_tpl_keep(names.tpl, names.tag_gen, p, names.prologue_len, n, run_a, run_b,
                          nrun, &read)
    # the header's values, stripped and checked as the reference checks them
    mke_a = _strip_a(p, mke_a, mke_b)
    mke_b = _strip_b(p, mke_a, mke_b)
    out.mke_slot = _mke_slot(p, mke_a, mke_b)
    if out.mke_slot < 0:
        return False
    ori_a = _strip_a(p, ori_a, ori_b)
    ori_b = _strip_b(p, ori_a, ori_b)
    if not _is_ori(p, ori_a, ori_b):
        return False
    for f in range(ndst):
        out.dst_a[f] = _strip_a(p, dst_a[f], dst_b[f])
        out.dst_b[f] = _strip_b(p, out.dst_a[f], dst_b[f])
        if not _is_dst(p, out.dst_a[f], out.dst_b[f]):
            return False
    out.fmt = FMT_XML
    out.mke_a, out.mke_b, out.ori_a, out.ori_b = mke_a, mke_b, ori_a, ori_b
    out.ndst = ndst
    out.ctl_a = out.ctl_b = -1
    if ctl_a >= 0 and not _code_span(p, ctl_a, ctl_b, 10, &out.ctl_a, &out.ctl_b):
        return False
    return _finish_codes(p, el_a, el_b, out)


# ---------------------------------------------------------------------- framing

cdef enum:
    FR_NONE = 0      # no complete frame left in this chunk
    FR_FRAME = 1
    FR_OVERSIZE = 2


cdef inline unsigned long long _be32(const unsigned char* h) noexcept nogil:
    """A len32 frame's declared payload size: four bytes, big-endian."""
    return (<unsigned long long> h[0] << 24) | (h[1] << 16) | (h[2] << 8) | h[3]


cdef bytes _bytes_join(const unsigned char* a, Py_ssize_t alen, const unsigned char* b,
                       Py_ssize_t blen):
    """a[:alen] followed by b[:blen] as a new bytes, each copied once."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, alen + blen)
    cdef char* q = PyBytes_AS_STRING(out)
    memcpy(q, a, alen)
    memcpy(q + alen, b, blen)
    return out


# Not final, unlike the other classes: declared final, with take() as it is now, GCC's
# profile-guided build put Engine._run, the whole decision loop, in its section for code
# never run (116 KiB of .cold, 200 bytes hot), and the decision path took x1.04 to x1.05
# of the time (bench/README.md, "the carried frame").  Why the profile lost the loop is
# not known; tests/test_build.py fails a build where it does.  Since the build has
# -fprofile-partial-training (setup.py) the loop stays hot even so, but final still
# measured x1.03 slower (bench/README.md, "partial training").
cdef class _Framer:
    """Compiled framing; the plain statement is proxy._framing.

    Per chunk: :meth:`take` gives the bytes to cut (what was carried from the last
    chunk, then the chunk), :meth:`next` steps through them one frame at a time as
    spans, :meth:`resume` gives the chunk itself when take gave only the carried
    frame, and :meth:`keep` carries the incomplete rest to the next chunk.
    """

    cdef bytes buf            # the start of an incomplete frame
    cdef bytes rest           # after take's carried frame, the chunk (len32) ...
    cdef Py_ssize_t rest_at   # ... and where its own frames start
    cdef Py_ssize_t max_frame
    cdef bint delimited
    cdef bytes term
    cdef Py_ssize_t tlen
    cdef Py_ssize_t skip      # len32: payload bytes still to discard
    cdef Py_ssize_t skipped   # delimited: >= 0 while discarding

    def __init__(self, bint delimited, Py_ssize_t max_frame, bytes terminator):
        self.buf = b""
        self.max_frame = max_frame
        self.delimited = delimited
        self.term = terminator
        self.tlen = len(terminator)
        self.skip = 0
        self.skipped = -1

    @property
    def pending(self):
        """Bytes of a frame not yet complete and not yet decided."""
        return len(self.buf) + (self.skipped if self.skipped > 0 else 0)

    @property
    def busy(self):
        """Within a frame, including one being skipped."""
        return len(self.buf) > 0 or self.skip > 0 or self.skipped >= 0

    cdef bytes take(self, bytes data):
        """The bytes to cut first.  A frame carried from the last chunk is completed
        from the chunk's first bytes; with len32, when the chunk holds all that it
        lacks, only that frame is returned, and resume() then gives the chunk from the
        byte after it, so that a chunk is not copied whole to join a few carried
        bytes (bench/README.md: a few percent of the decision path).  Each new bytes
        is made by one copy into an object of its size (_bytes_join), not by slicing:
        a slice of a bytes goes through a slice object and a join copies twice, which
        cost a chunk with a carried frame about 500 ns more than one without
        (bench/README.md, "the carried frame")."""
        cdef Py_ssize_t taken, have, size, need, dlen = PyBytes_GET_SIZE(data), i
        cdef const unsigned char* d = <const unsigned char*> PyBytes_AS_STRING(data)
        cdef const unsigned char* c
        cdef unsigned char[4] head
        self.rest = None
        if self.skip:
            taken = min(self.skip, dlen)
            self.skip -= taken
            if taken:
                data = PyBytes_FromStringAndSize(<const char*> d + taken, dlen - taken)
                d = <const unsigned char*> PyBytes_AS_STRING(data)
                dlen -= taken
        have = PyBytes_GET_SIZE(self.buf)
        if not have:
            return data
        c = <const unsigned char*> PyBytes_AS_STRING(self.buf)
        if not self.delimited and have + dlen >= 4:
            for i in range(4):
                head[i] = c[i] if i < have else d[i - have]
            size = <Py_ssize_t> _be32(head)
            need = 4 + size - have
            if size <= self.max_frame and need <= dlen:
                self.rest = data
                self.rest_at = need
                return _bytes_join(c, have, d, need)
        return _bytes_join(c, have, d, dlen)

    cdef object resume(self, Py_ssize_t* pos):
        """After take's carried frame, the chunk to go on cutting, with pos where its
        own frames start; None when take gave the whole chunk."""
        rest = self.rest
        if rest is not None:
            self.rest = None
            pos[0] = self.rest_at
        return rest

    cdef int keep(self, bytes src, Py_ssize_t pos) except -1:
        """Carry src[pos:], a frame not yet whole, to the next chunk."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(src)
        self.buf = PyBytes_FromStringAndSize(PyBytes_AS_STRING(src) + pos, n - pos) if pos < n else b""
        return 0

    cdef inline int next(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                         Py_ssize_t* a, Py_ssize_t* b, Py_ssize_t* raw_a, Py_ssize_t* raw_b) noexcept:
        """The next frame at pos: FR_FRAME with its payload [a, b) and its bytes on
        the wire [raw_a, raw_b); FR_OVERSIZE with its size in a; or FR_NONE."""
        cdef unsigned long long size
        cdef Py_ssize_t i = pos[0], end, keep, avail
        if not self.delimited:
            if n - i < 4:
                return FR_NONE
            size = _be32(p + i)
            avail = n - i - 4
            if size > <unsigned long long> self.max_frame:
                a[0] = <Py_ssize_t> size
                if <unsigned long long> avail >= size:
                    pos[0] = i + 4 + <Py_ssize_t> size
                else:
                    self.skip = <Py_ssize_t> size - avail
                    pos[0] = n
                return FR_OVERSIZE
            if <unsigned long long> avail < size:
                return FR_NONE
            raw_a[0] = i
            a[0] = i + 4
            b[0] = raw_b[0] = pos[0] = i + 4 + <Py_ssize_t> size
            return FR_FRAME
        while True:
            end = _find(p, i, n, <const unsigned char*> PyBytes_AS_STRING(self.term), self.tlen)
            if self.skipped >= 0:
                if end < 0:
                    keep = min(self.tlen - 1, n - i)
                    self.skipped += n - i - keep
                    pos[0] = n - keep
                    return FR_NONE
                a[0] = self.skipped + end - i
                self.skipped = -1
                pos[0] = end + self.tlen
                return FR_OVERSIZE
            if end < 0:
                if n - i > self.max_frame + self.tlen - 1:
                    self.skipped = 0
                    continue
                pos[0] = i
                return FR_NONE
            pos[0] = end + self.tlen
            if end - i > self.max_frame:
                a[0] = end - i
                return FR_OVERSIZE
            raw_a[0] = a[0] = i
            b[0] = end
            raw_b[0] = end + self.tlen
            return FR_FRAME


cdef Py_ssize_t _find(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                      const unsigned char* t, Py_ssize_t tlen) noexcept nogil:
    """The index of t in p[i:n], or -1."""
    cdef const unsigned char* hit
    while n - i >= tlen:
        hit = <const unsigned char*> memchr(p + i, t[0], n - i - tlen + 1)
        if hit == NULL:
            return -1
        if memcmp(hit, t, tlen) == 0:
            return hit - p
        i = hit - p + 1
    return -1


def compiled_framer_events(bint delimited, Py_ssize_t max_frame, bytes terminator, chunks):
    """Run the compiled framer over chunks, as proxy._framing's events; for the
    differential tests."""
    cdef _Framer f = _Framer(delimited, max_frame, terminator)
    cdef Py_ssize_t pos, a, b, ra, rb
    cdef int kind
    out = []
    for c in chunks:
        src = f.take(bytes(c))
        pos = 0
        while True:
            kind = f.next(<const unsigned char*> PyBytes_AS_STRING(src), len(src), &pos, &a, &b, &ra, &rb)
            if kind == FR_NONE:
                rest = f.resume(&pos)
                if rest is None:
                    break
                src = rest
                continue
            if kind == FR_OVERSIZE:
                out.append(("oversize", a))
            else:
                out.append(("frame", src[a:b], src[ra:rb]))
        f.keep(src, pos)
    return out, f.pending, f.busy


# ----------------------------------------------------------------- log lines
#
# A decision's log line is written here, byte for byte what msgspec makes of the
# LogRecord (compact JSON, fields in order): the tests hold the two to it.  Values
# from the fast paths are printable ASCII, so a string needs only '"' and '\\'
# escaped; a message the reference decoders read goes through msgspec itself.

cdef struct Buf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = max(b.cap * 2, b.len + extra, 4096)
    cdef char* d = <char*> realloc(b.data, cap)
    if d == NULL:
        raise MemoryError()
    b.data = d
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _grow(b, n)
    sg_copy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef inline int _put_bytes(Buf* b, bytes s) except -1:
    return _put(b, PyBytes_AS_STRING(s), len(s))


#: Room for a decision line's fixed pieces beyond those :meth:`Engine._line` measures:
#: the key names and punctuation (about 220 bytes), three numbers of up to 20 digits,
#: the quotes, commas and nulls around at most 13 fields, and the 16 bytes a JSON
#: string's last store may run past it (_cp_str): under 400 bytes in all.
DEF LINE_FIXED_MAX = 1024

cdef bytes _NULL = b"null"


cdef inline Py_ssize_t _span(Py_ssize_t a, Py_ssize_t b) noexcept:
    """A field's length; 0 when absent (a < 0)."""
    return b - a if a >= 0 else 0


cdef inline char* _cp(char* q, bytes s) noexcept:
    """Copy s to q, which has room; returns the end."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
    sg_copy(q, PyBytes_AS_STRING(s), n)
    return q + n


cdef inline char* _cp_dec(char* q, unsigned long long v) noexcept:
    cdef char[24] tmp
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = <char> (48 + v % 10)
        v //= 10
        if v == 0:
            break
    sg_copy(q, tmp + i, 24 - i)
    return q + 24 - i


cdef inline char* _cp_hex(char* q, unsigned long long v) noexcept:
    cdef char[20] tmp
    cdef int i = 20
    while True:
        i -= 1
        tmp[i] = b"0123456789abcdef"[v & 15]
        v >>= 4
        if v == 0:
            break
    sg_copy(q, tmp + i, 20 - i)
    return q + 20 - i


cdef inline char* _cp_str(char* q, const unsigned char* p, Py_ssize_t a, Py_ssize_t e,
                         Py_ssize_t limit) noexcept:
    """A JSON string of printable ASCII p[a:e] (null when a < 0) to q, which has room
    for 2 * (e - a) + 4 bytes and 16 more (see sg_json_str); p[:limit] may be read.
    Returns the end."""
    if a < 0:
        memcpy(q, b"null", 4)
        return q + 4
    return sg_json_str(q, p, a, e, limit)


cdef inline char* _cp_raw(char* q, const unsigned char* p, Py_ssize_t a, Py_ssize_t e) noexcept:
    """p[a:e] as it is (nothing when a < 0) to q, which has room; returns the end."""
    if a < 0:
        return q
    sg_copy(q, <const char*> p + a, e - a)
    return q + e - a


cdef inline char* _eol(char* q, bint crlf) noexcept:
    if crlf:
        q[0] = 13
        q += 1
    q[0] = 10
    return q + 1


#: The most buffer an engine keeps between chunks.  Kept, a buffer is reused by the
#: next chunk (memory the VM has not touched is expensive); but a chunk of tiny frames
#: makes lines many times its size (a 5-byte frame, a 350-byte line), and kept at every
#: connection that would add up, so a larger one is given back.
DEF BUF_KEEP = 1 << 20


cdef inline void _trim(Buf* b) noexcept:
    if b.cap > BUF_KEEP:
        free(b.data)
        b.data = NULL
        b.len = b.cap = 0


cdef bytes _buf_bytes(Buf* b):
    return PyBytes_FromStringAndSize(b.data, b.len)


def line_ends(bytes data, Py_ssize_t pos, Py_ssize_t k):
    """The index just after the k-th line of data from pos (data ends in a newline,
    one per line); len(data) if it has fewer."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = len(data)
    cdef const char* nl
    while k > 0 and pos < n:
        nl = <const char*> memchr(p + pos, 10, n - pos)
        if nl == NULL:
            return n
        pos = nl - p + 1
        k -= 1
    return pos


# ------------------------------------------------------------------- timestamps
#
# Every chunk the proxy decides is stamped with the system clock, thousands of times a
# second at a modest rate, one message a chunk.  Formatted in Python (time.time_ns,
# divmod, an f-string) and then JSON-encoded into the lines' head, that cost about as
# much as deciding the message (bench/README.md); here it is a clock read and six
# digits, the text up to the seconds made once a second.

DEF STAMP_LEN = 27             # 2026-11-22T15:04:05.123456Z

cdef long long _stamp_second = -1
cdef char[20] _stamp_prefix    # "%Y-%m-%dT%H:%M:%S" of _stamp_second, NUL-terminated


cdef int _stamp(long long second, long us, char* out) except -1:
    """The RFC 3339 UTC stamp of a time (seconds since the epoch and microseconds),
    STAMP_LEN characters into out: what proxy._pipeline.format_utc_ns writes."""
    global _stamp_second
    cdef time_t t = <time_t> second
    cdef tm parts
    cdef int k
    if second != _stamp_second:
        if second < 0 or gmtime_r(&t, &parts) == NULL \
                or strftime(_stamp_prefix, 20, b"%Y-%m-%dT%H:%M:%S", &parts) != 19:
            raise ValueError(f"no RFC 3339 stamp for {second} s since the epoch")
        _stamp_second = second
    memcpy(out, _stamp_prefix, 19)
    out[19] = 46  # '.'
    for k in range(25, 19, -1):
        out[k] = <char> (48 + us % 10)
        us //= 10
    out[26] = 90  # 'Z'
    return 0


cdef int _stamp_now(char* out) except -1:
    """The system clock's time (CLOCK_REALTIME, as time.time_ns reads it), stamped."""
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)
    return _stamp(now.tv_sec, now.tv_nsec // 1000, out)


def format_utc_ns(ns):
    """The compiled twin of proxy._pipeline.format_utc_ns, for tests."""
    cdef char[STAMP_LEN] out
    second, us = divmod(ns // 1000, 1_000_000)  # times past 2262 too, as Python's
    _stamp(second, us, out)
    return PyUnicode_DecodeASCII(out, STAMP_LEN, NULL)


cdef str _head_ts(bytes head):
    """The stamp in a head Engine._head made from the clock, as a str."""
    return PyUnicode_DecodeASCII(PyBytes_AS_STRING(head) + 7, STAMP_LEN, NULL)


# ----------------------------------------------------------------------- engine

_json = msgspec.json.Encoder()

cdef bytes _ACTION_ALLOW = b',"action":"allow","rule":'
cdef bytes _ACTION_DENY = b',"action":"deny","rule":'
cdef tuple _FMT_JSON = (b'"text"', b'"xml"', b'"json"')
cdef bytes _REJECT_FIELDS = (b',"mke":null,"ori":null,"dst":null,"ctl":null,"pur":null,"rsn":null,'
                             b'"atn":null,"imq":null,"agency":null,"groups":[],"action":"reject","rule":')

cdef enum:
    REJ_OVERSIZE = 0
    REJ_MALFORMED = 1

cdef tuple _REJECT_RULES = ("oversize", "malformed")  # the rule logged for each REJ_*
cdef tuple _REJECT_RULE_BYTES = tuple([r.encode() for r in _REJECT_RULES])


cdef int _fmt_of(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """The payload's format from its first non-blank byte (BLANK in _decode.py); -1
    when it is all blank."""
    cdef unsigned char c
    while a < b:
        c = p[a]
        if not (c == 32 or c == 9 or c == 13 or c == 10 or c == 0 or c == 127):
            if c == 60:
                return FMT_XML
            if c == 123:
                return FMT_JSON
            return FMT_TEXT
        a += 1
    return -1


@cython.final
cdef class Engine:
    """Decides one direction of one connection.

    ``sequencer`` is shared by every engine writing to the same log: its ``seq`` and
    ``decisions`` counters are advanced once per chunk.  :meth:`feed` returns the
    chunk's log lines already encoded; :meth:`decide` only decides and counts (the
    year benchmark's path).
    """

    cdef _Framer framer
    cdef readonly str direction
    cdef int dir_code
    cdef readonly int conn
    cdef readonly object peer
    cdef object sequencer
    cdef bytes line_mid      # ,"conn":..,"peer":..,"dir":..,"fmt":
    cdef str rid_str         # the sequencer's run id when last seen, and as a head writes it
    cdef bytes rid_bytes
    cdef Buf lines
    cdef Buf forward
    cdef Buf replies

    def __cinit__(self):
        self.lines.data = NULL
        self.lines.len = self.lines.cap = 0
        self.forward.data = NULL
        self.forward.len = self.forward.cap = 0
        self.replies.data = NULL
        self.replies.len = self.replies.cap = 0

    def __dealloc__(self):
        free(self.lines.data)
        free(self.forward.data)
        free(self.replies.data)

    def __init__(self, str direction, int conn, peer, str framing, Py_ssize_t max_frame,
                 bytes terminator, sequencer):
        if direction not in ("in", "out"):
            raise ValueError("direction must be 'in' or 'out'")
        self.framer = _Framer(framing == "delimited", max_frame, terminator)
        self.direction = direction
        self.dir_code = DIR_IN if direction == "in" else DIR_OUT
        self.conn = conn
        self.peer = peer
        self.sequencer = sequencer
        self.line_mid = b',"conn":%d,"peer":%s,"dir":"%s","fmt":' % (conn, _json.encode(peer),
                                                                     direction.encode())

    @property
    def pending(self):
        return self.framer.pending

    @property
    def busy(self):
        return self.framer.busy

    @property
    def kept(self):
        """Bytes of buffer kept between chunks (for the lines and the forwards)."""
        return self.lines.cap + self.forward.cap

    def feed(self, bytes data, Matcher matcher, str ts=None):
        """Frame, decode, decide and log one chunk: a Batch.  ``ts`` is the chunk's
        time in its lines (RFC 3339); None stamps it with the system clock now."""
        return self._run(data, matcher, ts, True)

    def decide(self, bytes data, Matcher matcher):
        """Frame, decode and decide one chunk without writing log lines or copying
        what to forward; returns how many decisions it made (counted as feed counts)."""
        return self._run(data, matcher, None, False)

    cdef object _run(self, bytes data, Matcher m, str ts, bint emit):
        cdef bytes src = self.framer.take(data)
        cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(src)
        cdef Py_ssize_t n = len(src), pos = 0, a, b, ra, rb, ahead, fetched = 0
        cdef long long seq, dec, first
        cdef int kind, fmt, act, nrules = m.n_rules
        cdef bint fwd, answer
        cdef int ok
        cdef Fields f
        cdef Buf* out = &self.lines
        cdef long long* counts = <long long*> calloc(m.n_counts, sizeof(long long))
        cdef long long* rejects
        if counts == NULL:
            raise MemoryError()
        rejects = counts + 2 * (nrules + 1)
        seqr = self.sequencer
        first = seq = seqr.seq
        dec = seqr.decisions
        answer = m.deny_reply and not m.monitor and self.dir_code == DIR_IN
        rid = None  # the run id as each reply format writes it, when a chunk has a reply
        head = self._head(ts, seqr.run_id) if emit else None
        self.lines.len = 0
        self.forward.len = 0
        self.replies.len = 0
        try:
            while True:
                kind = self.framer.next(p, n, &pos, &a, &b, &ra, &rb)
                if kind == FR_NONE:
                    rest = self.framer.resume(&pos)
                    if rest is None:
                        break
                    src = <bytes> rest  # the chunk's own frames, after the carried one
                    p = <const unsigned char*> PyBytes_AS_STRING(src)
                    n = len(src)
                    continue
                seq += 1
                dec += 1
                if kind == FR_OVERSIZE:
                    rejects[REJ_OVERSIZE] += 1
                    if emit:
                        self._reject_line(head, dec, seq, -1, REJ_OVERSIZE, m, a)
                    continue
                # Load the chunk ahead into cache: four lines from where the last
                # frame's loads stopped, up to STREAM_AHEAD bytes past this frame.  A
                # chunk fresh from a socket is in cache already; the year's stream of
                # 85 MB is not, and the CPU's own prefetchers left a message waiting
                # for it (bench/README, "the stream ahead").  Only hints: an address
                # past the chunk loads nothing that is used, and faults never.
                ahead = b + STREAM_AHEAD
                if fetched < b:
                    fetched = b
                sg_prefetch(p + fetched)
                sg_prefetch(p + fetched + 64)
                sg_prefetch(p + fetched + 128)
                sg_prefetch(p + fetched + 192)
                fetched += 256
                if fetched > ahead:
                    fetched = ahead
                fmt = _fmt_of(p, a, b)
                ok = DECLINED
                # where a grown table is now; none with a sieve, which spares the lookup
                f.hint_table = NULL if m.sieved else m.party_table
                f.hint_bits = m.party_bits
                f.ori_key = 0
                if fmt == FMT_TEXT:
                    ok = _text_spans(p + a, b - a, &f)
                elif fmt == FMT_XML:
                    ok = _xml_spans(p + a, b - a, &m.xml_c[self.dir_code], &f)
                elif fmt == FMT_JSON:
                    ok = _json_spans(p + a, b - a, &f)
                if ok == REJECTED:
                    rejects[REJ_MALFORMED] += 1
                    if emit:
                        self._reject_line(head, dec, seq, fmt, REJ_MALFORMED, m, b - a)
                    continue
                if ok == READ:
                    act = m._decide_fields(p + a, &f, self.dir_code)
                    fwd = act == ACT_ALLOW or m.monitor
                    if emit:
                        self._line(head, dec, seq, p + a, &f, m, act, fwd, b - a)
                else:
                    payload = PyBytes_FromStringAndSize(<const char*> p + a, b - a)
                    msg = self._slow_decode(payload, fmt, m)
                    if msg is None:
                        rejects[REJ_MALFORMED] += 1
                        if emit:
                            self._reject_line(head, dec, seq, fmt, REJ_MALFORMED, m, b - a)
                        continue
                    act = m.decide_c(msg.mke, msg.ori, msg.dst, msg.pur, msg.rsn, msg.atn is not None,
                                     msg.imq, self.dir_code)
                    fwd = act == ACT_ALLOW or m.monitor
                    if emit:
                        _put_bytes(out, _json.encode(LogRecord(
                            ts if ts is not None else _head_ts(head), f"{seqr.run_id}-{dec:x}", seq,
                            self.conn, self.peer, self.direction, msg.fmt, msg.mke, msg.ori, msg.dst,
                            msg.ctl, msg.pur, msg.rsn, msg.atn, msg.imq,
                            m.last_agency, m.last_groups, "deny" if act == ACT_DENY else "allow",
                            m.rule_ids[m.last_rule] if m.last_rule >= 0 else "default",
                            m.rule_ids[m.last_shadow] if m.last_shadow >= 0 else None,
                            m.mode, fwd, m.rev, b - a)))
                        _put_bytes(out, b"\n")
                counts[2 * (m.last_rule if m.last_rule >= 0 else nrules) + act] += 1
                if not emit:
                    continue
                if fwd:
                    _put(&self.forward, <const char*> p + ra, rb - ra)
                elif answer:
                    if rid is None:
                        rid = ((<str> seqr.run_id).encode("ascii", "replace"),
                               _json.encode(seqr.run_id)[1:-1])
                    if ok == READ and f.fmt != FMT_XML:
                        self._reply(p + a, b - a, &f, m, dec,
                                    <bytes> (<tuple> rid)[0 if f.fmt == FMT_TEXT else 1])
                        continue
                    rule = m.rule_ids[m.last_rule] if m.last_rule >= 0 else "default"
                    did = f"{seqr.run_id}-{dec:x}"
                    if ok == READ:
                        denial = Denial(
                            "xml", _span_str(p + a, f.mke_a, f.mke_b), _span_str(p + a, f.ori_a, f.ori_b),
                            _span_str(p + a, f.ctl_a, f.ctl_b), rule, did,
                            PyBytes_FromStringAndSize(<const char*> p + a, b - a))
                    else:
                        denial = Denial(msg.fmt, msg.mke, msg.ori, msg.ctl, rule, did, payload)
                    self._framed_reply(m.reply_writer.payload(denial))
            self.framer.keep(src, pos)
            self._count(m, counts)
        finally:
            free(counts)
        seqr.seq = seq
        seqr.decisions = dec
        if not emit:
            return seq - first
        lines = _buf_bytes(&self.lines)
        forward = _buf_bytes(&self.forward) if self.forward.len else b""
        replies = _buf_bytes(&self.replies) if self.replies.len else b""
        _trim(&self.lines)
        _trim(&self.forward)
        _trim(&self.replies)
        return Batch(lines, seq - first, seq, forward, replies)

    cdef bytes _head(self, str ts, str run_id):
        """The start of each of the chunk's lines: its time (``ts``, else the clock's
        now) and its decision ids' run part, ``{"ts":"…","id":"<run id>-``."""
        cdef Py_ssize_t r
        cdef bytes head
        cdef char* q
        if run_id is not self.rid_str:
            self.rid_str = run_id
            self.rid_bytes = run_id.encode()
        if ts is not None:
            return b'{"ts":%s,"id":"%s-' % (_json.encode(ts), self.rid_bytes)
        r = PyBytes_GET_SIZE(self.rid_bytes)
        head = PyBytes_FromStringAndSize(NULL, 15 + STAMP_LEN + r + 1)
        q = PyBytes_AS_STRING(head)  # new, so not yet seen by anyone: filled in place
        memcpy(q, b'{"ts":"', 7)
        _stamp_now(q + 7)
        memcpy(q + 7 + STAMP_LEN, b'","id":"', 8)
        memcpy(q + 15 + STAMP_LEN, PyBytes_AS_STRING(self.rid_bytes), r)
        q[15 + STAMP_LEN + r] = 45  # '-'
        return head

    cdef int _framed_reply(self, bytes payload) except -1:
        """An ER payload into the chunk's replies, framed as the connection frames."""
        cdef unsigned char[4] size
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        if not self.framer.delimited:
            size[0] = <unsigned char> (n >> 24)
            size[1] = <unsigned char> (n >> 16)
            size[2] = <unsigned char> (n >> 8)
            size[3] = <unsigned char> n
            _put(&self.replies, <const char*> size, 4)
        _put(&self.replies, PyBytes_AS_STRING(payload), n)
        if self.framer.delimited:
            _put_bytes(&self.replies, self.framer.term)
        return 0

    cdef int _reply(self, const unsigned char* p, Py_ssize_t n, Fields* f, Matcher m,
                    long long dec, bytes rid) except -1:
        """The framed ER reply to a denied text or JSON message the fast path read,
        written from the policy's pieces (proxy._reply.ReplyPieces) and the message's
        own fields, which the fast path has checked are printable ASCII: what
        ReplyWriter.payload makes of its Denial, byte for byte, with no Python object
        made.  ``rid`` is the run id as the format writes it."""
        cdef Buf* out = &self.replies
        cdef Py_ssize_t r = m.last_rule if m.last_rule >= 0 else m.n_rules
        cdef Py_ssize_t need, start, size
        cdef bint text = f.fmt == FMT_TEXT, crlf = False
        cdef const unsigned char* cr
        cdef bytes rule, why = None
        cdef char* q
        cdef char* body
        if text:
            rule = <bytes> m.rp_text_rule[r]
            why = <bytes> m.rp_text_why[r]
            cr = <const unsigned char*> memchr(p, 13, n)
            while cr != NULL and cr + 1 < p + n:
                if cr[1] == 10:
                    crlf = True
                    break
                cr = <const unsigned char*> memchr(cr + 1, 13, p + n - cr - 1)
            need = (PyBytes_GET_SIZE(m.rp_text_head) + PyBytes_GET_SIZE(m.rp_text_denied)
                    + PyBytes_GET_SIZE(why) + _span(f.ori_a, f.ori_b) + _span(f.ctl_a, f.ctl_b)
                    + _span(f.mke_a, f.mke_b) + 32)
        else:
            rule = <bytes> m.rp_json_rule[r]
            need = (PyBytes_GET_SIZE(m.rp_json_head) + PyBytes_GET_SIZE(m.rp_json_body)
                    + 2 * (_span(f.ori_a, f.ori_b) + _span(f.ctl_a, f.ctl_b) + _span(f.mke_a, f.mke_b))
                    + 32)
        need += PyBytes_GET_SIZE(rule) + PyBytes_GET_SIZE(rid) + 20 + 4 + self.framer.tlen
        need += 16  # what a JSON string's last store may run past it (_cp_str)
        if out.len + need > out.cap:
            _grow(out, need)
        start = out.len
        body = q = out.data + start + (0 if self.framer.delimited else 4)
        if text:
            # ER.<local>.<ori>[.*<ctl>].TXT / denied / MKE/<key>.RULE/<rule>.DECISION/<id> / WHY/<why>
            q = _cp(q, m.rp_text_head)
            q = _cp_raw(q, p, f.ori_a, f.ori_b)
            if _span(f.ctl_a, f.ctl_b):
                q = _cp(q, b".*")
                q = _cp_raw(q, p, f.ctl_a, f.ctl_b)
            q = _cp(q, b".TXT")
            q = _eol(q, crlf)
            q = _cp(q, m.rp_text_denied)
            q = _eol(q, crlf)
            q = _cp(q, b"MKE/")
            q = _cp_raw(q, p, f.mke_a, f.mke_b)
            q = _cp(q, rule)
            q = _cp(q, rid)
            q[0] = 45  # -
            q = _cp_hex(q + 1, <unsigned long long> dec)
            q = _eol(q, crlf)
            q = _cp(q, why)
        else:
            q = _cp(q, m.rp_json_head)
            q = _cp_str(q, p, f.ori_a, f.ori_b, n) if f.ori_a >= 0 else _cp(q, b'""')
            q = _cp(q, b'],"ctl":')
            q = _cp_str(q, p, f.ctl_a, f.ctl_b, n)
            q = _cp(q, m.rp_json_body)
            q = _cp_str(q, p, f.mke_a, f.mke_b, n) if f.mke_a >= 0 else _cp(q, b'""')
            q = _cp(q, rule)
            q = _cp(q, rid)
            q[0] = 45  # -
            q = _cp_hex(q + 1, <unsigned long long> dec)
            q = _cp(q, b'"}}')
        size = q - body
        if self.framer.delimited:
            q = _cp(q, self.framer.term)
        else:
            body[-4] = <char> ((size >> 24) & 255)
            body[-3] = <char> ((size >> 16) & 255)
            body[-2] = <char> ((size >> 8) & 255)
            body[-1] = <char> (size & 255)
        if q - (out.data + start) > need:
            abort()  # the bound above is wrong: memory past the buffer was written
        out.len = q - out.data
        return 0

    cdef object _slow_decode(self, bytes payload, int fmt, Matcher m):
        """The reference decoder's Message for what no fast path read; None if it
        rejects the payload (fail closed)."""
        try:
            if fmt == FMT_TEXT:
                return decode_text(payload)
            if fmt == FMT_XML:
                return decode_xml(payload, m.xml_fields)
            if fmt == FMT_JSON:
                return decode_json(payload)
        except Exception:
            return None
        return None

    cdef int _count(self, Matcher m, long long* counts) except -1:
        """Add a chunk's decisions to the sequencer's counts by (direction, action, rule)."""
        cdef Py_ssize_t i
        cdef dict c = self.sequencer.counts
        cdef tuple keys = <tuple> m.count_keys[self.dir_code]
        for i in range(m.n_counts):
            if counts[i]:
                key = keys[i]
                c[key] = c.get(key, 0) + counts[i]
        return 0

    cdef inline char* _head_to(self, char* q, bytes head, long long dec, long long seq) noexcept:
        """A line's start, to ``"fmt":``; q has room."""
        q = _cp(q, head)
        q = _cp_hex(q, <unsigned long long> dec)
        q = _cp(q, b'","seq":')
        q = _cp_dec(q, <unsigned long long> seq)
        return _cp(q, self.line_mid)

    cdef inline char* _tail_to(self, char* q, Matcher m, bint fwd, Py_ssize_t size) noexcept:
        """A line's end, from ``,"mode":``; q has room."""
        q = _cp(q, m.line_mode)
        q = _cp(q, b"true" if fwd else b"false")
        q = _cp(q, m.line_rev)
        q = _cp_dec(q, <unsigned long long> size)
        return _cp(q, b"}\n")

    cdef inline Py_ssize_t _fixed_room(self, bytes head, Matcher m) noexcept:
        """Room for a line's pieces but its own fields, rule and groups."""
        return (PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(self.line_mid)
                + PyBytes_GET_SIZE(m.line_mode) + PyBytes_GET_SIZE(m.line_rev) + LINE_FIXED_MAX)

    cdef int _reject_line(self, bytes head, long long dec, long long seq, int fmt, int reject,
                          Matcher m, Py_ssize_t size) except -1:
        """A reject's line; reject: its REJ_*, whose rule the line names."""
        cdef Buf* out = &self.lines
        cdef bytes rule = <bytes> _REJECT_RULE_BYTES[reject]
        cdef Py_ssize_t need = (self._fixed_room(head, m) + PyBytes_GET_SIZE(_REJECT_FIELDS)
                                + PyBytes_GET_SIZE(rule))
        cdef char* q
        if out.len + need > out.cap:
            _grow(out, need)
        q = self._head_to(out.data + out.len, head, dec, seq)
        q = _cp(q, b"null" if fmt < 0 else <bytes> _FMT_JSON[fmt])
        q = _cp(q, _REJECT_FIELDS)
        q = _cp(q, b'"')
        q = _cp(q, rule)
        q = _cp(q, b'","shadow":null')
        q = self._tail_to(q, m, False, size)
        if q - (out.data + out.len) > need:
            abort()  # the bound above is wrong: memory past the buffer was written
        out.len = q - out.data
        return 0

    cdef int _line(self, bytes head, long long dec, long long seq, const unsigned char* p,
                   Fields* f, Matcher m, int act, bint fwd, Py_ssize_t size) except -1:
        """One decision's log line.  Every piece but the message's own spans is fixed
        for the chunk, the connection or the policy, and escaping at most doubles a
        span, so the room a line needs is known before it is written: one check, then
        the pieces are copied with no check each."""
        cdef Buf* out = &self.lines
        cdef int i
        cdef bytes groups = <bytes> (<tuple> m.group_sets[m._group_set(m.last_party)])[1]
        cdef bytes rule = <bytes> m.rule_json[m.last_rule if m.last_rule >= 0 else m.n_rules]
        cdef bytes shadow = <bytes> m.rule_json[m.last_shadow] if m.last_shadow >= 0 else _NULL
        cdef Py_ssize_t need = (self._fixed_room(head, m) + PyBytes_GET_SIZE(groups)
                                + PyBytes_GET_SIZE(rule) + PyBytes_GET_SIZE(shadow))
        cdef char* q
        need += 2 * (_span(f.mke_a, f.mke_b) + 2 * _span(f.ori_a, f.ori_b) + _span(f.ctl_a, f.ctl_b)
                     + _span(f.code_a[0], f.code_b[0]) + _span(f.code_a[1], f.code_b[1])
                     + _span(f.code_a[2], f.code_b[2]))
        for i in range(f.ndst):
            need += 2 * _span(f.dst_a[i], f.dst_b[i])
        if self.dir_code != DIR_IN and f.ndst:
            need += 2 * _span(f.dst_a[0], f.dst_b[0])
        if out.len + need > out.cap:
            _grow(out, need)
        q = self._head_to(out.data + out.len, head, dec, seq)
        q = _cp(q, <bytes> _FMT_JSON[f.fmt])
        q = _cp(q, b',"mke":')
        q = _cp_str(q, p, f.mke_a, f.mke_b, size)
        q = _cp(q, b',"ori":')
        q = _cp_str(q, p, f.ori_a, f.ori_b, size)
        q = _cp(q, b',"dst":[')
        for i in range(f.ndst):
            if i:
                q[0] = 44  # ,
                q += 1
            q = _cp_str(q, p, f.dst_a[i], f.dst_b[i], size)
        q = _cp(q, b'],"ctl":')
        q = _cp_str(q, p, f.ctl_a, f.ctl_b, size)
        q = _cp(q, b',"pur":')
        q = _cp_str(q, p, f.code_a[0], f.code_b[0], size)
        q = _cp(q, b',"rsn":')
        q = _cp_str(q, p, f.code_a[1], f.code_b[1], size)
        q = _cp(q, b',"atn":')
        q = _cp_str(q, p, f.code_a[2], f.code_b[2], size)
        q = _cp(q, b',"imq":true,"agency":' if f.imq else b',"imq":false,"agency":')
        if self.dir_code == DIR_IN:
            q = _cp_str(q, p, f.ori_a, f.ori_b, size)
        else:
            q = _cp_str(q, p, f.dst_a[0], f.dst_b[0], size)
        q = _cp(q, b',"groups":')
        q = _cp(q, groups)
        q = _cp(q, _ACTION_DENY if act == ACT_DENY else _ACTION_ALLOW)
        q = _cp(q, rule)
        q = _cp(q, b',"shadow":')
        q = _cp(q, shadow)
        q = self._tail_to(q, m, fwd, size)
        if q - (out.data + out.len) > need:
            abort()  # the bound above is wrong: memory past the buffer was written
        out.len = q - out.data
        return 0


# ------------------------------------------------------------- log scanning
#
# The log tools read lines this module's writer produced: msgspec's compact JSON with
# LogRecord's fields in order.  The scanner walks a line's fields in that order and
# notes where each value lies; a line that does not fit exactly (another writer, an
# edit, escapes it cannot skip) goes to a Python fallback that decodes it strictly.
# Both give the same answers; the tests hold them to it.


DEF N_FIELDS = 24
#: Pseudo field ids for keys: a prefix of the timestamp (hour, day, month).
TS_PREFIX_BASE = 100

cdef tuple _FIELD_NAMES = ("ts", "id", "seq", "conn", "peer", "dir", "fmt", "mke", "ori", "dst",
                           "ctl", "pur", "rsn", "atn", "imq", "agency", "groups", "action", "rule",
                           "shadow", "mode", "forwarded", "rev", "bytes")
cdef list _FIELD_KEYS = [('"%s":' % n).encode() for n in _FIELD_NAMES]
FIELD_NAMES = _FIELD_NAMES

cdef enum:
    F_TS = 0
    F_DIR = 5
    F_FMT = 6
    F_MKE = 7
    F_ORI = 8
    F_DST = 9
    F_PUR = 11
    F_RSN = 12
    F_ATN = 13
    F_IMQ = 14
    F_ACTION = 17
    F_RULE = 18


cdef Py_ssize_t _skip_string(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """p[i] is the opening quote; the index after the closing quote, or -1."""
    cdef const char* q
    cdef Py_ssize_t k, slashes
    i += 1
    while i < n:
        q = <const char*> memchr(p + i, b'"', n - i)
        if q == NULL:
            return -1
        k = q - p
        slashes = 0
        while k - 1 - slashes >= i - 1 and p[k - 1 - slashes] == b'\\':
            slashes += 1
        if slashes % 2 == 0:
            return k + 1
        i = k + 1
    return -1


cdef Py_ssize_t _skip_value(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The index just after the JSON value starting at p[i] (strings, arrays of
    strings, numbers, true/false/null), or -1."""
    cdef char c
    if i >= n:
        return -1
    c = p[i]
    if c == b'"':
        return _skip_string(p, i, n)
    if c == b'[':
        i += 1
        while i < n:
            c = p[i]
            if c == b']':
                return i + 1
            if c == b'"':
                i = _skip_string(p, i, n)
                if i < 0:
                    return -1
                continue
            if c == b',' or c == b' ':
                i += 1
                continue
            return -1
        return -1
    while i < n and p[i] != b',' and p[i] != b'}':
        if p[i] == b'"' or p[i] == b'[' or p[i] == b'{':
            return -1
        i += 1
    return i


cdef bint _parse_line(const char* p, Py_ssize_t n, Py_ssize_t* starts, Py_ssize_t* ends) noexcept:
    """Spans of the 24 values of a line in the writer's exact layout."""
    cdef Py_ssize_t i = 1, f, klen, j
    cdef bytes key
    if n < 2 or p[0] != b'{' or p[n - 1] != b'}':
        return False
    for f in range(N_FIELDS):
        key = <bytes> _FIELD_KEYS[f]
        klen = len(key)
        if i + klen > n or memcmp(p + i, <const char*> key, klen) != 0:
            return False
        i += klen
        j = _skip_value(p, i, n)
        if j < 0:
            return False
        starts[f] = i
        ends[f] = j
        i = j
        if f < N_FIELDS - 1:
            if i >= n or p[i] != b',':
                return False
            i += 1
    return i == n - 1


def seal_scan(bytes data, Py_ssize_t pos, Py_ssize_t end):
    """From ``pos`` (a line start) to the next line starting ``{"seal":`` or ``end``:
    (where that seal line starts, or end; how many newlines before it)."""
    cdef const char* p = data
    cdef const char* hit
    cdef Py_ssize_t count = 0, i = pos
    while i < end:
        hit = <const char*> memchr(p + i, b'\n', end - i)
        if hit == NULL:
            return end, count
        count += 1
        i = hit - p + 1
        if i + 8 <= end and memcmp(p + i, b'{"seal":', 8) == 0:
            return i, count
    return end, count


cdef inline bint _in_window(const char* p, Py_ssize_t s, Py_ssize_t e, bytes lo, bytes hi) noexcept:
    """ts (a quoted string at [s, e)) >= lo and < hi; empty bounds are open."""
    cdef Py_ssize_t n = e - s - 2, m, k
    cdef int c
    if lo:
        m = len(lo)
        k = n if n < m else m
        c = memcmp(p + s + 1, <const char*> lo, k)
        if c < 0 or (c == 0 and n < m):
            return False
    if hi:
        m = len(hi)
        k = n if n < m else m
        c = memcmp(p + s + 1, <const char*> hi, k)
        if c > 0 or (c == 0 and n >= m):
            return False
    return True


cdef class _KeyBuffer:
    """Scratch space for building one bytes key per line."""
    cdef char* buf
    cdef Py_ssize_t size

    def __cinit__(self):
        self.size = 4096
        self.buf = <char*> malloc(self.size)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.buf)

    cdef int reserve(self, Py_ssize_t n) except -1:
        cdef char* b
        if n > self.size:
            b = <char*> realloc(self.buf, n)
            if b == NULL:
                raise MemoryError()
            self.buf = b
            self.size = n
        return 0


def count_records(bytes data, Py_ssize_t end, tuple key_ids, bytes lo, bytes hi,
                  dict counts, fallback, Py_ssize_t base_offset=0):
    """Count the decision lines of ``data[:end]`` (whole lines) into ``counts``.

    The key of a line is one bytes object: for each id in ``key_ids``, the value's raw
    JSON (field ids 0-23) or the first k characters of the timestamp (id
    TS_PREFIX_BASE + k), joined by NUL, which raw JSON cannot contain.
    ``fallback(line, offset)`` returns ``(ts, key)`` for a line the scanner cannot
    read (key None to skip it), or raises.  Returns the number of lines counted."""
    cdef const char* p = data
    cdef const char* nl
    cdef Py_ssize_t starts[N_FIELDS]
    cdef Py_ssize_t ends[N_FIELDS]
    cdef Py_ssize_t i = 0, j, n, k, fid, nkeys = len(key_ids), lines = 0, w, vlen
    cdef Py_ssize_t ids[64]
    cdef _KeyBuffer kb = _KeyBuffer()
    if nkeys > 64:
        raise ValueError("too many key fields")
    for k in range(nkeys):
        ids[k] = key_ids[k]
    while i < end:
        nl = <const char*> memchr(p + i, b'\n', end - i)
        j = (nl - p) if nl != NULL else end
        n = j - i
        if n == 0 or (n >= 8 and memcmp(p + i, b'{"seal":', 8) == 0):
            i = j + 1
            continue
        if _parse_line(p + i, n, starts, ends):
            if (lo or hi) and not _in_window(p + i, starts[F_TS], ends[F_TS], lo, hi):
                i = j + 1
                continue
            kb.reserve(n + nkeys)
            w = 0
            for k in range(nkeys):
                if k:
                    kb.buf[w] = 0
                    w += 1
                fid = ids[k]
                if fid >= TS_PREFIX_BASE:
                    vlen = fid - TS_PREFIX_BASE
                    if vlen > ends[F_TS] - starts[F_TS] - 2:
                        vlen = ends[F_TS] - starts[F_TS] - 2
                    memcpy(kb.buf + w, p + i + starts[F_TS] + 1, vlen)
                else:
                    vlen = ends[fid] - starts[fid]
                    memcpy(kb.buf + w, p + i + starts[fid], vlen)
                w += vlen
            key = PyBytes_FromStringAndSize(kb.buf, w)
        else:
            ts, key = fallback(data[i:j], base_offset + i)
            if key is None:
                i = j + 1
                continue
        v = PyDict_GetItem(counts, key)
        counts[key] = (<object> v) + 1 if v != NULL else 1
        lines += 1
        i = j + 1
    return lines


cdef object _str_or_none(const char* p, Py_ssize_t s, Py_ssize_t e):
    """A JSON string value (no escapes) as str, or None for null."""
    if p[s] != b'"':
        return None
    return PyUnicode_DecodeASCII(p + s + 1, e - s - 2, NULL)


cdef bint _plain(const char* p, Py_ssize_t s, Py_ssize_t e) noexcept:
    """No escapes in the span, so its characters are the value's."""
    return memchr(p + s, b'\\', e - s) == NULL


cdef tuple _str_list(const char* p, Py_ssize_t s, Py_ssize_t e):
    """A JSON array of plain strings, as a tuple of str."""
    cdef list out = []
    cdef Py_ssize_t i = s + 1, j
    while i < e - 1:
        if p[i] == b'"':
            j = _skip_string(p, i, e)
            out.append(PyUnicode_DecodeASCII(p + i + 1, j - i - 2, NULL))
            i = j
        else:
            i += 1
    return tuple(out)


DEF REPLAY_CACHE_LIMIT = 1 << 20

#: Fields whose values decide a message, for replay's cache key.
cdef int[6] _DECIDING = [F_DIR, F_MKE, F_ORI, F_DST, F_PUR, F_RSN]


def replay_records(bytes data, Py_ssize_t end, Matcher m, bytes lo, bytes hi, dict counts,
                   fallback, dict cache, Py_ssize_t base_offset=0):
    """Re-decide the decision lines of ``data[:end]`` under ``m`` and count
    transitions.  A key is one bytes object: the logged action and rule as raw JSON,
    then the new action and rule, joined by NUL.  Rejected lines stay rejected.

    ``cache`` maps the raw deciding fields of a line to the new action and rule, so
    each distinct message is decided once (bounded; cleared when full).
    ``fallback(line, offset)`` returns ``(ts, key)`` for a line the scanner cannot
    read.  Returns the number of lines counted."""
    cdef const char* p = data
    cdef const char* q
    cdef const char* nl
    cdef Py_ssize_t starts[N_FIELDS]
    cdef Py_ssize_t ends[N_FIELDS]
    cdef Py_ssize_t i = 0, j, n, lines = 0, f, w, vlen, k
    cdef int act
    cdef bint ok, reject
    cdef _KeyBuffer kb = _KeyBuffer()
    cdef _KeyBuffer tb = _KeyBuffer()
    while i < end:
        nl = <const char*> memchr(p + i, b'\n', end - i)
        j = (nl - p) if nl != NULL else end
        n = j - i
        if n == 0 or (n >= 8 and memcmp(p + i, b'{"seal":', 8) == 0):
            i = j + 1
            continue
        q = p + i
        ok = _parse_line(q, n, starts, ends)
        if ok:
            for f in (F_DIR, F_MKE, F_ORI, F_DST, F_PUR, F_RSN, F_ACTION, F_RULE):
                if not _plain(q, starts[f], ends[f]):
                    ok = False
                    break
        if ok and (lo or hi) and not _in_window(q, starts[F_TS], ends[F_TS], lo, hi):
            i = j + 1
            continue
        if not ok:
            ts, key = fallback(data[i:j], base_offset + i)
            if key is not None:
                v = PyDict_GetItem(counts, key)
                counts[key] = (<object> v) + 1 if v != NULL else 1
                lines += 1
            i = j + 1
            continue
        # the logged action and rule, raw
        kb.reserve(n + 8)
        tb.reserve(n)
        w = ends[F_ACTION] - starts[F_ACTION]
        memcpy(tb.buf, q + starts[F_ACTION], w)
        tb.buf[w] = 0
        w += 1
        vlen = ends[F_RULE] - starts[F_RULE]
        memcpy(tb.buf + w, q + starts[F_RULE], vlen)
        w += vlen
        reject = memcmp(q + starts[F_ACTION], b'"reject"', 8) == 0 or q[starts[F_MKE]] != b'"' \
            or q[starts[F_ORI]] != b'"'
        if reject:
            outcome = b"\x00" + PyBytes_FromStringAndSize(q + starts[F_ACTION] + 1, ends[F_ACTION] - starts[F_ACTION] - 2) \
                + b"\x00" + PyBytes_FromStringAndSize(q + starts[F_RULE] + 1, ends[F_RULE] - starts[F_RULE] - 2)
        else:
            k = 0
            for f in _DECIDING:
                vlen = ends[f] - starts[f]
                memcpy(kb.buf + k, q + starts[f], vlen)
                k += vlen
                kb.buf[k] = 0
                k += 1
            kb.buf[k] = b'1' if q[starts[F_ATN]] == b'"' else b'0'
            kb.buf[k + 1] = b'1' if q[starts[F_IMQ]] == b't' else b'0'
            dkey = PyBytes_FromStringAndSize(kb.buf, k + 2)
            c = PyDict_GetItem(cache, dkey)
            if c != NULL:
                outcome = <object> c
            else:
                dst = _str_list(q, starts[F_DST], ends[F_DST]) if q[starts[F_DST]] == b'[' else ()
                act = m.decide_c(_str_or_none(q, starts[F_MKE], ends[F_MKE]),
                                 _str_or_none(q, starts[F_ORI], ends[F_ORI]), dst,
                                 _str_or_none(q, starts[F_PUR], ends[F_PUR]),
                                 _str_or_none(q, starts[F_RSN], ends[F_RSN]),
                                 q[starts[F_ATN]] == b'"',
                                 q[starts[F_IMQ]] == b't',
                                 DIR_IN if memcmp(q + starts[F_DIR], b'"in"', 4) == 0 else DIR_OUT)
                outcome = (b"\x00deny\x00" if act == ACT_DENY else b"\x00allow\x00") + \
                    (m.rule_ids[m.last_rule] if m.last_rule >= 0 else "default").encode()
                if len(cache) >= REPLAY_CACHE_LIMIT:
                    cache.clear()
                cache[dkey] = outcome
        vlen = len(<bytes> outcome)
        tb.reserve(w + vlen)
        memcpy(tb.buf + w, PyBytes_AS_STRING(outcome), vlen)
        key = PyBytes_FromStringAndSize(tb.buf, w + vlen)
        v = PyDict_GetItem(counts, key)
        counts[key] = (<object> v) + 1 if v != NULL else 1
        lines += 1
        i = j + 1
    return lines
