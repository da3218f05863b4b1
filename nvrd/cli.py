"""nvrctl: a command-line client of the REST API.

It talks HTTP like any VMS would, so everything it can do is also in the API.
The URL comes from --url, or NVRCTL_URL, or http://127.0.0.1 (loopback HTTP is
the appliance's local administration path).

`nvrctl login USER` asks for the password once, makes an API token with it (Basic,
so over HTTPS or on the recorder itself), and keeps the token, never the password,
in ~/.config/nvrctl/tokens.json (mode 0600), one per URL. Later commands send it
as a Bearer token; NVRCTL_TOKEN overrides it.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

EXIT_ERROR = 1


class ApiError(Exception):
    pass


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nvrctl"


class TokenStore:
    """Tokens by URL in tokens.json, readable by the user only."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "tokens.json"

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise ApiError(f"{self.path} is not valid JSON; delete it and log in again") from None

    def get(self, url: str) -> dict[str, str] | None:
        return self._read().get(url)

    def put(self, url: str, entry: dict[str, str] | None) -> None:
        tokens = self._read()
        if entry is None:
            tokens.pop(url, None)
        else:
            tokens[url] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        # Created 0600 from the start: the token is as good as the password until
        # it is revoked.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(tokens, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


class Client:
    def __init__(
        self, url: str, insecure: bool = False, timeout: float = 30.0, authorization: str | None = None
    ) -> None:
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.authorization = authorization
        self.context: ssl.SSLContext | None = None
        if insecure:
            self.context = ssl.create_default_context()
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def open(
        self, method: str, path: str, body: Any = None, timeout: float | None = None,
        authorization: str | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        authorization = authorization or self.authorization
        if authorization:
            request.add_header("Authorization", authorization)
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

    def call(self, method: str, path: str, body: Any = None, authorization: str | None = None) -> Any:
        with self.open(method, path, body, authorization=authorization) as response:
            raw = response.read()
            return json.loads(raw) if raw else None


def _password(args: argparse.Namespace, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise ApiError("the passwords differ")
    return password


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _login(client: Client, store: TokenStore, args: argparse.Namespace) -> None:
    password = _password(args, confirm=False)
    name = args.token_name or f"nvrctl@{socket.gethostname()}"
    created = client.call(
        "POST", "/api/v1/auth/tokens", {"name": name}, authorization=_basic(args.username, password)
    )
    store.put(client.base, {"token": created["token"], "id": created["id"], "account": created["account"]})
    print(f"logged in to {client.base} as {created['account']} (token {created['id']}, kept in {store.path})")


def _logout(client: Client, store: TokenStore) -> None:
    entry = store.get(client.base)
    if entry is None:
        raise ApiError(f"not logged in to {client.base}")
    try:
        client.call("DELETE", f"/api/v1/auth/tokens/{entry['id']}")
    finally:
        store.put(client.base, None)
    print(f"logged out of {client.base}")


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
    setup = commands.add_parser("setup", help="create the first administrator")
    setup.add_argument("username")
    setup.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login = commands.add_parser("login", help="make an API token and keep it for this URL")
    login.add_argument("username")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--token-name", help="the token's name on the recorder")
    commands.add_parser("logout", help="revoke the kept token and forget it")
    commands.add_parser("whoami", help="the account this client acts as")
    commands.add_parser("accounts", help="list the accounts (administrators)")
    args = parser.parse_args(argv)

    store = TokenStore(config_dir())
    try:
        token = os.environ.get("NVRCTL_TOKEN") or (store.get(args.url.rstrip("/")) or {}).get("token")
    except ApiError as exc:
        print(f"nvrctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    client = Client(args.url, insecure=args.insecure, authorization=f"Bearer {token}" if token else None)
    try:
        if args.command == "setup":
            password = _password(args, confirm=True)
            _print(client.call("POST", "/api/v1/setup", {"username": args.username, "password": password}))
        elif args.command == "login":
            _login(client, store, args)
        elif args.command == "logout":
            _logout(client, store)
        elif args.command == "whoami":
            _print(client.call("GET", "/api/v1/auth/session"))
        elif args.command == "accounts":
            for account in client.call("GET", "/api/v1/accounts"):
                print(f"{account['name']:<32} {account['role']}")
        elif args.command == "info":
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
