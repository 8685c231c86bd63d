"""`mpt <command>`: one list of commands, each a typed config and the function that runs it.

A command's flags come from its config dataclass, help texts included (:func:`mpt.config.option`;
:mod:`mpt.typed_cli` builds the parser); every command also takes ``--config FILE.yaml`` and
``key=value`` overrides. Only the chosen command's config module is imported, and none imports torch
or transformers, so ``--help`` answers at once. ``train`` (a recipe YAML with overrides) and
``lm-eval`` (lm-eval's own command line) declare their arguments here.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .typed_cli import Command, add_config_arguments, build_config, resolve, split_overrides

DECODING_COMMANDS = ("serve", "generate", "chat")


def openmp_defaults(command: str) -> None:
    """OpenMP's waiting between parallel regions, set before torch loads its runtime (main() calls this after
    parsing, which imports no torch); a value the user set wins.

    Threads that spin take a busy machine's cores from the threads that need them (benchmarks/bench_contention.py,
    beside a training job: PASSIVE). A decode step is hundreds of short parallel regions, though, and sleeping
    between them made `mpt serve` 20-30 % slower with its clients on the same cores: decoding commands spin a
    bounded while (libgomp's GOMP_SPINCOUNT) and then sleep (BENCHMARKS.md, OpenMP waiting when decoding).
    """
    if command in DECODING_COMMANDS:
        os.environ.setdefault("GOMP_SPINCOUNT", "30000")
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ---- the commands that declare their own arguments -------------------------------------------------
def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe, e.g. configs/train/mpt-tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides with dotted keys, e.g. train.precision=bf16")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe, print it resolved, and exit")


def _set_only(fields: dict) -> dict:
    """The model-field overrides a recipe sets (None means "the preset's value")."""
    out = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            value = _set_only(value) or None
        if value is not None:
            out[key] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .train.recipe import load_recipe

    # The recipe is checked before the loop's module brings in torch (seconds), so a mistyped key
    # is an error at once.
    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        import yaml

        from .config import to_dict
        from .train.estimate import memory_lines

        resolved = to_dict(recipe)
        resolved["model"]["fields"] = _set_only(resolved["model"]["fields"])  # the rest is the preset's
        print(yaml.safe_dump(resolved, sort_keys=False))
        try:
            print("\n".join(memory_lines(recipe)))
        except (ValueError, FileNotFoundError) as err:
            print(f"memory estimate: not available ({err})")
        print(f"recipe {args.recipe} is valid")
        return 0
    from .train.loop import train

    return 143 if train(recipe).interrupted else 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from .eval.lm_eval_adapter import main as lm_eval_main

    sys.argv = ["mpt lm-eval", *args.rest]
    lm_eval_main()
    return 0


@dataclass
class OwnArguments:
    """A command that declares its own arguments: ``train`` (a recipe YAML with overrides) and ``lm-eval``
    (lm-eval's command line, passed through)."""

    name: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], object]
    func: Callable[[argparse.Namespace], int]
    epilog: str | None = None


TRAIN = OwnArguments(
    "train", "pretrain or finetune from a YAML recipe (single process or torchrun)",
    "Train from a recipe: model, data, optimizer, schedule, batch sizes, duration, precision, parallelism, "
    "checkpointing, logging. The recipe is validated before any work starts. Starting the same command again "
    "resumes from the latest complete checkpoint (checkpoint.autoresume). Run under `torchrun --nproc_per_node N` "
    "for several processes (FSDP2 by default).",
    _train_arguments, cmd_train,
    "example: mpt train configs/train/mpt-tiny.yaml train.max_duration=20ba optimizer.lr=1e-3")
LM_EVAL = OwnArguments(
    "lm-eval", "lm-evaluation-harness with `--model mpt` registered (or `export` a task)",
    "Run lm-eval's command line with our model class registered as `mpt` (`mpt lm-eval --model mpt --model_args "
    "pretrained=DIR --tasks ...`), or `mpt lm-eval export LABEL OUT_DIR ...` to write one of our tasks as a local "
    "lm-eval task. Same as `python -m mpt.eval.lm_eval_adapter`.",
    lambda p: p.add_argument("rest", nargs=argparse.REMAINDER, help="lm_eval arguments"), cmd_lm_eval)



# ---- every command, in the order --help lists them ---------------------------------------------------
COMMANDS = [
    Command("model-info", "mpt.checkpoint_commands:ModelInfoConfig", "mpt.checkpoint_commands:print_model_info",
            "parameters, FLOPs per token and memory of model presets",
            "Print parameter count, training FLOPs per token (LLM Foundry's MFU formula) and memory for weights "
            "and optimizer state. Nothing is built."),
    Command("convert", "mpt.checkpoint_commands:ConvertConfig", "mpt.checkpoint_commands:convert",
            "convert any MPT checkpoint to a transformers-loadable one",
            "Read an MPT checkpoint (ours, transformers' MptForCausalLM, or MosaicML's original layout; a local "
            "folder, or a hub name when online) and write safetensors + config.json that plain transformers "
            "loads. Warns about config fields transformers' MPT does not honour."),
    Command("demo", "mpt.checkpoint_commands:DemoConfig", "mpt.checkpoint_commands:demo",
            "offline demo: build a preset, export, reload with transformers, generate",
            "Build a randomly initialised model from a preset, save it in Hugging Face format, reload it with "
            "plain transformers and compare logits, then generate past max_seq_len with the KV cache. Needs no "
            "network and no data."),
    Command("prep", "mpt.data.prep:PrepCommand", "mpt.data.prep:prep_command",
            "clean, deduplicate, tokenize and shard text for training",
            "Read jsonl / json / txt / parquet files (also .gz), folders and globs; drop empty documents, apply "
            "the quality filters asked for, remove exact (default) and near duplicates; tokenize; join documents "
            "with EOS and cut them into --seq-len samples (--mode concat) or keep one document per sample (--mode "
            "docs, for packed pretraining with document masks); write checksummed shards, index.json and "
            "summary.json to --out. Every dropped record is counted in the summary.",
            "example: mpt prep data/*.jsonl --out data/shards --seq-len 2048; filters and dedup also take "
            "key=value overrides (filters.min_words=50, dedup.threshold=0.9)"),
    Command("eval", "mpt.eval.command:EvalRunConfig", "mpt.eval.command:run_eval",
            "in-context-learning evaluation (the MPT-7B suite, the gauntlet)",
            "Evaluate a model on LLM Foundry-format ICL tasks (each task's icl_task_type, as LLM Foundry names "
            "them, picks its scoring) with LLM Foundry's prompts and metrics; print a table and optionally "
            "write JSON, Markdown and per-example JSONL. Task files are read from --data-dir; nothing is "
            "downloaded.",
            "example: mpt eval ./my-mpt --tasks mpt7b --data-dir ../shared/data/eval --limit 100 "
            "--output results.json"),
    Command("tokenizer train", "mpt.data.tokenizer_train:TokenizerTrainConfig",
            "mpt.data.tokenizer_train:train_and_describe",
            "train a byte-level BPE tokenizer on a corpus (Hugging Face format)",
            "Train a byte-level BPE tokenizer (GPT-NeoX style: NFC, no prefix space) with `tokenizers` on jsonl / "
            "json / txt / parquet files, folders or globs, and save it with transformers' save_pretrained: "
            "tokenizer.json, EOS <|endoftext|>, PAD <|padding|>, ChatML <|im_start|>/<|im_end|> and a ChatML chat "
            "template."),
    TRAIN,
    Command("generate", "mpt.infer.commands:GenerateConfig", "mpt.infer.commands:generate",
            "continue a prompt (argument, file or stdin), streamed",
            "Load a model and continue the prompt, printing text as it is generated, then the speed on stderr. "
            "With --each-line every line is a prompt; they are generated together in one batch and printed as "
            "JSON lines.",
            "example: mpt generate ./my-mpt 'Once upon a time' --max-new-tokens 50; echo 'Hello' | mpt generate "
            "./my-mpt"),
    Command("chat", "mpt.infer.commands:ChatCommandConfig", "mpt.infer.commands:chat",
            "interactive chat (ChatML), replies streamed",
            "Chat with a model in the terminal. The conversation is rendered with the tokenizer's chat template "
            "(ChatML when it has none); when it no longer fits the context the oldest turns are dropped, and a "
            "note says so. Type /reset to start over, /exit or Ctrl-D to leave."),
    Command("serve", "mpt.infer.serve_config:ServeConfig", "mpt.infer.server:serve",
            "OpenAI-compatible HTTP server with a web chat page",
            "Serve a model over an OpenAI-compatible API (GET /v1/models, POST /v1/completions, POST "
            "/v1/chat/completions, streaming with stream: true; GET /health) and a chat page at /. Concurrent "
            "requests share decode steps (continuous batching).",
            "example: mpt serve ./my-mpt --port 8000, then point any OpenAI client at http://127.0.0.1:8000/v1"),
    Command("export", "mpt.checkpoint_commands:ExportConfig", "mpt.checkpoint_commands:export",
            "export a checkpoint: Hugging Face format (default), ONNX or GGUF (llama.cpp)",
            "--format hf: write safetensors + config.json + tokenizer files that plain transformers (and vLLM) "
            "load. --format onnx: write prefill.onnx (input_ids -> logits and the key/value cache) and "
            "decode.onnx (one token per row plus the cache -> logits and the grown cache), then check them with "
            "onnxruntime against PyTorch. Rows of one batch must have the same length (no padding mask). "
            "--format gguf: write OUT.gguf in llama.cpp's MPT layout (tokenizer and chat template inside) with "
            "--outtype f32, f16 or q8_0; configs llama.cpp cannot compute the same way are refused."),
    Command("quickstart", "mpt.quickstart:QuickstartConfig", "mpt.quickstart:quickstart",
            "the whole pipeline offline in minutes, with a report",
            "Offline, on any machine with Python: build a corpus from the Python standard library's sources and "
            "docstrings, clean and deduplicate it, train a BPE tokenizer, prep shards with a validation split, "
            "pretrain an mpt-tiny-class ALiBi model and a learned-position twin (with checkpoints), measure "
            "perplexity at 1x/2x/4x the training length, optionally run ICL tasks, export to Hugging Face "
            "format, generate samples, optionally chat-finetune it with LoRA (--finetune), and write OUT/report.md "
            "and report.html. Re-running the command continues where it stopped."),
    LM_EVAL,
]


def prep_config(args: argparse.Namespace):
    """The PrepConfig that `mpt prep` with these parsed arguments runs (--config, overrides, flags folded)."""
    return build_config(args._cls, args, args._overrides, args._parser).to_config()


# ---- building the parser ------------------------------------------------------------------------
def _generated(command: Command):
    def run(args: argparse.Namespace) -> int:
        result = resolve(command.run)(build_config(args._cls, args, args._overrides, args._parser))
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    return run


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", default=False,
                   help="show third-party progress bars and log messages (hidden by default)")
    p.add_argument("--debug", action="store_true", default=False, help="show the traceback of an error")
    p.set_defaults(prog=p.prog)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's full arguments, or (``only``) that one's, the others listed for --help."""
    return _build(only)[0]


def _build(only: str | None) -> tuple[argparse.ArgumentParser, list[tuple[type, argparse.ArgumentParser]]]:
    parser = argparse.ArgumentParser(
        prog="mpt",
        description="MPT (MosaicML Pretrained Transformer) in modern PyTorch: build, convert and run models.",
        epilog="Run `mpt COMMAND --help` for a command's options; every command also takes --config FILE.yaml "
               "and KEY=VALUE overrides.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    leaves = []
    for entry in COMMANDS:  # in the order --help lists them
        head, _, tail = entry.name.partition(" ")
        where = sub
        if tail:  # a group such as `mpt tokenizer train`
            if head not in groups:
                g = sub.add_parser(head, help=f"{head} tools ({tail})",
                                   description=f"{head.capitalize()} tools. `mpt {head} {tail} --help` for one.")
                groups[head] = g.add_subparsers(dest=f"{head}_command", metavar="SUBCOMMAND", required=True)
            where = groups[head]
        if only is not None and head != only:
            if not tail:
                where.add_parser(head, help=entry.help)
            continue
        p = where.add_parser(tail or head, help=entry.help, description=entry.description, epilog=entry.epilog)
        if isinstance(entry, Command):
            cls = resolve(entry.config)
            add_config_arguments(p, cls)
            p.set_defaults(func=_generated(entry), _cls=cls, _parser=p, _overrides=[])
            leaves.append((cls, p))
        else:
            entry.arguments(p)
            p.set_defaults(func=entry.func)
        _add_common_flags(p)
    return parser, leaves


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, building only the named command; ``key=value`` tokens become config overrides."""
    first = next((a for a in argv if not a.startswith("-")), "")
    if argv[:1] == ["lm-eval"] and argv[1:2] not in (["-h"], ["--help"]):
        # lm_eval's own flags (--model, --tasks ...) are not ours to parse: all of them pass through.
        return argparse.Namespace(command="lm-eval", func=cmd_lm_eval, rest=argv[1:], prog="mpt lm-eval",
                                  verbose=False, debug=False)
    parser, leaves = _build(first)
    if len(leaves) == 1:
        cls, leaf = leaves[0]
        rest, overrides = split_overrides(argv, cls, leaf)
        args = parser.parse_args(rest)
        args._overrides = overrides
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .console import command_output, expected_errors, one_line

    args = parse(sys.argv[1:] if argv is None else list(argv))
    openmp_defaults(args.command)
    try:
        with command_output(args.prog, args.verbose):
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, expected_errors()):
            raise
        if args.debug:  # the traceback too, but an expected error keeps its exit code
            traceback.print_exc()
        print(f"{args.prog}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
