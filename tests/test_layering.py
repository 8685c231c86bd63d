"""The layering stated in mpt/__init__.py's docstring holds: every import inside the package (at the
top of a module or inside a function) points down the table. And every module docstring stays short."""

import ast
from pathlib import Path

import mpt
import mpt.data

SRC = Path(mpt.__file__).parent
LEAVES = {"paths", "files", "storage", "ranks", "chatml", "console", "config", "tables", "_lazy"}
ALLOWED = {  # a package or module -> the parts of mpt it may import (leaf helpers: always)
    "model": set(),
    "data": set(),
    "infer": {"data", "model"},
    "eval": {"infer", "data", "model"},
    "train": {"eval", "data", "model", "presets"},
    "presets": {"model"},
    "quickstart_report": {"train"},
}


def imported_parts(path: Path) -> set[str]:
    """The top-level parts of mpt (``data``, ``model``, ``files``...) that a file imports."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]  # ("mpt", "data") for mpt/data/x.py
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [[*target, a.name] for a in node.names] if len(target) == 1 else [target]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        else:
            continue
        parts |= {n[1] for n in names if n[0] == "mpt" and len(n) > 1}
    return parts


def owner(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("").parts
    return rel[0]


def test_imports_point_down_the_table():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        part = owner(path)
        if part == "__init__":
            continue
        allowed = ALLOWED.get(part) if part not in LEAVES else set()
        if allowed is None:  # cli, checkpoint_commands, quickstart...: may import anything
            continue
        for target in imported_parts(path) - {part} - LEAVES - allowed:
            wrong.append(f"{path.relative_to(SRC)} imports mpt.{target}")
    assert not wrong, "imports against the layering in mpt/__init__.py:\n" + "\n".join(wrong)


def test_leaf_helpers_import_nothing_from_mpt():
    for name in LEAVES:
        assert imported_parts(SRC / f"{name}.py") == set(), name


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    assert imported_parts(SRC / "data" / "tokenize.py") >= {"paths"}
    assert "data" in imported_parts(SRC / "infer" / "api.py")  # a function-level relative import
    assert "chatml" in imported_parts(SRC / "infer" / "chat.py")  # `from .. import chatml`


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


MAX_MODULE_DOCSTRING_LINES = 10


def test_module_docstrings_say_what_their_file_does_in_at_most_ten_lines():
    """Design reasoning belongs beside the code it explains, user-facing facts in README.md."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if doc is not None and len(doc.splitlines()) > MAX_MODULE_DOCSTRING_LINES:
            long.append(f"{path.relative_to(SRC)}: {len(doc.splitlines())} lines")
    assert not long, f"module docstrings over {MAX_MODULE_DOCSTRING_LINES} lines:\n" + "\n".join(long)
