"""stategate: an inline query-filtering proxy for a state's Nlets interface.

It decides every message by who asks (ORI, groups), for what (message key, photo) and
why (purpose, reason, requester), answers a denied query with an ER message, and logs
every decision without the subject's personal data.

Public surface: :func:`load_config`, :func:`compile_policy`, :func:`decode`,
:class:`Message`, :class:`LogRecord`.  Everything in underscore modules is private.
"""

from ._config import ConfigError, load_config, parse_config
from ._decode import Malformed, decode
from ._policy import Policy, compile_policy
from ._types import LogRecord, Message

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "LogRecord",
    "Malformed",
    "Message",
    "Policy",
    "compile_policy",
    "decode",
    "load_config",
    "parse_config",
    "__version__",
]
