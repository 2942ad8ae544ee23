"""Log plumbing: secrets are redacted, lines are batched per loop turn and never lost, times are UTC."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

from bridge.clock import utc_now_iso
from bridge.logs import REDACTED, LinesPerLoopTurn, scrub_secrets


class CountingFile(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:   # type: ignore[override]
        self.writes += 1
        return super().write(data)


def test_secret_keys_are_redacted_at_any_depth_and_clean_lines_pass_untouched() -> None:
    line = {"event": "x", "source": "moodle", "provider": {"name": "jaas", "api_key": "k1", "nested": {"jwt": "t"}},
            "webhook_secret": "whsec_1"}
    clean = scrub_secrets(None, "info", line)
    assert clean["webhook_secret"] == REDACTED and clean["provider"]["api_key"] == REDACTED
    assert clean["provider"]["nested"]["jwt"] == REDACTED and clean["provider"]["name"] == "jaas"
    plain = {"event": "request", "status": 202}
    assert scrub_secrets(None, "info", plain) is plain


def test_lines_outside_a_loop_are_written_at_once() -> None:
    file = CountingFile()
    lines = LinesPerLoopTurn(file)
    lines.msg(b'{"a":1}')
    assert file.getvalue() == b'{"a":1}\n'


async def test_lines_of_one_loop_turn_are_written_together_after_it() -> None:
    file = CountingFile()
    lines = LinesPerLoopTurn(file)
    for n in range(3):
        lines.msg(b'{"n":%d}' % n)
    assert file.getvalue() == b""                     # still this turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert file.getvalue() == b'{"n":0}\n{"n":1}\n{"n":2}\n' and file.writes == 1
    lines.msg(b'{"n":3}')                              # a later turn schedules its own write
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert file.getvalue().endswith(b'{"n":3}\n') and file.writes == 2


def test_a_line_from_a_loop_that_stopped_before_its_turn_ended_is_not_stranded() -> None:
    file = CountingFile()
    lines = LinesPerLoopTurn(file)

    async def log_and_stop() -> None:
        lines.msg(b"first")
        asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    task = loop.create_task(log_and_stop())
    loop.run_forever()                                  # stops before the scheduled write runs
    assert task.done() and file.getvalue() == b""
    lines.msg(b"second")                                # outside any loop: both go out now
    loop.close()
    assert file.getvalue() == b"first\nsecond\n"


def test_utc_now_iso_is_iso_8601_utc_with_microseconds() -> None:
    stamp = utc_now_iso()
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert stamp.endswith("Z") and len(stamp) == 27
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 2
