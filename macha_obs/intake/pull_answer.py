"""A peer's answer (`GET /api/v2/alerts/groups`) read as it streams, within bounds.

Pure: bytes in, groups out, no I/O. `json.loads` of a whole answer costs up to ~30 times its
bytes when the answer is many tiny values (`[{},{},…]`: 60 MB took 1.66 GB), and it
only starts once every byte is held. Here every chunk is scanned as it comes (strings
skipped, depth counted), and the answer is kept as it came, in bytes: each group as its
own text with its `alerts` list emptied, and each alert as its own text. Each item is
checked as valid JSON when its last byte is in and dropped again; the round rules parse
one item at a time. Past any bound the answer is refused at once (`AnswerRefused`):

- its bytes, its groups and its alerts (the configured caps);
- depth: `MAX_DEPTH` (an Alertmanager answer nests 6 deep);
- values in one item (`{`, `[` and `,` outside strings): `MAX_ITEM_VALUES`.

So what an answer holds is about its bytes, plus a small fixed cost per item (bounded
by the caps), whatever its shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from macha_obs.errors import InvalidInput

MAX_DEPTH = 16
# Values (brackets, and commas: those in strings too, so never fewer than there are) in
# one item, whose parse is the only one held at once: an alert with 128 labels and 128
# annotations has ~300, so this refuses no alert the webhook would take.
MAX_ITEM_VALUES = 8192
# From where the last step ended: anything but brackets (whole strings skipped, in C),
# then a bracket, or a lone quote (a string this chunk does not end).
_STEP = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+([\[\]{}"])', re.DOTALL)
_INSIDE = re.compile(rb'["\\]')  # what ends a string, or escapes
_KEY = re.compile(rb'"([^"\\]{0,16})"[ \t\r\n]*:[ \t\r\n]*$')  # the key before a "["
_SPACE = b" \t\r\n"


class AnswerRefused(InvalidInput, ValueError):
    """The answer is refused: `result` is "too_large" (past a bound) or "invalid" (not
    JSON, or not a list of alert groups)."""

    def __init__(self, result: str, problem: str) -> None:
        super().__init__(problem)
        self.result = result


@dataclass(frozen=True)
class AnswerLimits:
    max_bytes: int = 16 * 1_048_576
    max_groups: int = 5_000
    max_alerts: int = 20_000


@dataclass
class RawGroup:
    """One group as it came: its own JSON (`"alerts": []`) and each alert's JSON."""

    meta: bytes
    alerts: list[bytes] = field(default_factory=list)


class AnswerReader:
    """Feed it chunks as they arrive; `finish()` gives the groups."""

    def __init__(self, limits: AnswerLimits) -> None:
        self.limits = limits
        self.bytes = 0
        self.alerts = 0
        self.groups: list[RawGroup] = []
        self._depth = 0
        self._in_string = False
        self._escape = False  # a backslash ended the last chunk, inside a string
        # a list (the answer's, a group's alerts): first (after "[") or next (after ",")
        # → after (an item) → ...; the answer's is "start" before and "done" after it
        self._state = "start"
        self._alerts_state = "first"
        self._meta = bytearray()  # the group being read, without its alerts
        self._alert = bytearray()  # the alert being read
        self._alert_texts: list[bytes] = []
        self._dest: bytearray | None = None  # where the bytes being scanned go
        self._in_alerts = False  # inside the group's alerts list
        self._seen_alerts = False
        self._values = 0  # in the item being read

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.bytes > self.limits.max_bytes:
            raise AnswerRefused("too_large", f"answer over {self.limits.max_bytes} bytes")
        i, n, mark = 0, len(chunk), 0
        while i < n and self._in_string:  # a string the last chunk left open
            i = self._skip_string(chunk, i)
        while i < n and not self._in_string:
            found = _STEP.match(chunk, i)
            j = n if found is None else found.start(1)
            if self._dest is None:
                self._between(chunk[i:j].strip(_SPACE))
            if found is None:
                break
            i = j + 1
            if chunk[j] == 0x22:  # a string that goes on past this chunk
                if self._dest is None:
                    raise AnswerRefused("invalid", "not a list of alert groups")
                self._in_string = True
                while i < n and self._in_string:
                    i = self._skip_string(chunk, i)
            else:
                mark = self._bracket(chunk, j, mark)
        if self._dest is not None:
            self._keep(chunk, mark, n)

    def finish(self) -> list[RawGroup]:
        if self._state != "done":
            raise AnswerRefused("invalid", "the answer ended before its last ']'")
        return self.groups

    # ------------------------------------------------------------ the scan

    def _keep(self, chunk: bytes, start: int, end: int) -> None:
        """Bytes of the item being read, its commas counted (bounded at once)."""
        if self._dest is None:  # cannot be: only called inside an item
            raise AnswerRefused("invalid", "not a list of alert groups")
        self._dest += chunk[start:end]
        self._values += chunk.count(b",", start, end)
        if self._values > MAX_ITEM_VALUES:
            raise AnswerRefused("too_large", f"an item of over {MAX_ITEM_VALUES} values")

    def _between(self, text: bytes) -> None:
        """What stands between items of a list (or around the answer): a comma or nothing."""
        if not text:
            return
        if text != b"," or self._depth == 0:
            self._refuse_text()
        if self._in_alerts:
            if self._alerts_state != "after":
                raise AnswerRefused("invalid", "invalid JSON list")
            self._alerts_state = "next"
        else:
            if self._state != "after":
                raise AnswerRefused("invalid", "invalid JSON list")
            self._state = "next"

    def _bracket(self, chunk: bytes, j: int, mark: int) -> int:
        """Act on the bracket at `j`; the new start of the bytes to keep."""
        char = chunk[j]
        if char in (0x7B, 0x5B):  # { [
            self._values += 1
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise AnswerRefused("too_large", f"nested deeper than {MAX_DEPTH}")
            return self._opened(chunk, j, mark, char)
        return self._closed(chunk, j, mark, char)

    def _opened(self, chunk: bytes, j: int, mark: int, char: int) -> int:
        depth = self._depth
        if depth == 1:
            if self._state != "start" or char != 0x5B:
                raise AnswerRefused("invalid", "not a list of alert groups")
            self._state = "first"
        elif depth == 2:
            if self._state not in ("first", "next") or char != 0x7B:
                raise AnswerRefused("invalid", "not a list of alert groups")
            if len(self.groups) >= self.limits.max_groups:
                raise AnswerRefused("too_large", f"over {self.limits.max_groups} groups")
            self._dest, self._values, self._seen_alerts = self._meta, 1, False
            return j
        elif depth == 3 and char == 0x5B:  # a list in the group: only its alerts are
            key = _KEY.search(bytes(self._meta[-40:]) + chunk[mark:j])
            if key is None or key.group(1) != b"alerts" or self._seen_alerts:
                raise AnswerRefused("invalid", "a group holds a list other than its alerts")
            self._keep(chunk, mark, j + 1)
            self._dest, self._in_alerts, self._seen_alerts = None, True, True
            self._alerts_state = "first"
        elif depth == 4 and self._in_alerts:
            if char != 0x7B or self._alerts_state not in ("first", "next"):
                raise AnswerRefused("invalid", "an alert that is not an object")
            self.alerts += 1
            if self.alerts > self.limits.max_alerts:
                raise AnswerRefused("too_large", f"over {self.limits.max_alerts} alerts")
            self._dest, self._values = self._alert, 1
            return j
        return mark

    def _closed(self, chunk: bytes, j: int, mark: int, char: int) -> int:
        if self._depth == 0:
            raise AnswerRefused("invalid", "unbalanced JSON")
        self._depth -= 1
        depth = self._depth
        if depth == 0:
            if char != 0x5D or self._state not in ("first", "after"):
                raise AnswerRefused("invalid", "invalid JSON list")
            self._state = "done"
        elif depth == 1:  # a group ends
            self._keep(chunk, mark, j + 1)
            text, self._meta = bytes(self._meta), bytearray()
            _check_json(text)
            self.groups.append(RawGroup(text, self._alert_texts))
            self._alert_texts, self._dest, self._state = [], None, "after"
            return j + 1
        elif depth == 2 and self._in_alerts:  # the alerts list ends
            if char != 0x5D or self._alerts_state not in ("first", "after"):
                raise AnswerRefused("invalid", "invalid JSON list")
            self._meta += b"]"
            self._dest, self._in_alerts = self._meta, False
            return j + 1
        elif depth == 3 and self._in_alerts:  # an alert ends
            self._keep(chunk, mark, j + 1)
            text, self._alert = bytes(self._alert), bytearray()
            _check_json(text)
            self._alert_texts.append(text)
            self._dest, self._alerts_state = None, "after"
            return j + 1
        return mark

    def _skip_string(self, chunk: bytes, i: int) -> int:
        if self._escape:
            self._escape = False
            return i + 1
        found = _INSIDE.search(chunk, i)
        if found is None:
            return len(chunk)
        j = found.start()
        if chunk[j] == 0x5C:  # a backslash: the next byte is escaped, maybe in the next chunk
            if j + 1 >= len(chunk):
                self._escape = True
            return j + 2
        self._in_string = False
        return j + 1

    def _refuse_text(self) -> None:
        """Text outside strings and items: only the lists' own punctuation may be there."""
        if self._depth == 0 and self._state == "done":
            raise AnswerRefused("invalid", "text after the answer's last ']'")
        if self._in_alerts:
            raise AnswerRefused("invalid", "an alert that is not an object")
        raise AnswerRefused("invalid", "not a list of alert groups")


def _check_json(text: bytes) -> None:
    try:
        json.loads(text)
    except (ValueError, RecursionError) as exc:  # invalid JSON, or UTF-8
        raise AnswerRefused("invalid", f"invalid JSON: {exc}") from exc


def read_answer(data: bytes, limits: AnswerLimits | None = None) -> list[RawGroup]:
    """A whole answer at once (tests and the bench): the same rules as streaming."""
    reader = AnswerReader(limits or AnswerLimits())
    reader.feed(data)
    return reader.finish()
