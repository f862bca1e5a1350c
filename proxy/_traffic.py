"""Deterministic synthetic Nlets traffic: synthetic agencies, synthetic people.

Every person, licence and plate here is made up from fixed lists and a seeded random
generator; nothing is drawn from real data.  The same seed gives the same stream.
Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec

from ._decode import Malformed, decode
from ._framing import frame

# Synthetic agencies.  DHS immigration ORIs follow the example policy's patterns.
FEDERAL_DHS_ICE = ("VTICE0900", "DCICE0000", "TXICE0300", "CAICE0500")
FEDERAL_DHS_HSI = ("DCHSI0000", "AZHSI0100", "NYHSI0200")
FEDERAL_OTHER = ("DCFBI0000", "DCDEA0100", "DCUSM0200", "VAATF0300")
OTHER_STATES = ("AZ", "NV", "OR", "WA", "TX", "NY", "FL", "IL", "CO", "UT")
#: Agencies per other state: with the ten states about the 18,000 agencies Nlets links.
AGENCIES_PER_STATE = 1_800

#: Share of DHS immigration queries among DMV queries, from the seed figures:
#: 292,114 (ICE) and 605,116 (HSI) of 290 million.
SEED_ICE_SHARE = 292_114 / 290_000_000
SEED_HSI_SHARE = 605_116 / 290_000_000

_SURNAMES = ("SAMPLE", "EXAMPLE", "TESTCASE", "PLACEHOLDER", "SYNTHETIC", "FICTION")
_GIVEN = ("ALEX", "JORDAN", "CASEY", "RILEY", "MORGAN", "QUINN")

# (key, weight): driver and registration queries dominate.
QUERY_MIX = (
    ("DQ", 40), ("RQ", 30), ("KQ", 6), ("DNQ", 2), ("RNQ", 2), ("IQ", 6), ("FQ", 2),
    ("AQ", 1), ("IAQ", 1), ("AM", 2),
)  # fmt: skip
RESPONSE_KEY = {"DQ": "DR", "DNQ": "DNR", "KQ": "KR", "RQ": "RR", "RNQ": "RNR", "IQ": "IR",
                "FQ": "FR", "AQ": "AR", "IAQ": "IAR"}  # fmt: skip


def synthetic_person(rng: random.Random) -> dict[str, str]:
    """A made-up subject: synthetic name, date of birth, licence and plate."""
    return {
        "NAM": f"{rng.choice(_SURNAMES)},{rng.choice(_GIVEN)}",
        "DOB": f"{rng.randrange(1950, 2005)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
        "SEX": rng.choice("MF"),
        "OLN": f"S{rng.randrange(10**7):07d}",
        "LIC": f"ZZ{rng.randrange(10**5):05d}",
    }


class Generated(msgspec.Struct, frozen=True):
    """One generated payload and what it is, for checking a proxy's behaviour."""

    payload: bytes
    fmt: str
    mke: str | None
    ori: str | None
    malformed: bool = False


class TrafficGenerator:
    """Queries arriving at ``state`` from other states' and federal agencies.

    ``dhs_share`` is the share of DHS immigration agencies among originators;
    ``malformed_share`` the share of payloads whose header is broken;
    ``agencies_per_state`` how many agencies each other state has.
    """

    def __init__(
        self,
        seed: int = 0,
        state: str = "CA",
        *,
        dhs_share: float = SEED_ICE_SHARE + SEED_HSI_SHARE,
        malformed_share: float = 0.01,
        formats: tuple[tuple[str, int], ...] = (("text", 80), ("xml", 10), ("json", 10)),
        agencies_per_state: int = AGENCIES_PER_STATE,
    ) -> None:
        self.rng = random.Random(seed)
        self.state = state
        self.dhs_share = dhs_share
        self.malformed_share = malformed_share
        self._fmts = [f for f, _ in formats]
        self._fmt_weights = [w for _, w in formats]
        self._keys = [k for k, _ in QUERY_MIX]
        self._key_weights = [w for _, w in QUERY_MIX]
        self._ctl = 0
        self.agencies_per_state = agencies_per_state

    # ----------------------------------------------------------------- pieces

    def agency(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < self.dhs_share:
            pool = FEDERAL_DHS_ICE if rng.random() < 0.33 else FEDERAL_DHS_HSI
            return rng.choice(pool)
        if r < self.dhs_share + 0.03:
            return rng.choice(FEDERAL_OTHER)
        st = rng.choice(OTHER_STATES)
        return f"{st}{rng.randrange(self.agencies_per_state):05d}00"

    def person(self) -> dict[str, str]:
        return synthetic_person(self.rng)

    def control(self) -> str | None:
        if self.rng.random() < 0.3:
            return None
        self._ctl += 1
        return f"C{self._ctl % 10**6:06d}"

    # ----------------------------------------------------------------- queries

    def query(self) -> Generated:
        rng = self.rng
        mke = rng.choices(self._keys, self._key_weights)[0]
        ori = self.agency()
        fmt = rng.choices(self._fmts, self._fmt_weights)[0]
        ctl = self.control()
        p = self.person()
        pur = rng.choice(("C", "C", "F", "E", "J")) if mke in ("IQ", "FQ", "AQ") and rng.random() < 0.8 else None
        rsn = rng.choice("NFVTSHI") if rng.random() < 0.4 else None
        atn = f"OFFICER {rng.randrange(1000)}" if rng.random() < 0.7 else None
        imq = mke == "DQ" and rng.random() < 0.2
        if mke in ("RQ", "RNQ"):
            data = {"LIC": p["LIC"], "LIS": self.state}
        elif mke == "DQ" and rng.random() < 0.5:
            data = {"OLN": p["OLN"]}
        elif mke == "AM":
            data = {}
        else:
            data = {"NAM": p["NAM"], "DOB": p["DOB"], "SEX": p["SEX"]}
        if self.malformed_share and rng.random() < self.malformed_share:
            return self._malformed(fmt, mke, ori)
        payload = render(fmt, mke, ori, [self.state], ctl, pur, rsn, atn, imq, data,
                         output_form=fmt == "text" and rng.random() < 0.1, rng=rng)  # fmt: skip
        return Generated(payload, fmt, mke, ori)

    def _malformed(self, fmt: str, mke: str, ori: str) -> Generated:
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            payload = f"{mke}.{ori[:5]}.{self.state}.TXT\nNAM/{self.person()['NAM']}".encode()
        elif kind == 1:
            payload = b"<n2:NLETS><unclosed>"
        elif kind == 2:
            payload = b'{"mke":"DQ","dst":["CA"]}'
        else:
            payload = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 40)))
            if payload[:1] in (b"<", b"{"):
                payload = b"?" + payload
        return Generated(payload, fmt, None, None, malformed=True)

    def queries(self, n: int) -> Iterator[Generated]:
        for _ in range(n):
            yield self.query()


def render(
    fmt: str,
    mke: str,
    ori: str,
    dst: list[str],
    ctl: str | None,
    pur: str | None,
    rsn: str | None,
    atn: str | None,
    imq: bool,
    data: dict[str, str],
    *,
    output_form: bool = False,
    rng: random.Random | None = None,
) -> bytes:
    """A payload in one of the three formats carrying these header fields."""
    if fmt == "json":
        obj = {"mke": mke, "ori": ori, "dst": dst, "ctl": ctl, "pur": pur, "rsn": rsn,
               "atn": atn, "imq": imq, "body": data}  # fmt: skip
        return msgspec.json.encode(obj)
    if fmt == "xml":
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<n2:NLETS xmlns:n2="http://www.nlets.org/niem2/1.0" '
            'xmlns:nh2="http://www.nlets.org/niem2/nh/1.0" xmlns:j="http://example.invalid/j">',
            "<n2:NLETSMessageHeader>",
            f"<nh2:MessageKeyCodeText>{mke}</nh2:MessageKeyCodeText>",
            f"<nh2:OriginatingORIID>{ori}</nh2:OriginatingORIID>",
            *(f"<nh2:DestinationORIID>{d}</nh2:DestinationORIID>" for d in dst),
        ]
        if ctl:
            parts.append(f"<nh2:DocumentControlFieldText>{ctl}</nh2:DocumentControlFieldText>")
        parts.append("</n2:NLETSMessageHeader><n2:NLETSInquiryData>")
        if pur:
            parts.append(f"<j:PurposeCode>{pur}</j:PurposeCode>")
        if rsn:
            parts.append(f"<n2:ReasonCode>{rsn}</n2:ReasonCode>")
        if atn:
            parts.append(f"<j:AttentionText>{atn}</j:AttentionText>")
        parts.append(f"<n2:ImageRequestIndicator>{'true' if imq else 'false'}</n2:ImageRequestIndicator>")
        for k, v in data.items():
            parts.append(f"<j:Element code=\"{k}\">{v}</j:Element>")
        parts.append("</n2:NLETSInquiryData></n2:NLETS>")
        return "".join(parts).encode()
    elements = []
    if rsn:
        elements.append(f"RSN/{rsn}")
    if pur:
        elements.append(f"PUR/{pur}")
    elements += [f"{k}/{v}" for k, v in data.items()]
    if atn:
        elements.append(f"ATN/{atn}")
    if imq:
        elements.append("IMQ/Y")
    body = ".".join(elements)
    if output_form:
        r = rng or random.Random(0)
        clock = f"{r.randrange(24):02d}:{r.randrange(60):02d} 11/22/2026"
        line3 = f"{clock} {r.randrange(10**5):05d} {dst[0]}" + (f"*{ctl}" if ctl else "")
        return f"{mke}.{ori}\n{clock} {r.randrange(10**5):05d}\n{line3}\nTXT\n{body}".encode()
    header = ".".join([mke, ori, *dst] + ([f"*{ctl}"] if ctl else []) + ["TXT"])
    return f"{header}\n{body}".encode()


def response_for(request_fmt: str, mke: str, requester: str, ctl: str | None, state_ori: str,
                 rng: random.Random, photo: bool = False) -> bytes | None:
    """What a state switch answers to a query, or None if it answers nothing.  A
    response to a photo request carries the photo (IMQ/Y)."""
    key = RESPONSE_KEY.get(mke)
    if key is None:
        return None
    p = synthetic_person(rng)
    data = {"NAM": p["NAM"], "DOB": p["DOB"], "STATUS": "VALID"}
    return render(request_fmt, key, state_ori, [requester], ctl, None, None, None, photo, data)


def switch_response(payload: bytes, state_ori: str, rng: random.Random) -> bytes | None:
    """What the simulated switch (proxy._switch) answers to a query's payload: the
    response to it, carrying its control field, or None for a malformed query or one
    with no response."""
    try:
        msg = decode(payload)
    except Malformed:
        return None
    return response_for(msg.fmt, msg.mke, msg.ori, msg.ctl, state_ori, rng, msg.imq)


def framed_stream(messages: list[Generated], framing: str, terminator: bytes) -> bytes:
    return b"".join(frame(m.payload, framing, terminator) for m in messages)
