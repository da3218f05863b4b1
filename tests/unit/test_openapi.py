import json
import re
from pathlib import Path

from openapi_spec_validator import validate

from nvrd.api.app import make_app
from nvrd.api.system import openapi_document
from nvrd.config import Config, DaemonConfig


def spec() -> dict:
    return json.loads(openapi_document())


def test_document_is_valid_openapi() -> None:
    from nvrd import __version__

    document = spec()
    validate(document)  # raises on any structural fault or dangling $ref
    assert document["info"]["version"] == __version__


def test_document_describes_exactly_the_routes(tmp_path: Path) -> None:
    app = make_app(Config(daemon=DaemonConfig(state_dir=tmp_path)))
    served = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        path = route.resource.canonical if route.resource else ""
        served.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    described = {
        (method, path)
        for path, operations in spec()["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served == described


def test_every_route_declares_its_role(tmp_path: Path) -> None:
    from nvrd.api.roles import required_role

    app = make_app(Config(daemon=DaemonConfig(state_dir=tmp_path)))
    undeclared = [
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.method != "HEAD" and required_role(route.handler) is None
    ]
    assert undeclared == []
