"""`mpt <command>`: parse the command line, then call one function that does the work.

Imports of heavy modules happen inside each command so that ``mpt --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import time


# ---- model commands ---------------------------------------------------------------------
def cmd_model_info(args: argparse.Namespace) -> int:
    from .presets import load_model_config, model_info, preset_names

    names = args.preset
    if names == ["all"]:
        names = sorted(preset_names(), key=lambda n: model_info(load_model_config(n)).params)
    rows = []
    for name in names:
        cfg = load_model_config(name)
        info = model_info(cfg)
        rows.append((name, f"{info.params / 1e6:,.1f}M", f"{info.non_embedding_params / 1e6:,.1f}M",
                     f"{cfg.d_model}/{cfg.n_heads}/{cfg.n_layers}", str(cfg.max_seq_len),
                     f"{info.train_flops_per_token / 1e9:,.2f}", f"{info.weights_gib_bf16:,.2f}",
                     f"{info.train_state_gib_lion:,.1f}", f"{info.train_state_gib_adamw:,.1f}"))
    header = ("preset", "params", "non-emb", "d/heads/layers", "seq", "GFLOP/token (train)",
              "weights bf16 GiB", "train state Lion GiB", "train state AdamW GiB")
    _print_table(header, rows)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .model.hf import convert

    model, ignored = convert(args.src, args.dst, dtype=args.dtype, attn_impl=args.attn_impl)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst}: {n / 1e6:,.1f}M parameters, model_type 'mpt' (loads with transformers' "
          f"AutoModelForCausalLM){'; transformers ignores: ' + ', '.join(ignored) if ignored else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build a model from a preset, export it, reload it with plain transformers, generate past max_seq_len."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from .infer import generate_ids
    from .model import MPTForCausalLM
    from .model.hf import save_pretrained
    from .presets import load_model_config

    torch.manual_seed(args.seed)
    cfg = load_model_config(args.preset)
    model = MPTForCausalLM(cfg).eval()
    out_dir = args.out or tempfile.mkdtemp(prefix="mpt-demo-")
    save_pretrained(model, out_dir)
    print(f"built {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random "
          f"weights) and saved it in Hugging Face format to {out_dir}")
    hf = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 32))
    with torch.no_grad():
        delta = (hf(ids).logits - model(ids).logits).abs().max().item()
    print(f"plain transformers loaded it as {type(hf).__name__}; max |logit difference| = {delta:.2e}")
    n_new = cfg.max_seq_len + 16 - ids.shape[1]
    start = time.perf_counter()
    out = generate_ids(model, ids, max_new_tokens=n_new)
    took = time.perf_counter() - start
    print(f"generated {n_new} tokens greedily in {took:.2f} s ({n_new / took:.0f} tokens/s), reaching "
          f"{out.shape[1]} tokens, past max_seq_len={cfg.max_seq_len} (ALiBi)")
    print("last 16 token ids:", out[0, -16:].tolist())
    return 0


# ---- data commands -----------------------------------------------------------------------
def cmd_prep(args: argparse.Namespace) -> int:
    from .data.dedup import DedupConfig
    from .data.filters import FilterConfig
    from .data.prep import PrepConfig, prep

    filters = FilterConfig.mc4() if args.mc4 else FilterConfig()
    filters.min_chars, filters.max_chars = args.min_chars, args.max_chars
    for name in ("min_words", "max_words"):
        if getattr(args, name) is not None:
            setattr(filters, name, getattr(args, name))
    cfg = PrepConfig(inputs=args.inputs, out=args.out, tokenizer=args.tokenizer, text_field=args.text_field,
                     hf_split=args.hf_split, mode=args.mode, seq_len=args.seq_len, vocab_size=args.vocab_size,
                     eos_token=args.eos_token, workers=args.workers,
                     shard_bytes=int(args.shard_mb * (1 << 20)), skip_bad=args.skip_bad, filters=filters,
                     dedup=DedupConfig(exact=not args.no_exact_dedup, near=args.near_dedup,
                                       threshold=args.near_dedup_threshold))
    summary = prep(cfg)
    print("\n".join(summary.lines()))
    print(f"shards, index.json and summary.json are in {args.out}")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    hf = train_tokenizer(TokenizerTrainConfig(inputs=args.inputs, out=args.out, vocab_size=args.vocab_size,
                                              min_frequency=args.min_frequency, text_field=args.text_field,
                                              skip_bad=args.skip_bad))
    st = hf.stats
    print(f"trained a byte-level BPE tokenizer with {len(hf):,} tokens on {st.records:,} records from {st.files} "
          f"files ({st.bad_json + st.missing_field:,} bad records skipped); saved to {args.out} "
          f"(EOS <|endoftext|>={hf.eos_token_id}, PAD <|padding|>={hf.pad_token_id}, ChatML chat template)")
    return 0


# ---- eval commands -----------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.run import EvalRunConfig, run_eval

    run_eval(EvalRunConfig(model=args.model, tasks=args.tasks, data_dir=args.data_dir, tokenizer=args.tokenizer,
                           gauntlet=args.gauntlet, limit=args.limit, num_fewshot=args.num_fewshot,
                           batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                           max_seq_len=args.max_seq_len, device=args.device,
                           dtype=args.dtype, output=args.output, markdown=args.markdown, examples=args.examples,
                           progress=not args.no_progress))
    return 0


# ---- training commands -------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .train import load_recipe, train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:
        import yaml

        from .config import to_dict

        print(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        print(f"recipe {args.recipe} is valid")
        return 0
    result = train(recipe)
    return 143 if result.interrupted else 0


# ---- inference commands ------------------------------------------------------------------
def _load_llm(args: argparse.Namespace):
    from .infer import load

    return load(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None and args.file is not None:
        raise ValueError("give the prompt as an argument or with --file, not both")
    if args.prompt is not None:
        text = args.prompt
    elif args.file not in (None, "-"):
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    else:
        if sys.stdin.isatty():
            print("reading the prompt from stdin (end with Ctrl-D)", file=sys.stderr)
        text = sys.stdin.read()
    prompts = [line for line in text.splitlines() if line.strip()] if args.each_line else [text]
    if not prompts or not any(p for p in prompts):
        raise ValueError("the prompt is empty")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    prompts = _read_prompts(args)
    llm = _load_llm(args)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
              repetition_penalty=args.repetition_penalty, stop=args.stop or None, seed=args.seed,
              batch_size=args.batch_size)
    start = time.perf_counter()
    if len(prompts) == 1 and not args.json:
        n = 0
        for chunk in llm.stream(prompts[0], **kw):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            n += 1
        sys.stdout.write("\n")
    else:
        outs = llm.generate(prompts, **kw)
        for p, c in zip(prompts, outs, strict=True):
            print(json.dumps({"prompt": p, "text": c.text, "finish_reason": c.finish_reason,
                              "prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)}))
        n = sum(len(c.token_ids) for c in outs)
    took = time.perf_counter() - start
    print(f"[{n} tokens in {took:.2f} s, {n / took:.1f} tokens/s]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .infer.chat_repl import ChatConfig, run_chat

    cfg = ChatConfig(system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                     seed=args.seed, context_length=args.context_length)
    run_chat(_load_llm(args), cfg)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .infer.server import ServeConfig, serve

    serve(ServeConfig(model=args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
                      host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
                      context_length=args.context_length, max_tokens=args.max_tokens,
                      max_batch_size=args.max_batch_size, max_concurrent=args.max_concurrent, max_n=args.max_n))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "hf":
        from pathlib import Path

        from .model.hf import convert
        from .train.checkpoint import complete_checkpoints, export_hf

        src = Path(args.src)
        if (src / "trainer_state.json").is_file() or complete_checkpoints(src):  # a training checkpoint
            used = export_hf(src, args.dst, tokenizer_from=args.tokenizer)
            print(f"wrote a Hugging Face-format checkpoint to {args.dst} from training checkpoint {used}")
            return 0
        _, ignored = convert(args.src, args.dst)
        print(f"wrote a Hugging Face-format checkpoint to {args.dst}"
              f"{'; transformers ignores: ' + ', '.join(ignored) if ignored else ''}")
        return 0
    from .infer.onnx_export import OnnxExportConfig, export_onnx

    files = export_onnx(OnnxExportConfig(src=args.src, dst=args.dst, prefill_only=args.prefill_only,
                                         opset=args.opset, check=not args.no_check))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


# ---- the whole pipeline ------------------------------------------------------------------
def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import Quickstart, QuickstartConfig

    report = Quickstart(QuickstartConfig(out=args.out, size=args.size, eval_tasks=args.eval_tasks,
                                         eval_data_dir=args.eval_data_dir, data=args.data,
                                         tokenizer=args.tokenizer, force=args.force)).run()
    print(f"open {report}")
    return 0


# ---- helpers -----------------------------------------------------------------------------
def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpt",
        description="MPT (MosaicML Pretrained Transformer) in modern PyTorch: build, convert and run models.",
        epilog="Run `mpt COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("model-info", help="parameters, FLOPs per token and memory of model presets",
                       description="Print parameter count, training FLOPs per token (LLM Foundry's MFU formula) "
                                   "and memory for weights and optimizer state. Nothing is built.")
    p.add_argument("preset", nargs="*", default=["all"],
                   help="preset names (mpt-tiny, mpt-125m ... mpt-30b) or YAML files; default: all presets")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("convert", help="convert any MPT checkpoint to a transformers-loadable one",
                       description="Read an MPT checkpoint (ours, transformers' MptForCausalLM, or MosaicML's "
                                   "original layout; a local folder, or a hub name when online) and write "
                                   "safetensors + config.json that plain transformers loads. Warns about "
                                   "config fields transformers' MPT does not honour.")
    p.add_argument("src", help="checkpoint folder or hub name, e.g. mosaicml/mpt-7b")
    p.add_argument("dst", help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast weights to this dtype (default: keep)")
    p.add_argument("--attn-impl", choices=["torch", "flash", "flex"], default=None,
                   help="override attn_config.attn_impl (e.g. a checkpoint trained with flash, read on CPU)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help="offline demo: build a preset, export, reload with transformers, generate",
                       description="Build a randomly initialised model from a preset, save it in Hugging Face "
                                   "format, reload it with plain transformers and compare logits, then generate "
                                   "past max_seq_len with the KV cache. Needs no network and no data.")
    p.add_argument("--preset", default="mpt-tiny", help="model preset (default: mpt-tiny)")
    p.add_argument("--out", default=None, help="where to save the model (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("prep", help="clean, deduplicate, tokenize and shard text for training",
                       description="Read jsonl / json / txt / parquet files (also .gz), folders and globs; drop "
                                   "empty documents, apply the quality filters asked for, remove exact (default) "
                                   "and near duplicates; tokenize; join documents with EOS and cut them into "
                                   "--seq-len samples (--mode concat) or keep one document per sample (--mode "
                                   "docs); write checksummed shards, index.json and summary.json to --out. "
                                   "Every dropped record is counted in the summary.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, folders or globs (quote globs); hf:NAME[:CONFIG] for a Hugging Face dataset")
    p.add_argument("--out", required=True, help="output folder (must not already hold shards)")
    p.add_argument("--tokenizer", default="EleutherAI/gpt-neox-20b",
                   help="tokenizer.json file, folder holding one, or hub name (default: EleutherAI/gpt-neox-20b, "
                        "downloads when online)")
    p.add_argument("--text-field", default="text", help="JSON field / parquet column holding the text (default: text)")
    p.add_argument("--hf-split", default="train", help="split of hf:NAME inputs (default: train)")
    p.add_argument("--mode", choices=["concat", "docs"], default="concat",
                   help="concat: EOS-joined documents packed into --seq-len samples (default); docs: one per sample")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sample in concat mode (default: 2048)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="declared vocabulary; a token id at or above it is an error (default: the tokenizer's)")
    p.add_argument("--eos-token", default=None, help="token appended to each document (default: <|endoftext|> or </s>)")
    p.add_argument("--shard-mb", type=float, default=64, help="shard size in MiB (default: 64)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) malformed JSON lines and records without the text field instead of stopping")
    p.add_argument("--mc4", action="store_true",
                   help="the MPT-7B mC4 quality rules: most common character alphabetic, >= 92%% alphanumeric, "
                        "most common word <= 7.5%% of words (> 500 words) or <= 30%%, 200 <= words <= 50,000")
    p.add_argument("--min-words", type=int, default=None, help="override the minimum word count (mC4: 200)")
    p.add_argument("--max-words", type=int, default=None, help="override the maximum word count (mC4: 50,000)")
    p.add_argument("--min-chars", type=int, default=None, help="drop documents shorter than this (off by default)")
    p.add_argument("--max-chars", type=int, default=None, help="drop documents longer than this (off by default)")
    p.add_argument("--no-exact-dedup", action="store_true", help="keep exact duplicates (removed by default)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the filters and near-dedup fingerprints (default: all cores; the "
                        "tokenizer always uses all cores)")
    p.add_argument("--near-dedup", action="store_true", help="also remove near duplicates (MinHash LSH)")
    p.add_argument("--near-dedup-threshold", type=float, default=0.8,
                   help="estimated Jaccard similarity of word 5-grams above which a document is a near "
                        "duplicate (default: 0.8)")
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser("eval", help="in-context-learning evaluation (the MPT-7B suite, the gauntlet)",
                       description="Evaluate a model on LLM Foundry-format ICL tasks (language_modeling, "
                                   "multiple_choice, schema, generation_task_with_answers) with LLM Foundry's "
                                   "prompts and metrics; print a table and optionally write JSON, Markdown and "
                                   "per-example JSONL. Task files are read from --data-dir; nothing is downloaded.",
                       epilog="example: mpt eval ./my-mpt --tasks mpt7b --data-dir ../shared/data/eval --limit 100 "
                              "--output results.json")
    p.add_argument("model", help="our checkpoint, a Hugging Face-format MPT or any causal LM folder, or a hub name")
    p.add_argument("--tasks", nargs="+", default=["mpt7b"],
                   help="suite names (mpt7b), suite YAML files or bare .jsonl task files (default: mpt7b)")
    p.add_argument("--data-dir", default=None, help="folder holding the task files named in the suite "
                                                    "(default: $MPT_EVAL_DATA)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: the model's)")
    p.add_argument("--gauntlet", default=None, help="gauntlet name or YAML (default: the suite's; 'none' to skip)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    p.add_argument("--num-fewshot", type=int, nargs="+", default=None, help="override every task's few-shot counts")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (default: 64)")
    p.add_argument("--max-batch-tokens", type=int, default=65536,
                   help="padded tokens per forward pass, bounding memory for long few-shot prompts (default: 65536)")
    p.add_argument("--max-seq-len", type=int, default=None, help="context window (default: the model's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype; auto: as saved (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--output", default=None, help="write results (and gauntlet) as JSON here")
    p.add_argument("--markdown", default=None, help="write a Markdown table here")
    p.add_argument("--examples", default=None, help="write one JSON line per example (prompt, options, scores, "
                                                    "prediction, gold) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("tokenizer", help="tokenizer tools (train)",
                       description="Tokenizer tools. `mpt tokenizer train --help` for training one.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    p = tsub.add_parser("train", help="train a byte-level BPE tokenizer on a corpus (Hugging Face format)",
                        description="Train a byte-level BPE tokenizer (GPT-NeoX style: NFC, no prefix space) with "
                                    "`tokenizers` on jsonl / json / txt / parquet files, folders or globs, and save "
                                    "it with transformers' save_pretrained: tokenizer.json, EOS <|endoftext|>, PAD "
                                    "<|padding|>, ChatML <|im_start|>/<|im_end|> and a ChatML chat template.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs (quote globs)")
    p.add_argument("--out", required=True, help="folder to save the tokenizer in")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size incl. special tokens (default: 8192)")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum count of a merge (default: 2)")
    p.add_argument("--text-field", default="text", help="JSON field / parquet column holding the text (default: text)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed records instead of stopping")
    p.set_defaults(func=cmd_tokenizer_train)
    p = sub.add_parser("train", help="pretrain or finetune from a YAML recipe (single process or torchrun)",
                       description="Train from a recipe: model, data, optimizer, schedule, batch sizes, duration, "
                                   "precision, parallelism, checkpointing, logging. The recipe is validated before "
                                   "any work starts. Starting the same command again resumes from the latest "
                                   "complete checkpoint (checkpoint.autoresume). Run under `torchrun "
                                   "--nproc_per_node N` for several processes (FSDP2 by default).",
                       epilog="example: mpt train configs/train/mpt-tiny.yaml train.max_duration=20ba "
                              "optimizer.lr=1e-3")
    p.add_argument("recipe", help="YAML recipe, e.g. configs/train/mpt-tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides with dotted keys, e.g. train.precision=bf16")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe, print it resolved, and exit")
    p.set_defaults(func=cmd_train)


    # inference commands
    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="Hugging Face-format MPT checkpoint folder (with tokenizer files) or hub name")
        p.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: the model's)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")

    def sampling_args(p: argparse.ArgumentParser, temperature: float, top_p: float, max_new: int | None) -> None:
        p.add_argument("--max-new-tokens", type=int, default=max_new,
                       help=f"tokens to generate (default: {max_new or '256, at most half the context'})")
        p.add_argument("--temperature", type=float, default=temperature,
                       help=f"0 is greedy (default: {temperature})")
        p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling mass (default: {top_p})")
        p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default: 0, off)")
        p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1)")
        p.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")

    p = sub.add_parser("generate", help="continue a prompt (argument, file or stdin), streamed",
                       description="Load a model and continue the prompt, printing text as it is generated, "
                                   "then the speed on stderr. With --each-line every line is a prompt; they "
                                   "are generated together in one batch and printed as JSON lines.",
                       epilog="example: mpt generate ./my-mpt 'Once upon a time' --max-new-tokens 50; "
                              "echo 'Hello' | mpt generate ./my-mpt")
    model_args(p)
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (default: --file, else stdin)")
    p.add_argument("--file", default=None, help="read the prompt from this file ('-' for stdin)")
    p.add_argument("--each-line", action="store_true", help="every non-empty line is a separate prompt")
    p.add_argument("--json", action="store_true", help="print JSON lines (text, finish_reason, token counts)")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (default: 16)")
    sampling_args(p, temperature=0.0, top_p=1.0, max_new=128)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (ChatML), replies streamed",
                       description="Chat with a model in the terminal. The conversation is rendered with the "
                                   "tokenizer's chat template (ChatML when it has none); when it no longer fits "
                                   "the context the oldest turns are dropped, and a note says so. Type /reset "
                                   "to start over, /exit or Ctrl-D to leave.")
    model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--context-length", type=int, default=None, help="prompt + reply tokens (default: max_seq_len)")
    sampling_args(p, temperature=0.7, top_p=0.95, max_new=None)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a web chat page",
                       description="Serve a model over an OpenAI-compatible API (GET /v1/models, POST "
                                   "/v1/completions, POST /v1/chat/completions, streaming with stream: true; "
                                   "GET /health) and a chat page at /. Concurrent requests share decode steps "
                                   "(continuous batching).",
                       epilog="example: mpt serve ./my-mpt --port 8000, then point any OpenAI client at "
                              "http://127.0.0.1:8000/v1")
    model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $MPT_API_KEY, else no key)")
    p.add_argument("--model-name", default=None, help="model id clients send (default: the folder name)")
    p.add_argument("--context-length", type=int, default=None,
                   help="prompt + max_tokens limit per request (default: the model's max_seq_len)")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens allowed (default: the context)")
    p.add_argument("--max-batch-size", type=int, default=16, help="sequences decoded together (default: 16)")
    p.add_argument("--max-concurrent", type=int, default=64,
                   help="requests in flight (running or queued); more get HTTP 429 (default: 64)")
    p.add_argument("--max-n", type=int, default=8, help="largest n (choices per request) (default: 8)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a checkpoint: Hugging Face format (default) or ONNX",
                       description="--format hf: write safetensors + config.json + tokenizer files that plain "
                                   "transformers (and vLLM) load. --format onnx: write prefill.onnx (input_ids -> "
                                   "logits and the key/value cache) and decode.onnx (one token per row plus the "
                                   "cache -> logits and the grown cache), then check them with onnxruntime "
                                   "against PyTorch. Rows of one batch must have the same length (no padding mask).")
    p.add_argument("src", help="Hugging Face-format MPT checkpoint folder (or hub name), or a training checkpoint "
                               "(a step-N folder, or a checkpoint.folder: its newest complete checkpoint)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--format", choices=["hf", "onnx"], default="hf", help="output format (default: hf)")
    p.add_argument("--tokenizer", default=None,
                   help="hf from a training checkpoint: folder whose tokenizer files to copy alongside")
    p.add_argument("--prefill-only", action="store_true", help="onnx: export only prefill.onnx")
    p.add_argument("--opset", type=int, default=18, help="onnx: opset version (default: 18)")
    p.add_argument("--no-check", action="store_true", help="onnx: skip the onnxruntime vs PyTorch check")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("quickstart", help="the whole pipeline offline in minutes, with a report",
                       description="Offline, on any machine with Python: build a corpus from the Python standard "
                                   "library's sources and docstrings, clean and deduplicate it, train a BPE "
                                   "tokenizer, prep shards with a validation split, pretrain an mpt-tiny-class "
                                   "ALiBi model and a learned-position twin (with checkpoints), measure perplexity "
                                   "at 1x/2x/4x the training length, optionally run ICL tasks, export to Hugging "
                                   "Face format, generate samples, and write OUT/report.md and report.html. "
                                   "Re-running the command continues where it stopped.")
    p.add_argument("--out", default="quickstart", help="output folder (default: ./quickstart)")
    p.add_argument("--size", choices=["full", "ci"], default="full",
                   help="full: about 10 minutes on 2 CPU cores; ci: a reduced run of a minute or two")
    p.add_argument("--eval-tasks", nargs="+", default=None, metavar="TASK",
                   help="ICL task files or suite names for `mpt eval` (none are needed)")
    p.add_argument("--eval-data-dir", default=None, help="folder of the task files named by a suite")
    p.add_argument("--data", nargs="+", default=None, metavar="INPUT",
                   help="corpus instead of the standard library: files, folders, globs or hf:NAME (as `mpt prep`)")
    p.add_argument("--tokenizer", default=None,
                   help="use this tokenizer (tokenizer.json, folder or hub name) instead of training one")
    p.add_argument("--force", action="store_true", help="use a non-empty --out folder that is not a quickstart run")
    p.set_defaults(func=cmd_quickstart)

    _add_common_flags(parser)
    return parser


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--verbose and --debug on every command (the leaves of the subcommand tree)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        parser.add_argument("--verbose", action="store_true",
                            help="show third-party progress bars and log messages (hidden by default)")
        parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
        parser.set_defaults(prog=parser.prog)
    for action in subs:
        for child in action.choices.values():
            _add_common_flags(child)


def main(argv: list[str] | None = None) -> int:
    from .console import expected_errors, one_line, quiet_third_parties

    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_third_parties(args.prog)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or not isinstance(err, expected_errors()):
            raise
        print(f"{args.prog}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
