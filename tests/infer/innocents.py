"""Innocent clients that stream beside a bad request: each must end exactly as if it never came."""

import json
import threading

import httpx

# The tiny test model writes no end-of-text after these for thousands of greedy tokens.
PROMPTS = ["MPT is", "The quick brown fox jumps"]


class Innocents:
    """Greedy streaming completions, running in the batch before the bad request is sent.

    Used as ``with Innocents(server) as inn: <send the bad request>; assert inn.running()``; on exit
    every one must have streamed all ``max_tokens`` tokens and finished with "length". Long enough
    (``max_tokens``) that they are still decoding when a quick bad request has been answered.
    """

    def __init__(self, server, key: str | None = None, n: int = 2, max_tokens: int = 300, path="/v1/completions"):
        self.url = server.url + path
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.max_tokens = max_tokens
        self.started = [threading.Event() for _ in range(n)]
        self.results: list[dict] = [{} for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        body = {"model": "tiny", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": self.max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        out = self.results[i]
        out["text"], out["events"] = [], []
        try:
            with httpx.stream("POST", self.url, json=body, headers=self.headers, timeout=120) as r:
                out["status"] = r.status_code
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    self.started[i].set()
                    data = line.removeprefix("data: ")
                    out["events"].append(data)
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    for choice in event.get("choices", []):
                        out["text"].append(choice["text"])
                        out["finish_reason"] = choice["finish_reason"] or out.get("finish_reason")
                    if event.get("usage"):
                        out["usage"] = event["usage"]
        except Exception as err:  # checked on exit; a thread's exception would be lost
            out["exception"] = repr(err)
        finally:
            self.started[i].set()

    def running(self) -> bool:
        """Every innocent is still decoding (so the bad request really shared the batch with them)."""
        return all(t.is_alive() for t in self.threads)

    def __enter__(self):
        for t in self.threads:
            t.start()
        for e in self.started:
            assert e.wait(60), "an innocent request never started streaming"
        assert self.running(), f"an innocent ended before the bad request was sent: {self.results}"
        return self

    def __exit__(self, *exc):
        for t in self.threads:
            t.join(timeout=120)
        if exc[0] is not None:
            return False
        for i, out in enumerate(self.results):
            assert "exception" not in out and out.get("status") == 200, f"innocent {i}: {out}"
            assert out["events"][-1] == "[DONE]" and not any('"error"' in e for e in out["events"]), f"innocent {i}"
            assert out.get("finish_reason") == "length", f"innocent {i} ended with {out.get('finish_reason')}"
            assert out["usage"]["completion_tokens"] == self.max_tokens, f"innocent {i}: {out['usage']}"
        return False
