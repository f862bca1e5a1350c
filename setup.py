"""Builds the compiled hot path, proxy/_fastmatch.pyx, and the decision log's C
helpers, proxy/_logfast.pyx, with Cython.

Everything else about the distribution lives in pyproject.toml.  The extensions are
not optional: stategate refuses to run without them rather than fall back to a slow
path silently.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "proxy._fastmatch",
        ["proxy/_fastmatch.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension("proxy._logfast", ["proxy/_logfast.pyx"], extra_compile_args=["-O3"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
