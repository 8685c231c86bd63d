"""Token ids in, text out, one token at a time: incremental detokenization and stop strings.

Decoding each new token on its own breaks multi-byte characters (a byte-level BPE token can hold
half of a UTF-8 character) and word-boundary spacing, and decoding everything again every step
is quadratic. :class:`TextStream` decodes a short window of recent tokens instead and holds text
back while it ends in an incomplete character (U+FFFD). Stop strings can span tokens, so text
that could still become the start of a stop string is held back too; the stop string itself is
never emitted (OpenAI's semantics). Stop strings are matched with a Knuth-Morris-Pratt automaton
each, so the work per token is linear in its new text whatever the stop strings' lengths (a
rescan of held text for every prefix would be quadratic, and it runs on the decode thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = _StopMatcher([s for s in stop if s])
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are already emitted and never re-decoded
        self._read = 0  # tokens up to here are emitted
        self._held = ""  # decoded text not yet emitted because it may start a stop string
        self.text = ""  # everything emitted so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (maybe ""). Sets ``stopped`` on a stop string."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        now = self._decode(self._ids[self._prefix:])
        pending = len(self._ids) - self._read
        if len(now) <= len(before) or (now.endswith("\ufffd") and pending < 4):
            # An incomplete character (or nothing visible yet): wait. A UTF-8 character has at most
            # 4 bytes, so after 4 tokens the replacement character is what the model really wrote.
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return self._release(now[len(before):])

    def flush(self) -> str:
        """The end of generation: emit what was held back (incomplete characters included)."""
        if self.stopped:
            return ""
        tail = self._decode(self._ids[self._prefix:])[len(self._decode(self._ids[self._prefix:self._read])):]
        self._prefix = self._read = len(self._ids)
        out = self._release(tail)
        if not self.stopped:  # no stop string can complete any more: the held text is final
            out += self._held
            self.text += self._held
            self._held = ""
        return out

    def _release(self, delta: str) -> str:
        buf = self._held + delta
        start = self._stop.feed(delta)
        if start is not None:
            self.stopped = True
            out, self._held = buf[:len(self._held) + start], ""
        else:
            keep = self._stop.partial  # the held text is exactly the part a stop string may still complete
            out, self._held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.text += out
        return out


class _StopMatcher:
    """Where the first stop string completes in text fed piece by piece, in time linear in that text."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.fallback = [_failure(s) for s in stops]
        self.matched = [0] * len(stops)  # per stop string: its longest prefix that ends the text fed so far

    @property
    def partial(self) -> int:
        return max(self.matched, default=0)

    def feed(self, text: str) -> int | None:
        """Index in ``text`` where a stop string starts once one completes (negative: it began earlier)."""
        if not self.stops:
            return None
        for pos, ch in enumerate(text):
            for j, stop in enumerate(self.stops):
                q, fallback = self.matched[j], self.fallback[j]
                while q and stop[q] != ch:
                    q = fallback[q - 1]
                if stop[q] == ch:
                    q += 1
                if q == len(stop):
                    return pos + 1 - q
                self.matched[j] = q
        return None


def _failure(s: str) -> list[int]:
    """KMP's table: for each prefix of ``s``, the length of its longest proper prefix that is also its suffix."""
    table, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = table[k - 1]
        if s[i] == s[k]:
            k += 1
        table[i] = k
    return table
