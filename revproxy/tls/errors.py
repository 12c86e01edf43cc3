"""The one error the TLS layer raises for unusable files: it names the file."""

from __future__ import annotations

from pathlib import Path


class TLSConfigError(Exception):
    """A certificate, key or CA file that cannot be used, with the file it came from."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
