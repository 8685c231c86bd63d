import ast
from pathlib import Path

import pytest

import mpt.data
from mpt.cli import build_parser

DATA = Path(mpt.data.__file__).parent


def test_data_never_imports_the_model():
    for path in DATA.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                assert not name.startswith(("..", "mpt.model", "mpt.train", "mpt.eval")), f"{path.name}: {name}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mpt.model") for a in node.names), path.name


def test_data_commands_have_help(capsys):
    for cmd in (["prep", "--help"], ["tokenizer", "train", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(cmd)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: mpt {' '.join(cmd[:-1])}" in out and "--out" in out
