"""Per-request sampling for a batch of rows that each follow their own rules.

What it does: ``RowSampler`` holds one request's sampling state: its ``SamplingParams`` (the same filters as
``core_model.generate.process_logits``: repetition penalty -> temperature -> top-k -> top-p -> min-p), its
own ``torch.Generator`` (seeded per request, so a seeded request samples the same tokens alone or in any
batch), the set of tokens it has seen (for the penalty) and a list of logits processors (the hook for
structured output / grammar constraints). ``sample_batch`` draws one token per row of a (n, V) logits
batch: greedy rows without a penalty or processor are argmax'ed together; the others go row by row through
``process_logits``, so a request's tokens equal ``core_model.generate`` with the same seed.
Log-probabilities are those of the model's distribution after the logits processors and before
temperature / top-k / top-p / min-p (what OpenAI's ``logprobs`` reports).
What it does not do: stop strings or text (``text.py``), beam search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from nanoforge.core_model.generate import SamplingParams, process_logits
from nanoforge.inference_server.types import SamplingOptions

#: A logits processor: (token ids generated so far, (V,) fp32 logits) -> new (V,) logits.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass(eq=False)
class RowSampler:
    """Sampling state of one request.

    Attributes:
        params: the filters (``max_new_tokens`` unused here).
        generator: this request's random stream.
        seen: (V,) bool, tokens in the prompt or output (only kept when the penalty is on).
        processors: logits processors applied first, in order.
        top_logprobs: number of alternatives to report (0 = none).
        want_logprobs: report the chosen token's log-probability.
    """

    params: SamplingParams
    generator: torch.Generator
    seen: torch.Tensor | None = None
    processors: list[LogitsProcessor] = field(default_factory=list)
    top_logprobs: int = 0
    want_logprobs: bool = False

    @classmethod
    def from_options(
        cls,
        options: SamplingOptions,
        prompt_ids: Sequence[int],
        vocab_size: int,
        processors: Sequence[LogitsProcessor] = (),
        device: torch.device | str = "cpu",
    ) -> RowSampler:
        """Build the sampler of a request (``options`` must already be validated) for logits on ``device``."""
        params = SamplingParams(
            max_new_tokens=0,
            temperature=float(options.temperature),
            top_k=options.top_k,
            top_p=float(options.top_p),
            min_p=float(options.min_p),
            repetition_penalty=float(options.repetition_penalty),
        )
        gen = torch.Generator(device=device)
        if options.seed is None:
            gen.seed()
        else:
            gen.manual_seed(options.seed)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            seen[torch.tensor(list(prompt_ids), dtype=torch.long, device=device)] = True
        return cls(
            params=params,
            generator=gen,
            seen=seen,
            processors=list(processors),
            top_logprobs=options.top_logprobs,
            want_logprobs=options.logprobs or options.top_logprobs > 0,
        )

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that needs per-row work (batched argmax)."""
        return self.params.temperature == 0 and self.seen is None and not self.processors


@dataclass
class Draw:
    """One sampled token with its log-probability and the top alternatives ``[(id, logprob)]``."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None  # set when the row's logits processors raised (the request must fail)


def sample_batch(
    logits: torch.Tensor, samplers: Sequence[RowSampler], histories: Sequence[list[int]]
) -> list[Draw]:
    """Draw one token per row.

    Args:
        logits: (n, V) fp32 logits of the rows' last positions.
        samplers: one per row.
        histories: tokens generated so far per row (given to logits processors).

    Returns:
        One ``Draw`` per row.
    """
    n = logits.shape[0]
    if all(s.plain_greedy and not s.want_logprobs for s in samplers):
        # The common case (every row greedy, nothing per row): one argmax, no index tensors.
        return [Draw(t) for t in logits.argmax(dim=-1).tolist()]
    errors: dict[int, str] = {}
    if any(s.processors for s in samplers):
        logits = logits.clone()
        for i, s in enumerate(samplers):
            try:
                for proc in s.processors:
                    logits[i] = proc(histories[i], logits[i])
            except Exception as e:  # one request's broken processor must not fail its batch neighbours
                errors[i] = f"logits processor failed: {type(e).__name__}: {e}"
    tokens: list[int] = [0] * n
    greedy_rows = [i for i, s in enumerate(samplers) if s.plain_greedy]
    if greedy_rows:
        idx = torch.tensor(greedy_rows, dtype=torch.long, device=logits.device)
        for i, t in zip(greedy_rows, logits.index_select(0, idx).argmax(dim=-1).tolist()):
            tokens[i] = t
    for i, s in enumerate(samplers):
        if s.plain_greedy:
            continue
        row = process_logits(logits[i : i + 1], s.params, None if s.seen is None else s.seen[None])  # (1, V)
        if s.params.temperature == 0:
            tokens[i] = int(row.argmax(dim=-1).item())
        else:
            probs = torch.softmax(row, dim=-1)[0]
            tokens[i] = int(torch.multinomial(probs, 1, generator=s.generator).item())
    draws = [Draw(t, error=errors.get(i)) for i, t in enumerate(tokens)]
    want = [i for i, s in enumerate(samplers) if s.want_logprobs]
    if want:
        idx = torch.tensor(want, dtype=torch.long, device=logits.device)
        logp = torch.log_softmax(logits.index_select(0, idx).float(), dim=-1)  # (w, V)
        for j, i in enumerate(want):
            draws[i].logprob = float(logp[j, tokens[i]].item())
            k = samplers[i].top_logprobs
            if k > 0:
                vals, ids = torch.topk(logp[j], min(k, logp.shape[-1]))
                draws[i].top = list(zip(ids.tolist(), vals.tolist()))
    for i, s in enumerate(samplers):
        if s.seen is not None:
            s.seen[tokens[i]] = True
    return draws
