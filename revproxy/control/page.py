"""The status page: every listener, service, pool and real server at a glance.

Rendered on the server from the same data as GET /api/status, with no external
assets. A few lines of script fetch the page again every two seconds and swap
the content in place; without script a meta refresh does the same, slower.
"""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

COLOURS = {
    "up": "#2e7d32",  # green
    "down": "#c62828",  # red
    "disabled": "#757575",  # grey
    "draining": "#ff8f00",  # amber
}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #e0e0e0;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eeeeee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;min-width:5.5em;text-align:center;border-radius:3px;
color:#fff;font-weight:600;padding:0 .4em}
.meta{color:#616161}.warn{color:#c62828;font-weight:600}
""" + "".join(f".state.{k}{{background:{v}}}\n" for k, v in COLOURS.items())

_SCRIPT = """
setInterval(function(){
  fetch(location.pathname,{cache:"no-store"}).then(function(r){return r.text()})
  .then(function(t){
    var d=new DOMParser().parseFromString(t,"text/html");
    var n=d.getElementById("content");
    if(n){document.getElementById("content").replaceWith(n)}
  }).catch(function(){});
},2000);
"""


def _state(word: str) -> str:
    return f'<span class="state {escape(word)}">{escape(word)}</span>'


def _when(stamp: float | None, now: float) -> str:
    if not stamp:
        return "-"
    ago = max(0.0, now - stamp)
    clock = datetime.datetime.fromtimestamp(stamp).strftime("%H:%M:%S")
    return f"{clock} ({ago:.0f} s ago)"


def _row(cells: list[str], numeric: tuple[int, ...] = ()) -> str:
    return (
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        + "</tr>"
    )


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render(status: dict[str, Any]) -> str:
    now = float(status["time"])
    e = escape
    reloads = status["reloads"]
    ready = _state("up") if status["ready"] else _state("down")
    summary = (
        f'<p class="meta">Configuration {e(status["config"])} (generation {status["generation"]}),'
        f" main process {status['pid']}, {len(status['workers'])} workers, ready {ready}. "
        f"Reloads: {reloads['succeeded']} ok, {reloads['failed']} failed"
    )
    if not reloads["last_ok"]:
        summary += (
            f' — <span class="warn">last reload failed: {e(reloads["last_error"][:300])}</span>'
        )
    summary += f". Updated {datetime.datetime.fromtimestamp(now).strftime('%H:%M:%S')}.</p>"

    listener_rows = []
    for lst in status["listeners"]:
        certs = []
        for c in lst["certificates"]:
            days = c["days_left"]
            if days is None:
                certs.append(f'<span class="warn">{e(c["name"])}: {e(c["problem"])}</span>')
            else:
                text = f"{e(c['name'])}: {days:.0f} days left"
                certs.append(f'<span class="warn">{text}</span>' if days < 21 else text)
        listener_rows.append(
            _row(
                [
                    f"<b>{e(lst['name'])}</b>",
                    e(lst["address"]) + (" (TLS)" if lst["tls"] else ""),
                    e(", ".join(lst["services"])),
                    str(lst["open_connections"]),
                    "<br>".join(certs) or "-",
                ],
                (3,),
            )
        )
    service_rows = [
        _row(
            [
                f"<b>{e(s['name'])}</b>",
                e(", ".join(s["hosts"])) + " " + e(" ".join(p for p in s["paths"] if p != "/")),
                e(", ".join(s["listeners"])),
                e(s["pool"]),
                f"{s['rps']:.1f}",
                str(s["requests"]),
                str(s["errors"]),
            ],
            (4, 5, 6),
        )
        for s in status["services"]
    ]
    pool_parts = []
    for pool in status["pools"]:
        states = [srv["state"] for srv in pool["servers"]]
        usable = sum(1 for st in states if st == "up")
        rows = []
        for srv in pool["servers"]:
            if srv["checked"]:
                check = f"{'passed' if srv['up'] else 'failed'} {_when(srv['last_check'], now)}"
                if srv["last_result"]:
                    check += f" — {e(srv['last_result'])}"
            else:
                check = "no active check"
            rows.append(
                _row(
                    [
                        e(srv["address"]),
                        _state(srv["state"]),
                        check,
                        str(srv["active"]),
                        f"{srv['rps']:.1f}",
                        str(srv["requests"]),
                        str(srv["errors"]),
                        str(srv["weight"]),
                    ],
                    (3, 4, 5, 6, 7),
                )
            )
        pool_state = "up" if usable else "down"
        pool_parts.append(
            f"<h3>{_state(pool_state)} Pool <b>{e(pool['name'])}</b> "
            f'<span class="meta">{usable}/{len(states)} servers up, {e(pool["balance"])}, '
            f"health check {e(pool['health_check'])}{', TLS' if pool['tls'] else ''}</span></h3>"
            + _table(
                [
                    "Real server",
                    "State",
                    "Last check",
                    "Active",
                    "Req/s",
                    "Requests",
                    "Errors",
                    "Weight",
                ],
                rows,
            )
        )
    content = (
        '<div id="content">'
        + summary
        + "<h2>Listeners</h2>"
        + _table(
            ["Listener", "Address", "Services", "Open connections", "Certificates"], listener_rows
        )
        + "<h2>Virtual services</h2>"
        + _table(
            ["Service", "Hosts and paths", "Listeners", "Pool", "Req/s", "Requests", "5xx"],
            service_rows,
        )
        + "<h2>Pools and real servers</h2>"
        + "".join(pool_parts)
        + "</div>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<title>revproxy status</title>"
        "<noscript><meta http-equiv=refresh content=5></noscript>"
        f"<style>{_STYLE}</style></head><body><h1>revproxy status</h1>{content}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


_ANSI = {
    "up": "\033[1;32m",
    "down": "\033[1;31m",
    "disabled": "\033[1;90m",
    "draining": "\033[1;33m",
}


def render_text(status: dict[str, Any], colour: bool = False) -> str:
    """The status page for a terminal (`revproxy status`)."""

    def word(state: str) -> str:
        text = f"{state:<9}"
        return f"{_ANSI.get(state, '')}{text}\033[0m" if colour else text

    reloads = status["reloads"]
    lines = [
        f"revproxy pid {status['pid']}, configuration {status['config']} "
        f"(generation {status['generation']}), {len(status['workers'])} workers, "
        f"{'ready' if status['ready'] else 'NOT READY'}",
        f"reloads: {reloads['succeeded']} ok, {reloads['failed']} failed"
        + ("" if reloads["last_ok"] else f"; last failed: {reloads['last_error'].splitlines()[0]}"),
        "",
        "LISTENER        ADDRESS                 CONNS  SERVICES",
    ]
    for lst in status["listeners"]:
        lines.append(
            f"{lst['name']:<15} {lst['address'] + (' tls' if lst['tls'] else ''):<23} "
            f"{lst['open_connections']:>5}  {', '.join(lst['services'])}"
        )
        for cert in lst["certificates"]:
            days = cert["days_left"]
            left = f"{days:.0f} days left" if days is not None else cert["problem"]
            lines.append(f"{'':15} certificate {cert['name']}: {left}")
    lines += ["", "SERVICE         POOL            REQ/S   REQUESTS      5XX  HOSTS"]
    for svc in status["services"]:
        lines.append(
            f"{svc['name']:<15} {svc['pool']:<15} {svc['rps']:>5.1f} {svc['requests']:>10} "
            f"{svc['errors']:>8}  {', '.join(svc['hosts'])}"
        )
    for pool in status["pools"]:
        lines += [
            "",
            f"POOL {pool['name']} ({pool['balance']}, health check {pool['health_check']})",
            "  SERVER                   STATE     ACTIVE  REQ/S   REQUESTS   ERRORS  LAST CHECK",
        ]
        for srv in pool["servers"]:
            check = "-"
            if srv["checked"]:
                check = ("passed" if srv["up"] else "failed") + (
                    f" {srv['last_result']}" if srv["last_result"] else ""
                )
            lines.append(
                f"  {srv['address']:<24} {word(srv['state'])} {srv['active']:>6} "
                f"{srv['rps']:>6.1f} {srv['requests']:>10} {srv['errors']:>8}  {check}"
            )
    return "\n".join(lines) + "\n"
