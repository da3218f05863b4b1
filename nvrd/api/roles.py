"""Which role each endpoint needs, declared on the handler itself.

Every handler carries `@requires(Role.X)`. A test walks the route table and fails
for any handler without a declaration, so a new endpoint cannot ship without one.
The authentication middleware (accounts) enforces the declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

_ATTRIBUTE = "nvrd_required_role"


class Role(IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    ANONYMOUS = 0
    VIEWER = 1  # watch, list, play back, export
    OPERATOR = 2  # everything but system, storage and account settings
    ADMIN = 3  # everything

    @property
    def label(self) -> str:
        return self.name.lower()


def requires(role: Role) -> Callable[[F], F]:
    def declare(handler: F) -> F:
        setattr(handler, _ATTRIBUTE, role)
        return handler

    return declare


def required_role(handler: object) -> Role | None:
    return getattr(handler, _ATTRIBUTE, None)
