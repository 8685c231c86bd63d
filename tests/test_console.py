"""What `mpt train` prints: on a terminal the bar and the messages never share a line; into a pipe or a
file there is no bar (no ``\\r`` redraws), only the step lines and messages."""

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios

import yaml

from tests.train.helpers import make_shards, recipe_dict, save_tiny_base

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _recipe(tmp_path) -> str:
    data = make_shards(tmp_path / "data")
    recipe = recipe_dict(tmp_path, data, train={"max_duration": "6ba", "global_batch_size": 8, "micro_batch_size": 8},
                         checkpoint={"folder": str(tmp_path / "ckpt"), "every_batches": 2, "keep": 2})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


def test_on_a_terminal_messages_never_land_on_the_bars_line(tmp_path):
    recipe = _recipe(tmp_path)
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # tqdm draws nothing at width 0
    proc = subprocess.Popen([shutil.which("mpt"), "train", recipe], stdin=subprocess.DEVNULL, stdout=child,
                            stderr=child, env=ENV)
    os.close(child)
    out = b""
    while True:
        ready, _, _ = select.select([main], [], [], 120)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for 120 s: {out[-2000:]!r}")
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0, out[-3000:]
    text = out.decode()
    assert "train:" in text and "step/s" in text  # the bar did show
    text = text.replace("\r\n", "\n")  # the terminal's own line ends
    saved = [line for line in text.split("\n") if "saved checkpoint" in line]
    assert len(saved) == 3, text
    for line in saved + [line for line in text.split("\n") if "loss" in line and "step 6/6" in line]:
        visible = ANSI.sub("", line.rstrip("\r")).split("\r")[-1]  # what is left on that line once drawn
        assert visible.startswith(("saved checkpoint", "step ")), repr(line)


def test_into_a_pipe_there_is_no_bar_only_lines(tmp_path):
    recipe = _recipe(tmp_path)
    out = subprocess.run([shutil.which("mpt"), "train", recipe], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout + out.stderr and "step/s]" not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0].split("/")[0] for line in lines if line.startswith("step ")] == \
        [f"step {i}" for i in range(1, 7)], out.stdout
    assert sum(line.startswith("saved checkpoint") for line in lines) == 3, out.stdout


def test_lora_training_prints_no_third_party_noise(tmp_path):
    """peft brings in bitsandbytes, which logged "Failed to load CPU gemm_4bit_forward ..." on import, and
    torch.jit's deprecation notice showed as "mpt train: warning: ..."; neither says anything to the user."""
    recipe = yaml.safe_load(open(_recipe(tmp_path)))
    recipe["model"] = {"preset": None, "init_from": str(save_tiny_base(tmp_path / "base")), "lora": {"r": 4}}
    recipe["train"]["max_duration"] = "2ba"
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(recipe))
    out = subprocess.run([shutil.which("mpt"), "train", str(tmp_path / "lora.yaml")], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    assert "LoRA r=4" in out.stdout and "saved checkpoint" in out.stdout
    assert not [line for line in out.stdout.splitlines() if "warning" in line.lower() or "kernels" in line]


def test_the_python_api_shows_no_transformers_bars(tmp_path):
    code = ("from mpt import MPTConfig, MPTForCausalLM, load\n"
            "from mpt.model.hf import save_pretrained\n"
            "m = MPTForCausalLM(MPTConfig(d_model=32, n_heads=2, n_layers=2, vocab_size=416, max_seq_len=32))\n"
            f"save_pretrained(m, {str(tmp_path / 'a')!r})\n"
            f"m.save_pretrained({str(tmp_path / 'b')!r})\n"
            f"MPTForCausalLM.from_pretrained({str(tmp_path / 'b')!r})\n")
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code.replace("/a'", "/c'").replace("/b'", "/d'")],
                          capture_output=True, text=True, env={**env, "MPT_VERBOSE": "1"}, timeout=300)
    assert "Writing model shards" in loud.stderr and "Loading weights" in loud.stderr, loud.stderr
