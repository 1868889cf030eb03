"""A Fleet-only gateway: the one port hospitals reach, while the Control API stays on 127.0.0.1.

Why: Flower 1.41's ``flower-superlink`` serves its Control API (``/v1/control/*``: register
SuperNode keys, start and stop runs), its Fleet API (``/v1/fleet/*``: what SuperNodes call)
and the ServerApp runtime API on ONE HTTP port (``--host``/``--port``); the deprecated
``--control-api-address`` flag no longer gives the Control API a port of its own, and the
Control API's account authentication (OIDC) is not part of the open-source distribution
(``FLWR_OIDC_ENABLED=1`` exits with "OIDC account authentication is unavailable in this Flower
distribution"). Anyone who reaches that port with the (public) CA certificate can therefore
register a SuperNode key or start a run.

So the SuperLink listens on 127.0.0.1 only (the operator's ``flwr`` and the SuperLink's own
SuperExec reach it there) and this gateway listens on the address hospitals reach, with the
same certificate, and forwards ``/v1/fleet/*`` requests only (and ``/health``); anything else
gets ``404``. SuperNode authentication still happens at the SuperLink: the gateway forwards the
signed headers untouched.

Run it with ``python -m fedvlp.server.cli.gateway --host 0.0.0.0 --port 9092 --upstream
https://127.0.0.1:9093 --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile
server.key`` (``docs/deployment.md``, "Keep the Control API to the operator").
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

__all__ = ["FORWARDED_PREFIXES", "is_forwarded", "make_gateway_app", "main"]

FORWARDED_PREFIXES = ("/v1/fleet/",)
FORWARDED_PATHS = frozenset({"/health"})
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the HTTP clients below set themselves.
_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "content-encoding",
    }
)


def is_forwarded(path: str) -> bool:
    """Whether the gateway forwards a request for ``path`` (the Fleet API and the health check)."""
    return path in FORWARDED_PATHS or (path.startswith(FORWARDED_PREFIXES) and ".." not in path)


def make_gateway_app(upstream: str, ca_cert: Path | None = None, timeout: float = 600.0) -> Any:
    """The gateway's ASGI app (Starlette): Fleet requests to ``upstream``, everything else 404.

    Parameters
    ----------
    upstream
        The SuperLink's own address, e.g. ``https://127.0.0.1:9093``.
    ca_cert
        The CA that signed the SuperLink's certificate (verifies ``upstream``); ``None`` for a
        plain-HTTP SuperLink on the same machine.
    timeout
        Seconds a forwarded request may take.
    """
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, verify=str(ca_cert) if ca_cert else False, timeout=timeout)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not is_forwarded(path):
            return JSONResponse({"detail": "not served here: this address serves the Fleet API only"}, status_code=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        reply = await client.request(
            request.method, path, params=request.query_params, headers=headers, content=await request.body()
        )
        back = {k: v for k, v in reply.headers.items() if k.lower() not in _DROPPED}
        return Response(content=reply.content, status_code=reply.status_code, headers=back)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedvlp.server.cli.gateway``: serve the gateway until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m fedvlp.server.cli.gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0", help="address the hospitals reach (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument(
        "--upstream", default="https://127.0.0.1:9093", help="the SuperLink's --host/--port on this machine"
    )
    parser.add_argument("--ssl-ca-certfile", type=Path, help="CA of the SuperLink's certificate (verifies --upstream)")
    parser.add_argument(
        "--ssl-certfile", type=Path, help="certificate the gateway presents (the SuperLink's server.pem)"
    )
    parser.add_argument("--ssl-keyfile", type=Path, help="its key (server.key)")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (one machine only)")
    args = parser.parse_args(argv)
    if not args.insecure and not (args.ssl_ca_certfile and args.ssl_certfile and args.ssl_keyfile):
        parser.error("pass --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile (or --insecure)")
    app = make_gateway_app(args.upstream, None if args.insecure else args.ssl_ca_certfile)
    certfile, keyfile = (None, None) if args.insecure else (str(args.ssl_certfile), str(args.ssl_keyfile))
    print(f"fedvlp Fleet gateway on {args.host}:{args.port} -> {args.upstream} (Fleet API only)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ssl_certfile=certfile, ssl_keyfile=keyfile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
