"""One-forward helpers that need no decoding: log-likelihood of continuations and mean-pooled embeddings.

``score_rows`` runs ``context + continuation`` rows (left-padded, one forward per batch) and sums the
log-probabilities of the continuation tokens. ``embed_rows`` returns, per input, the mean over its real
tokens of the model's final hidden state after the final norm (``norm_f``'s output, read with a forward
hook, so core-model is not modified), optionally L2-normalised. Both run on the engine thread
(``Engine.run_exclusive``) because that thread owns the model. Both take an optional ``before_forward(n)``
hook called with the row count before every forward, which is how the caller routes the rows of a batch
to a LoRA adapter.
What it does not do: tokenization (``text.py``), sampling, or choosing / checking adapters (``text.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nanoforge.core_model.model import GPT


def _left_pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), T, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        idx[i, T - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, T - len(r) :] = 1
    return idx, mask


@torch.inference_mode()
def score_rows(
    model: GPT,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 8,
    before_forward: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Log-likelihood of each continuation after ``context`` (both non-empty token lists).

    ``before_forward(n)``, when given, is called with the batch's row count before each forward.

    Returns:
        Per continuation: ``{"logprob": sum, "num_tokens": n, "is_greedy": every token was the argmax,
        "token_logprobs": [...]}``.
    """
    device = model.tok_emb.weight.device
    out: list[dict[str, Any]] = []
    C = len(context)
    for b in range(0, len(continuations), batch_size):
        conts = continuations[b : b + batch_size]
        rows = [list(context) + list(c) for c in conts]
        idx, mask = _left_pad(rows, device)
        if before_forward is not None:
            before_forward(len(rows))
        logits = model(idx, attention_mask=mask)  # (B, T, V)
        T = idx.shape[1]
        for i, c in enumerate(conts):
            pad = T - len(rows[i])
            start = pad + C - 1  # logits at position p predict token p + 1
            lp = torch.log_softmax(logits[i, start : T - 1].float(), dim=-1)  # (n, V)
            target = idx[i, pad + C :]  # (n,)
            tok_lp = lp.gather(-1, target[:, None])[:, 0]
            greedy = bool((lp.argmax(-1) == target).all())
            out.append(
                {
                    "logprob": float(tok_lp.sum()),
                    "num_tokens": len(c),
                    "is_greedy": greedy,
                    "token_logprobs": tok_lp.tolist(),
                }
            )
    return out


@torch.inference_mode()
def embed_rows(
    model: GPT,
    rows: Sequence[Sequence[int]],
    normalize: bool = True,
    batch_size: int = 8,
    before_forward: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Mean-pooled final hidden states (after ``norm_f``), one vector of ``d_model`` floats per row.

    ``before_forward(n)``, when given, is called with the batch's row count before each forward.
    """
    device = model.tok_emb.weight.device
    captured: list[torch.Tensor] = []
    handle = model.norm_f.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        out: list[list[float]] = []
        for b in range(0, len(rows), batch_size):
            idx, mask = _left_pad(rows[b : b + batch_size], device)
            captured.clear()
            if before_forward is not None:
                before_forward(idx.shape[0])
            model(idx, attention_mask=mask)
            h = captured[-1].float()  # (B, T, C)
            m = mask[..., None].float()  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1)  # (B, C)
            if normalize:
                pooled = F.normalize(pooled, dim=-1)
            out.extend(pooled.tolist())
        return out
    finally:
        handle.remove()
