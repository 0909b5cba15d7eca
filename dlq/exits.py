"""How a `dlq` command ends: the exit codes a script can rely on, and Stop, which every dlq module
raises to end a command early with one of them and a message that says what to do."""

from __future__ import annotations

OK, FAILED, USAGE, NOT_FOUND = 0, 1, 2, 3


class Stop(Exception):
    """End the command with an exit code and a message that says what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
