"""Stop strings over streamed text: a stop string is never emitted, nor anything after it.

Text that could be the start of a stop string is held back until the next piece of text settles
it; matching runs on decoded text, not token ids, so a stop string split across tokens (or
merged with its neighbours into one token) is still found.
"""

from __future__ import annotations


class StopStrings:
    """One sequence's stop-string state: feed it text, get back what is safe to emit."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None  # the stop string found, once one is

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was completed)."""
        if not self._stops:
            return text, False
        buf = self._held + text
        hits = [(i, s) for s in self._stops if (i := buf.find(s)) >= 0]
        if hits:
            cut, self.matched = min(hits)
            self._held = ""
            return buf[:cut], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """What is held back, once the sequence ended for another reason."""
        held, self._held = self._held, ""
        return held

    def _partial_suffix(self, buf: str) -> int:
        # The longest suffix of buf that is a proper prefix of some stop string.
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
