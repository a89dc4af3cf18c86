"""The one error of the request contract: which field broke it, and how."""

from __future__ import annotations


class RequestError(ValueError):
    """The request breaks the contract; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
