"""`impetus keys`: API keys of the HTTP API (pipelines/keys.py), and their usage.

    impetus keys create --name ci --role user --expires 30d --rate-limit 120/minute
    impetus keys list [--json]
    impetus keys revoke ci
    impetus keys rotate ci
    impetus keys usage [--since 7d] [--key ci] [--by-route] [--json]

A key's secret is printed once, by `create` and `rotate`; only its keyed hash is stored. Changes
hold at the next request of a running server (it reads the keys per request).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import JsonOpt, domain_errors, echo_json, settings

if TYPE_CHECKING:
    from pipelines.keys import ApiKey, KeyStore

app = typer.Typer(help="API keys: create, list, revoke, rotate, usage.", no_args_is_help=True)


@contextmanager
def _store() -> Iterator[KeyStore]:
    from pipelines.keys import KeyStore

    s = settings()
    with domain_errors():
        store = KeyStore.open(s.data_dir)
        try:
            yield store
        finally:
            store.close()


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _print_secret(key: ApiKey, token: str, as_json: bool, verb: str) -> None:
    if as_json:
        echo_json({**key.as_dict(), "key": token})
        return
    typer.echo(token)
    typer.secho(
        f"{verb} key {key.name!r} ({key.role}, id {key.id}, expires {_when(key.expires)}). "
        "This is the only time the key is shown: store it now. Send it as "
        "`Authorization: Bearer <key>` or `x-api-key: <key>`.",
        err=True,
    )


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", "-n", help="A unique name for the key.")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            "-r",
            help="admin (everything), user (inference, embeddings, RAG search) or readonly "
            "(models, health, hardware, metrics).",
        ),
    ],
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 90m, 12h, 30d, 2w (default: none).")
    ] = None,
    rate_limit: Annotated[
        str | None,
        typer.Option(help="This key's limit, e.g. 600/minute (default: rate_limits.*)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print its secret (once)."""
    from pipelines.keys import parse_duration

    with _store() as store, domain_errors():
        lifetime = parse_duration(expires) if expires else None
        key, token = store.create(name, role, expires_in=lifetime, rate_limit=rate_limit)
    _print_secret(key, token, as_json, "Created")


@app.command("list")
def list_keys(as_json: JsonOpt = False) -> None:
    """The keys (never their secrets): name, id, role, status, created, expires, last used."""
    with _store() as store:
        keys = store.all()
    if as_json:
        echo_json([k.as_dict() for k in keys])
        return
    if not keys:
        typer.echo("No keys. Create one: impetus keys create --name NAME --role admin")
        return
    typer.echo(
        f"{'name':<20} {'id':<12} {'role':<8} {'status':<8} {'created':<16} {'expires':<16} "
        f"{'last used':<16} rate limit"
    )
    for k in keys:
        typer.echo(
            f"{k.name:<20} {k.id:<12} {k.role:<8} {k.status():<8} {_when(k.created):<16} "
            f"{_when(k.expires):<16} {_when(k.last_used):<16} {k.rate_limit or '-'}"
        )


@app.command()
def revoke(
    key: Annotated[str, typer.Argument(help="The key's name or id.")], as_json: JsonOpt = False
) -> None:
    """Revoke a key; a running server refuses it from its next request."""
    with _store() as store, domain_errors():
        revoked = store.revoke(key)
    if as_json:
        echo_json(revoked.as_dict())
    else:
        typer.echo(f"Revoked key {revoked.name!r} ({revoked.id}).")


@app.command()
def rotate(
    key: Annotated[str, typer.Argument(help="The key's name or id.")], as_json: JsonOpt = False
) -> None:
    """Give a key a new secret (printed once); the old secret stops working at once."""
    with _store() as store, domain_errors():
        rotated, token = store.rotate(key)
    _print_secret(rotated, token, as_json, "Rotated")


@app.command()
def usage(
    since: Annotated[str, typer.Option(help="Window to report, e.g. 24h, 7d.")] = "30d",
    key: Annotated[str | None, typer.Option(help="Only this key (name or id).")] = None,
    by_route: Annotated[bool, typer.Option("--by-route", help="One row per route.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Requests, errors, 429s, tokens and mean latency per key, from the server's request log."""
    from pipelines.keys import parse_duration

    with _store() as store, domain_errors():
        start = time.time() - parse_duration(since).total_seconds()
        rows: list[dict[str, Any]] = (
            store.routes(start, key) if by_route else store.usage(start, key)
        )
        names = {k.id: k.name for k in store.all()}
    for row in rows:
        row["name"] = names.get(row["key_id"], "(no key)")
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo(f"No requests in the last {since}.")
        return
    if by_route:
        typer.echo(f"{'key':<20} {'method':<7} {'route':<32} {'requests':>9} {'errors':>7}")
        for r in rows:
            typer.echo(
                f"{r['name']:<20} {r['method']:<7} {r['route']:<32} {r['requests']:>9} "
                f"{r['errors']:>7}"
            )
        return
    typer.echo(
        f"{'key':<20} {'requests':>9} {'errors':>7} {'429s':>6} {'tokens':>9} {'mean ms':>8} "
        "last request"
    )
    for r in rows:
        typer.echo(
            f"{r['name']:<20} {r['requests']:>9} {r['errors']:>7} {r['rate_limited']:>6} "
            f"{r['tokens']:>9} {r['avg_ms']:>8.1f} {_when(r['last'])}"
        )
