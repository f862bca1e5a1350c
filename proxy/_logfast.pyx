# cython: language_level=3
"""The decision log's C helpers: the seals' hash on a thread of its own, and disk
space reserved ahead of the log's end.

**The hash.**
SPEC section 6 seals each block of log lines with SHA-256 (or HMAC-SHA256) over the
lines exactly as written.  Hashing a 400-byte line costs about a quarter of a
microsecond, as much as deciding the message, so the hash runs on the machine's
other core: :meth:`SealHash.feed` queues a written chunk and returns, and a C
thread feeds it to OpenSSL while the proxy decides the next one.  A Python thread
would not do: it needs the GIL to take each chunk and to finish it, and waiting for
the GIL cost the event loop more than the hash itself.

The hash functions are OpenSSL's, the same ones :mod:`hashlib` uses: they are looked
up in the libcrypto that :mod:`hashlib`'s ``_hashlib`` module is linked with, so the
build needs no OpenSSL headers.  Where they cannot be found (a Python without
``_hashlib``), :class:`SealHash` raises :class:`SealHashUnavailable` and the log
hashes in line with :mod:`hashlib` instead.

**The space.**  On ext4 the blocks of appended data are allocated when the page cache
writes them out, and an fsync makes that happen at once: appends meanwhile wait for
the allocation (bench/fsyncstall.py: the slowest write 8.4 ms, against 0.2 ms with space
reserved).  Blocks reserved
beforehand (:func:`reserve`, ``fallocate`` keeping the file's size) need no
allocation then, and the appends do not wait.  Readers see no difference: the size
is the log's, and :func:`os.ftruncate` to it gives back what was not used.
"""

from libc.string cimport memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from posix.dlfcn cimport dlopen, RTLD_NOW

from collections import deque
import hashlib

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <fcntl.h>
    #include <pthread.h>

    static int sg_reserve(int fd, long long offset, long long length) {
    #ifdef FALLOC_FL_KEEP_SIZE
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t) offset, (off_t) length);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }

    /* OpenSSL's EVP digest functions, as looked up at import (see sg_evp_load). */
    typedef struct {
        void *(*ctx_new)(void);
        void (*ctx_free)(void *);
        const void *(*sha256)(void);
        int (*init)(void *, const void *, void *);
        int (*update)(void *, const void *, size_t);
        int (*final)(void *, unsigned char *, unsigned int *);
        int (*copy)(void *, const void *);
    } sg_evp_t;
    static sg_evp_t sg_evp;

    static int sg_evp_load(void *lib) {
        if (lib == NULL)
            return 0;
        *(void **) &sg_evp.ctx_new = dlsym(lib, "EVP_MD_CTX_new");
        *(void **) &sg_evp.ctx_free = dlsym(lib, "EVP_MD_CTX_free");
        *(void **) &sg_evp.sha256 = dlsym(lib, "EVP_sha256");
        *(void **) &sg_evp.init = dlsym(lib, "EVP_DigestInit_ex");
        *(void **) &sg_evp.update = dlsym(lib, "EVP_DigestUpdate");
        *(void **) &sg_evp.final = dlsym(lib, "EVP_DigestFinal_ex");
        *(void **) &sg_evp.copy = dlsym(lib, "EVP_MD_CTX_copy_ex");
        return sg_evp.ctx_new && sg_evp.ctx_free && sg_evp.sha256 && sg_evp.init
            && sg_evp.update && sg_evp.final && sg_evp.copy;
    }

    /* A queue of chunks to hash and the thread that hashes them, in order, into ctx.
       head counts chunks hashed, tail chunks queued; both only grow.  A chunk with
       no bytes (p NULL) is a mark: the thread copies ctx, as it is then, to saved. */
    #define SG_QUEUE 1024
    typedef struct { const char *p; size_t n; } sg_chunk;
    typedef struct {
        pthread_mutex_t mu;
        pthread_cond_t queued, hashed;
        sg_chunk chunks[SG_QUEUE];
        size_t head, tail;
        int stop, failed;
        void *ctx, *saved;
        pthread_t thread;
    } sg_queue;

    static void *sg_serve(void *arg) {
        sg_queue *q = (sg_queue *) arg;
        pthread_mutex_lock(&q->mu);
        for (;;) {
            while (q->head == q->tail && !q->stop)
                pthread_cond_wait(&q->queued, &q->mu);
            if (q->head == q->tail)
                break;
            sg_chunk c = q->chunks[q->head % SG_QUEUE];
            pthread_mutex_unlock(&q->mu);
            int ok = c.p ? sg_evp.update(q->ctx, c.p, c.n) : sg_evp.copy(q->saved, q->ctx);
            pthread_mutex_lock(&q->mu);
            if (!ok)
                q->failed = 1;
            q->head++;
            pthread_cond_broadcast(&q->hashed);
        }
        pthread_mutex_unlock(&q->mu);
        return NULL;
    }

    static int sg_start(sg_queue *q) {
        pthread_mutex_init(&q->mu, NULL);
        pthread_cond_init(&q->queued, NULL);
        pthread_cond_init(&q->hashed, NULL);
        return pthread_create(&q->thread, NULL, sg_serve, q) == 0;
    }

    static void sg_stop(sg_queue *q) {
        pthread_mutex_lock(&q->mu);
        q->stop = 1;
        pthread_cond_signal(&q->queued);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->thread, NULL);
        pthread_cond_destroy(&q->queued);
        pthread_cond_destroy(&q->hashed);
        pthread_mutex_destroy(&q->mu);
    }

    static void sg_push(sg_queue *q, const char *p, size_t n) {
        pthread_mutex_lock(&q->mu);
        q->chunks[q->tail % SG_QUEUE].p = p;
        q->chunks[q->tail % SG_QUEUE].n = n;
        if (q->tail++ == q->head)
            pthread_cond_signal(&q->queued);
        pthread_mutex_unlock(&q->mu);
    }

    static size_t sg_hashed(sg_queue *q) {
        pthread_mutex_lock(&q->mu);
        size_t head = q->head;
        pthread_mutex_unlock(&q->mu);
        return head;
    }

    /* Wait until at most `left` chunks are queued and not yet hashed; returns the
       number hashed so far.  Called without the GIL. */
    static size_t sg_wait(sg_queue *q, size_t left) {
        pthread_mutex_lock(&q->mu);
        while (q->tail - q->head > left)
            pthread_cond_wait(&q->hashed, &q->mu);
        size_t head = q->head;
        pthread_mutex_unlock(&q->mu);
        return head;
    }
    """
    ctypedef struct sg_evp_t:
        void* (*ctx_new)() noexcept nogil
        void (*ctx_free)(void*) noexcept nogil
        const void* (*sha256)() noexcept nogil
        int (*init)(void*, const void*, void*) noexcept nogil
        int (*update)(void*, const void*, size_t) noexcept nogil
        int (*final)(void*, unsigned char*, unsigned int*) noexcept nogil
        int (*copy)(void*, const void*) noexcept nogil
    sg_evp_t sg_evp
    int sg_evp_load(void* lib) noexcept
    int sg_reserve(int fd, long long offset, long long length) noexcept nogil
    int SG_QUEUE
    ctypedef struct sg_queue:
        size_t head, tail
        int failed
        void* ctx
        void* saved
    int sg_start(sg_queue* q) noexcept nogil
    void sg_stop(sg_queue* q) noexcept nogil
    void sg_push(sg_queue* q, const char* p, size_t n) noexcept nogil
    size_t sg_wait(sg_queue* q, size_t left) noexcept nogil
    size_t sg_hashed(sg_queue* q) noexcept nogil


def reserve(int fd, long long offset, long long length) -> bool:
    """Reserve disk blocks for fd's bytes [offset, offset + length) without changing
    its size.  False where the file or the system cannot (not a regular file, no
    space left, no fallocate): the log then appends as it would anyway."""
    cdef int r
    with nogil:
        r = sg_reserve(fd, offset, length)
    return r == 0


class SealHashUnavailable(RuntimeError):
    """OpenSSL's digest functions could not be found in this Python."""


cdef bint _loaded = False
try:
    import _hashlib
    _loaded = sg_evp_load(dlopen(_hashlib.__file__.encode(), RTLD_NOW)) != 0
except (ImportError, AttributeError):
    pass

#: SHA-256's block size, the length HMAC pads its key to.
_BLOCK = 64


cdef void* _new_ctx() except NULL:
    cdef void* ctx = sg_evp.ctx_new()
    if ctx == NULL:
        raise MemoryError()
    return ctx


cdef int _hash_into(void* ctx, bytes data) except -1:
    if not sg_evp.update(ctx, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)):
        raise RuntimeError("OpenSSL failed to hash")
    return 0


cdef int _sha256(void* ctx, bytes data) except -1:
    """Start ctx afresh as SHA-256 of data."""
    if not sg_evp.init(ctx, sg_evp.sha256(), NULL):
        raise RuntimeError("OpenSSL could not start a SHA-256")
    return _hash_into(ctx, data)


cdef class SealHash:
    """SHA-256, or HMAC-SHA256 with ``key``, of one seal block after another.

    :meth:`start` begins a block with the previous seal's hex; :meth:`feed` queues a
    chunk for the background thread and :meth:`update` hashes one here (after what is
    queued: chunks are hashed in the order given); :meth:`hexdigest` waits for the
    queue and gives the block's hash.  :meth:`save` and :meth:`restore` keep one
    earlier state, for a write that fails; :meth:`mark` is a save that the thread
    makes in its turn, so that a chunk can be queued before its write.  A fed chunk
    must not change until hashed: bytes cannot, and the queue holds a reference to
    each until then.
    """

    cdef sg_queue q
    cdef bint running
    cdef void* saved       # the state kept by save()
    cdef void* outer       # HMAC: SHA-256 primed with the key ^ opad; else NULL
    cdef void* inner       # HMAC: SHA-256 primed with the key ^ ipad; else NULL
    cdef size_t released   # chunks whose references are let go
    cdef object held       # the fed chunks not yet let go, oldest first

    def __cinit__(self, key: bytes | None = None):
        if not _loaded:
            raise SealHashUnavailable("OpenSSL's EVP digest functions were not found")
        memset(&self.q, 0, sizeof(sg_queue))
        self.held = deque()
        self.q.ctx = _new_ctx()
        self.saved = _new_ctx()
        self.q.saved = self.saved  # written by the thread at a mark, else by save()
        if key is not None:
            if len(key) > _BLOCK:
                key = hashlib.sha256(key).digest()
            key = key.ljust(_BLOCK, b"\0")
            self.inner = _new_ctx()
            self.outer = _new_ctx()
            _sha256(self.inner, bytes(b ^ 0x36 for b in key))
            _sha256(self.outer, bytes(b ^ 0x5C for b in key))
        if not sg_start(&self.q):
            raise OSError("cannot start the seal hash thread")
        self.running = True

    def __dealloc__(self):
        self._stop()
        if not _loaded:
            return
        sg_evp.ctx_free(self.q.ctx)  # each takes NULL
        sg_evp.ctx_free(self.saved)
        sg_evp.ctx_free(self.inner)
        sg_evp.ctx_free(self.outer)

    cdef void _stop(self) noexcept:
        if self.running:
            with nogil:
                sg_stop(&self.q)
            self.running = False

    def close(self) -> None:
        """Stop the thread, after hashing what is queued; the hash goes on in line."""
        self._wait(0)
        self._stop()

    cdef int _wait(self, size_t left) except -1:
        """Wait until at most ``left`` fed chunks are unhashed; let go of the rest."""
        cdef size_t head
        if self.q.tail == self.released:
            return 0  # nothing fed since the last wait
        head = sg_hashed(&self.q)
        if self.q.tail - head > left:  # the GIL is let go only to wait
            with nogil:
                head = sg_wait(&self.q, left)
        while self.released < head:
            self.held.popleft()
            self.released += 1
        if self.q.failed:
            raise RuntimeError("OpenSSL failed to hash a log chunk")
        return 0

    cdef int _copy(self, void* to, void* frm) except -1:
        if not sg_evp.copy(to, frm):
            raise RuntimeError("OpenSSL could not copy a hash state")
        return 0

    def start(self, bytes prev) -> None:
        """Begin a block: the hash of prev's bytes, then whatever is fed or updated."""
        self._wait(0)
        if self.inner != NULL:
            self._copy(self.q.ctx, self.inner)
            _hash_into(self.q.ctx, prev)
        else:
            _sha256(self.q.ctx, prev)

    def feed(self, bytes data) -> None:
        """Queue data to be hashed on the background thread; returns at once unless
        the queue is full.  Once closed, hashes data here."""
        if not self.running:
            return self.update(data)
        self._wait(SG_QUEUE - 1)
        self.held.append(data)
        sg_push(&self.q, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    def mark(self) -> None:
        """:meth:`save` the state that the chunks queued so far leave, without waiting
        for them: the thread keeps it when it gets there."""
        if not self.running:
            return self.save()
        self._wait(SG_QUEUE - 1)
        self.held.append(None)  # a place in the queue, for _wait to let go
        sg_push(&self.q, NULL, 0)

    def update(self, bytes data) -> None:
        """Hash data here and now, after everything fed before it."""
        self._wait(0)
        _hash_into(self.q.ctx, data)

    def hexdigest(self) -> str:
        """The block's hash so far, in lowercase hex; the block goes on."""
        cdef unsigned char digest[32]
        cdef unsigned int n = 0
        cdef void* tmp = _new_ctx()
        try:
            self._wait(0)
            self._copy(tmp, self.q.ctx)
            ok = sg_evp.final(tmp, digest, &n)
            if ok and self.outer != NULL:
                self._copy(tmp, self.outer)
                ok = sg_evp.update(tmp, digest, n) and sg_evp.final(tmp, digest, &n)
            if not ok:
                raise RuntimeError("OpenSSL failed to finish a hash")
        finally:
            sg_evp.ctx_free(tmp)
        return digest[:n].hex()

    def save(self) -> None:
        """Keep the state as it is now (after what is fed), for :meth:`restore`."""
        self._wait(0)
        self._copy(self.saved, self.q.ctx)

    def restore(self) -> None:
        """Go back to the state :meth:`save` kept."""
        self._wait(0)
        self._copy(self.q.ctx, self.saved)
