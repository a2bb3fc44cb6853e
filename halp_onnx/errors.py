"""Errors a user can read: each names the pass (stage) that failed and why."""
from __future__ import annotations


class HalpError(Exception):
    """A user-facing error. ``str(err)`` is one line naming the stage and the file/node/option."""

    def __init__(self, message: str, *, stage: str | None = None):
        self.stage = stage
        self.message = message
        super().__init__(f"{stage}: {message}" if stage else message)
