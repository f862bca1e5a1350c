"""The profile-guided build's training run (setup.py, proxy/_pgo.py).

If the training run broke (an engine API it calls changed), the build would fall back
to a plain compile and say so only in the build's output: these tests fail instead.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import proxy._fastmatch
from proxy._pgo import train

ROOT = Path(__file__).resolve().parent.parent


def _setup_constant(name: str) -> str:
    """A string constant assigned at the top of setup.py, without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


def test_training_workload_decides_every_message_in_each_framing_and_direction():
    n = 3_000
    # each of the four (framing, direction) passes decides all n, and feed some more
    assert 4 * n < train(n) <= 5 * n


def test_setup_training_script_runs_the_workload():
    """setup.py's training script, as a build runs it: the package from the source
    tree, the engine from a built file's path."""
    script = _setup_constant("TRAIN")
    run = subprocess.run([sys.executable, "-c", script, str(ROOT), proxy._fastmatch.__file__],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 4 * 120_000


def _symbol_sizes(path: str) -> dict[str, int]:
    """Text symbols' sizes in a built extension, from ``nm``; {} where there is no nm."""
    try:
        out = subprocess.run(["nm", "-S", path], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


def test_the_decision_loop_is_not_built_as_code_never_run():
    """A profile-guided GCC build puts what its training never ran in a ``.cold``
    section, optimized for size.  Once a change (the framer declared final) made the
    build lose Engine._run's profile: the whole loop went to ``.cold`` and every
    decision ran x1.04 slower, and nothing but a benchmark showed it.  The loop's hot
    part must be the larger.  A build without a profile (another compiler,
    STATEGATE_PGO=0) has no cold part to compare."""
    sizes = _symbol_sizes(proxy._fastmatch.__file__)
    if not sizes:
        pytest.skip("no nm to read the built extension's symbols")
    run = "__pyx_f_5proxy_10_fastmatch_6Engine__run"
    assert run in sizes, "the engine's loop is not a symbol of its own: the test must follow the build"
    # GCC may also build specialized copies (Engine__run.constprop.0), each with its own
    # cold part: every copy's hot part must be the larger
    copies = [name for name in sizes
              if (name == run or name.startswith(run + ".")) and not name.endswith(".cold")]
    for name in copies:
        cold = sizes.get(name + ".cold", 0)
        assert sizes[name] > cold, f"{name}: {sizes[name]} bytes hot, {cold} cold"
