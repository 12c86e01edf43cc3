#!/bin/sh
# Prints the interpreter `make` creates the virtual environment with (override: PYTHON=...).
#
# The distribution's interpreter, when it is 3.11 or newer and can create the environment
# (venv, ensurepip) and build the compiled forwarding path (Python.h): distributions build
# it with profile-guided and link-time optimization, and revproxy needs 5 to 10% less CPU
# per request on it (15 to 25% less user time) than on a default build from source (pyenv,
# or a python.org tarball configured without --enable-optimizations). It is also what a
# systemd deployment's venv runs on (docs/deployment.md). /usr/bin/python3 is tried first,
# then /usr/bin/python3.13 to python3.11 (where python3 is older); otherwise python3 from
# PATH, as before.
for candidate in /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
    if [ -x "$candidate" ] && "$candidate" -c '
import pathlib, sys, sysconfig
import ensurepip, venv
headers = pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h"
sys.exit(sys.version_info < (3, 11) or not headers.exists())
' 2>/dev/null; then
        echo "$candidate"
        exit 0
    fi
done
echo "revproxy: no distribution Python 3.11+ with venv and headers; using python3 from PATH" >&2
echo python3
