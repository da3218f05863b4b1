"""How many clients hold an event stream open, for GET /status."""

from __future__ import annotations


class EventStreams:
    """Counted by the SSE handler; one per application."""

    def __init__(self) -> None:
        self.open = 0
