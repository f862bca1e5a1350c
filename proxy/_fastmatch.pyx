# cython: language_level=3
"""The compiled hot path: framing, decoding dispatch and the decision, per chunk.

One call to :meth:`Engine.feed` takes a received chunk, cuts it into frames, decodes
and decides every complete frame, and returns the log records, the bytes to forward
and the denials to answer.  The Python layer makes one call per chunk, not per message.

The matcher turns each rule condition into a bit per rule: for every distinct value of
a message field (agency, key, purpose ...) it computes once which rules that value
satisfies, and caches the mask.  Deciding a message is then an AND of a few masks and
a find-first-set.  Its plain-Python twin is :func:`proxy._policy.decide`; the tests
require the two to agree.
"""

from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memchr, memcmp, memcpy
from cpython.dict cimport PyDict_GetItem
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeASCII

import sys

from ._decode import BLANK, Malformed, _json_decoder, decode_json, decode_text, decode_xml
from ._types import LogRecord, Message

cdef extern from *:
    """
    static inline int sg_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    """
    int sg_ctz64(unsigned long long x)

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


cdef class Matcher:
    """A compiled :class:`~proxy._policy.Policy`."""

    cdef readonly object policy
    cdef readonly str rev
    cdef readonly str mode
    cdef readonly bint monitor
    cdef readonly bint deny_reply
    cdef readonly object xml_fields
    cdef readonly tuple xml_names  # the body element names, as bytes, for the fast path
    cdef Py_ssize_t n_rules, n_words
    cdef list rules, rule_ids, group_entries
    cdef bytes decide_mask, shadow_mask, imq_true, imq_false, atn_missing, atn_present
    cdef bytes dst_free, dir_in, dir_out
    cdef dict agency_cache, mke_cache, pur_cache, rsn_cache, dst_cache
    cdef int default_action
    cdef uint64_t* acc
    cdef uint64_t* dst_acc
    # results of the last decide_c call
    cdef Py_ssize_t last_rule, last_shadow
    cdef object last_agency, last_groups

    def __cinit__(self):
        self.acc = NULL
        self.dst_acc = NULL

    def __init__(self, policy):
        self.policy = policy
        self.rev = policy.rev
        self.mode = policy.mode
        self.monitor = policy.mode == "monitor"
        self.deny_reply = policy.deny_reply
        self.xml_fields = policy.xml
        self.xml_names = xml_body_names(policy.xml)
        self.rules = list(policy.rules)
        self.rule_ids = [r.id for r in self.rules]
        self.n_rules = len(self.rules)
        self.n_words = max(1, (self.n_rules + 63) // 64)
        self.group_entries = [(g.name, g.ori) for g in policy.groups]
        self.default_action = ACT_DENY if policy.default == "deny" else ACT_ALLOW
        self.acc = <uint64_t*> malloc(self.n_words * sizeof(uint64_t))
        self.dst_acc = <uint64_t*> malloc(self.n_words * sizeof(uint64_t))
        if self.acc == NULL or self.dst_acc == NULL:
            raise MemoryError()
        rules = self.rules
        self.decide_mask = self._mask([not r.shadow for r in rules])
        self.shadow_mask = self._mask([r.shadow for r in rules])
        self.dir_in = self._mask([r.direction in ("in", "any") for r in rules])
        self.dir_out = self._mask([r.direction in ("out", "any") for r in rules])
        self.imq_true = self._mask([r.photo is None or r.photo for r in rules])
        self.imq_false = self._mask([r.photo is None or not r.photo for r in rules])
        self.atn_missing = self._mask([r.attention != "present" for r in rules])
        self.atn_present = self._mask([r.attention != "missing" for r in rules])
        self.dst_free = self._mask([r.dst is None for r in rules])
        self.agency_cache = {}
        self.mke_cache = {}
        self.pur_cache = {}
        self.rsn_cache = {}
        self.dst_cache = {}

    def __dealloc__(self):
        free(self.acc)
        free(self.dst_acc)

    cdef bytes _mask(self, list bits):
        cdef Py_ssize_t w, i
        words = []
        for w in range(self.n_words):
            value = 0
            for i in range(64):
                if w * 64 + i < len(bits) and bits[w * 64 + i]:
                    value |= (<object> 1) << i
            words.append(value.to_bytes(8, sys.byteorder))
        return b"".join(words)

    # ---------------------------------------------------------- per-value masks

    cdef tuple _groups(self, str value):
        return tuple([name for name, entries in self.group_entries
                      if any(pattern_match(e, value) for e in entries)])

    cdef bint _entry(self, str entry, str value, tuple groups):
        if entry[0] == u'@':
            return entry[1:] in groups
        return pattern_match(entry, value)

    cdef tuple _agency_info(self, object agency):
        info = self.agency_cache.get(agency)
        if info is not None:
            return <tuple> info
        if agency is None:
            groups = ()
            bits = [r.agency is None for r in self.rules]
        else:
            groups = self._groups(agency)
            bits = [r.agency is None or any(self._entry(e, agency, groups) for e in r.agency)
                    for r in self.rules]
        info = (self._mask(bits), groups)
        if len(self.agency_cache) >= CACHE_LIMIT:
            self.agency_cache.clear()
        self.agency_cache[agency] = info
        return <tuple> info

    cdef bytes _mke_mask(self, str mke):
        mask = self.mke_cache.get(mke)
        if mask is None:
            mask = self._mask([r.mke is None or mke in r.mke for r in self.rules])
            if len(self.mke_cache) >= CACHE_LIMIT:
                self.mke_cache.clear()
            self.mke_cache[mke] = mask
        return <bytes> mask

    cdef bytes _code_mask(self, dict cache, object code, bint purpose):
        mask = cache.get(code)
        if mask is None:
            bits = []
            for r in self.rules:
                codes = r.purpose if purpose else r.reason
                if codes is None:
                    bits.append(True)
                elif code is None:
                    bits.append("none" in codes)
                else:
                    bits.append(code != "none" and code in codes)
            mask = self._mask(bits)
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[code] = mask
        return <bytes> mask

    cdef bytes _dst_mask(self, str d):
        mask = self.dst_cache.get(d)
        if mask is None:
            groups = self._groups(d)
            mask = self._mask([r.dst is not None and any(self._entry(e, d, groups) for e in r.dst)
                               for r in self.rules])
            if len(self.dst_cache) >= CACHE_LIMIT:
                self.dst_cache.clear()
            self.dst_cache[d] = mask
        return <bytes> mask

    # ------------------------------------------------------------------ decide

    cdef int decide_c(self, str mke, str ori, tuple dst, object pur, object rsn,
                      bint has_atn, bint imq, int direction) except -1:
        """Sets last_rule (-1: default), last_shadow (-1: none), last_agency and
        last_groups; returns ACT_ALLOW or ACT_DENY."""
        cdef Py_ssize_t w, nw = self.n_words, idx, s
        cdef uint64_t* acc = self.acc
        cdef uint64_t* dacc = self.dst_acc
        cdef const uint64_t* m
        cdef uint64_t bits
        agency = ori if direction == DIR_IN else (dst[0] if dst else None)
        info = self._agency_info(agency)
        self.last_agency = agency
        self.last_groups = info[1]

        m = <const uint64_t*> PyBytes_AS_STRING(<bytes> info[0])
        for w in range(nw):
            acc[w] = m[w]
        m = <const uint64_t*> PyBytes_AS_STRING(self.dir_in if direction == DIR_IN else self.dir_out)
        for w in range(nw):
            acc[w] &= m[w]
        m = <const uint64_t*> PyBytes_AS_STRING(self._mke_mask(mke))
        for w in range(nw):
            acc[w] &= m[w]
        m = <const uint64_t*> PyBytes_AS_STRING(self.imq_true if imq else self.imq_false)
        for w in range(nw):
            acc[w] &= m[w]
        m = <const uint64_t*> PyBytes_AS_STRING(self.atn_present if has_atn else self.atn_missing)
        for w in range(nw):
            acc[w] &= m[w]
        m = <const uint64_t*> PyBytes_AS_STRING(self._code_mask(self.pur_cache, pur, True))
        for w in range(nw):
            acc[w] &= m[w]
        m = <const uint64_t*> PyBytes_AS_STRING(self._code_mask(self.rsn_cache, rsn, False))
        for w in range(nw):
            acc[w] &= m[w]
        # destinations: a rule without a dst condition, or any destination matching
        m = <const uint64_t*> PyBytes_AS_STRING(self.dst_free)
        for w in range(nw):
            dacc[w] = m[w]
        for d in dst:
            m = <const uint64_t*> PyBytes_AS_STRING(self._dst_mask(d))
            for w in range(nw):
                dacc[w] |= m[w]
        for w in range(nw):
            acc[w] &= dacc[w]

        # first deciding rule
        idx = -1
        m = <const uint64_t*> PyBytes_AS_STRING(self.decide_mask)
        for w in range(nw):
            bits = acc[w] & m[w]
            if bits:
                idx = w * 64 + sg_ctz64(bits)
                break
        # first shadow rule before it
        s = -1
        m = <const uint64_t*> PyBytes_AS_STRING(self.shadow_mask)
        for w in range(nw):
            bits = acc[w] & m[w]
            if bits:
                s = w * 64 + sg_ctz64(bits)
                break
        if idx >= 0 and s > idx:
            s = -1
        self.last_rule = idx
        self.last_shadow = s
        if idx < 0:
            return self.default_action
        return ACT_DENY if self.rules[idx].action == "deny" else ACT_ALLOW

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

    def rule(self, str rule_id):
        """The Rule with this id (for deny replies), or None."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None


# ---------------------------------------------------------------------- framing


cdef class _Framer:
    """Compiled framing; the plain statement is proxy._framing."""

    cdef bytearray buf
    cdef Py_ssize_t max_frame
    cdef bint delimited
    cdef bytes term
    cdef Py_ssize_t tlen
    cdef Py_ssize_t skip      # len32: payload bytes still to discard
    cdef Py_ssize_t skipped   # delimited: >= 0 while discarding

    def __init__(self, bint delimited, Py_ssize_t max_frame, bytes terminator):
        self.buf = bytearray()
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

    cdef list feed(self, bytes data):
        if self.delimited:
            return self._feed_delimited(data)
        return self._feed_len32(data)

    cdef list _feed_len32(self, bytes data):
        cdef list events = []
        cdef Py_ssize_t taken, pos = 0, n, avail
        cdef unsigned long long size
        cdef const unsigned char* p
        if self.skip:
            taken = min(self.skip, len(data))
            self.skip -= taken
            if taken:
                data = data[taken:]
        buf = self.buf
        if len(buf):
            buf += data
            src = bytes(buf)
        else:
            src = data
        n = len(src)
        p = <const unsigned char*> PyBytes_AS_STRING(src)
        while n - pos >= 4:
            size = (<unsigned long long> p[pos] << 24) | (p[pos + 1] << 16) | (p[pos + 2] << 8) | p[pos + 3]
            if size > <unsigned long long> self.max_frame:
                events.append(("oversize", size))
                avail = n - pos - 4
                if <unsigned long long> avail >= size:
                    pos += 4 + <Py_ssize_t> size
                    continue
                self.skip = <Py_ssize_t> size - avail
                pos = n
                break
            if <unsigned long long> (n - pos - 4) < size:
                break
            raw = src[pos:pos + 4 + size]
            events.append(("frame", raw[4:], raw))
            pos += 4 + <Py_ssize_t> size
        self.buf = bytearray(src[pos:])
        return events

    cdef list _feed_delimited(self, bytes data):
        cdef list events = []
        cdef Py_ssize_t pos = 0, end, keep, n
        buf = self.buf
        buf += data
        n = len(buf)
        while True:
            end = buf.find(self.term, pos)
            if self.skipped >= 0:
                if end < 0:
                    keep = min(self.tlen - 1, n - pos)
                    self.skipped += n - pos - keep
                    pos = n - keep
                    break
                events.append(("oversize", self.skipped + end - pos))
                self.skipped = -1
                pos = end + self.tlen
                continue
            if end < 0:
                if n - pos > self.max_frame + self.tlen - 1:
                    self.skipped = 0
                    continue
                break
            if end - pos > self.max_frame:
                events.append(("oversize", end - pos))
                pos = end + self.tlen
                continue
            raw = bytes(buf[pos:end + self.tlen])
            events.append(("frame", raw[:end - pos], raw))
            pos = end + self.tlen
        del buf[:pos]
        return events


def compiled_framer_events(bint delimited, Py_ssize_t max_frame, bytes terminator, chunks):
    """Run the compiled framer over chunks; for the differential tests."""
    cdef _Framer f = _Framer(delimited, max_frame, terminator)
    out = []
    for c in chunks:
        out.extend(f.feed(bytes(c)))
    return out, f.pending, f.busy


# ------------------------------------------------------------ text fast path
#
# Most traffic is legacy text, printable ASCII with LF or CR LF line ends.  For exactly
# that, in either header form, the fast path below reads the header and the four
# decision elements with byte loops.  For anything else (a control byte, a non-ASCII
# byte, a header the reference would reject) it returns None and the reference decoder
# in _decode.py decides, with its exact error.  Where the fast path answers, its answer
# is the reference's: tests/test_fasttext.py holds it to that on generated, mutated and
# random payloads.

cdef inline bint _ws(unsigned char c) noexcept nogil:
    """Whitespace the fast paths can meet (they decline CR and other controls)."""
    return c == 32 or c == 9 or c == 10

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

cdef inline bint _alnum(unsigned char c) noexcept nogil:
    return (65 <= c <= 90) or (48 <= c <= 57)

cdef bint _is_dst(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """p[a:b] is 2 or 9 characters of A-Z 0-9."""
    cdef Py_ssize_t i
    if b - a != 2 and b - a != 9:
        return False
    for i in range(a, b):
        if not _alnum(p[i]):
            return False
    return True

cdef inline str _ascii(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    return PyUnicode_DecodeASCII(<const char*> p + a, b - a, NULL)

cdef object _code(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, Py_ssize_t limit, bint* bad):
    """A stripped element value; None when empty; bad when longer than limit or
    holding a tab or line break (not printable, so the reference rejects it)."""
    cdef Py_ssize_t i
    a = _strip_a(p, a, b)
    b = _strip_b(p, a, b)
    if a == b:
        return None
    if b - a > limit:
        bad[0] = True
        return None
    for i in range(a, b):
        if p[i] < 32:
            bad[0] = True
            return None
    return _ascii(p, a, b)

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


cdef void _scan_elements(const unsigned char* p, Py_ssize_t a, Py_ssize_t b,
                         Py_ssize_t* el_a, Py_ssize_t* el_b) noexcept nogil:
    """Note where the first PUR/, RSN/, ATN/ and IMQ/ values lie in the line p[a:b]."""
    cdef Py_ssize_t pa = a, i = a, s, e, k, slash
    cdef int which
    while True:
        if i == b or p[i] == 46:  # '.' ends a part
            s, e = pa, i
            while s < e and p[s] == 32:
                s += 1
            while e > s and p[e - 1] == 32:
                e -= 1
            slash = -1
            k = s
            while k < e and k < s + 5:
                if p[k] == 47:  # '/'
                    slash = k
                    break
                k += 1
            if slash - s == 3:
                which = -1
                if p[s] == 80 and p[s + 1] == 85 and p[s + 2] == 82:
                    which = 0  # PUR
                elif p[s] == 82 and p[s + 1] == 83 and p[s + 2] == 78:
                    which = 1  # RSN
                elif p[s] == 65 and p[s + 1] == 84 and p[s + 2] == 78:
                    which = 2  # ATN
                elif p[s] == 73 and p[s + 1] == 77 and p[s + 2] == 81:
                    which = 3  # IMQ
                if which >= 0 and el_a[which] < 0:
                    el_a[which] = slash + 1
                    el_b[which] = e
            if i == b:
                return
            pa = i + 1
        i += 1


def fast_decode_text(bytes payload):
    """The reference's Message for a plain text payload, or None."""
    t = _text_fields(payload)
    return None if t is None else Message(*t)


cdef Py_ssize_t _destinations(const unsigned char* p, Py_ssize_t a, Py_ssize_t b,
                              Py_ssize_t* dst_a, Py_ssize_t* dst_b, int* ndst,
                              Py_ssize_t* ctl_a, Py_ssize_t* ctl_b) noexcept nogil:
    """The reference's _split_destinations over the segments of p[a:b]: destinations
    and control field up to the TXT marker.  Returns where the rest after ``TXT``
    starts; -1 when there is no marker or the reference would reject (decline)."""
    cdef Py_ssize_t i = a, seg_a = a
    while True:
        if i == b or p[i] == 46:  # '.'
            if i - seg_a >= 3 and p[seg_a] == 84 and p[seg_a + 1] == 88 and p[seg_a + 2] == 84 \
                    and not _is_dst(p, seg_a, i):  # the TXT marker
                return seg_a + 3
            if i > seg_a and p[seg_a] == 42:  # '*': the control field
                if ctl_a[0] >= 0:
                    return -1
                ctl_a[0] = seg_a + 1
                ctl_b[0] = i
            else:
                if ctl_a[0] >= 0 or ndst[0] == 5 or not _is_dst(p, seg_a, i):
                    return -1
                dst_a[ndst[0]] = seg_a
                dst_b[ndst[0]] = i
                ndst[0] += 1
            if i == b:
                return -1
            seg_a = i + 1
        i += 1


cdef Py_ssize_t _line(const unsigned char* p, Py_ssize_t n, Py_ssize_t pos,
                      Py_ssize_t* a, Py_ssize_t* b) noexcept nogil:
    """The line starting at pos, stripped of spaces and CR, as [a, b); returns the
    index of its LF (or n)."""
    cdef Py_ssize_t e = pos
    while e < n and p[e] != 10:
        e += 1
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


cdef tuple _text_fields(bytes payload):
    """fast_decode_text's fields as a tuple in Message's order, or None."""
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(payload)
    cdef Py_ssize_t n = len(payload), i, start, end, le, dot1 = -1, dot2 = -1
    cdef Py_ssize_t mke_a, mke_b, ori_a, ori_b, ctl_a = -1, ctl_b = -1, rest_a, rest_b
    cdef Py_ssize_t l1a, l1b, l2a, l2b, l3a, l3b, ta, tb, star, na, nb, cta = -1, ctb = -1
    cdef Py_ssize_t[6] dst_a  # one spare: the TXT line may add five to the clock line's one
    cdef Py_ssize_t[6] dst_b
    cdef int ndst = 0, which, ntok, more_ndst
    cdef Py_ssize_t[4] el_a
    cdef Py_ssize_t[4] el_b
    cdef bint bad = False, output_form
    cdef unsigned char c
    # Only printable ASCII, LF, and CR before LF or at the end.
    for i in range(n):
        c = p[i]
        if c < 32 or c > 126:
            if c == 10:
                continue
            if c == 13 and (i + 1 == n or p[i + 1] == 10):
                continue
            return None
    start = 0
    while start < n and (p[start] == 32 or p[start] == 13 or p[start] == 10):
        start += 1
    if start == n:
        return None
    le = _line(p, n, start, &start, &end)
    for i in range(start, end):
        if p[i] == 46:
            if dot1 < 0:
                dot1 = i
            else:
                dot2 = i
                break
    if dot1 < 0:
        return None  # not MKE.ORI
    mke_a, mke_b = start, dot1
    ori_a, ori_b = dot1 + 1, (dot2 if dot2 >= 0 else end)
    # The reference's choice: the input form has a third segment, and a non-empty one
    # when there are exactly three.
    output_form = dot2 < 0 or dot2 == end - 1
    if not (2 <= mke_b - mke_a <= 3):
        return None
    for i in range(mke_a, mke_b):
        if not _upper(p[i]):
            return None
    if ori_b - ori_a != 9 or not (_upper(p[ori_a]) and _upper(p[ori_a + 1])):
        return None
    for i in range(ori_a + 2, ori_b):
        if not _alnum(p[i]):
            return None
    if not output_form:
        rest_a = _destinations(p, dot2 + 1, end, dst_a, dst_b, &ndst, &ctl_a, &ctl_b)
        if rest_a < 0:
            return None
        rest_b = end
    else:
        # MKE.ORI, two clock lines (the second may end in DEST[*CTL]), then TXT.
        if le >= n:
            return None
        le = _line(p, n, le + 1, &l1a, &l1b)
        if le >= n:
            return None
        le = _line(p, n, le + 1, &l2a, &l2b)
        if le >= n:
            return None
        le = _line(p, n, le + 1, &l3a, &l3b)
        if not _clock(p, l1a, l1b) or not _clock(p, l2a, l2b):
            return None
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
                dst_a[0] = na
                dst_b[0] = nb
                ndst = 1
                if star < tb:
                    cta, ctb = star + 1, tb
        more_ndst = 0
        rest_a = _destinations(p, l3a, l3b, dst_a + ndst, dst_b + ndst, &more_ndst, &ctl_a, &ctl_b)
        if rest_a < 0:
            return None
        if more_ndst > 0 and ndst > 0:
            return None  # destinations both on the clock line and the TXT line
        ndst += more_ndst
        if ctl_a < 0:
            ctl_a, ctl_b = cta, ctb
        rest_b = l3b
    if ndst == 0 or (ctl_a >= 0 and ctl_b - ctl_a > 10):
        return None
    # Body: the rest of the header line, then every further line, each stripped; data
    # elements are period-separated parts, each stripped.  First PUR, RSN, ATN, IMQ.
    for which in range(4):
        el_a[which] = -1
        el_b[which] = -1
    _scan_elements(p, rest_a, rest_b, el_a, el_b)
    while le < n:
        le = _line(p, n, le + 1, &l1a, &l1b)
        _scan_elements(p, l1a, l1b, el_a, el_b)
    dst = PyTuple_New(ndst)
    for which in range(ndst):
        d = _ascii(p, dst_a[which], dst_b[which])
        Py_INCREF(d)
        PyTuple_SET_ITEM(dst, which, d)
    pur = _code(p, el_a[0], el_b[0], 10, &bad) if el_a[0] >= 0 else None
    rsn = _code(p, el_a[1], el_b[1], 10, &bad) if el_a[1] >= 0 else None
    atn = _code(p, el_a[2], el_b[2], 100, &bad) if el_a[2] >= 0 else None
    if bad:
        return None
    return ("text", _ascii(p, mke_a, mke_b), _ascii(p, ori_a, ori_b), dst,
                   _ascii(p, ctl_a, ctl_b) if ctl_a >= 0 and ctl_b > ctl_a else None,
                   pur, rsn, atn, el_a[3] >= 0 and _yes(p, el_a[3], el_b[3]))


# ------------------------------------------------------------- XML fast path
#
# The reference parses XML with defusedxml (expat, DTDs forbidden): safe, and slow for
# a header.  This fast path reads the simple, common shape: ASCII, no DTD, comment,
# processing instruction, CDATA or entity reference, an optional plain XML declaration,
# namespace prefixes declared where they are used.  It checks well-formedness as it
# goes (tags nest and match, attributes are well formed and distinct, nothing but
# whitespace outside the root) and declines (returns None) anything else, for the
# reference to decide.  tests/test_fastxml.py holds its answers to the reference's.

DEF XML_MAX_DEPTH = 64
DEF XML_MAX_NS = 32
DEF XML_MAX_ATTRS = 16

cdef inline bint _name_start(unsigned char c) noexcept nogil:
    return (65 <= c <= 90) or (97 <= c <= 122) or c == 95

cdef inline bint _name_char(unsigned char c) noexcept nogil:
    return _name_start(c) or (48 <= c <= 57) or c == 45 or c == 46

cdef Py_ssize_t _qname(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* colon) noexcept nogil:
    """The end of the name at p[i] (at most one colon, both parts proper names), or -1.
    colon: the colon's index, or -1."""
    colon[0] = -1
    if i >= n or not _name_start(p[i]):
        return -1
    i += 1
    while i < n:
        if p[i] == 58:  # ':'
            if colon[0] >= 0 or i + 1 >= n or not _name_start(p[i + 1]):
                return -1
            colon[0] = i
            i += 1
        elif not _name_char(p[i]):
            break
        i += 1
    return i

cdef inline bint _same(const unsigned char* p, Py_ssize_t a, Py_ssize_t alen,
                       Py_ssize_t b, Py_ssize_t blen) noexcept nogil:
    return alen == blen and memcmp(p + a, p + b, alen) == 0

cdef inline bint _is(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, const char* lit,
                     Py_ssize_t litlen) noexcept nogil:
    return b - a == litlen and memcmp(p + a, lit, litlen) == 0

cdef bint _in_names(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, tuple names):
    cdef bytes name
    for name in names:
        if len(name) == b - a and memcmp(p + a, PyBytes_AS_STRING(name), b - a) == 0:
            return True
    return False

def fast_decode_xml(bytes payload, tuple names):
    """The reference's Message for a simple XML payload, or None.  ``names``: the body
    element local names for pur, rsn, atn and imq, each a tuple of bytes."""
    t = _xml_fields(payload, names)
    return None if t is None else Message(*t)


cdef tuple _xml_fields(bytes payload, tuple names):
    """fast_decode_xml's fields as a tuple in Message's order, or None."""
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(payload)
    cdef Py_ssize_t n = len(payload), i, j, k, e, colon, acolon, name_end, local_a
    cdef Py_ssize_t[XML_MAX_DEPTH] open_a
    cdef Py_ssize_t[XML_MAX_DEPTH] open_len
    cdef Py_ssize_t[XML_MAX_NS] ns_a
    cdef Py_ssize_t[XML_MAX_NS] ns_len
    cdef int[XML_MAX_NS] ns_depth
    cdef Py_ssize_t[XML_MAX_ATTRS] at_a
    cdef Py_ssize_t[XML_MAX_ATTRS] at_len
    cdef int depth = 0, nns = 0, nat, which, f, header_depth = -1, ndst = 0
    cdef bint root_seen = False, self_closing, header_open = False, header_done = False, bad = False
    cdef Py_ssize_t mke_a = -1, mke_b = -1, ori_a = -1, ori_b = -1, ctl_a = -1, ctl_b = -1
    cdef Py_ssize_t[5] dst_a
    cdef Py_ssize_t[5] dst_b
    cdef Py_ssize_t[4] el_a
    cdef Py_ssize_t[4] el_b
    cdef Py_ssize_t text_a, text_b
    cdef unsigned char c, q
    if n == 0 or p[0] != 60:
        return None
    for i in range(n):
        c = p[i]
        if c > 126 or c == 38 or (c < 32 and c != 9 and c != 10):  # non-ASCII, '&', controls
            return None
        if c == 93 and i + 2 < n and p[i + 1] == 93 and p[i + 2] == 62:  # "]]>"
            return None
    for f in range(4):
        el_a[f] = -1
        el_b[f] = -1
    i = 0
    if n >= 5 and memcmp(p, b"<?xml", 5) == 0:
        if n >= 21 and memcmp(p, b'<?xml version="1.0"?>', 21) == 0:
            i = 21
        elif n >= 38 and (memcmp(p, b'<?xml version="1.0" encoding="UTF-8"?>', 38) == 0
                          or memcmp(p, b'<?xml version="1.0" encoding="utf-8"?>', 38) == 0):
            i = 38
        else:
            return None
    while True:
        # between markup
        if depth == 0:
            while i < n and _ws(p[i]):
                i += 1
            if i == n:
                break
            if p[i] != 60:
                return None  # text outside the root
        else:
            while i < n and p[i] != 60:
                i += 1
            if i == n:
                return None  # unclosed
        # p[i] == '<'
        if i + 1 >= n:
            return None
        c = p[i + 1]
        if c == 47:  # end tag
            if depth == 0:
                return None
            j = _qname(p, i + 2, n, &colon)
            if j < 0 or not _same(p, open_a[depth - 1], open_len[depth - 1], i + 2, j - (i + 2)):
                return None
            while j < n and _ws(p[j]):
                j += 1
            if j >= n or p[j] != 62:
                return None
            depth -= 1
            while nns > 0 and ns_depth[nns - 1] > depth:
                nns -= 1
            if header_open and depth == header_depth:
                header_open = False
                header_done = True
            i = j + 1
            continue
        if c == 33 or c == 63:  # <! or <?: DTD, comment, CDATA, PI
            return None
        # start tag
        if depth == 0 and root_seen:
            return None
        name_end = _qname(p, i + 1, n, &colon)
        if name_end < 0:
            return None
        j = name_end
        nat = 0
        self_closing = False
        while True:
            k = j
            while j < n and _ws(p[j]):
                j += 1
            if j >= n:
                return None
            if p[j] == 62:  # '>'
                j += 1
                break
            if p[j] == 47:  # '/>'
                if j + 1 >= n or p[j + 1] != 62:
                    return None
                self_closing = True
                j += 2
                break
            if j == k:
                return None  # attributes need whitespace before them
            e = _qname(p, j, n, &acolon)
            if e < 0 or nat == XML_MAX_ATTRS:
                return None
            for f in range(nat):
                if _same(p, at_a[f], at_len[f], j, e - j):
                    return None  # duplicate attribute
            at_a[nat] = j
            at_len[nat] = e - j
            nat += 1
            k = e
            while k < n and _ws(p[k]):
                k += 1
            if k >= n or p[k] != 61:  # '='
                return None
            k += 1
            while k < n and _ws(p[k]):
                k += 1
            if k >= n or (p[k] != 34 and p[k] != 39):
                return None
            q = p[k]
            k += 1
            text_a = k
            while k < n and p[k] != q:
                if p[k] == 60:
                    return None
                k += 1
            if k >= n:
                return None
            text_b = k
            if acolon >= 0:
                if not _is(p, j, acolon, b"xmlns", 5):
                    return None  # prefixed attributes: left to the reference
                if text_a == text_b or nns == XML_MAX_NS:
                    return None
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
                return None
            local_a = colon + 1
        else:
            local_a = i + 1
        if self_closing:
            text_a = text_b = j
        else:
            text_a = j
            text_b = j
            while text_b < n and p[text_b] != 60:
                text_b += 1
        # what this element is
        if not header_done and not header_open and _is(p, local_a, name_end, b"NLETSMessageHeader", 18):
            header_open = True
            header_depth = depth
        elif header_open:
            if _is(p, local_a, name_end, b"MessageKeyCodeText", 18):
                if mke_a < 0:
                    mke_a, mke_b = text_a, text_b
            elif _is(p, local_a, name_end, b"OriginatingORIID", 16):
                if ori_a < 0:
                    ori_a, ori_b = text_a, text_b
            elif _is(p, local_a, name_end, b"DestinationORIID", 16):
                if ndst == 5:
                    return None
                dst_a[ndst] = text_a
                dst_b[ndst] = text_b
                ndst += 1
            elif _is(p, local_a, name_end, b"DocumentControlFieldText", 24):
                if ctl_a < 0:
                    ctl_a, ctl_b = text_a, text_b
        for f in range(4):
            if el_a[f] < 0 and _in_names(p, local_a, name_end, <tuple> names[f]):
                el_a[f] = text_a
                el_b[f] = text_b
        root_seen = True
        if self_closing:
            while nns > 0 and ns_depth[nns - 1] > depth:
                nns -= 1
            if header_open and depth == header_depth:
                header_open = False
                header_done = True
        else:
            if depth == XML_MAX_DEPTH:
                return None
            open_a[depth] = i + 1
            open_len[depth] = name_end - (i + 1)
            depth += 1
        i = j
    if not root_seen or depth != 0 or mke_a < 0 or ori_a < 0 or ndst == 0:
        return None
    # the header's values, stripped and checked as the reference checks them
    mke_a = _strip_a(p, mke_a, mke_b)
    mke_b = _strip_b(p, mke_a, mke_b)
    if not (2 <= mke_b - mke_a <= 3):
        return None
    for k in range(mke_a, mke_b):
        if not _upper(p[k]):
            return None
    ori_a = _strip_a(p, ori_a, ori_b)
    ori_b = _strip_b(p, ori_a, ori_b)
    if ori_b - ori_a != 9 or not (_upper(p[ori_a]) and _upper(p[ori_a + 1])):
        return None
    for k in range(ori_a + 2, ori_b):
        if not _alnum(p[k]):
            return None
    dst = PyTuple_New(ndst)
    for f in range(ndst):
        dst_a[f] = _strip_a(p, dst_a[f], dst_b[f])
        dst_b[f] = _strip_b(p, dst_a[f], dst_b[f])
        if not _is_dst(p, dst_a[f], dst_b[f]):
            return None
        d = _ascii(p, dst_a[f], dst_b[f])
        Py_INCREF(d)
        PyTuple_SET_ITEM(dst, f, d)
    ctl = _code(p, ctl_a, ctl_b, 10, &bad) if ctl_a >= 0 else None
    pur = _code(p, el_a[0], el_b[0], 10, &bad) if el_a[0] >= 0 else None
    rsn = _code(p, el_a[1], el_b[1], 10, &bad) if el_a[1] >= 0 else None
    atn = _code(p, el_a[2], el_b[2], 100, &bad) if el_a[2] >= 0 else None
    if bad:
        return None
    return ("xml", _ascii(p, mke_a, mke_b), _ascii(p, ori_a, ori_b), dst, ctl, pur, rsn, atn,
            el_a[3] >= 0 and _yes(p, el_a[3], el_b[3]))


# ------------------------------------------------------------ JSON fast path
#
# msgspec does the parsing; this replaces only the reference's field checks (regular
# expressions in Python) with loops, and declines to the reference wherever a check
# fails, so that the reference raises its own error.

cdef bint _str_upper(str s, Py_ssize_t lo, Py_ssize_t hi):
    cdef Py_UCS4 ch
    if not lo <= len(s) <= hi:
        return False
    for ch in s:
        if not ("A" <= ch <= "Z"):
            return False
    return True

cdef bint _str_ori(str s):
    cdef Py_UCS4 ch
    cdef Py_ssize_t i = 0
    if len(s) != 9:
        return False
    for ch in s:
        if not (("A" <= ch <= "Z") or (i >= 2 and "0" <= ch <= "9")):
            return False
        i += 1
    return True

cdef bint _str_dst(str s):
    cdef Py_UCS4 ch
    if len(s) != 2 and len(s) != 9:
        return False
    for ch in s:
        if not (("A" <= ch <= "Z") or ("0" <= ch <= "9")):
            return False
    return True

cdef object _str_code(object v, Py_ssize_t limit, bint* bad):
    """The reference's _check_code/_check_atn for a str or None; bad where it raises."""
    if v is None:
        return None
    v = (<str> v).strip()
    if not v:
        return None
    if len(v) > limit or not (<str> v).isprintable():
        bad[0] = True
        return None
    return v


def fast_decode_json(bytes payload):
    """The reference's Message for a JSON payload whose fields pass, or None."""
    t = _json_fields(payload)
    return None if t is None else Message(*t)


cdef tuple _json_fields(bytes payload):
    cdef bint bad = False
    try:
        m = _json_decoder.decode(payload)
    except Exception:
        return None
    mke = m.mke
    ori = m.ori
    dst = m.dst
    if not _str_upper(mke, 2, 3) or not _str_ori(ori) or not 1 <= len(dst) <= 5:
        return None
    for d in dst:
        if not _str_dst(d):
            return None
    ctl = m.ctl
    if ctl is not None:
        if ctl == "":
            ctl = None
        elif len(ctl) > 10 or not (<str> ctl).isprintable():
            return None
    pur = _str_code(m.pur, 10, &bad)
    rsn = _str_code(m.rsn, 10, &bad)
    atn = _str_code(m.atn, 100, &bad)
    if bad:
        return None
    return ("json", mke, ori, tuple(dst), ctl, pur, rsn, atn, bool(m.imq))


cdef tuple _message_tuple(msg):
    """A reference decoder's Message as the fast paths' tuple."""
    return (msg.fmt, msg.mke, msg.ori, msg.dst, msg.ctl, msg.pur, msg.rsn, msg.atn, msg.imq)


# ----------------------------------------------------------------------- engine


class Batch:
    """What one chunk produced: log records in decision order, the exact bytes to
    forward, and the (record, payload) of each denied ``in`` message to answer."""

    __slots__ = ("records", "forward", "denials")

    def __init__(self, records, forward, denials):
        self.records = records
        self.forward = forward
        self.denials = denials


cdef inline void _count(dict counts, str direction, str action, str rule):
    """Decisions by (direction, action, rule), for the metrics endpoint."""
    key = (direction, action, rule)
    v = PyDict_GetItem(counts, key)
    counts[key] = (<object> v) + 1 if v != NULL else 1


cdef object _detect(bytes payload):
    stripped = payload.lstrip(BLANK)
    if not stripped:
        return None
    c = stripped[0]
    if c == 60:   # '<'
        return "xml"
    if c == 123:  # '{'
        return "json"
    return "text"


cdef class Engine:
    """Decides one direction of one connection.

    ``sequencer`` is shared by every engine writing to the same log: its ``seq`` and
    ``decisions`` counters are advanced once per chunk.
    """

    cdef _Framer framer
    cdef readonly str direction
    cdef int dir_code
    cdef readonly int conn
    cdef readonly object peer
    cdef object sequencer

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

    @property
    def pending(self):
        return self.framer.pending

    @property
    def busy(self):
        return self.framer.busy

    def feed(self, bytes data, Matcher matcher, str ts):
        cdef list events = self.framer.feed(data)
        cdef list records = []
        cdef list forward = []
        cdef list denials = []
        cdef long long seq, n
        cdef int act
        cdef bint fwd
        cdef str action, rule, shadow
        cdef dict counts
        cdef tuple t
        if not events:
            return Batch(records, b"", denials)
        seqr = self.sequencer
        seq = seqr.seq
        n = seqr.decisions
        counts = seqr.counts
        run = seqr.run_id
        rev = matcher.rev
        mode = matcher.mode
        monitor = matcher.monitor
        answer = matcher.deny_reply and not monitor and self.dir_code == DIR_IN
        xml_fields = matcher.xml_fields
        xml_names = matcher.xml_names
        direction = self.direction
        for ev in events:
            seq += 1
            n += 1
            if ev[0] == "oversize":
                records.append(LogRecord(ts, f"{run}-{n:x}", seq, self.conn, self.peer,
                                         direction, None, None, None, None, None, None, None,
                                         None, None, None, (), "reject", "oversize", None,
                                         mode, False, rev, ev[1]))
                _count(counts, direction, "reject", "oversize")
                continue
            payload = <bytes> ev[1]
            fmt = _detect(payload)
            try:
                if fmt == "text":
                    t = _text_fields(payload)
                    if t is None:
                        t = _message_tuple(decode_text(payload))
                elif fmt == "xml":
                    t = _xml_fields(payload, xml_names)
                    if t is None:
                        t = _message_tuple(decode_xml(payload, xml_fields))
                elif fmt == "json":
                    t = _json_fields(payload)
                    if t is None:
                        t = _message_tuple(decode_json(payload))
                else:
                    raise Malformed("empty message")
            except Exception:  # fail closed: an undecodable message is rejected
                records.append(LogRecord(ts, f"{run}-{n:x}", seq, self.conn, self.peer,
                                         direction, fmt, None, None, None, None, None, None,
                                         None, None, None, (), "reject", "malformed", None,
                                         mode, False, rev, len(payload)))
                _count(counts, direction, "reject", "malformed")
                continue
            mke, ori, dst, atn, imq = t[1], t[2], t[3], t[7], t[8]
            act = matcher.decide_c(mke, ori, dst, t[5], t[6], atn is not None, imq, self.dir_code)
            rule = matcher.rule_ids[matcher.last_rule] if matcher.last_rule >= 0 else "default"
            shadow = matcher.rule_ids[matcher.last_shadow] if matcher.last_shadow >= 0 else None
            fwd = act == ACT_ALLOW or monitor
            rec = LogRecord(ts, f"{run}-{n:x}", seq, self.conn, self.peer, direction,
                            t[0], mke, ori, dst, t[4], t[5], t[6], atn, imq,
                            matcher.last_agency, matcher.last_groups,
                            "deny" if act == ACT_DENY else "allow", rule, shadow, mode, fwd,
                            rev, len(payload))
            records.append(rec)
            _count(counts, direction, rec.action, rule)
            if fwd:
                forward.append(ev[2])
            elif answer:
                denials.append((rec, payload))
        seqr.seq = seq
        seqr.decisions = n
        return Batch(records, b"".join(forward), denials)


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
