"""Third-party errors reach the structured log (engine/logs.py): a thread that dies with an exception and
a standard-library log record (paramiko, aiohttp, nats-py) come out as JSON lines, not plain tracebacks."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from engine import logs


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The hub's JSON log into a buffer for one test; the suite's console log afterwards."""
    buffer = io.StringIO()
    logs.configure("info", "json", stream=buffer)
    yield buffer
    logs.configure("warning", "console")


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]  # every line must be JSON


def test_an_exception_that_kills_a_thread_is_one_json_event(json_log: io.StringIO,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A thread's uncaught exception (paramiko's prefetch thread when its connection drops) is logged as
    `thread_failed` with the thread's name and traceback, and nothing plain goes to stderr."""
    def prefetch() -> None:
        raise OSError("Socket is closed")

    thread = threading.Thread(target=prefetch, name="Thread-7 (_prefetch_thread)")
    thread.start()
    thread.join()
    [event] = lines(json_log)
    assert (event["event"], event["level"], event["thread"]) == ("thread_failed", "error", "Thread-7 (_prefetch_thread)")
    assert event["error"] == "OSError: Socket is closed" and "Traceback" in str(event["exception"])
    assert "Traceback" not in capsys.readouterr().err


def test_standard_library_records_become_json_events(json_log: io.StringIO) -> None:
    """paramiko's own log records (warning and up) come out as JSON with their logger name and traceback."""
    log = logging.getLogger("paramiko.transport")
    log.info("Connected (version 2.0, client OpenSSH_9.2)")  # chatter below warning stays out
    try:
        raise EOFError("transport closed")
    except EOFError:
        log.error("Socket exception: %s", "transport closed", exc_info=True)
    [event] = lines(json_log)
    assert (event["event"], event["logger"], event["level"]) == ("Socket exception: transport closed",
                                                                  "paramiko.transport", "error")
    assert "EOFError: transport closed" in str(event["exception"])
