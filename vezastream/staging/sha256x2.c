/*
 * vezastream.staging._sha256x2: SHA-256 with the CPU's SHA instructions, and
 * two digests of the same bytes advanced in one pass.
 *
 * A native chunk's bytes feed two SHA-256 digests: the chunk's own, and the
 * whole file's running digest (staging/digests.py). Each pass costs about
 * 0.6 CPU-s per GiB with OpenSSL here. The SHA rounds of one digest wait on
 * each other (each round needs the previous one's state), so a core runs
 * two independent digests side by side in little more time than one:
 * update_pair() interleaves their rounds, block by block, working out each
 * block's message schedule once for both (about one digest's time for two),
 * and update_two() does the same for two digests of different bytes (two
 * uploads' bodies), each with its own schedule. Two chains still leave the
 * SHA unit half idle (timed here: four chains of rounds run 1.8x as many
 * rounds a second as two), so update_two_pairs() advances two such pairs
 * (two native chunks' bodies, each for two digests) in one pass of four.
 *
 * The module imports only on a CPU with the SHA extensions (x86-64: SHA,
 * SSSE3, SSE4.1); elsewhere importing it raises ImportError and
 * staging/digests.py uses hashlib. The objects behave like hashlib's:
 * update, copy, digest, hexdigest. An update of 2 KiB or more releases the
 * GIL; an object being updated meanwhile refuses a second update.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SHA_NI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#define BLOCK 64
#define DIGEST 32
#define GIL_FREE_AT 2048

typedef struct {
    uint32_t h[8];          /* the chaining state, in FIPS 180-4's word order */
    uint8_t block[BLOCK];   /* bytes of a block not yet full */
    uint32_t fill;          /* how many of them */
    uint64_t length;        /* bytes hashed in all */
} State;

static const uint32_t IV[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#ifdef HAVE_SHA_NI
/* The 64 round constants (FIPS 180-4, 4.2.2), four per group of rounds. */
static const uint32_t K[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define SHA_TARGET __attribute__((target("sha,sse4.1,ssse3")))

/* The instructions keep the state as two vectors, (A, B, E, F) and (C, D, G, H). */
SHA_TARGET static inline void load_state(const uint32_t h[8], __m128i *abef, __m128i *cdgh)
{
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1);  /* C D A B */
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B);  /* E F G H, reversed */
    *abef = _mm_alignr_epi8(dcba, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, dcba, 0xF0);
}

SHA_TARGET static inline void store_state(uint32_t h[8], __m128i abef, __m128i cdgh)
{
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* Message words 4i..4i+3 of a block, big-endian, from its 16-byte piece i. */
#define WORDS(p, i, swap) _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)((p) + 16 * (i))), swap)

/* Words 4i..4i+3 (i >= 4) from the 16 before them, kept in w[0..3] by i modulo 4. */
#define SCHEDULE(w, i) \
    (w[(i) & 3] = _mm_sha256msg2_epu32( \
         _mm_add_epi32(_mm_sha256msg1_epu32(w[(i) & 3], w[((i) + 1) & 3]), \
                       _mm_alignr_epi8(w[((i) + 3) & 3], w[((i) + 2) & 3], 4)), \
         w[((i) + 3) & 3]))

/* Rounds 4i..4i+3: two instructions of two rounds each. */
#define ROUNDS(w, i, abef, cdgh) do { \
        __m128i wk = _mm_add_epi32(w[(i) & 3], _mm_load_si128((const __m128i *)&K[4 * (i)])); \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk); \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E)); \
    } while (0)

SHA_TARGET static void compress(uint32_t h[8], const uint8_t *p, size_t blocks)
{
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef, cdgh;
    load_state(h, &abef, &cdgh);
    for (; blocks; blocks--, p += BLOCK) {
        __m128i abef0 = abef, cdgh0 = cdgh, w[4];
        for (int i = 0; i < 4; i++)
            w[i] = WORDS(p, i, swap);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            if (i >= 4)
                SCHEDULE(w, i);
            ROUNDS(w, i, abef, cdgh);
        }
        abef = _mm_add_epi32(abef, abef0);
        cdgh = _mm_add_epi32(cdgh, cdgh0);
    }
    store_state(h, abef, cdgh);
}

/* Two digests at once, their rounds interleaved: each over its own blocks, or (same) both over pa's,
 * whose message schedule is then worked out once. Inlined into the two below, each with same fixed. */
SHA_TARGET static inline __attribute__((always_inline)) void compress_two(
    uint32_t ha[8], const uint8_t *pa, uint32_t hb[8], const uint8_t *pb, size_t blocks, const int same)
{
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef, cdgh, abef_b, cdgh_b;
    load_state(ha, &abef, &cdgh);
    load_state(hb, &abef_b, &cdgh_b);
    for (; blocks; blocks--, pa += BLOCK, pb += BLOCK) {
        __m128i abef0 = abef, cdgh0 = cdgh, abef0_b = abef_b, cdgh0_b = cdgh_b, w[4], x[4];
        for (int i = 0; i < 4; i++) {
            w[i] = WORDS(pa, i, swap);
            if (!same)
                x[i] = WORDS(pb, i, swap);
        }
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            if (i >= 4) {
                SCHEDULE(w, i);
                if (!same)
                    SCHEDULE(x, i);
            }
            ROUNDS(w, i, abef, cdgh);
            ROUNDS((same ? w : x), i, abef_b, cdgh_b);
        }
        abef = _mm_add_epi32(abef, abef0);
        cdgh = _mm_add_epi32(cdgh, cdgh0);
        abef_b = _mm_add_epi32(abef_b, abef0_b);
        cdgh_b = _mm_add_epi32(cdgh_b, cdgh0_b);
    }
    store_state(ha, abef, cdgh);
    store_state(hb, abef_b, cdgh_b);
}

SHA_TARGET static void compress_pair(uint32_t ha[8], const uint8_t *pa, uint32_t hb[8], const uint8_t *pb,
                                     size_t blocks)
{
    compress_two(ha, pa, hb, pb, blocks, 0);
}

SHA_TARGET static void compress_same(uint32_t ha[8], uint32_t hb[8], const uint8_t *p, size_t blocks)
{
    compress_two(ha, p, hb, p, blocks, 1);
}

/* Four digests at once: ha and hb over pa's blocks, hc and hd over pc's; two schedules, four chains. */
SHA_TARGET static void compress_same_two(uint32_t ha[8], uint32_t hb[8], const uint8_t *pa,
                                         uint32_t hc[8], uint32_t hd[8], const uint8_t *pc, size_t blocks)
{
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef_a, cdgh_a, abef_b, cdgh_b, abef_c, cdgh_c, abef_d, cdgh_d;
    load_state(ha, &abef_a, &cdgh_a);
    load_state(hb, &abef_b, &cdgh_b);
    load_state(hc, &abef_c, &cdgh_c);
    load_state(hd, &abef_d, &cdgh_d);
    for (; blocks; blocks--, pa += BLOCK, pc += BLOCK) {
        __m128i abef0_a = abef_a, cdgh0_a = cdgh_a, abef0_b = abef_b, cdgh0_b = cdgh_b;
        __m128i abef0_c = abef_c, cdgh0_c = cdgh_c, abef0_d = abef_d, cdgh0_d = cdgh_d, w[4], x[4];
        for (int i = 0; i < 4; i++) {
            w[i] = WORDS(pa, i, swap);
            x[i] = WORDS(pc, i, swap);
        }
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            if (i >= 4) {
                SCHEDULE(w, i);
                SCHEDULE(x, i);
            }
            ROUNDS(w, i, abef_a, cdgh_a);
            ROUNDS(x, i, abef_c, cdgh_c);
            ROUNDS(w, i, abef_b, cdgh_b);
            ROUNDS(x, i, abef_d, cdgh_d);
        }
        abef_a = _mm_add_epi32(abef_a, abef0_a);
        cdgh_a = _mm_add_epi32(cdgh_a, cdgh0_a);
        abef_b = _mm_add_epi32(abef_b, abef0_b);
        cdgh_b = _mm_add_epi32(cdgh_b, cdgh0_b);
        abef_c = _mm_add_epi32(abef_c, abef0_c);
        cdgh_c = _mm_add_epi32(cdgh_c, cdgh0_c);
        abef_d = _mm_add_epi32(abef_d, abef0_d);
        cdgh_d = _mm_add_epi32(cdgh_d, cdgh0_d);
    }
    store_state(ha, abef_a, cdgh_a);
    store_state(hb, abef_b, cdgh_b);
    store_state(hc, abef_c, cdgh_c);
    store_state(hd, abef_d, cdgh_d);
}

static int cpu_has_sha(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
        return 0;
    if (__get_cpuid_max(0, NULL) < 7 || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b & bit_SHA) != 0;
}
#else
static void compress(uint32_t h[8], const uint8_t *p, size_t blocks) { (void)h; (void)p; (void)blocks; }
static void compress_pair(uint32_t ha[8], const uint8_t *pa, uint32_t hb[8], const uint8_t *pb, size_t blocks)
{
    (void)ha; (void)pa; (void)hb; (void)pb; (void)blocks;
}
static void compress_same(uint32_t ha[8], uint32_t hb[8], const uint8_t *p, size_t blocks)
{
    (void)ha; (void)hb; (void)p; (void)blocks;
}
static void compress_same_two(uint32_t ha[8], uint32_t hb[8], const uint8_t *pa,
                              uint32_t hc[8], uint32_t hd[8], const uint8_t *pc, size_t blocks)
{
    (void)ha; (void)hb; (void)pa; (void)hc; (void)hd; (void)pc; (void)blocks;
}
static int cpu_has_sha(void) { return 0; }
#endif

/* Tops up the block a state has begun from p; returns how many of the n bytes it took. */
static size_t top_up(State *s, const uint8_t *p, size_t n)
{
    if (s->fill == 0)
        return 0;
    size_t take = BLOCK - s->fill < n ? BLOCK - s->fill : n;
    memcpy(s->block + s->fill, p, take);
    s->fill += (uint32_t)take;
    if (s->fill == BLOCK) {
        compress(s->h, s->block, 1);
        s->fill = 0;
    }
    return take;
}

/* Keeps the bytes past the last whole block for the next update. */
static void keep_rest(State *s, const uint8_t *p, size_t n)
{
    memcpy(s->block + s->fill, p, n);
    s->fill += (uint32_t)n;
}

static void state_update(State *s, const uint8_t *p, size_t n)
{
    s->length += n;
    size_t used = top_up(s, p, n);
    size_t blocks = (n - used) / BLOCK;
    compress(s->h, p + used, blocks);
    used += blocks * BLOCK;
    keep_rest(s, p + used, n - used);
}

/* Each state advanced by its own bytes; their whole blocks side by side, in one interleaved pass. */
static void state_update_two(State *a, const uint8_t *pa, size_t na, State *b, const uint8_t *pb, size_t nb)
{
    a->length += na;
    b->length += nb;
    size_t used_a = top_up(a, pa, na), used_b = top_up(b, pb, nb);
    size_t blocks_a = (na - used_a) / BLOCK, blocks_b = (nb - used_b) / BLOCK;
    size_t both = blocks_a < blocks_b ? blocks_a : blocks_b;
    if (pa + used_a == pb + used_b)  /* the same bytes (update_pair, both blocks begun alike) */
        compress_same(a->h, b->h, pa + used_a, both);
    else
        compress_pair(a->h, pa + used_a, b->h, pb + used_b, both);
    compress(a->h, pa + used_a + both * BLOCK, blocks_a - both);
    compress(b->h, pb + used_b + both * BLOCK, blocks_b - both);
    used_a += blocks_a * BLOCK;
    used_b += blocks_b * BLOCK;
    keep_rest(a, pa + used_a, na - used_a);
    keep_rest(b, pb + used_b, nb - used_b);
}

/* a and b advanced by pa's bytes, c and d by pc's: where each pair has begun alike (always, for
 * bodies of whole blocks), their whole blocks side by side in one pass of four; else pair by pair. */
static void state_update_two_pairs(State *a, State *b, const uint8_t *pa, size_t na,
                                   State *c, State *d, const uint8_t *pc, size_t nc)
{
    if (a->fill != b->fill || c->fill != d->fill) {
        state_update_two(a, pa, na, b, pa, na);
        state_update_two(c, pc, nc, d, pc, nc);
        return;
    }
    a->length += na;
    b->length += na;
    c->length += nc;
    d->length += nc;
    size_t used_a = top_up(a, pa, na), used_c = top_up(c, pc, nc);
    top_up(b, pa, na);
    top_up(d, pc, nc);
    size_t blocks_a = (na - used_a) / BLOCK, blocks_c = (nc - used_c) / BLOCK;
    size_t both = blocks_a < blocks_c ? blocks_a : blocks_c;
    compress_same_two(a->h, b->h, pa + used_a, c->h, d->h, pc + used_c, both);
    compress_same(a->h, b->h, pa + used_a + both * BLOCK, blocks_a - both);
    compress_same(c->h, d->h, pc + used_c + both * BLOCK, blocks_c - both);
    used_a += blocks_a * BLOCK;
    used_c += blocks_c * BLOCK;
    keep_rest(a, pa + used_a, na - used_a);
    keep_rest(b, pa + used_a, na - used_a);
    keep_rest(c, pc + used_c, nc - used_c);
    keep_rest(d, pc + used_c, nc - used_c);
}

/* The digest of what a state has hashed; the state itself is left as it was. */
static void state_digest(const State *s, uint8_t out[DIGEST])
{
    State end = *s;
    uint8_t pad[2 * BLOCK] = {0};
    size_t padded = end.fill + 9 <= BLOCK ? BLOCK : 2 * BLOCK;
    uint64_t bits = end.length * 8;
    memcpy(pad, end.block, end.fill);
    pad[end.fill] = 0x80;
    for (int i = 0; i < 8; i++)
        pad[padded - 1 - i] = (uint8_t)(bits >> (8 * i));
    compress(end.h, pad, padded / BLOCK);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(end.h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(end.h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(end.h[i] >> 8);
        out[4 * i + 3] = (uint8_t)end.h[i];
    }
}

typedef struct {
    PyObject_HEAD
    State state;
    int busy;  /* an update runs without the GIL */
} Sha256Object;

static PyTypeObject Sha256Type;

static Sha256Object *new_object(void)
{
    Sha256Object *self = PyObject_New(Sha256Object, &Sha256Type);
    if (self != NULL)
        self->busy = 0;
    return self;
}

static PyObject *Sha256_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)type;
    Py_buffer data = {0};
    static char *names[] = {"data", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|y*:sha256", names, &data))
        return NULL;
    Sha256Object *self = new_object();
    if (self != NULL) {
        memcpy(self->state.h, IV, sizeof IV);
        self->state.fill = 0;
        self->state.length = 0;
        if (data.buf != NULL)
            state_update(&self->state, data.buf, (size_t)data.len);
    }
    if (data.obj != NULL)
        PyBuffer_Release(&data);
    return (PyObject *)self;
}

static int refuse_if_busy(Sha256Object *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the digest is being updated in another thread");
        return -1;
    }
    return 0;
}

static PyObject *Sha256_update(Sha256Object *self, PyObject *arg)
{
    Py_buffer data;
    if (refuse_if_busy(self) < 0 || PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (data.len >= GIL_FREE_AT) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        state_update(&self->state, data.buf, (size_t)data.len);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    } else {
        state_update(&self->state, data.buf, (size_t)data.len);
    }
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *Sha256_copy(Sha256Object *self, PyObject *unused)
{
    (void)unused;
    if (refuse_if_busy(self) < 0)
        return NULL;
    Sha256Object *copy = new_object();
    if (copy != NULL)
        copy->state = self->state;
    return (PyObject *)copy;
}

static PyObject *Sha256_digest(Sha256Object *self, PyObject *unused)
{
    (void)unused;
    uint8_t out[DIGEST];
    if (refuse_if_busy(self) < 0)
        return NULL;
    state_digest(&self->state, out);
    return PyBytes_FromStringAndSize((const char *)out, DIGEST);
}

static PyObject *Sha256_hexdigest(Sha256Object *self, PyObject *unused)
{
    (void)unused;
    static const char hex[] = "0123456789abcdef";
    uint8_t out[DIGEST];
    char text[2 * DIGEST];
    if (refuse_if_busy(self) < 0)
        return NULL;
    state_digest(&self->state, out);
    for (int i = 0; i < DIGEST; i++) {
        text[2 * i] = hex[out[i] >> 4];
        text[2 * i + 1] = hex[out[i] & 15];
    }
    return PyUnicode_FromStringAndSize(text, 2 * DIGEST);
}

static PyObject *Sha256_get_name(PyObject *self, void *closure)
{
    (void)self; (void)closure;
    return PyUnicode_FromString("sha256");
}

static PyObject *Sha256_get_digest_size(PyObject *self, void *closure)
{
    (void)self; (void)closure;
    return PyLong_FromLong(DIGEST);
}

static PyObject *Sha256_get_block_size(PyObject *self, void *closure)
{
    (void)self; (void)closure;
    return PyLong_FromLong(BLOCK);
}

static PyMethodDef Sha256_methods[] = {
    {"update", (PyCFunction)Sha256_update, METH_O, "Hash these bytes too."},
    {"copy", (PyCFunction)Sha256_copy, METH_NOARGS, "A digest that continues from here on its own."},
    {"digest", (PyCFunction)Sha256_digest, METH_NOARGS, "The 32-byte SHA-256 of what was hashed so far."},
    {"hexdigest", (PyCFunction)Sha256_hexdigest, METH_NOARGS, "The same, as 64 lowercase hex digits."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sha256_getset[] = {
    {"name", Sha256_get_name, NULL, NULL, NULL},
    {"digest_size", Sha256_get_digest_size, NULL, NULL, NULL},
    {"block_size", Sha256_get_block_size, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Sha256Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vezastream.staging._sha256x2.sha256",
    .tp_basicsize = sizeof(Sha256Object),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SHA-256 with the CPU's SHA instructions, used as hashlib.sha256 is.",
    .tp_new = Sha256_new,
    .tp_methods = Sha256_methods,
    .tp_getset = Sha256_getset,
};

/* The two digests of update_pair() and update_two(): this module's, different, neither busy. */
static int take_two(PyObject *const *args, const char *name, Sha256Object **a, Sha256Object **b)
{
    if (!PyObject_TypeCheck(args[0], &Sha256Type) || !PyObject_TypeCheck(args[1], &Sha256Type)) {
        PyErr_Format(PyExc_TypeError, "%s() advances two of this module's sha256 objects", name);
        return -1;
    }
    *a = (Sha256Object *)args[0];
    *b = (Sha256Object *)args[1];
    if (*a == *b) {
        PyErr_Format(PyExc_ValueError, "%s() needs two different digests", name);
        return -1;
    }
    return refuse_if_busy(*a) < 0 || refuse_if_busy(*b) < 0 ? -1 : 0;
}

/* Advances a by data_a and b by data_b (the same buffer for update_pair). */
static void advance_two(Sha256Object *a, const Py_buffer *data_a, Sha256Object *b, const Py_buffer *data_b)
{
    if (data_a->len + data_b->len >= GIL_FREE_AT) {
        a->busy = b->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        state_update_two(&a->state, data_a->buf, (size_t)data_a->len, &b->state, data_b->buf, (size_t)data_b->len);
        Py_END_ALLOW_THREADS
        a->busy = b->busy = 0;
    } else {
        state_update_two(&a->state, data_a->buf, (size_t)data_a->len, &b->state, data_b->buf, (size_t)data_b->len);
    }
}

static PyObject *update_pair(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Sha256Object *a, *b;
    Py_buffer data;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "update_pair(first, second, data) takes 3 arguments");
        return NULL;
    }
    if (take_two(args, "update_pair", &a, &b) < 0 || PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    advance_two(a, &data, b, &data);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *update_two(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Sha256Object *a, *b;
    Py_buffer data_a, data_b;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "update_two(first, second, first_data, second_data) takes 4 arguments");
        return NULL;
    }
    if (take_two(args, "update_two", &a, &b) < 0 || PyObject_GetBuffer(args[2], &data_a, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &data_b, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data_a);
        return NULL;
    }
    advance_two(a, &data_a, b, &data_b);
    PyBuffer_Release(&data_a);
    PyBuffer_Release(&data_b);
    Py_RETURN_NONE;
}

static PyObject *update_two_pairs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Sha256Object *a, *b, *c, *d;
    Py_buffer data_a, data_c;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "update_two_pairs(first, second, data, third, fourth, other_data) takes 6 arguments");
        return NULL;
    }
    PyObject *const others[2] = {args[3], args[4]};
    if (take_two(args, "update_two_pairs", &a, &b) < 0 || take_two(others, "update_two_pairs", &c, &d) < 0)
        return NULL;
    if (c == a || c == b || d == a || d == b) {
        PyErr_SetString(PyExc_ValueError, "update_two_pairs() needs four different digests");
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &data_a, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[5], &data_c, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data_a);
        return NULL;
    }
    if (data_a.len + data_c.len >= GIL_FREE_AT) {
        a->busy = b->busy = c->busy = d->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        state_update_two_pairs(&a->state, &b->state, data_a.buf, (size_t)data_a.len,
                               &c->state, &d->state, data_c.buf, (size_t)data_c.len);
        Py_END_ALLOW_THREADS
        a->busy = b->busy = c->busy = d->busy = 0;
    } else {
        state_update_two_pairs(&a->state, &b->state, data_a.buf, (size_t)data_a.len,
                               &c->state, &d->state, data_c.buf, (size_t)data_c.len);
    }
    PyBuffer_Release(&data_a);
    PyBuffer_Release(&data_c);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"update_pair", (PyCFunction)(void (*)(void))update_pair, METH_FASTCALL,
     "update_pair(first, second, data): both digests hash data, in one pass."},
    {"update_two", (PyCFunction)(void (*)(void))update_two, METH_FASTCALL,
     "update_two(first, second, first_data, second_data): each digest hashes its own bytes, in one pass."},
    {"update_two_pairs", (PyCFunction)(void (*)(void))update_two_pairs, METH_FASTCALL,
     "update_two_pairs(first, second, data, third, fourth, other_data): the first two digests hash data, "
     "the other two other_data, in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sha256x2",
    "SHA-256 with the CPU's SHA instructions; two digests of the same bytes in one pass.",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sha256x2(void)
{
    if (!cpu_has_sha()) {
        PyErr_SetString(PyExc_ImportError, "this CPU has no SHA instructions that vezastream uses");
        return NULL;
    }
    if (PyType_Ready(&Sha256Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&Sha256Type);
    if (PyModule_AddObject(m, "sha256", (PyObject *)&Sha256Type) < 0) {
        Py_DECREF(&Sha256Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
