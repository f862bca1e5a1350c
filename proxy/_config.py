"""The config file (SPEC section 5): one TOML file decoded strictly with msgspec.

Unknown keys, wrong types and bad values raise :class:`ConfigError` naming the file
and the key.  Cross-references (``@group``, ``@category``, duplicate rule ids) are
checked by :func:`proxy._policy.compile_policy`, which raises the same error type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._decode import XmlFields
from ._framing import DEFAULT_MAX_FRAME

_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_ORI_ENTRY = re.compile(r"[A-Z0-9?]{2}(?:[A-Z0-9?]{7})?|[A-Z0-9?]{0,8}\*")
_MKE = re.compile(r"[A-Z]{2,3}")
_CODE = re.compile(r"[A-Z0-9]{1,10}")
_NAME = re.compile(r"[A-Za-z0-9_-]+")

Positive = Annotated[int, Meta(gt=0)]
PositiveNumber = Annotated[float, Meta(gt=0)]


class ConfigError(Exception):
    """A config file that cannot be used.  ``str()`` names the file and the key."""


def _check_hostport(key: str, value: str) -> None:
    m = _HOSTPORT.fullmatch(value)
    if m is None or not 0 <= int(m.group(2)) <= 65535:
        raise ValueError(f"`{key}` must be HOST:PORT, got {value!r}")


def check_ori_entry(key: str, entry: str) -> None:
    """An exact ORI or code (2 or 9 characters of A-Z 0-9), with ``?`` for any one
    character and an optional trailing ``*`` for any rest."""
    if not _ORI_ENTRY.fullmatch(entry):
        raise ValueError(
            f"bad ORI pattern {entry!r} in `{key}`: use 2 or 9 characters of A-Z 0-9, "
            "'?' for one character, a trailing '*' for any rest"
        )


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True):
    cert: str = ""
    key: str = ""
    ca: str = ""
    require_client_cert: bool = False


class ProxyConfig(msgspec.Struct, forbid_unknown_fields=True):
    listen: str = "0.0.0.0:2000"
    upstream: str = ""
    framing: Literal["len32", "delimited"] = "len32"
    terminator: str = "\r\n\x7f"
    max_frame: Positive = DEFAULT_MAX_FRAME
    idle_timeout: PositiveNumber = 300.0
    max_connections: Positive = 64
    connect_timeout: PositiveNumber = 10.0
    frame_timeout: PositiveNumber = 60.0
    tls: TlsConfig | None = None
    upstream_tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        _check_hostport("listen", self.listen)
        if self.upstream:
            _check_hostport("upstream", self.upstream)
        if not self.terminator:
            raise ValueError("`terminator` must not be empty")
        try:
            self.terminator.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("`terminator` must be single-byte characters") from None


class LogConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str = "/var/log/stategate/decisions.jsonl"
    rotate_bytes: Positive = 256 * 1024 * 1024
    seal_every: Positive = 1000
    key_file: str = ""
    fsync: bool = True


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:9464"

    def __post_init__(self) -> None:
        _check_hostport("listen", self.listen)


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True):
    state: str
    local_ori: str
    default: Literal["allow", "deny"] = "allow"
    mode: Literal["enforce", "monitor"] = "enforce"
    deny_reply: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z]{2}", self.state):
            raise ValueError(f"`state` must be a 2-letter code, got {self.state!r}")
        if not re.fullmatch(r"[A-Z]{2}[A-Z0-9]{7}", self.local_ori):
            raise ValueError(f"`local_ori` must be a 9-character ORI, got {self.local_ori!r}")


class GroupConfig(msgspec.Struct, forbid_unknown_fields=True):
    ori: list[str]
    description: str = ""


class RuleConfig(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    action: Literal["allow", "deny"]
    direction: Literal["in", "out", "any"] = "in"
    agency: list[str] | None = None
    mke: list[str] | None = None
    photo: bool | None = None
    purpose: list[str] | None = None
    reason: list[str] | None = None
    attention: Literal["missing", "present"] | None = None
    dst: list[str] | None = None
    shadow: bool = False
    why: str = ""

    def __post_init__(self) -> None:
        if not self.id or not _NAME.fullmatch(self.id):
            raise ValueError(f"rule `id` must be letters, digits, '-' or '_', got {self.id!r}")
        if self.id == "default":
            raise ValueError("rule `id` 'default' is reserved for the policy default")
        for key in ("agency", "dst"):
            for entry in getattr(self, key) or ():
                if not entry.startswith("@"):
                    check_ori_entry(key, entry)
        for entry in self.mke or ():
            if not entry.startswith("@") and not _MKE.fullmatch(entry):
                raise ValueError(f"bad message key {entry!r} in `mke`: use 2-3 letters A-Z")
        for key in ("purpose", "reason"):
            for code in getattr(self, key) or ():
                if code != "none" and not _CODE.fullmatch(code):
                    raise ValueError(f"bad code {code!r} in `{key}`: use A-Z 0-9 or \"none\"")
        for key in ("agency", "mke", "purpose", "reason", "dst"):
            if getattr(self, key) == []:
                raise ValueError(f"`{key}` is an empty list and would match nothing; omit it")


class FormatsConfig(msgspec.Struct, forbid_unknown_fields=True):
    xml: XmlFields = XmlFields()


class Config(msgspec.Struct, forbid_unknown_fields=True):
    policy: PolicyConfig
    proxy: ProxyConfig = msgspec.field(default_factory=ProxyConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    formats: FormatsConfig = msgspec.field(default_factory=FormatsConfig)
    groups: dict[str, GroupConfig] = {}
    categories: dict[str, list[str]] = {}
    rules: list[RuleConfig] = []

    def __post_init__(self) -> None:
        # Checked here rather than in GroupConfig so the error can name the group:
        # msgspec reports a dict value's path as `groups[...]`.
        for name, group in self.groups.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"group name {name!r} must be letters, digits, '-' or '_'")
            for entry in group.ori:
                check_ori_entry(f"groups.{name}.ori", entry)
        for name, keys in self.categories.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"category name {name!r} must be letters, digits, '-' or '_'")
            for key in keys:
                if not _MKE.fullmatch(key):
                    raise ValueError(f"bad message key {key!r} in `categories.{name}`")


def _where(message: str) -> str:
    """msgspec says ``... - at `$.rules[0]```; say ``rules[0]`` instead."""
    message = message.removesuffix(" - at `$`")
    return re.sub(r"`\$\.?([^`]*)`", lambda m: f"`{m.group(1)}`", message)


def parse_config(text: str | bytes, source: str = "<config>") -> Config:
    try:
        return msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_where(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_config(data, str(path))
