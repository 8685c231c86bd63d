"""Every `mpt` command shown in the README parses with the real argument parser, builds its checked config
(a recipe with its overrides, a --config file), and no two examples write into the same place; every
`mpt train` line passes its own `--dry-run`, and every `mpt lm-eval` line parses with lm-eval's parser."""

import re
import shlex
import sys
from pathlib import Path

import pytest

from mpt.cli import main, parse

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|\|", line):
                part = re.sub(r"^([A-Z_]+=\S*\s+)+", "", part.strip())  # leading VAR=value assignments
                if part.startswith("mpt "):
                    commands.append(part)
                elif " -m mpt.cli " in part:
                    commands.append("mpt " + part.split(" -m mpt.cli ", 1)[1])
    return commands


def test_the_readme_shows_commands():
    cmds = readme_commands()
    assert len(cmds) > 15
    assert any(c.startswith("mpt quickstart") for c in cmds)


def _config(command: str, tmp_path):
    """The checked config the command would run with (the recipe for `mpt train`), built as `mpt` builds it."""
    from mpt.train.recipe import load_recipe
    from mpt.typed_cli import build_config

    parsed = parse(shlex.split(command)[1:])  # argparse exits (SystemExit) on anything it cannot parse
    if parsed.command == "train":
        return load_recipe(str(README.parent / parsed.recipe), parsed.overrides)
    if getattr(parsed, "_cls", None) is None:  # lm-eval's own arguments pass through unparsed
        return None
    if parsed._config and not Path(parsed._config).exists():  # written by a heredoc earlier in the README
        heredoc = re.search(rf"cat > {re.escape(parsed._config)} <<'YAML'\n(.*?)\nYAML", README.read_text(), re.S)
        assert heredoc, f"{command}: --config {parsed._config} is neither shipped nor shown in the README"
        (tmp_path / parsed._config).write_text(heredoc.group(1))
        parsed._config = str(tmp_path / parsed._config)
    return build_config(parsed._cls, parsed, parsed._overrides, parsed._parser)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_builds_its_checked_config(command, tmp_path):
    _config(command, tmp_path)  # a misspelt key or a bad value raises here


def test_readme_examples_write_into_folders_of_their_own(tmp_path):
    """Two trainings that do not resume one another never share an export or a metrics folder, and no two
    other commands write the same output."""
    runs, outputs = {}, {}
    for command in readme_commands():
        cfg = _config(command, tmp_path)
        if cfg is None or "--dry-run" in command:
            continue
        if hasattr(cfg, "checkpoint"):  # a training recipe: the same checkpoint folder resumes the same run
            run = (cfg.run_name, cfg.checkpoint.export_hf, cfg.log.folder)
            assert runs.setdefault(cfg.checkpoint.folder, run) == run, command
            continue
        for name in ("out", "output", "markdown", "examples", "dst"):
            target = getattr(cfg, name, None)
            if isinstance(target, str):
                assert outputs.setdefault(target, command) == command, f"{command} and {outputs[target]}: {target}"
    exports = [r[1] for r in runs.values() if r[1]]
    logs = [r[2] for r in runs.values()]
    assert len(set(exports)) == len(exports) and len(set(logs)) == len(logs), runs
    assert len(runs) >= 2 and not set(exports) & set(outputs)


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("mpt train ")])
def test_readme_train_line_passes_its_own_dry_run(command, capsys, monkeypatch):
    """The line as written (overrides included) with `--dry-run` added: what a user gets before the run."""
    argv = shlex.split(command)[1:]
    monkeypatch.chdir(README.parent)
    assert main([*argv, "--dry-run"] if "--dry-run" not in argv else argv) == 0, capsys.readouterr().err
    assert f"recipe {argv[1]} is valid" in capsys.readouterr().out


LM_EVAL_LINES = [c for c in readme_commands() if c.startswith("mpt lm-eval ")]


def test_the_readme_shows_lm_eval_lines():
    assert any(" export " in c for c in LM_EVAL_LINES) and any("--model mpt" in c for c in LM_EVAL_LINES)


@pytest.mark.parametrize("command", LM_EVAL_LINES)
def test_readme_lm_eval_line_parses_with_lm_evals_own_parser(command, monkeypatch):
    rest = shlex.split(command)[2:]
    if rest[0] == "export":
        from mpt.eval.lm_eval_adapter import export_parser

        export_parser().parse_args(rest[1:])  # exits (SystemExit) on anything it cannot parse
        return
    pytest.importorskip("lm_eval", reason="needs lm-eval: pip install -e '.[eval]'")
    from lm_eval.__main__ import HarnessCLI

    monkeypatch.setattr(sys, "argv", ["lm_eval", *rest])
    args = HarnessCLI().parse_args()
    assert args.model == "mpt" and args.tasks and args.include_path
