import ast
from pathlib import Path

import pytest

import mpt.data
from mpt.cli import build_parser

DATA = Path(mpt.data.__file__).parent


def test_data_never_imports_the_model():
    """Only the package's leaf helpers (mpt.chatml, mpt.files, mpt.ranks, ...) may come from outside data/."""
    above = ("model", "train", "eval", "infer", "cli", "quickstart")
    for path in DATA.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                top = (node.module or "").split(".")[0]
                assert not (node.level >= 2 and top in above), f"{path.name}: {'.' * node.level}{node.module}"
                assert not (node.level == 0 and node.module and node.module.startswith(
                    tuple(f"mpt.{m}" for m in above))), f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mpt.model") for a in node.names), path.name


def test_data_commands_have_help(capsys):
    for cmd in (["prep", "--help"], ["tokenizer", "train", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(cmd)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: mpt {' '.join(cmd[:-1])}" in out and "--out" in out
