"""Reading TOML tables with errors that name the file and the dotted key.

A Table remembers which keys were read, so keys nobody read are reported as
unknown (with the closest known one suggested) without listing them twice.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Long polls (UCWA event channel, ActiveSync heartbeat) need up to an hour; a day
# is the ceiling so that a typo in units (ms for s) is caught.
MAX_TIMEOUT = 86400.0
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list) and len(value) > 5:
        return "an array"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class Context:
    def __init__(self, source: Path, check_files: bool) -> None:
        self.source = source
        self.base = Path(os.path.abspath(source)).parent
        self.check_files = check_files
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: {key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {key}: {message}")

    def file(self, key: str, value: str) -> Path:
        """An absolute path for a file named relative to the configuration file."""
        path = Path(os.path.abspath(self.base / Path(value).expanduser()))
        if self.check_files:
            if not path.exists():
                self.error(key, f"file not found: {path}")
            elif not path.is_file():
                self.error(key, f"not a regular file: {path}")
            elif not os.access(path, os.R_OK):
                self.error(key, f"file is not readable: {path}")
        return path


class Table:
    """One TOML table being read; keys never read are reported as unknown at finish()."""

    def __init__(self, ctx: Context, key: str, data: dict[str, Any]) -> None:
        self.ctx = ctx
        self.key = key
        self.data = data
        self.seen: list[str] = []

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def raw(self, name: str) -> Any:
        self.seen.append(name)
        return self.data.get(name)

    def error(self, name: str, message: str) -> None:
        self.ctx.error(self.sub(name), message)

    def number(
        self,
        name: str,
        default: float,
        *,
        integer: bool = False,
        low: float = 0,
        low_inclusive: bool = True,
        high: float | None = None,
    ) -> Any:
        value = self.raw(name)
        if value is None:
            return default
        if integer:
            wanted = "a positive integer" if low >= 1 else f"an integer >= {low:g}"
        else:
            wanted = "a positive number" if not low_inclusive else f"a number >= {low:g}"
        wrong_type = isinstance(value, bool) or not isinstance(
            value, int if integer else int | float
        )
        # Written so that NaN fails too.
        if wrong_type or not (value > low or (low_inclusive and value == low)):
            self.error(name, f"must be {wanted}, got {show(value)}")
            return default
        if high is not None and value > high:
            self.error(name, f"must be at most {high:g}, got {show(value)}")
            return default
        return value if integer else float(value)

    def seconds(self, name: str, default: float, *, zero: bool = False) -> float:
        value: float = self.number(name, default, low_inclusive=zero, high=MAX_TIMEOUT)
        return value

    def required(self, name: str, example: str) -> str | None:
        value = self.raw(name)
        if value is None:
            self.error(name, f"is required, e.g. {example}")
        elif not isinstance(value, str) or not value:
            self.error(name, f"must be a non-empty string like {example}, got {show(value)}")
        else:
            return value
        return None

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(name, f"must be true or false, got {show(value)}")
            return default
        return value

    def string(self, name: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if choices and isinstance(value, float) and f"{value:.1f}" in choices:
            return f"{value:.1f}"  # min_tls_version = 1.2 written without quotes
        if not isinstance(value, str):
            self.error(name, f"must be a string, got {show(value)}")
            return default
        if choices and value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            self.error(name, f"must be one of {options}, got {show(value)}")
            return default
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(name, f"must be an array of strings, got {show(value)}")
            return default
        return tuple(value)

    def table(self, name: str) -> Table:
        value = self.raw(name)
        if value is not None and not isinstance(value, dict):
            self.error(name, f"must be a table, got {show(value)}")
        return Table(self.ctx, self.sub(name), value if isinstance(value, dict) else {})

    def named_tables(self, name: str, what: str) -> Iterator[tuple[str, Table]]:
        """Tables keyed by name, e.g. [pools.web]; names are checked, order is kept."""
        value = self.raw(name)
        if value is None:
            return
        if not isinstance(value, dict):
            self.error(name, f"must be tables keyed by {what} name, e.g. [{name}.example]")
            return
        for key, item in value.items():
            sub = f"{self.sub(name)}.{key}"
            if not NAME_RE.fullmatch(key):
                self.ctx.error(sub, "names use letters, digits, '-' and '_' (at most 64)")
            elif not isinstance(item, dict):
                self.ctx.error(sub, f"must be a table, got {show(item)}")
            else:
                yield key, Table(self.ctx, sub, item)

    def finish(self) -> None:
        known = sorted(set(self.seen))
        for name in self.data:
            if name in self.seen:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(known)}"
            self.error(name, f"unknown key; {hint}")
