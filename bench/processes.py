"""Processes the bench starts, and what they cost, read from /proc.

Each server (backend, sink, proxies) runs in its own session so that it and every
worker it forks share one process group: teardown signals the group, never a name.
CPU and memory are summed over a master process and all its descendants, found by
walking parent pids in /proc at the moment of the reading.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None  # starttime (field 22)


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return [p for p in tree if Path(f"/proc/{p}").exists()]


def cpu_split_by_process(root: int) -> dict[int, tuple[float, float]]:
    """(utime, stime) in seconds of root and each live descendant, by pid."""
    out = {}
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK)  # fields 14, 15
    return out


def cpu_by_process(root: int) -> dict[int, float]:
    """utime + stime in seconds of root and each live descendant, by pid."""
    return {pid: user + system for pid, (user, system) in cpu_split_by_process(root).items()}


def cpu_seconds(root: int) -> float:
    """utime + stime of root and its live descendants, in seconds."""
    return sum(cpu_by_process(root).values())


def rss_bytes(root: int) -> int:
    """Resident set size of root and its live descendants (shared pages counted per process)."""
    total = 0
    for pid in process_tree(root):
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident * _PAGE
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status code of a plain GET on 127.0.0.1:port, or None if no answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    try:
        return int(parts[1])
    except ValueError:
        return None


class StartError(RuntimeError):
    """A server did not come up."""


@dataclass
class Server:
    """A server process started by the bench, in its own process group."""

    name: str
    argv: Sequence[str]
    log_dir: Path
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr"

    def start(self) -> None:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, extra: Sequence[Path] = (), lines: int = 15) -> str:
        out = []
        for path in (self.stdout_path, self.stderr_path, *extra):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out)

    def wait_ready(
        self,
        ports: Sequence[int],
        deadline_s: float,
        http_port: int | None = None,
        http_path: str = "/small",
        extra_logs: Sequence[Path] = (),
    ) -> float:
        """Poll until every port accepts (and http_path answers 200); returns seconds waited."""
        start = time.monotonic()
        end = start + deadline_s
        while time.monotonic() < end:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise StartError(
                    f"{self.name} exited with status {code} while starting\n"
                    + self.log_tail(extra_logs)
                )
            if all(port_answers(p) for p in ports) and (
                http_port is None or http_status(http_port, http_path) == 200
            ):
                return time.monotonic() - start
            time.sleep(0.1)
        raise StartError(
            f"{self.name} did not answer on {list(ports)} within {deadline_s:.0f} s\n"
            + self.log_tail(extra_logs)
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group (and stray descendants), SIGKILL after grace_s."""
        if self.proc is None or self.proc.poll() is not None:
            self._kill_group(signal.SIGKILL)
            return
        descendants = [(pid, _start_time(pid)) for pid in process_tree(self.proc.pid)]
        self._kill_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group(signal.SIGKILL)
        for pid, started in descendants:
            # Children that left the group (setsid) would otherwise survive us; the start
            # time guards against a pid reused by an unrelated process meanwhile.
            if started is not None and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except OSError:
            pass
