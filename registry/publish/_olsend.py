"""Send OpenLineage events through openlineage-python's client and its transports.

The client reads its own configuration: `OPENLINEAGE_CONFIG` (or `openlineage.yml`), the
`OPENLINEAGE__TRANSPORT__*` variables, or `OPENLINEAGE_URL` with `OPENLINEAGE_API_KEY`
and `OPENLINEAGE_ENDPOINT`; HTTP transports retry 5xx answers with backoff. An explicit URL
(`--url`) builds an HTTP transport for that address, still with the API key from the
environment. The events are stemma's schema-checked documents: `OpenLineageClient.emit` takes
only its own event classes (and adds facets of its own), so each event goes to the client's
transport, which serialises a dict the same way, and the server gets what the JSON-lines
export writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stemma.registry.errors import StemmaError
from stemma.registry.publish._optional import require

ENV_KEYS = ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG")
_ENV_PREFIX = "OPENLINEAGE__TRANSPORT"


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment names an OpenLineage destination for the client."""
    env = os.environ if environ is None else environ
    return any(env.get(k) for k in ENV_KEYS) or any(k.startswith(_ENV_PREFIX) for k in env)


@contextmanager
def _environ_kept() -> Iterator[None]:
    # the client copies OPENLINEAGE_URL into OPENLINEAGE__TRANSPORT__* variables of the
    # process: put the environment back so a second export reads what the user set
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


def _http_config(url: str, retries: int | None, backoff: float | None) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StemmaError(f"--url {url!r}: give an http:// or https:// address")
    config: dict[str, Any] = {
        "type": "http",
        "url": urlunsplit((parts.scheme, parts.netloc, "", "", "")),
        "endpoint": (parts.path.lstrip("/") or "api/v1/lineage")
        + (f"?{parts.query}" if parts.query else ""),
        "timeout": 30.0,
    }
    if key := os.environ.get("OPENLINEAGE_API_KEY"):
        config["auth"] = {"type": "api_key", "apiKey": key}
    retry: dict[str, Any] = {}
    if retries is not None:
        retry.update(total=retries, read=retries, connect=retries)
    if backoff is not None:
        retry["backoff_factor"] = backoff
    if retry:
        config["retry"] = retry
    return config


def _public(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def send(
    found: list[dict[str, Any]],
    url: str | None = None,
    retries: int | None = None,
    backoff: float | None = None,
) -> str:
    """Emit each event, in order, through the client's transport: to `url` when given, else
    where the client's own configuration says. Returns the transport's kind ("http", ...).
    `retries` and `backoff` override the HTTP transport's retry policy for `url`."""
    client_mod = require("openlineage.client.client", "openlineage")
    config = {"transport": _http_config(url, retries, backoff)} if url is not None else None
    # name the address in messages without any user:password part
    where = _public(url) if url is not None else "the OpenLineage transport"
    try:
        with _environ_kept():
            client = client_mod.OpenLineageClient(config=config)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise StemmaError(f"OpenLineage client configuration: {exc}") from None
    transport = client.transport
    requests = require("requests", "openlineage")
    try:
        for event in found:
            transport.emit(event)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = exc.response.reason if exc.response is not None else ""
        raise StemmaError(f"{where} refused an event: HTTP {status} {reason}".rstrip()) from None
    except requests.RequestException as exc:
        # the message names the address and the cause, never the headers (the API key)
        cause = str(exc).replace(url or "\0", where)[:300]
        raise StemmaError(f"cannot post to {where}: {cause}") from None
    finally:
        client.close()
    return str(getattr(transport, "kind", "unknown"))
