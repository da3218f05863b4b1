"""nvrctl: a command-line client of the REST API.

It talks HTTP like any VMS would, so everything it can do is also in the API.
The URL comes from --url, or NVRCTL_URL, or http://127.0.0.1 (loopback HTTP is
the appliance's local administration path).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

EXIT_ERROR = 1


class ApiError(Exception):
    pass


class Client:
    def __init__(self, url: str, insecure: bool = False, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if insecure:
            self.context = ssl.create_default_context()
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def open(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(
                request, timeout=timeout or self.timeout, context=self.context
            )
        except urllib.error.HTTPError as exc:
            raise ApiError(_problem_text(exc)) from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach {self.base}: {exc.reason}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self.open(method, path, body) as response:
            return json.load(response)


def _problem_text(exc: urllib.error.HTTPError) -> str:
    try:
        problem = json.load(exc)
    except ValueError:
        return f"HTTP {exc.code}"
    detail = problem.get("detail") or problem.get("title") or ""
    return f"HTTP {exc.code}: {detail}"


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _events(client: Client, topics: str | None) -> None:
    path = "/api/v1/events" + (f"?topics={topics}" if topics else "")
    # No read timeout: the stream is endless and the server sends keepalives.
    with client.open("GET", path, timeout=3600) as stream:
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                print(line[6:], flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nvrctl", description="nvrd command-line client")
    parser.add_argument("--url", default=os.environ.get("NVRCTL_URL", "http://127.0.0.1"))
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="accept a self-signed HTTPS certificate"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="product, version, serial")
    jobs = commands.add_parser("jobs", help="list jobs, or show one")
    jobs.add_argument("id", nargs="?")
    events = commands.add_parser("events", help="follow the event stream (one JSON a line)")
    events.add_argument("--topics", help="comma-separated topic prefixes")
    logging_ = commands.add_parser("log-level", help="show or set the log level")
    logging_.add_argument("level", nargs="?")
    args = parser.parse_args(argv)

    client = Client(args.url, insecure=args.insecure)
    try:
        if args.command == "info":
            _print(client.call("GET", "/api/v1/info"))
        elif args.command == "jobs":
            _print(client.call("GET", f"/api/v1/jobs/{args.id}" if args.id else "/api/v1/jobs"))
        elif args.command == "events":
            _events(client, args.topics)
        elif args.command == "log-level":
            if args.level:
                _print(client.call("PATCH", "/api/v1/system/logging", {"level": args.level}))
            else:
                _print(client.call("GET", "/api/v1/system/logging"))
    except ApiError as exc:
        print(f"nvrctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
