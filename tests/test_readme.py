"""Every `mpt` command shown in the README parses with the real argument parser."""

import re
import shlex
from pathlib import Path

import pytest

from mpt.cli import parse

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|\|", line):
                part = part.strip()
                if part.startswith("mpt "):
                    commands.append(part)
                elif " -m mpt.cli " in part:
                    commands.append("mpt " + part.split(" -m mpt.cli ", 1)[1])
    return commands


def test_the_readme_shows_commands():
    cmds = readme_commands()
    assert len(cmds) > 15
    assert any(c.startswith("mpt quickstart") for c in cmds)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    args = shlex.split(command)[1:]
    parsed = parse(args)  # as `mpt` parses it; argparse exits (SystemExit) on anything it cannot parse
    assert callable(parsed.func)
