"""Fleet-only gateway: expose a Flower 1.41 SuperLink's Fleet API, and nothing else.

Why: in Flower 1.41 the SuperLink serves the Fleet API (SuperNodes), the Control API (`flwr`
CLI: register SuperNodes, start/stop runs) and the Runtime API (SuperExec) on ONE port, and OSS
Flower has no Control-API user authentication. Whoever reaches that port with the public CA
certificate can `flwr supernode register` a key of their own and join an authenticated
federation. So the SuperLink listens on loopback only and this gateway listens where the
SuperNodes connect, forwarding only

    POST /v1/fleet/<name>    (name: lower-case letters, digits, '-': every Fleet route)
    GET  /health

to the SuperLink. Everything else is answered here and never reaches the SuperLink: 403 for
other /v1/ paths (Control, Runtime), 404 for anything else, 413 for a body above
--max-body-bytes. The path must match exactly (no '..', '%', '//'), so a normalising client or
upstream cannot turn a Fleet path into a Control path; a query string is not forwarded.

Request and response headers (except hop-by-hop ones) and bodies pass unchanged, including
the SuperNode-authentication headers flwr-public-key, flwr-signature and flwr-timestamp (the
signature covers the timestamp only, so a proxy that keeps headers keeps it valid). Request
bodies are buffered (bounded, Fleet calls are unary protobuf); responses are streamed raw.

    python deploy/fleet_gateway.py --listen-host 10.0.0.5 --listen-port 9092 \
        --upstream 127.0.0.1:8000 --certfile server.pem --keyfile server.key --upstream-ca ca.crt

--insecure serves and forwards plain HTTP (for `federation.sh --mode insecure`, dev only).
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys

import httpx
import uvicorn

FLEET_PATH = re.compile(r"/v1/fleet/[a-z0-9][a-z0-9-]{0,63}")
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
              b"te", b"trailer", b"transfer-encoding", b"upgrade"}
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length"}   # httpx sets them for the next hop
DEFAULT_MAX_BODY = 64 * 1024 * 1024   # Flower chunks arrays at 5 MiB; FABs are at most 10 MB


class TooLarge(Exception):
    """The request body exceeds the configured bound."""


def verdict(method: str, path: str) -> int | None:
    """None if the request may go to the SuperLink, else the status to answer with."""
    if path == "/health":
        return None if method == "GET" else 405
    if FLEET_PATH.fullmatch(path):
        return None if method == "POST" else 405
    return 403 if path.startswith("/v1/") else 404


async def reply(send, status: int, text: str) -> None:
    """A short plain-text answer from the gateway itself."""
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope, receive, limit: int) -> bytes:
    """The whole request body, refusing early (Content-Length) or while reading (chunked)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            raise TooLarge
    chunks, size = [], 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        size += len(event.get("body", b""))
        if size > limit:
            raise TooLarge
        chunks.append(event.get("body", b""))
        if not event.get("more_body", False):
            return b"".join(chunks)


def forwarded(headers, drop: set[bytes]) -> list[tuple[bytes, bytes]]:
    """Headers minus those that belong to one hop (`drop`); everything else, including
    Flower's flwr-* authentication and version headers, passes unchanged."""
    return [(k, v) for k, v in headers if k.lower() not in drop]


class FleetGateway:
    """The ASGI app: checks each request, forwards allowed ones to `upstream` with httpx."""

    def __init__(self, upstream: str, verify, max_body: int, timeout: float):
        self.client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=timeout,
                                        follow_redirects=False)
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":   # websockets: nothing of Flower's uses them
            return
        status = verdict(scope["method"], scope["path"])
        if status is not None:
            await reply(send, status, {403: "Forbidden: only the Fleet API is served here",
                                       404: "Not Found", 405: "Method Not Allowed"}[status])
            return
        try:
            body = await read_body(scope, receive, self.max_body)
        except TooLarge:
            await reply(send, 413, f"Request body above {self.max_body} bytes")
            return
        except ConnectionError:
            return
        await self.forward(scope, body, send)

    async def forward(self, scope, body: bytes, send) -> None:
        """Send the checked request upstream and stream the answer back unchanged."""
        request = self.client.build_request(scope["method"], scope["path"], content=body,
                                            headers=forwarded(scope["headers"], REQUEST_DROP))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            await reply(send, 504, "SuperLink did not answer in time")
            return
        except httpx.HTTPError as exc:
            await reply(send, 502, f"SuperLink unreachable ({type(exc).__name__})")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": forwarded(response.headers.raw, HOP_BY_HOP)})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def lifespan(self, receive, send) -> None:
        """Close the upstream connection pool on shutdown."""
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line; TLS files are required unless --insecure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen-host", required=True, help="address the SuperNodes connect to")
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="SuperLink HOST:PORT (loopback)")
    p.add_argument("--certfile", help="server certificate presented to the SuperNodes")
    p.add_argument("--keyfile", help="its private key")
    p.add_argument("--upstream-ca", help="CA certificate that verifies the SuperLink")
    p.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (dev only)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    p.add_argument("--upstream-timeout", type=float, default=60.0, help="seconds")
    args = p.parse_args(argv)
    if not 1 <= args.listen_port <= 65535:
        p.error(f"--listen-port must be 1..65535 (got {args.listen_port})")
    if args.max_body_bytes < 1024:
        p.error(f"--max-body-bytes must be at least 1024 (got {args.max_body_bytes})")
    tls = [args.certfile, args.keyfile, args.upstream_ca]
    if args.insecure and any(tls):
        p.error("--insecure excludes --certfile, --keyfile and --upstream-ca")
    if not args.insecure and not all(tls):
        p.error("TLS needs --certfile, --keyfile and --upstream-ca (or --insecure)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Serve the gateway until SIGTERM/SIGINT (uvicorn shuts down gracefully)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    scheme = "http" if args.insecure else "https"
    app = FleetGateway(f"{scheme}://{args.upstream}",
                       verify=False if args.insecure
                       else ssl.create_default_context(cafile=args.upstream_ca),
                       max_body=args.max_body_bytes, timeout=args.upstream_timeout)
    print(f"fleet gateway: {scheme}://{args.listen_host}:{args.listen_port} -> "
          f"{scheme}://{args.upstream} (POST /v1/fleet/*, GET /health only)", flush=True)
    uvicorn.run(app, host=args.listen_host, port=args.listen_port, log_level="info",
                ssl_certfile=args.certfile, ssl_keyfile=args.keyfile, proxy_headers=False,
                server_header=False)


if __name__ == "__main__":
    main()
