"""The model side of evaluation: log-likelihoods of continuations, and greedy generation.

:class:`EvalModel` is what the task types call. Speed comes from three things, none of which
changes a score: an example's shared prefix runs once and its KV cache serves every option
(:func:`score_groups`); batches are cut densely from rows of similar length (:func:`plan`); and
the vocabulary projection runs only where a token is scored (:func:`_score_rows`). Which models
reuse prefixes is decided in :class:`_Driver`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Hugging Face model types whose forward takes position_ids and a DynamicCache, and whose logits
# are get_output_embeddings()(last hidden state); llama and gpt2 are tested against lm-eval and
# float64, mistral / qwen2 / qwen3 share Llama's code in transformers.
HF_REUSE = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


@dataclass
class EvalModel:
    """A model, its tokenizer and the batching settings of one evaluation: what a task type runs on."""

    model: object
    tokenizer: object
    batch_size: int
    pad: int
    eos: int | None
    prefix_reuse: bool = True
    max_tokens: int = 65536
    progress: object = None  # a tqdm bar advanced once per example, or None

    def loglikelihoods(self, encoded: list, greedy: bool) -> list[list[SeqScore]]:
        """Per example (an :class:`~mpt.eval.encode.Encoded`), every context followed by every
        continuation, in that order, scored on the continuation; ``greedy`` also checks argmax."""
        groups = [ScoreGroup([c + t for c in e.contexts for t in e.continuations],
                             [len(c) for c in e.contexts for _ in e.continuations]) for e in encoded]
        return score_groups(self.model, groups, self.batch_size, self.pad, self.progress, self.prefix_reuse,
                            self.max_tokens, greedy=greedy)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts``, decoded without special tokens."""
        new = generate_greedy(self.model, prompts, max_new_tokens, self.eos, self.pad, self.batch_size, self.progress)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


@dataclass
class ScoreGroup:
    """Sequences scored together (one example's options); ``starts[i]`` = first scored position."""

    seqs: list[list[int]]
    starts: list[int]


@dataclass
class SeqScore:
    logprob: float  # sum of log p(token) over the scored tokens
    n_tokens: int
    greedy: bool  # every scored token was the argmax


def _is_ours(model) -> bool:
    from ..model import MPTForCausalLM

    return isinstance(model, MPTForCausalLM)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sliding(config) -> bool:
    types = getattr(config, "layer_types", None)
    if types:
        return any("sliding" in str(t) for t in types)
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)


class _Driver:
    """One model's forward, cache and output head, as the scorer needs them.

    Prefixes are reused by our :class:`~mpt.model.MPTForCausalLM` unless it has learned position
    embeddings (it derives positions from the padding mask and checks the padded length against
    ``max_seq_len``), and by Hugging Face causal LMs whose type is in ``HF_REUSE`` (decoder only,
    positions from ``position_ids``, logits a plain linear map of the last hidden state) unless a
    sliding window is set. Any other model gets right-padded whole sequences and its own logits.
    """

    def __init__(self, model, prefix_reuse: bool) -> None:
        self.model = model
        self.device = _device(model)
        self.config = model.config
        if _is_ours(model):
            self.kind = "ours"
            self.body, self.head = model.transformer, model.logits
            self.reuse = prefix_reuse and not model.config.learned_pos_emb
        elif getattr(model.config, "model_type", None) in HF_REUSE and not _sliding(model.config) \
                and model.get_output_embeddings() is not None:
            self.kind = "hf"
            self.body, self.head = model.base_model, model.get_output_embeddings()
            params = inspect.signature(self.body.forward).parameters
            self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
            self.reuse = prefix_reuse
        else:
            self.kind = "other"
            self.body, self.head = model, None
            self.reuse = False

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None, cache):
        """Hidden states at every position (``self.head`` maps them to logits), or logits without a head."""
        if self.kind == "ours":
            return self.body(ids, attention_mask=mask, cache=cache, use_cache=cache is not None).last_hidden_state
        if self.kind == "hf":
            kw = {self.cache_kw: cache} if cache is not None else {}
            return self.body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                             **kw).last_hidden_state
        return self.body(input_ids=ids, attention_mask=mask).logits

    def new_cache(self, capacity: int):
        if self.kind == "ours":
            from ..model import KVCache

            return KVCache(self.config.n_layers, capacity=capacity)
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def kv(self, cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the cached keys and values, (batch, kv heads, tokens, head dim)."""
        if self.kind == "ours":
            return [(k[:, :, :n], v[:, :, :n]) for k, v, n in zip(cache.keys, cache.values, cache.lengths, strict=True)]
        return [(layer.keys, layer.values) for layer in cache.layers]

    def from_kv(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], length: int):
        """A cache holding the first ``length`` columns of ``pairs``; our cache writes the new tokens
        into the columns after them (so they must exist), a Hugging Face cache appends."""
        if self.kind == "ours":
            from ..model import KVCache

            cache = KVCache(self.config.n_layers)
            cache.keys, cache.values = [k for k, _ in pairs], [v for _, v in pairs]
            cache.lengths = [length] * len(pairs)
            return cache
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k[:, :, :length], v[:, :, :length]) for k, v in pairs],
                            config=self.config)


class _PrefixCache:
    """The keys and values of a chunk's prefixes, left-padded to one width, one row per example,
    followed by ``room`` free columns, so that rows taken for a suffix pass arrive with space for
    the suffix in the same copy."""

    def __init__(self, n: int, width: int, room: int, device) -> None:
        self.width, self.room = width, room
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.mask = torch.zeros(n, width, dtype=torch.long, device=device)

    def put(self, first: int, mask: torch.Tensor, pairs) -> None:
        """Rows ``first...`` from one prefix pass of ``mask.shape[1]`` columns (right-aligned)."""
        rows, w = slice(first, first + mask.shape[0]), slice(self.width - mask.shape[1], self.width)
        if self.pairs is None:
            # zeros, not empty: a masked key still multiplies its value by 0, and 0 * NaN is NaN
            size = self.width + self.room
            self.pairs = [(k.new_zeros(len(self.mask), k.shape[1], size, k.shape[3]),
                           v.new_zeros(len(self.mask), v.shape[1], size, v.shape[3])) for k, v in pairs]
        for (kb, vb), (k, v) in zip(self.pairs, pairs, strict=True):
            kb[rows, :, w] = k
            vb[rows, :, w] = v
        self.mask[rows, w] = mask

    def take(self, index: torch.Tensor, width: int):
        """Rows ``index``: keys and values per layer (the last ``width`` prefix columns, then the free
        ones), key mask and real prefix lengths."""
        cols = slice(self.width - width, self.width + self.room)
        # Advanced indexing rather than index_select: benchmarks/bench_kernels.py times both on CPU (BENCHMARKS.md).
        pairs = [(k[index, :, cols], v[index, :, cols]) for k, v in self.pairs]
        mask = self.mask[index, self.width - width:]
        return pairs, mask, mask.sum(1)


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def _fill(order: list[int], lengths: list[int], max_rows: int, max_tokens: int, fixed: int = 0) -> list[list[int]]:
    """Consecutive runs of ``order`` (longest first) with at most ``max_rows`` items and
    ``rows * (fixed + longest) <= max_tokens``; an item alone over the budget still runs, alone."""
    out, cur = [], []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1 > max_rows or (len(cur) + 1) * (fixed + longest) > max_tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def _split(order: list[int], lengths: list[int], max_rows: int, max_tokens: int, fixed: int = 0,
           overhead: int = 64) -> list[list[int]]:
    """Cut ``order`` (longest first) into consecutive batches of at most ``max_rows`` items and
    ``rows * (fixed + longest) <= max_tokens``, with the fewest padded tokens plus ``overhead``
    per batch (what one more forward costs, in tokens). Greedy filling would put a long item's
    padding on a whole batch; this is an exact dynamic programme over the cut points."""
    n = len(order)
    best = [0] + [None] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(j - max_rows, 0) - 1, -1):  # the batch order[i:j]; its longest is order[i]
            rows, longest = j - i, lengths[order[i]]
            if rows > 1 and rows * (fixed + longest) > max_tokens:
                break  # a longer batch only grows
            cost = best[i] + rows * longest + overhead
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j:
        out.append(order[cut[j]:j])
        j = cut[j]
    return out[::-1]


@dataclass
class _Chunk:
    """Examples whose prefixes share one cache, the prefix passes that fill it, and the suffix batches."""

    groups: list[int]  # empty: no prefix pass (every row is a whole sequence)
    prefix_len: int  # the longest prefix: the cache's width
    prefix_batches: list[list[int]]  # indices into ``groups``
    batches: list[list[int]]  # row ids
    rows: list[int] = field(default_factory=list)  # every row id of the chunk


def plan(prefixes: list[int], rows_of: list[list[int]], row_len: list[int], max_rows: int, max_tokens: int,
         overhead: int = 64) -> list[_Chunk]:
    """Prefix passes and suffix batches for examples with ``prefixes[g]`` shared tokens whose rows
    ``rows_of[g]`` have ``row_len[r]`` suffix tokens.

    Examples are sorted by prefix length and taken into a chunk of at most ``2 * max_rows`` examples
    whose cache (examples x longest prefix) holds at most ``max_tokens / 4`` tokens; the chunk's
    prefixes run in batches of at most
    ``max_rows`` examples and ``max_tokens`` padded tokens. All rows of the chunk are then sorted by
    suffix length and cut into batches (:func:`_split`) of at most ``max_rows`` rows, each row
    counted with the padded prefix it attends to, so the budget also bounds the replicated cache.
    Examples without a shared prefix form the last chunk, their rows sorted together.
    """
    longest_row = [max((row_len[r] for r in rows), default=0) for rows in rows_of]
    with_prefix = sorted((g for g, p in enumerate(prefixes) if p > 0), key=lambda g: (-prefixes[g], -longest_row[g]))
    # A chunk spans two prefix batches' worth of examples: enough rows for the suffix sort, while its
    # cache stays small and its suffix rows attend to prefixes of similar length.
    chunks = [_Chunk(gs, prefixes[gs[0]], [], [])
              for gs in _fill(with_prefix, prefixes, 2 * max_rows, max(max_tokens // 4, 1))]
    alone = [g for g, p in enumerate(prefixes) if p == 0]
    if alone:
        chunks.append(_Chunk([], 0, [], []))
    for chunk in chunks:
        slots = list(range(len(chunk.groups)))
        chunk.prefix_batches = _split(slots, [prefixes[g] for g in chunk.groups], max_rows, max_tokens,
                                      overhead=overhead)
        rows = [r for g in (chunk.groups or alone) for r in rows_of[g]]
        rows.sort(key=lambda r: -row_len[r])
        chunk.rows = rows
        chunk.batches = _split(rows, row_len, max_rows, max_tokens, fixed=chunk.prefix_len, overhead=overhead)
    return chunks


def _score_rows(features: torch.Tensor, targets: torch.Tensor, row_of_token: torch.Tensor, n_rows: int,
                head=None, chunk: int = 128, greedy: bool = True):
    """Per row: summed log-probabilities of ``targets`` and whether each was the argmax.

    Only the positions that predict a scored token come here, so the vocabulary projection (the
    biggest matmul of a small model) runs there and not over the whole prompt.
    ``features`` are logits, or hidden states when ``head`` maps them to logits. Chunks of 128
    positions keep each (chunk, vocab) block small (benchmarks/bench_kernels.py times it against one block),
    and the fused cross-entropy gives -log p(target) without a log-softmax matrix. A target whose
    logit equals the row maximum counts as greedy; ``greedy=False`` skips that pass (multiple
    choice needs only the log-probabilities) and reports False.
    """
    lps, hits = [], []
    for f, t in zip(features.split(chunk), targets.split(chunk), strict=True):
        logits = (head(f) if head is not None else f).float()
        lps.append(-F.cross_entropy(logits, t, reduction="none"))
        if greedy:
            hits.append(logits.gather(-1, t[:, None]).squeeze(-1) >= logits.amax(dim=-1))
        else:
            hits.append(torch.zeros_like(t, dtype=torch.bool))
    tok_lp, hit = torch.cat(lps), torch.cat(hits).float()
    device = tok_lp.device
    lp = torch.zeros(n_rows, dtype=torch.float64, device=device).index_add_(0, row_of_token, tok_lp.double())
    misses = torch.zeros(n_rows, device=device).index_add_(0, row_of_token, 1 - hit)
    count = torch.zeros(n_rows, device=device).index_add_(0, row_of_token, torch.ones_like(hit))
    return lp.tolist(), (misses == 0).tolist(), count.long().tolist()


@torch.inference_mode()
def score_groups(model, groups: list[ScoreGroup], batch_size: int = 64, pad_id: int = 0,
                 progress=None, prefix_reuse: bool = True, max_tokens: int = 65536,
                 greedy: bool = True) -> list[list[SeqScore]]:
    """Log-likelihood of every sequence's scored part.

    ``batch_size`` counts sequences per forward, ``max_tokens`` their padded tokens (a suffix row
    counted with the prefix it attends to).

    Prefix reuse, for any causal LM: an example's options share their context (multiple choice) or
    most of it (schema: the demonstrations and the sentence up to the blank). The shared prefix runs
    once; its KV cache is copied to one row per option and only the differing suffixes run against
    it. Prefixes are left-padded, so every suffix starts at the same column and the real tokens of a
    row sit in consecutive columns; each row then computes what it would alone: our MPT's ALiBi bias
    depends only on distances, and a Hugging Face model (Llama's RoPE, GPT-2's learned positions,
    ...) is given every token's own position (``position_ids``) and runs on its own cache class
    (``DynamicCache``). An example with one sequence (language modelling), or any example when
    reuse is off, has no prefix: its sequence is one row, sorted by length among all the others.
    """
    driver = _Driver(model, prefix_reuse)
    seqs, starts, group_of, rows_of = [], [], [], []
    for g, grp in enumerate(groups):
        rows_of.append(list(range(len(seqs), len(seqs) + len(grp.seqs))))
        seqs += grp.seqs
        starts += grp.starts
        group_of += [g] * len(grp.seqs)
    # The prefix must end before the first scored token's predictor, which runs in the suffix pass.
    # One sequence alone has nothing to share: it runs whole.
    prefixes = [min(_common_prefix(grp.seqs), min(grp.starts) - 1) if driver.reuse and len(grp.seqs) > 1 else 0
                for grp in groups]
    row_len = [len(seqs[r]) - prefixes[group_of[r]] for r in range(len(seqs))]
    scores: list[SeqScore | None] = [None] * len(seqs)
    pending = [len(rows) for rows in rows_of]
    # What one more forward costs, in tokens: small matrices run well below peak on CPU (measured:
    # a 50-token forward of a 135M model at a fraction of a 3,000-token one's rate); on GPU, launches.
    overhead = 512 if driver.device.type == "cpu" else 2048
    for chunk in plan(prefixes, rows_of, row_len, max(batch_size, 1), max_tokens, overhead):
        prefix = _prefix_passes(driver, chunk, groups, prefixes, row_len, pad_id) if chunk.groups else None
        slot = {g: i for i, g in enumerate(chunk.groups)}
        for batch in chunk.batches:
            cut = [prefixes[group_of[r]] for r in batch]
            lp, hit, count = _suffix_pass(driver, [seqs[r][c:] for r, c in zip(batch, cut, strict=True)],
                                          [starts[r] - c for r, c in zip(batch, cut, strict=True)],
                                          [slot[group_of[r]] for r in batch] if prefix else None, max(cut), prefix,
                                          pad_id, greedy)
            for i, r in enumerate(batch):
                scores[r] = SeqScore(lp[i], count[i], bool(hit[i]))
                g = group_of[r]
                pending[g] -= 1
                if progress is not None and pending[g] == 0:
                    progress.update(1)
    return [[scores[r] for r in rows] for rows in rows_of]  # type: ignore[misc]


def _ids(rows: list[list[int]], width: int, pad_id: int, device, left: bool):
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            cols = slice(width - len(row), width) if left else slice(0, len(row))
            ids[r, cols] = torch.tensor(row)
            mask[r, cols] = 1
    return ids.to(device), mask.to(device)


def _prefix_passes(driver: _Driver, chunk: _Chunk, groups: list[ScoreGroup], prefixes: list[int],
                   row_len: list[int], pad_id: int) -> _PrefixCache:
    """The chunk's shared prefixes through the model, left-padded, into one cache."""
    room = max(row_len[r] for r in chunk.rows) if driver.kind == "ours" else 0
    out = _PrefixCache(len(chunk.groups), chunk.prefix_len, room, driver.device)
    for batch in chunk.prefix_batches:  # consecutive slots, longest prefix first
        members = [chunk.groups[i] for i in batch]
        ids, mask = _ids([groups[g].seqs[0][:prefixes[g]] for g in members], prefixes[members[0]], pad_id,
                         driver.device, left=True)
        cache = driver.new_cache(ids.shape[1])
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # each row's first real token is position 0
        driver.forward(ids, mask, positions, cache)
        out.put(batch[0], mask, driver.kv(cache))
    return out


def _suffix_pass(driver: _Driver, rows: list[list[int]], starts: list[int], slots: list[int] | None, width: int,
                 prefix: _PrefixCache | None, pad_id: int, greedy: bool):
    """Right-padded rows (after their prefix of at most ``width`` tokens, if any) through the model;
    scores of each row's scored part."""
    device = driver.device
    longest = max(len(r) for r in rows)
    ids, mask = _ids(rows, longest, pad_id, device, left=False)
    cache = key_mask = positions = None
    if prefix is not None:
        pairs, prefix_mask, prefix_len = prefix.take(torch.tensor(slots, device=device), width)
        cache = driver.from_kv(pairs, width)
        # Right padding needs no mask (a real token never looks right); the prefix's left padding does.
        key_mask = torch.cat([prefix_mask, torch.ones_like(ids)], dim=1)
        # A padding column repeats its row's last position, so no position exceeds the real ones.
        positions = prefix_len[:, None] + torch.minimum(torch.arange(longest, device=device)[None],
                                                        mask.sum(1, keepdim=True) - 1)
    elif driver.kind == "other":
        key_mask = mask  # a model we know less about gets its padding marked
    features = driver.forward(ids, key_mask, positions, cache)
    r_idx, c_idx, targets = [], [], []
    for r, (row, start) in enumerate(zip(rows, starts, strict=True)):
        # The token at column c is predicted from column c - 1.
        r_idx += [r] * (len(row) - start)
        c_idx += range(start - 1, len(row) - 1)
        targets += row[start:]
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    r_idx, c_idx, targets = t(r_idx), t(c_idx), t(targets)
    return _score_rows(features[r_idx, c_idx], targets, r_idx, len(rows), head=driver.head, greedy=greedy)


@torch.inference_mode()
def generate_greedy(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, pad_id: int,
                    batch_size: int = 32, progress=None) -> list[list[int]]:
    """Greedy continuations (new token ids only, cut after EOS) of left-padded prompts, batched by length."""
    device = _device(model)
    out: list[list[int] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        t_max = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), t_max), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(idx), t_max, dtype=torch.long, device=device)
        for r, i in enumerate(idx):
            ids[r, t_max - len(prompts[i]):] = torch.tensor(prompts[i], device=device)
            mask[r, t_max - len(prompts[i]):] = 1
        if _is_ours(model):
            from ..infer import generate_ids

            full = generate_ids(model, ids, max_new_tokens, eos_token_id=eos_id,
                                attention_mask=mask if not bool(mask.all()) else None)
        else:
            full = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id)
        for r, i in enumerate(idx):
            new = full[r, t_max:].tolist()
            if eos_id is not None and eos_id in new:
                new = new[:new.index(eos_id)]
            out[i] = new
        if progress is not None:
            progress.update(len(idx))
    return out  # type: ignore[return-value]
