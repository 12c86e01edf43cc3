"""Helpers for the deployment tests: reading the deployment files, finding tools, and
running the proxy as a deployment would (same argv, its own process group, log to a file).

The whole-proxy harness (tests/e2e/harness.py) is reused for demo servers and polling.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "container" / "Dockerfile.dockerignore"
CONTAINER_CONFIG = DEPLOY / "examples" / "container.toml"
COMPOSE = DEPLOY / "compose.yaml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "revproxy.service"
KUBERNETES = DEPLOY / "kubernetes"

sys.path.insert(0, str(REPO / "tests" / "e2e"))

from harness import wait_for  # noqa: E402

_LISTENING = re.compile(r"listener (\S+) on (\S+):(\d+) ")


def tool(name: str) -> str | None:
    """A command from the virtualenv (pip-installed tools) or from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


# ---------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the instruction, continuation lines joined


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword}, found {found}"
        return found[0]


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARG defaults, global and per stage
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON array of an exec-form instruction of the final stage."""
        value = json.loads(self.final.one(keyword))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for text in self.final.all("ENV"):
            for item in shlex.split(text):
                key, _, value = item.partition("=")
                out[key] = value
        return out

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as interval, the exec-form command) of HEALTHCHECK."""
        text = self.final.one("HEALTHCHECK")
        options = dict(re.findall(r"--([a-z-]+)=(\S+)", text))
        command = json.loads(text[text.index("CMD") + 3 :].strip())
        return options, command


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    result = Dockerfile({}, [])
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            result.args[name] = default
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            result.stages.append(Stage(result.expand(parts[0]), name))
        elif result.stages:
            result.stages[-1].instructions.append(Instruction(keyword, rest))
    return result


# ---------------------------------------------------------------------- a running proxy


class RunningCommand:
    """A command started in its own session, output to a log file, stopped by signal."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Poll the log for `pattern`; fail early when the process exits."""

        def seen() -> re.Match[str] | None:
            text = self.log()
            match = re.search(pattern, text)
            if match is None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"exited with {code} before {pattern!r}:\n{text}")
            return match

        return wait_for(seen, timeout, repr(pattern))

    def listener_ports(self) -> dict[str, int]:
        return {m.group(1): int(m.group(3)) for m in _LISTENING.finditer(self.log())}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` and wait; the whole process group is killed if it does not end.
        Safe to call again, and on a command that already ended."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        """Wait for the command to end by itself; its exit status."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(5)
        self._log.close()
