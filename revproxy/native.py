"""The forwarding path compiled to C with mypyc, and the pure-Python fallback.

The modules in MODULES are ordinary typed Python. `make` compiles them in place with
mypyc (`make compile`): each gets a shared object next to its .py,
which Python imports in preference to the source. Compiled, a small proxied request
costs a good deal less CPU; the behaviour is the same, and the test suite runs against
whichever form is in place.

In a source checkout, the shared objects are used only when all of them are at least as
new as their sources. (An installed package, built with setup.py and REVPROXY_COMPILE=1 as
the container image is, uses what it was built with.)
One stale or missing object (a source edited since the last build), or
REVPROXY_PURE_PYTHON=1 in the environment, makes every module in MODULES load from its
.py instead: compiled modules call each other directly, so the two forms never mix.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

MODULES = (
    "revproxy.http.chunked",
    "revproxy.http.errors",
    "revproxy.http.forward",
    "revproxy.http.head",
    "revproxy.balance.pool",
    "revproxy.proxy.client",
    "revproxy.proxy.exchange",
    "revproxy.proxy.router",
    "revproxy.proxy.runtime",
    "revproxy.proxy.sending",
    "revproxy.proxy.serverside",
    "revproxy.proxy.stats",
    "revproxy.proxy.tlslayer",
    "revproxy.proxy.upstream",
    "revproxy.tls.names",
)

PURE_ENV = "REVPROXY_PURE_PYTHON"
ROOT = Path(__file__).resolve().parent.parent
_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def source_of(name: str, root: Path = ROOT) -> Path:
    return root.joinpath(*name.split(".")).with_suffix(".py")


def object_of(name: str, root: Path = ROOT) -> Path:
    return source_of(name, root).with_suffix(_SUFFIX)


def compiled_state(root: Path = ROOT, env: Mapping[str, str] = os.environ) -> str:
    """One of: compiled, stale (objects older than their sources), absent, disabled."""
    if env.get(PURE_ENV, "") not in ("", "0"):
        return "disabled"
    for name in MODULES:
        if not object_of(name, root).exists():
            return "absent"
    if not (root / "pyproject.toml").exists():
        return "compiled"  # an installed package: its files come as the wheel had them
    for name in MODULES:
        if source_of(name, root).stat().st_mtime > object_of(name, root).stat().st_mtime:
            return "stale"
    return "compiled"


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the modules in MODULES from their .py files, past any shared object."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_of(fullname))


STATE = compiled_state()
COMPILED = STATE == "compiled"
if STATE in ("stale", "disabled") and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceFinder())


def describe() -> str:
    """One phrase for logs and `revproxy version`."""
    return {
        "compiled": "compiled forwarding path (mypyc)",
        "stale": "pure Python (compiled modules are older than their sources: run make)",
        "absent": "pure Python (forwarding path not compiled)",
        "disabled": f"pure Python ({PURE_ENV} is set)",
    }[STATE]


def remove() -> None:
    """Delete the shared objects (back to pure Python)."""
    for name in MODULES:
        object_of(name).unlink(missing_ok=True)
    for lib in ROOT.glob(f"*__mypyc{_SUFFIX}"):
        lib.unlink()


def sources() -> list[str]:
    """The source files of MODULES, relative to the checkout (what mypyc is given)."""
    return [str(source_of(name).relative_to(ROOT)) for name in MODULES]


def build() -> int:
    """Compile MODULES in place; without a C compiler or Python's headers, stay pure."""
    remove()
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    cc = sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None or not include.exists():
        print(
            f"revproxy: no C compiler ({cc}) or no {include}: the forwarding path stays "
            "pure Python (slower, same behaviour)",
            file=sys.stderr,
        )
        return 0
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *sources()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        remove()
        print(done.stdout[-20000:] + done.stderr[-20000:], file=sys.stderr)
        print("revproxy: mypyc failed (output above)", file=sys.stderr)
        return done.returncode
    for name in MODULES:
        # The build copies objects it did not need to rebuild with their old times.
        os.utime(object_of(name))
    return 0
