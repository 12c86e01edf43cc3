"""Packaging is described in pyproject.toml; this file adds the compiled forwarding path.

With REVPROXY_COMPILE=1 in the environment (the container build sets it), the modules
listed in revproxy/native.py are compiled with mypyc into the wheel, which then needs a
C compiler, Python's headers and mypy to build. Without it the wheel is pure Python.
"""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("REVPROXY_COMPILE") == "1":
    from mypyc.build import mypycify

    native = runpy.run_path(os.path.join("revproxy", "native.py"))
    ext_modules = mypycify(native["sources"]())

setup(ext_modules=ext_modules)
