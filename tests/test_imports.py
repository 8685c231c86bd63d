"""The package imports lazily: help and data tools load no torch, transformers or model code.

Checked in a fresh interpreter through ``sys.modules`` (what got imported), never by timing.
"""

import json
import subprocess
import sys

import pytest

# mpt.model.fields (the config declaration, no torch) may load; the network's modules may not.
HEAVY = ("torch", "transformers", "mpt.model.config", "mpt.model.modeling", "mpt.infer", "mpt.train", "mpt.eval")


def loaded_after(code: str) -> set[str]:
    """Run ``code`` in a new interpreter; return which of HEAVY it imported."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_mpt_loads_nothing_heavy():
    assert loaded_after("import mpt") == set()


def test_import_mpt_data_loads_no_model_inference_or_transformers():
    assert loaded_after("import mpt.data") == set()


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["chat", "--help"], ["train", "--help"],
                                  ["eval", "--help"], ["tokenizer", "train", "--help"], ["prep", "--help"],
                                  ["export", "--help"], ["convert", "--help"], ["demo", "--help"],
                                  ["model-info", "--help"], ["quickstart", "--help"], ["lm-eval", "--help"],
                                  ["serve", "--help"]])
def test_help_loads_no_torch_transformers_or_model(argv):
    code = f"from mpt.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert loaded_after(code) & {"torch", "transformers", "mpt.model.config", "mpt.model.modeling", "mpt.train"} == set()


def test_names_still_import_from_the_package():
    code = ("from mpt import KVCache, MPTConfig, MPTForCausalLM, load\n"
            "from mpt.data import PrepConfig, StreamingDataset\n"
            "from mpt.infer import generate_ids\n"
            "assert callable(load) and MPTForCausalLM.__name__ == 'MPTForCausalLM'")
    assert {"torch", "mpt.model.modeling", "mpt.infer"} <= loaded_after(code)


def test_unknown_names_are_attribute_errors():
    import mpt

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mpt.nope  # noqa: B018


def test_the_cli_sets_the_openmp_wait_before_torch_loads_unless_the_user_chose():
    """OpenMP's wait settings are read once, when torch's OpenMP runtime starts: they must be set before that.
    Decoding commands spin a bounded while, the others wait passively."""
    import os

    probe = ("import os, sys\nimport mpt.cli\nmpt.cli.openmp_defaults(mpt.cli.parse(sys.argv[1:]).command)\n"
             "import torch\n"
             "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def settings(*argv: str, **extra: str) -> list[str]:
        run = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True,
                             env={**env, **extra})
        return run.stdout.split()[-2:]

    assert settings("train", "recipe.yaml") == ["PASSIVE", "None"]
    assert settings("serve", "my-mpt") == ["None", "30000"]
    assert settings("generate", "my-mpt", "Hi") == ["None", "30000"]
    assert "torch" not in loaded_after("import mpt.cli")  # so the values are in place when torch starts OpenMP
    assert settings("train", "recipe.yaml", OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "None"]
    assert settings("serve", "my-mpt", GOMP_SPINCOUNT="5") == ["None", "5"]
