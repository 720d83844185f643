"""Token generation: one loop for every attention variant, with or without a decode state.

What it does: left-pads a batch of prompts, prefills once, then decodes one token per step; logits go
through repetition penalty -> temperature -> top-k -> top-p -> min-p (HF's order) and are sampled with a
``torch.Generator`` per row (per-request seeds), or argmax'ed when ``temperature == 0`` (greedy).
``stream_generate`` yields each step's tokens; ``generate`` collects them. A row stops at its first stop
token (which is kept as the row's last token, so callers can tell "stop" from "length") or after
``max_new_tokens``. With ``use_cache=False`` the whole sequence is re-run every step (the reference the
cached path must match token for token under greedy decoding).
What it does not do: text (token ids only), beam search, or scheduling of requests across steps (the
inference server does that on top of ``ModelState``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from nanoforge.core_model.model import GPT


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling knobs; see ``generate`` for their meaning."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_new_tokens, int)
            or isinstance(self.max_new_tokens, bool)
            or self.max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an int >= 0")
        if not (self.temperature >= 0):  # also rejects NaN
            raise ValueError(f"temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be an int >= 0 (0 = off)")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1] (1 = off)")
        if not (0 <= self.min_p < 1):
            raise ValueError(f"min_p={self.min_p!r} must be in [0, 1) (0 = off)")
        if not (self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty={self.repetition_penalty!r} must be > 0 (1 = off)")


def process_logits(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply penalty, temperature and top-k/top-p/min-p filters to (B, V) fp32 logits (-inf = removed).

    Example: top_k=2 on logits [1, 3, 2] keeps [-inf, 3, 2].
    """
    logits = logits.clone()
    if params.repetition_penalty != 1.0 and seen is not None:
        pen = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, pen, logits)
    if params.temperature > 0:
        logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = (
            cum - torch.softmax(sorted_logits, dim=-1)
        ) >= params.top_p  # mass before it already >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        floor = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def _make_generators(seed: int | Sequence[int | None] | None, batch: int) -> list[torch.Generator]:
    seeds = list(seed) if isinstance(seed, Sequence) else [seed] * batch
    if len(seeds) != batch:
        raise ValueError(f"seed has {len(seeds)} entries but there are {batch} prompts; give one per prompt")
    gens = []
    for s in seeds:
        g = torch.Generator()
        if s is None:
            g.seed()
        elif isinstance(s, int) and not isinstance(s, bool):
            g.manual_seed(s)
        else:
            raise ValueError(f"seed={s!r} must be an int or None")
        gens.append(g)
    return gens


def _check_prompts(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt (a list of token ids)")
    V = model.config.vocab_size
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token id")
        bad = [t for t in p if not (isinstance(t, int) and 0 <= t < V)]
        if bad:
            raise ValueError(f"prompt {i} has token ids {bad[:5]} outside [0, {V})")
        limited = model.config.positions == "learned" or any(
            model.config.layer_attention(j) == "linformer" for j in range(model.config.n_layer)
        )
        if limited and len(p) + max_new_tokens > model.config.max_seq_len:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens + max_new_tokens={max_new_tokens} > max_seq_len="
                f"{model.config.max_seq_len}; shorten the prompt or lower max_new_tokens"
            )


def _left_pad(
    prompts: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    T = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), T, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), T, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        idx[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return idx, (None if bool(mask.all()) else mask)


def stream_generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | Sequence[int | None] | None = None,
    stop_token_ids: Sequence[int] = (),
    use_cache: bool = True,
) -> Iterator[list[int | None]]:
    """Yield, per step, one new token per prompt (``None`` for rows that already stopped).

    Arguments are validated before the first step (errors are raised by this call, not by ``next``).
    Args: see ``generate``.
    """
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty)
    _check_prompts(model, prompts, max_new_tokens)
    gens = _make_generators(seed, len(prompts))
    if use_cache and max_new_tokens > 0 and not model.supports_decode:
        model.new_state(1, 1)  # raises the clear "no incremental decode state" error
    return _decode_loop(model, prompts, params, gens, stop_token_ids, use_cache)


@torch.inference_mode()
def _decode_loop(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    gens: list[torch.Generator],
    stop_token_ids: Sequence[int],
    use_cache: bool,
) -> Iterator[list[int | None]]:
    if params.max_new_tokens == 0:
        return
    device = model.tok_emb.weight.device
    B, V = len(prompts), model.config.vocab_size
    stops = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    idx, mask = _left_pad(prompts, device)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, dtype=torch.long)] = True
    done = torch.zeros(B, dtype=torch.bool, device=device)
    state = model.new_state(B, idx.shape[1] + params.max_new_tokens) if use_cache else None
    logits = model(idx, state=state, attention_mask=mask, last_only=True)[:, -1]  # (B, V)
    # Greedy without a penalty: the filters never remove the largest logit, so argmax needs no filtering.
    plain_greedy = params.temperature == 0 and params.repetition_penalty == 1.0
    for step in range(params.max_new_tokens):
        nxt = _sample(logits if plain_greedy else process_logits(logits, params, seen), params, gens)  # (B,)
        out: list[int | None] = [None if d else t for t, d in zip(nxt.tolist(), done.tolist())]
        yield out
        if seen is not None:
            seen[torch.arange(B, device=device), nxt] = True
        if len(stops):
            done = done | torch.isin(nxt, stops)
        if step == params.max_new_tokens - 1 or (len(stops) and bool(done.all())):
            return
        if state is not None:
            logits = model(nxt[:, None], state=state, last_only=True)[:, -1]
        else:
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
            logits = model(idx, attention_mask=mask, last_only=True)[:, -1]


def _sample(logits: torch.Tensor, params: SamplingParams, gens: list[torch.Generator]) -> torch.Tensor:
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)])


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | Sequence[int | None] | None = None,
    stop_token_ids: Sequence[int] = (),
    use_cache: bool = True,
) -> list[list[int]]:
    """Generate new tokens for each prompt (batched, left-padded).

    Args:
        model: a ``GPT`` (put it in eval mode for deterministic results).
        prompts: token-id lists, one per request (lengths may differ).
        max_new_tokens: most tokens generated per prompt (>= 0).
        temperature: 0 = greedy argmax; > 0 divides the logits.
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set with probability >= top_p (1 = off).
        min_p: drop tokens with probability < min_p * max probability (0 = off).
        repetition_penalty: CTRL penalty on tokens already in the prompt or output (1 = off).
        seed: one int for every row, one per row, or None (random).
        stop_token_ids: a row stops after emitting one of these (the stop token is kept).
        use_cache: decode incrementally from a ``ModelState`` (False re-runs the full sequence each step).

    Returns:
        The new tokens of each prompt.

    Raises:
        ValueError: an invalid sampling value (naming it and its accepted range), an empty or out-of-vocab
            prompt, or a prompt + max_new_tokens beyond max_seq_len for learned positions.
    """
    results: list[list[int]] = [[] for _ in prompts]
    for tokens in stream_generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop_token_ids=stop_token_ids,
        use_cache=use_cache,
    ):
        for row, t in zip(results, tokens):
            if t is not None:
                row.append(t)
    return results
