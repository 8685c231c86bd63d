"""Token ids in, text out, one token at a time: incremental detokenization and stop strings.

Decoding each new token on its own breaks multi-byte characters (a byte-level BPE token can hold
half of a UTF-8 character) and word-boundary spacing, and decoding everything again every step
is quadratic. :class:`TextStream` decodes a short window of recent tokens instead and holds text
back while it ends in an incomplete character (U+FFFD). Stop strings can span tokens, so text
that could still become the start of a stop string is held back too; the stop string itself is
never emitted (OpenAI's semantics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
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
        hits = [i for i in (buf.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            out, self._held = buf[:min(hits)], ""
        else:
            keep = max((k for s in self._stop for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
            out, self._held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.text += out
        return out
