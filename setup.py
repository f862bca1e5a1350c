"""Builds the compiled hot path, proxy/_fastmatch.pyx, and the decision log's C
helpers, proxy/_logfast.pyx, with Cython.

Everything else about the distribution lives in pyproject.toml.  The extensions are
not optional: stategate refuses to run without them rather than fall back to a slow
path silently.

With GCC the hot path is built profile-guided: compiled instrumented, run over
generated traffic (proxy/_pgo.py) in a separate process, and compiled again with the
counts that run recorded.  If any step of that fails, or ``STATEGATE_PGO=0`` is set,
or the compiler is not GCC, it is compiled once, plainly, and the build says so.
With GCC it is also compiled with higher inlining limits (INLINE_PARAMS, below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HOT_PATH = "proxy._fastmatch"
ROOT = os.path.dirname(os.path.abspath(__file__))

#: Run in a fresh interpreter: the package's Python modules from the source tree,
#: the hot path from the instrumented file just built (wherever the build put it).
TRAIN = """
import importlib.util, sys
sys.path.insert(0, sys.argv[1])
import proxy
spec = importlib.util.spec_from_file_location("proxy._fastmatch", sys.argv[2])
module = importlib.util.module_from_spec(spec)
sys.modules["proxy._fastmatch"] = module
spec.loader.exec_module(module)
from proxy._pgo import train
print(train())
"""


class BuildExt(build_ext):
    """build_ext, with the hot path built profile-guided where the compiler is GCC."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name != HOT_PATH or not self._is_gcc():
            super().build_extension(ext)
            return
        given = list(ext.extra_compile_args)
        ext.extra_compile_args = given + INLINE_PARAMS
        try:
            if self._pgo_wanted():
                self._build_profiled(ext)
            else:
                super().build_extension(ext)
        finally:
            ext.extra_compile_args = given

    def _build_profiled(self, ext: Extension) -> None:
        """Build ext instrumented, train it, build it again with the profile; on any
        failure, build it once without one."""
        base_compile, base_link = list(ext.extra_compile_args), list(ext.extra_link_args)
        force = self.force
        self.force = True  # the second compile must not be skipped as up to date
        try:
            with tempfile.TemporaryDirectory(prefix="stategate-pgo-") as profile:
                try:
                    ext.extra_compile_args = base_compile + [f"-fprofile-generate={profile}"]
                    ext.extra_link_args = base_link + [f"-fprofile-generate={profile}"]
                    super().build_extension(ext)
                    self._train(self.get_ext_fullpath(ext.name), profile)
                    ext.extra_compile_args = base_compile + PROFILE_USE + [f"-fprofile-use={profile}"]
                    ext.extra_link_args = base_link
                    super().build_extension(ext)
                    print(f"stategate: {ext.name} built profile-guided", file=sys.stderr)
                    return
                except Exception as exc:  # any failure: the plain build below
                    print(f"stategate: profile-guided build of {ext.name} failed ({exc}); "
                          "building it without a profile", file=sys.stderr)  # fmt: skip
            ext.extra_compile_args, ext.extra_link_args = base_compile, base_link
            super().build_extension(ext)
        finally:
            ext.extra_compile_args, ext.extra_link_args = base_compile, base_link
            self.force = force

    def _pgo_wanted(self) -> bool:
        if os.environ.get("STATEGATE_PGO", "1") == "0":
            print("stategate: STATEGATE_PGO=0, the hot path is built without a profile", file=sys.stderr)
            return False
        return True

    def _is_gcc(self) -> bool:
        compiler = getattr(self.compiler, "compiler_so", None)
        version = ""
        if self.compiler.compiler_type == "unix" and compiler:
            try:
                version = subprocess.run([compiler[0], "--version"], capture_output=True, text=True,
                                         timeout=60).stdout  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                pass
        if "Free Software Foundation" not in version:  # GCC's banner; clang's flags differ
            print("stategate: the compiler is not GCC, the hot path is built without a profile "
                  "and with the compiler's own inlining limits", file=sys.stderr)  # fmt: skip
            return False
        return True

    def _train(self, built: str, profile: str) -> None:
        """Run the instrumented build over the workload; its counts land in profile."""
        run = subprocess.run([sys.executable, "-c", TRAIN, ROOT, built], capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"the training run failed: {run.stderr.strip().splitlines()[-1:]}")
        if not any(name.endswith(".gcda") for _, _, names in os.walk(profile) for name in names):
            raise RuntimeError(f"the training run of {built} recorded no profile")


#: With the profile.  ``-fprofile-partial-training``: what the training did not run is
#: compiled as without a profile, not shrunk as code never run.  Without it, one
#: change (the framer declared final) had the whole decision loop, Engine._run, built
#: as never run, x1.04 slower; with it that build keeps the loop hot (bench/README.md,
#: "partial training"), and as the code is now the decision path took x0.976 of the
#: time and the proxy's path (with log lines) x0.979 (bench/ab.py --decide
#: --one-process).
PROFILE_USE = ["-fprofile-correction", "-Wno-missing-profile", "-fprofile-partial-training"]

#: Added for GCC only.  GCC's inliner at -O3 keeps the text reader (_text_read) and
#: the XML one (_xml_spans) out of line, each too big for its limits, though each is
#: called once a message from the engine's loop; these limits let it take them in, at
#: about a fifth more code.
#: The decision path took x0.973 of the time (three builds, bench/ab.py --decide) and
#: the proxy x0.958 of the CPU a message (bench/README.md, "the readers inlined").
#: Raising them further (inlining the JSON reader and the decision too) measured worse.
INLINE_PARAMS = [
    "--param=max-inline-insns-auto=2000",
    "--param=max-inline-insns-single=2000",
    "--param=inline-unit-growth=300",
    "--param=large-function-growth=1000",
]

extensions = [
    Extension(HOT_PATH, ["proxy/_fastmatch.pyx"], extra_compile_args=["-O3"]),
    Extension("proxy._logfast", ["proxy/_logfast.pyx"], extra_compile_args=["-O3"]),
]

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
