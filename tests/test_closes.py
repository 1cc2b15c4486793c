"""The close codes and leave reasons in rmeeting/closes.py are the ones docs/protocol.md lists."""

from __future__ import annotations

import re
from pathlib import Path

from rmeeting.closes import Close, LeaveReason

PROTOCOL = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def _section(title: str) -> str:
    text = PROTOCOL.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end if end >= 0 else None]


def test_close_codes_match_the_protocol_table() -> None:
    table = _section("## Close codes")
    documented = {int(code) for code in re.findall(r"^\| (\d{4}) \|", table, re.MULTILINE)}
    assert documented == {code.value for code in Close}


def test_leave_reasons_match_the_attendance_section() -> None:
    section = _section("### Attendance")
    listed = section[section.index("`reason`:"):section.index("While a member")]
    documented = set(re.findall(r"`([a-z ]+)`", listed)) - {"reason", "left_at"}
    # `left` is named with its source: "`left` (seed `LeaveMeeting`)"
    assert documented == {reason.value for reason in LeaveReason}
