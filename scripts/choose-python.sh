#!/bin/sh
# Prints the interpreter `make` creates the virtual environment with (override: PYTHON=...).
#
# The distribution's python3, when it is 3.11 or newer and can create the environment
# (venv, ensurepip) and build the compiled forwarding path (Python.h): distributions build
# it with profile-guided and link-time optimization, and revproxy needs 5 to 10% less CPU
# per request on it (15 to 25% less user time) than on a default build from source (pyenv,
# or a python.org tarball configured without --enable-optimizations). It is also what a systemd deployment's venv
# runs on (docs/deployment.md). Otherwise python3 from PATH.
candidate=/usr/bin/python3
if [ -x "$candidate" ] && "$candidate" -c '
import pathlib, sys, sysconfig
import ensurepip, venv
headers = pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h"
sys.exit(sys.version_info < (3, 11) or not headers.exists())
' 2>/dev/null; then
    echo "$candidate"
else
    echo python3
fi
