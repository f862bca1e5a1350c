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

from ._decode import BLANK, Malformed, decode_json, decode_text, decode_xml
from ._types import LogRecord

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


cdef class Matcher:
    """A compiled :class:`~proxy._policy.Policy`."""

    cdef readonly object policy
    cdef readonly str rev
    cdef readonly str mode
    cdef readonly bint monitor
    cdef readonly bint deny_reply
    cdef readonly object xml_fields
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
                    msg = decode_text(payload)
                elif fmt == "xml":
                    msg = decode_xml(payload, xml_fields)
                elif fmt == "json":
                    msg = decode_json(payload)
                else:
                    raise Malformed("empty message")
            except Exception:  # fail closed: an undecodable message is rejected
                records.append(LogRecord(ts, f"{run}-{n:x}", seq, self.conn, self.peer,
                                         direction, fmt, None, None, None, None, None, None,
                                         None, None, None, (), "reject", "malformed", None,
                                         mode, False, rev, len(payload)))
                _count(counts, direction, "reject", "malformed")
                continue
            act = matcher.decide_c(msg.mke, msg.ori, msg.dst, msg.pur, msg.rsn,
                                   msg.atn is not None, msg.imq, self.dir_code)
            rule = matcher.rule_ids[matcher.last_rule] if matcher.last_rule >= 0 else "default"
            shadow = matcher.rule_ids[matcher.last_shadow] if matcher.last_shadow >= 0 else None
            fwd = act == ACT_ALLOW or monitor
            rec = LogRecord(ts, f"{run}-{n:x}", seq, self.conn, self.peer, direction,
                            msg.fmt, msg.mke, msg.ori, msg.dst, msg.ctl, msg.pur, msg.rsn,
                            msg.atn, msg.imq, matcher.last_agency, matcher.last_groups,
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
