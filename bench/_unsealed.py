"""``stategate`` with its decision log unsealed: the same lines, written the same way
before each forward, with no hash, no seal records and so no fsync.  SPEC section 6
requires seals, so this is never a way to run the proxy: it is the baseline that
``bench/sealcost.py --proxy`` measures what seals cost the running proxy against.

    python bench/_unsealed.py run -c FILE
"""

from __future__ import annotations

import functools
import sys

from proxy import _log, _server
from proxy._cli import main


@functools.wraps(_log.DecisionLog)
def _unsealed_log(*args: object, **kwargs: object) -> _log.DecisionLog:
    return _log.DecisionLog(*args, **{**kwargs, "sealed": False})


_server.DecisionLog = _unsealed_log  # what open_log builds

if __name__ == "__main__":
    sys.exit(main())
