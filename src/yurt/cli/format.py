"""Nomad-looking output for the cluster commands: `Key = Value` blocks, aligned tables, times,
short IDs, prefix resolution, and the `-address` flag with its error handling.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import time
from datetime import datetime
from typing import Any
from collections.abc import Callable, Iterable, Sequence

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from yurt.api.client import TLSConfig, YurtClient, default_address
from yurt.errors import Unreachable, YurtError

from .output import EXIT_ERROR, fail, out

NONE = "<none>"


# -- the -address flag and API errors ---------------------------------------------------------
def _remember_token(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["yurt.token"] = value


def token() -> str:
    """The ACL token: `-token`, else $YURT_TOKEN, else $NOMAD_TOKEN."""
    import os
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get("yurt.token") if ctx is not None else None
    return given or os.environ.get("YURT_TOKEN") or os.environ.get("NOMAD_TOKEN") or ""


def _remember_namespace(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["yurt.namespace"] = value


def namespace() -> str:
    """The namespace the command works in: `-namespace`, else $YURT_NAMESPACE, else
    $NOMAD_NAMESPACE, else "" (the agent's: default, or the job file's for a job run)."""
    import os
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get("yurt.namespace") if ctx is not None else None
    return given or os.environ.get("YURT_NAMESPACE") or os.environ.get("NOMAD_NAMESPACE") or ""


def address_option(fn: Callable) -> Callable:
    """`-address ADDR` (default: $YURT_ADDR, then $NOMAD_ADDR, then http://127.0.0.1:4646), the
    TLS flags (`tls_options`), `-token SECRET` (default: $YURT_TOKEN, then $NOMAD_TOKEN) and
    `-namespace NS` (default: $YURT_NAMESPACE, then $NOMAD_NAMESPACE; "*" lists every one)."""
    fn = click.option("-namespace", "--namespace", metavar="NS", default=None, expose_value=False,
                      callback=_remember_namespace,
                      help='The namespace (default $YURT_NAMESPACE, $NOMAD_NAMESPACE or "default"; '
                           '"*" lists every namespace).')(fn)
    fn = click.option("-token", "--token", metavar="SECRET", default=None, expose_value=False,
                      callback=_remember_token,
                      help="The ACL token's SecretID (default $YURT_TOKEN or $NOMAD_TOKEN).")(fn)
    return click.option("-address", "--address", "address", metavar="ADDR", default=None,
                        help="The agent's HTTP address (default $YURT_ADDR, $NOMAD_ADDR or "
                             "http://127.0.0.1:4646).")(tls_options(fn))


# Nomad's TLS flags; the command never sees them: `connect()` reads them from the click context.
_TLS_FLAGS = (
    ("-ca-cert", "ca_cert", "FILE", "The CA certificate (PEM file or directory) that signs the agent's "
     "HTTPS certificate (default $YURT_CACERT, $NOMAD_CACERT)."),
    ("-client-cert", "client_cert", "FILE", "A client certificate for an agent with verify_https_client "
     "(default $YURT_CLIENT_CERT, $NOMAD_CLIENT_CERT)."),
    ("-client-key", "client_key", "FILE", "The client certificate's key (default $YURT_CLIENT_KEY, "
     "$NOMAD_CLIENT_KEY)."),
    ("-tls-server-name", "server_name", "NAME", "The name to expect in the agent's certificate instead "
     "of the address's host (default $NOMAD_TLS_SERVER_NAME)."),
)


def _remember_tls(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value not in (None, False):
        ctx.meta.setdefault("yurt.tls", {})[param.name] = value
    return value


def tls_options(fn: Callable) -> Callable:
    for flag, name, metavar, help_ in _TLS_FLAGS:
        fn = click.option(flag, "-" + flag, name, metavar=metavar, default=None, expose_value=False,
                          callback=_remember_tls, help=help_)(fn)
    return click.option("-tls-skip-verify", "--tls-skip-verify", "skip_verify", is_flag=True, default=False,
                        expose_value=False, callback=_remember_tls,
                        help="Do not verify the agent's certificate (default $NOMAD_SKIP_VERIFY); "
                             "insecure.")(fn)


def api_errors(fn: Callable) -> Callable:
    """Turn an unreachable agent or an error answer into `Error: ...` and exit 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Unreachable as e:
            fail(str(e))
        except YurtError as e:
            fail(api_message(e))
    return wrapper


def api_message(e: YurtError) -> str:
    return e.message or f"the agent answered HTTP {e.status}"


def connect(address: str | None) -> YurtClient:
    ctx = click.get_current_context(silent=True)
    flags = ctx.meta.get("yurt.tls", {}) if ctx is not None else {}
    tls = TLSConfig.from_env()
    if flags:
        tls = dataclasses.replace(tls, **flags)
    client = YurtClient(address or default_address(), tls=tls)
    client.token = token()
    client.namespace = namespace()
    return client


# -- IDs and times ----------------------------------------------------------------------------
def short(ident: str | None, verbose: bool = False) -> str:
    if not ident:
        return ""
    return ident if verbose else ident[:8]


def fmt_time(ns: int | None) -> str:
    """RFC3339 in local time, as Nomad's formatTime."""
    if not ns:
        return "N/A"
    s = datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def fmt_clock(ns: int | None = None) -> str:
    """The timestamp of a monitor line (Nomad: `2006-01-02T15:04:05Z07:00`)."""
    return fmt_time(ns or time.time_ns())


def fmt_iso(value: str | None) -> str:
    """An RFC3339 string from the API (StartedAt ...) shown like fmt_time."""
    if not value:
        return "N/A"
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return fmt_time(int(dt.timestamp() * 1e9))


def pretty_duration(seconds: float) -> str:
    """`1m5s`, `2h3m`, `3d4h`: Nomad's prettyTimeDiff keeps the two largest units."""
    seconds = round(max(seconds, 0))
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n or parts:
            parts.append(f"{n}{unit}")
    parts = parts[:2]
    while len(parts) > 1 and parts[-1].startswith("0"):
        parts.pop()
    return "".join(parts)


def relative(ns: int | None, now_ns: int | None = None) -> str:
    if not ns:
        return "N/A"
    diff = ((now_ns or time.time_ns()) - ns) / 1e9
    if diff < 0:
        return "from now " + pretty_duration(-diff)
    return pretty_duration(diff) + " ago"


def duration(ns: int) -> str:
    return pretty_duration(ns / 1e9)


# -- KV blocks and tables ---------------------------------------------------------------------
def kv(rows: Sequence[tuple[str, Any]]) -> str:
    """Nomad's formatKV: `Key   = Value`, keys padded, empty values shown as <none>."""
    if not rows:
        return ""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)} = {_cell(v)}" for k, v in rows)


def _cell(v: Any) -> str:
    if v is None or v == "":
        return NONE
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0),
              show_lines=False)
    for h in headers:
        t.add_column(h, no_wrap=True, overflow="ignore")
    for row in rows:
        t.add_row(*[Text(_cell(c)) for c in row])
    return t


def render(renderable: Any) -> str:
    """Plain text of a rich renderable, no wrapping, trailing blanks trimmed."""
    buf = io.StringIO()
    Console(file=buf, width=10_000, color_system=None, highlight=False, force_terminal=False,
            soft_wrap=False).print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = table(headers, rows)
    if out.is_terminal:
        out.print(t)
    else:
        click.echo(render(t))


def heading(title: str) -> None:
    if out.is_terminal:
        out.print(f"[bold]{title}[/]")
    else:
        click.echo(title)


def echo(text: str = "") -> None:
    click.echo(text)


# -- prefixes ---------------------------------------------------------------------------------
def resolve(kind: str, prefix: str, items: list[dict], headers: Sequence[str],
            row: Callable[[dict], Sequence[Any]], plural: str | None = None,
            missing: str | None = None) -> dict:
    """The one item whose ID is `prefix` or starts with it; several -> list them and exit 1."""
    exact = [i for i in items if i.get("ID") == prefix]
    if exact:
        return exact[0]
    matches = [i for i in items if str(i.get("ID", "")).startswith(prefix)]
    if not matches:
        fail(missing or f'No {kind} with prefix or id "{prefix}" found')
    if len(matches) > 1:
        echo(f"Prefix matched multiple {plural or kind + 's'}\n")
        print_table(headers, [row(i) for i in matches])
        raise SystemExit(EXIT_ERROR)
    return matches[0]


def bullets(lines: Iterable[str], indent: str) -> list[str]:
    return [f"{indent}* {ln}" for ln in lines]


def metric_reasons(metric: dict | None) -> list[str]:
    """AllocMetric.reasons() on a metric as the API returns it."""
    from yurt.structs import AllocMetric
    if not metric:
        return []
    known = {f.alias or name for name, f in AllocMetric.model_fields.items()} | set(AllocMetric.model_fields)
    try:
        return AllocMetric.model_validate({k: v for k, v in metric.items() if k in known}).reasons()
    except ValueError:  # pydantic's ValidationError: a shape we do not know; say what we can
        return [f"{metric.get('NodesFiltered', 0)} nodes excluded by filter"]
