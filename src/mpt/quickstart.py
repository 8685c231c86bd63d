"""`mpt quickstart`: the whole pipeline offline, on any machine with Python, then a report.

corpus (the Python standard library's sources and docstrings) -> clean + deduplicate -> BPE tokenizer
-> token shards (+ a held-out validation split) -> pretrain an ALiBi model and a learned-position twin
-> validation perplexity at 1x, 2x and 4x the training length -> optional ICL eval -> Hugging Face
export -> samples -> optional LoRA chat finetuning (``--finetune FILE``) -> DIR/report.md and .html.

Each stage calls the same function as its `mpt` command (the report lists those commands), then writes a
marker in DIR/.stages; re-running skips finished stages and training resumes from its last checkpoint,
so an interrupted quickstart continues where it stopped.
"""

from __future__ import annotations

import ast
import json
import math
import shutil
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import option

MARKER = "quickstart.json"


@dataclass
class QuickstartConfig:
    out: str = option("quickstart", "output folder")
    size: str = option("full", "full: about 10 minutes on 2 CPU cores; ci: a reduced run of a minute or two",
                       choices=("full", "ci"))
    eval_tasks: list[str] | None = option(None, "ICL task files or suite names for `mpt eval` (none are needed)",
                                          metavar="TASK")
    eval_data_dir: str | None = option(None, "folder of the task files named by a suite")
    data: list[str] | None = option(None, "corpus instead of the standard library: files, folders, globs or hf:NAME "
                                    "(as `mpt prep`)", metavar="INPUT")
    tokenizer: str | None = option(None, "use this tokenizer (tokenizer.json, folder or hub name) instead of "
                                   "training one")
    finetune: str | None = option(None, "add a stage: chat-finetune the model with LoRA on this jsonl of "
                                  "prompt/response or messages records (e.g. Dolly), with held-out response "
                                  "perplexity before and after and a few chat replies", metavar="FILE")
    force: bool = option(False, "use a non-empty --out folder that is not a quickstart run")
    seed: int = option(17, "seed of every stage")

    def validate(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"--size {self.size!r}: choose one of {', '.join(SIZES)}")
        if self.finetune is not None and not Path(self.finetune).is_file():
            raise FileNotFoundError(f"--finetune {self.finetune}: no such file (a jsonl of prompt/response or "
                                    "messages records, e.g. Dolly)")


# files of the standard library read, tokenizer vocabulary, training steps, sequence length
SIZES = {
    "full": {"files": None, "vocab": 4096, "steps": 400, "seq": 128, "batch": 16,
             "ft_examples": None, "ft_steps": 120, "ft_seq": 256},
    "ci": {"files": 40, "vocab": 1024, "steps": 30, "seq": 64, "batch": 8,
           "ft_examples": 120, "ft_steps": 12, "ft_seq": 128},
}
MODEL_FIELDS = {"d_model": 128, "n_heads": 4, "n_layers": 4, "expansion_ratio": 4}
MAX_VALIDATION_SAMPLES = 64  # of 4x the training length: enough for a stable perplexity, quick on a CPU
PROMPTS = ["def ", "import os\n", "class ", '"""Return the ']


class Quickstart:
    def __init__(self, cfg: QuickstartConfig, log=print) -> None:
        cfg.validate()
        self.cfg = cfg
        self.dir = Path(cfg.out)
        self.size = SIZES[cfg.size]
        self.log = log
        self.timings: dict[str, float] = {}
        self.model_fields = MODEL_FIELDS  # the report reads it here, so quickstart_report.py need not import this module
        self.start = time.perf_counter()
        self.stages = 9 if cfg.finetune else 8

    # ---- bookkeeping ------------------------------------------------------------------------
    def _claim_folder(self) -> None:
        marker = self.dir / MARKER
        if self.dir.exists() and any(self.dir.iterdir()) and not marker.is_file():
            if not self.cfg.force:
                raise ValueError(f"{self.dir} is not empty and holds no quickstart run; choose another --out "
                                 "or pass --force to use it anyway")
        if marker.is_file():
            saved = json.loads(marker.read_text())
            mine = {"size": self.cfg.size, "data": self.cfg.data, "tokenizer": self.cfg.tokenizer}
            if saved.get("finetune") is not None:  # adding --finetune to a finished run is fine; changing it is not
                mine["finetune"] = self.cfg.finetune
            for key, value in mine.items():
                if saved.get(key) != value:
                    raise ValueError(f"{self.dir} holds a quickstart with {key}={saved.get(key)!r}, not {value!r}; "
                                     f"use another --out or the same --{key}")
        self.dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"size": self.cfg.size, "seed": self.cfg.seed, "data": self.cfg.data,
                                      "tokenizer": self.cfg.tokenizer, "finetune": self.cfg.finetune}))
        (self.dir / ".stages").mkdir(exist_ok=True)

    def _stage(self, number: int, name: str, fn) -> None:
        done = self.dir / ".stages" / f"{name}.done"
        elapsed = time.perf_counter() - self.start
        if done.is_file():
            self.timings[name] = json.loads(done.read_text())["seconds"]
            self.log(f"[{number}/{self.stages}] {name}: done earlier ({self.timings[name]:.0f} s), skipped")
            return
        self.log(f"[{number}/{self.stages}] {name} (elapsed {elapsed:.0f} s)")
        t = time.perf_counter()
        fn()
        self.timings[name] = time.perf_counter() - t
        done.write_text(json.dumps({"seconds": self.timings[name]}))

    # ---- stages ---------------------------------------------------------------------------------
    def corpus(self) -> None:
        """The standard library's .py files (code) and their docstrings (prose), split train / validation."""
        if self.cfg.data:
            return self._corpus_from_data()
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
        if self.size["files"]:
            files = files[: self.size["files"]]
        folder = self.dir / "corpus"
        folder.mkdir(exist_ok=True)
        n = {"train": 0, "validation": 0}
        with open(folder / "train.jsonl", "w") as train, open(folder / "validation.jsonl", "w") as val:
            for i, path in enumerate(files):
                try:
                    code = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                docs = [code, _docstrings(code)]
                split = val if i % 10 == 9 else train  # every 10th file is held out
                for text in docs:
                    if text.strip():
                        split.write(json.dumps({"text": text, "source": path.name}) + "\n")
                        n["validation" if split is val else "train"] += 1
        self.log(f"      {len(files)} files from {stdlib}: {n['train']} training and {n['validation']} validation "
                 "documents (code and docstrings)")

    def _corpus_from_data(self) -> None:
        """--data: the user's documents (``mpt prep`` inputs), every 10th held out for validation."""
        from .data.readers import expand_inputs, read_documents

        inputs = expand_inputs(self.cfg.data)  # files, folders, globs and hf:NAME, as `mpt prep` takes them
        folder = self.dir / "corpus"
        folder.mkdir(exist_ok=True)
        n = {"train": 0, "validation": 0}
        with open(folder / "train.jsonl", "w") as train, open(folder / "validation.jsonl", "w") as val:
            for i, doc in enumerate(read_documents(inputs)):
                split = "validation" if i % 10 == 9 else "train"
                (val if split == "validation" else train).write(json.dumps({"text": doc.text, "source": doc.source})
                                                                + "\n")
                n[split] += 1
        self.log(f"      {sum(n.values())} documents from {', '.join(self.cfg.data)}: {n['train']} training and "
                 f"{n['validation']} validation")

    def tokenizer(self) -> None:
        from .data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

        out = self.dir / "tokenizer"
        shutil.rmtree(out, ignore_errors=True)
        if self.cfg.tokenizer:  # a given tokenizer, saved in Hugging Face format beside the model
            from .data.tokenize import load_tokenizer

            load_tokenizer(self.cfg.tokenizer).save_pretrained(out)
            return
        train_tokenizer(TokenizerTrainConfig(inputs=[str(self.dir / "corpus" / "train.jsonl")], out=str(out),
                                             vocab_size=self.size["vocab"], progress=False))

    def shards(self) -> None:
        from .data.filters import FilterConfig
        from .data.prep import PrepConfig, prep

        seq = self.size["seq"]
        for split, seq_len in (("train", seq), ("validation", 4 * seq)):
            out = self.dir / "shards" / split
            shutil.rmtree(out, ignore_errors=True)
            summary = prep(PrepConfig(inputs=[str(self.dir / "corpus" / f"{split}.jsonl")], out=str(out),
                                      tokenizer=str(self.dir / "tokenizer"), seq_len=seq_len,
                                      filters=FilterConfig(min_chars=200), progress=False))
            for line in summary.lines():
                self.log(f"      {split}: {line}")

    def _recipe(self, name: str, fields: dict) -> Path:
        run = self.dir / "runs" / name
        s = self.size
        recipe = {
            "run_name": name,
            "model": {"preset": "mpt-tiny", "fields": {**MODEL_FIELDS, "vocab_size": self.vocab_size(),
                                                       "max_seq_len": s["seq"], **fields}},
            "data": {"kind": "pretrain", "sources": [{"path": str(self.dir / "shards" / "train")}]},
            "optimizer": {"name": "lion", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 1e-4},
            "scheduler": {"name": "cosine", "warmup_batches": max(1, s["steps"] // 20), "alpha_f": 0.1},
            "train": {"max_duration": f"{s['steps']}ba", "global_batch_size": s["batch"],
                      "micro_batch_size": s["batch"], "seed": self.cfg.seed},
            "checkpoint": {"folder": str(run / "checkpoints"), "every_batches": max(10, s["steps"] // 5),
                           "keep": 1, "export_hf": str(run / "hf")},
            "log": {"folder": str(run), "every_batches": max(1, s["steps"] // 10)},
        }
        path = self.dir / f"train-{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    def vocab_size(self) -> int:
        """The trained tokenizer's size, or a given tokenizer's padded to a multiple of 128 (as MPT's 50,432)."""
        if not self.cfg.tokenizer:
            return self.size["vocab"]
        from .data.tokenize import load_tokenizer

        return -(-len(load_tokenizer(self.dir / "tokenizer")) // 128) * 128

    def pretrain(self) -> None:
        from .train import load_recipe, train

        recipes = {"alibi": self._recipe("alibi", {}),
                   # the twin: learned position embeddings for 4x the training length, ALiBi off
                   "learned_pos_emb": self._recipe("learned_pos_emb", {
                       "max_seq_len": 4 * self.size["seq"], "learned_pos_emb": True,
                       "attn_config": {"alibi": False}})}
        for name, path in recipes.items():
            self.log(f"      training the {name} model: mpt train {path}")
            result = train(load_recipe(str(path)), log=lambda m: self.log(f"      {m}"))
            (self.dir / "runs" / name / "result.json").write_text(json.dumps(
                {"steps": result.steps, "tokens": result.tokens, "final_loss": result.final_loss}))

    def evaluate(self) -> None:
        results = {"perplexity": {}}
        for name in ("alibi", "learned_pos_emb"):
            results["perplexity"][name] = self._perplexities(self.dir / "runs" / name / "hf")
        if self.cfg.eval_tasks:
            from .eval.command import EvalRunConfig, run_eval

            md = self.dir / "eval.md"
            run_eval(EvalRunConfig(model=str(self.dir / "model"), tasks=list(self.cfg.eval_tasks),
                                   data_dir=self.cfg.eval_data_dir, tokenizer=str(self.dir / "tokenizer"),
                                   output=str(self.dir / "eval.json"), markdown=str(md), progress=False))
            results["icl_markdown"] = md.read_text()
        (self.dir / "evaluation.json").write_text(json.dumps(results, indent=1))

    def _perplexities(self, model_dir: Path) -> dict[str, float]:
        """Mean next-token perplexity of held-out text in windows of 1x, 2x and 4x the training length."""
        import numpy as np
        import torch

        from .data.shards import Shard, read_index, verify_shard
        from .model.load import load_model

        model = load_model(model_dir, device="cpu", dtype="float32")
        folder = self.dir / "shards" / "validation"
        index = read_index(folder)
        samples = []
        for info in index.shards:
            verify_shard(folder / info.file, info)
            shard = Shard(folder / info.file, index.token_dtype())
            samples += [np.asarray(shard[i], dtype=np.int64) for i in range(len(shard))]
        full = torch.from_numpy(np.stack(samples[:MAX_VALIDATION_SAMPLES]))
        out = {}
        seq = self.size["seq"]
        for mult in (1, 2, 4):
            windows = full.reshape(-1, seq * mult)
            total, count = 0.0, 0
            with torch.no_grad():
                for chunk in windows.split(16):
                    try:
                        loss = model(chunk, labels=chunk).loss
                    except ValueError:  # learned position embeddings beyond their table
                        return out
                    total += float(loss) * chunk.numel()
                    count += chunk.numel()
            out[f"{mult}x ({seq * mult} tokens)"] = math.exp(total / count)
        return out

    def export(self) -> None:
        from .model.hf import copy_tokenizer_files

        out = self.dir / "model"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(self.dir / "runs" / "alibi" / "hf", out)
        copy_tokenizer_files(self.dir / "tokenizer", out, overwrite=True)

    def samples(self) -> None:
        from .infer import load

        llm = load(self.dir / "model", device="cpu")
        outs = llm.generate(PROMPTS, max_new_tokens=48, temperature=0.8, top_k=40, seed=self.cfg.seed)
        (self.dir / "samples.json").write_text(json.dumps(
            [{"prompt": p, "completion": o.text} for p, o in zip(PROMPTS, outs, strict=True)], indent=1))

    def finetune(self) -> None:
        """The exported model, chat-tuned with LoRA; held-out response perplexity before and after."""
        from .quickstart_finetune import CHAT_PROMPTS, chat_data, chat_replies, response_perplexity
        from .train import load_recipe, train

        s, folder = self.size, self.dir / "finetune"
        counts = chat_data(self.cfg.finetune, folder / "data", s["ft_examples"])
        self.log(f"      {counts['train']} training and {counts['validation']} held-out conversations from "
                 f"{self.cfg.finetune}")
        path = self._finetune_recipe()
        self.log(f"      LoRA finetuning: mpt train {path}")
        result = train(load_recipe(str(path)), log=lambda m: self.log(f"      {m}"))
        held_out = folder / "data" / "validation.jsonl"
        before = response_perplexity(self.dir / "model", self.dir / "tokenizer", held_out, s["ft_seq"])
        after = response_perplexity(folder / "hf", self.dir / "tokenizer", held_out, s["ft_seq"])
        self.log(f"      held-out response perplexity: {before:.1f} before, {after:.1f} after")
        (folder / "result.json").write_text(json.dumps({
            "conversations": counts, "steps": result.steps, "final_loss": result.final_loss,
            "perplexity_before": before, "perplexity_after": after,
            "replies": chat_replies(folder / "hf", CHAT_PROMPTS, 48, self.cfg.seed)}, indent=1))

    def _finetune_recipe(self) -> Path:
        s, folder = self.size, self.dir / "finetune"
        recipe = {
            "run_name": "finetune",
            # ALiBi: the model pretrained at seq tokens reads the longer conversations as they are
            "model": {"preset": None, "init_from": str(self.dir / "model"), "fields": {"max_seq_len": s["ft_seq"]},
                      "lora": {"r": 8, "alpha": 16}},
            "data": {"kind": "finetune", "finetune_path": str(folder / "data" / "train.jsonl"),
                     "tokenizer": str(self.dir / "tokenizer"), "truncation": "truncate"},
            "optimizer": {"name": "adamw", "lr": 2e-3, "betas": [0.9, 0.95], "weight_decay": 0.0},
            "scheduler": {"name": "cosine", "warmup_batches": max(1, s["ft_steps"] // 10), "alpha_f": 0.1},
            "train": {"max_duration": f"{s['ft_steps']}ba", "global_batch_size": 8, "micro_batch_size": 8,
                      "seed": self.cfg.seed},
            "checkpoint": {"folder": str(folder / "checkpoints"), "every_batches": max(10, s["ft_steps"] // 3),
                           "keep": 1, "export_hf": str(folder / "hf")},
            "log": {"folder": str(folder), "every_batches": max(1, s["ft_steps"] // 10)},
        }
        path = self.dir / "train-finetune.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    def commands(self) -> dict[str, list[str]]:
        """Each stage as the `mpt` command(s) that do the same by hand."""
        d, s = self.dir, self.size
        cmds = {
            # Comments where a stage has no command of its own: the block stays runnable as it is.
            "corpus": [f"# no command: Python (mpt.quickstart.Quickstart.corpus) wrote {d}/corpus/train.jsonl "
                       "and validation.jsonl"],
            "tokenizer": [f"# given: {self.cfg.tokenizer}, saved to {d}/tokenizer" if self.cfg.tokenizer else
                          f"mpt tokenizer train {d}/corpus/train.jsonl --out {d}/tokenizer --vocab-size {s['vocab']}"],
            "shards": [f"mpt prep {d}/corpus/{split}.jsonl --tokenizer {d}/tokenizer --seq-len {n} --min-chars 200 "
                       f"--out {d}/shards/{split}" for split, n in (("train", s["seq"]), ("validation", 4 * s["seq"]))],
            "pretrain": [f"mpt train {d}/train-alibi.yaml", f"mpt train {d}/train-learned_pos_emb.yaml"],
            "export": [f"mpt export {d}/runs/alibi/checkpoints {d}/model --tokenizer {d}/tokenizer"],
            "samples": [f"mpt generate {d}/model 'def ' --max-new-tokens 48 --temperature 0.8 --top-k 40 "
                        f"--seed {self.cfg.seed}"],
        }
        if self.cfg.finetune:
            cmds["finetune"] = [f"# Python (mpt.quickstart_finetune.chat_data) wrote {d}/finetune/data/*.jsonl "
                                f"from {self.cfg.finetune}", f"mpt train {d}/train-finetune.yaml",
                                f"mpt chat {d}/finetune/hf"]
        if self.cfg.eval_tasks:
            cmds["evaluate"] = [f"mpt eval {d}/model --tasks {' '.join(self.cfg.eval_tasks)}"
                                + (f" --data-dir {self.cfg.eval_data_dir}" if self.cfg.eval_data_dir else "")]
        return cmds

    def report(self) -> None:
        from .quickstart_report import write_report

        write_report(self)

    # ---- all of it --------------------------------------------------------------------------------
    def run(self) -> Path:
        self._claim_folder()
        self._stage(1, "corpus", self.corpus)
        self._stage(2, "tokenizer", self.tokenizer)
        self._stage(3, "shards", self.shards)
        self._stage(4, "pretrain", self.pretrain)
        self._stage(5, "export", self.export)
        self._stage(6, "evaluate", self.evaluate)
        self._stage(7, "samples", self.samples)
        if self.cfg.finetune:
            self._stage(8, "finetune", self.finetune)
        self.report()
        self.log(f"[{self.stages}/{self.stages}] report: {self.dir / 'report.md'} and {self.dir / 'report.html'} "
                 f"(total {time.perf_counter() - self.start:.0f} s)")
        return self.dir / "report.md"


def _docstrings(code: str) -> str:
    """Module, class and function docstrings of a source file, one paragraph each."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef)))]
    return "\n\n".join(d for n in nodes if (d := ast.get_docstring(n)))


def quickstart(cfg: QuickstartConfig) -> Path:
    """`mpt quickstart`: run (or continue) every stage and point at the report."""
    report = Quickstart(cfg).run()
    print(f"open {report}")
    return report
