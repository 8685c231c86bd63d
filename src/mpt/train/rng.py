"""Every random generator's state (Python, NumPy, torch, CUDA) as tensors and plain values.

Saved per rank with each checkpoint and around in-training evaluation. Nothing in it is a pickled
object, so a checkpoint's RNG file loads with ``torch.load(weights_only=True)``: reading it can never
run code.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_bytes() -> bytes:
    """This process's :func:`rng_state`, serialised for a checkpoint's ``rank<N>.pt``."""
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return buffer.getvalue()


def read_rng(path) -> dict:
    """A ``rank<N>.pt`` (a local path or a UPath), loaded with ``weights_only``."""
    with path.open("rb") as f:
        return torch.load(io.BytesIO(f.read()), weights_only=True)
