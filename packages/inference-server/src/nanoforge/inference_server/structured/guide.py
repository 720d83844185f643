"""Token-level masks from a byte DFA: which vocabulary tokens keep the output inside the language.

What it does: ``TokenIndex`` holds every token's bytes (from ``TokenizerLike.token_bytes``, so our
byte-level BPE and HF tokenizers work alike) as one padded (V, L) byte matrix sorted by length; the mask of
a DFA state walks ALL tokens at once, one byte column at a time (numpy gathers into the DFA table), and is
cached per state. ``Guide`` = forced prefix token ids (e.g. a tool-call start special token) + a DFA +
forced suffix ids, then a stop token; ``GuideState`` tracks one request through it and is used both as the
engine's logits processor (``GuideProcessor``) and by the text layer to end the request when complete.
Special tokens never match DFA bytes (they are only forced as prefix / suffix or allowed as stops).
What it does not do: build the DFA (``regex_dfa``, ``json_schema``) or read requests (``build``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nanoforge.inference_server.structured.regex_dfa import DFA


class TokenIndex:
    """Every token's bytes as a length-sorted padded matrix (built once per tokenizer)."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None):
        V = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
        specials = set((getattr(tokenizer, "special_tokens", {}) or {}).values())
        data: list[bytes] = []
        for t in range(V):
            b = b""
            if t not in specials and t < tokenizer.vocab_size:
                try:
                    b = tokenizer.token_bytes(t)
                except (KeyError, ValueError, IndexError):
                    b = b""
            data.append(b)
        lengths = np.array([len(b) for b in data], dtype=np.int64)
        self.vocab_size = V
        self.data = data
        self.order = np.argsort(-lengths, kind="stable")  # longest first
        L = int(lengths.max()) if V else 0
        mat = np.full((V, max(L, 1)), 256, dtype=np.int32)  # 256 = padding column (state unchanged)
        for row, t in enumerate(self.order):
            b = data[t]
            mat[row, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        sorted_len = lengths[self.order]
        # counts[j]: number of tokens (a prefix of the sorted order) with more than j bytes; cols[j] their
        # j-th bytes, contiguous (one gather per column into the flattened DFA table).
        self.counts = [int((sorted_len > j).sum()) for j in range(L)]
        self.cols = [np.ascontiguousarray(mat[:n, j]) for j, n in enumerate(self.counts)]
        self.nonempty = np.zeros(V, dtype=bool)
        self.nonempty[self.order[sorted_len > 0]] = True

    def allowed(self, dfa: DFA, state: int) -> np.ndarray:
        """(V,) bool: tokens whose bytes, walked from ``state``, stay alive."""
        s = np.full(self.vocab_size, state, dtype=np.int32)
        flat = dfa.table.ravel()  # (n_states + 1) * 257, row-major: next = flat[state * 257 + byte]
        width = dfa.table.shape[1]
        for col, n in zip(self.cols, self.counts):
            s[:n] = flat[s[:n] * width + col]
        out = np.zeros(self.vocab_size, dtype=bool)
        out[self.order] = s != dfa.dead
        return out & self.nonempty


class Guide:
    """A compiled constraint for one tokenizer: prefix ids, a DFA, suffix ids, then a stop token.

    Masks are cached per DFA state (thread-safe), so requests sharing a guide share the work.
    """

    def __init__(
        self,
        dfa: DFA,
        index: TokenIndex,
        stop_ids: Sequence[int],
        prefix_ids: Sequence[int] = (),
        suffix_ids: Sequence[int] = (),
    ):
        self.dfa = dfa
        self.index = index
        self.stop_ids = sorted(set(stop_ids))
        self.prefix_ids = list(prefix_ids)
        self.suffix_ids = list(suffix_ids)
        self._masks: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def state_mask(self, state: int) -> torch.Tensor:
        """(V,) bool torch mask of DFA state ``state`` (stop ids included when accepting, no suffix)."""
        m = self._masks.get(state)
        if m is None:
            arr = self.index.allowed(self.dfa, state)
            if self.dfa.accepting[state] and not self.suffix_ids:
                arr[[t for t in self.stop_ids if t < arr.shape[0]]] = True
            m = torch.from_numpy(arr)
            with self._lock:
                self._masks[state] = m
        return m

    def start(self) -> GuideState:
        """A fresh per-request state."""
        return GuideState(self)


class GuideState:
    """Where one request is in its guide: phase 0 prefix, 1 DFA, 2 suffix, 3 complete (stop only)."""

    def __init__(self, guide: Guide):
        self.guide = guide
        self.phase = 0 if guide.prefix_ids else 1
        self.pos = 0
        self.state = guide.dfa.start
        self.failed = False
        self._settle()

    def _settle(self) -> None:
        g = self.guide
        if self.phase == 0 and self.pos >= len(g.prefix_ids):
            self.phase, self.pos = 1, 0
        if self.phase == 1 and g.dfa.terminal[self.state]:
            self.phase, self.pos = 2, 0
        if self.phase == 2 and self.pos >= len(g.suffix_ids):
            self.phase = 3

    @property
    def complete(self) -> bool:
        """True once the structure is finished (only a stop may follow)."""
        return self.phase == 3

    @property
    def accepting(self) -> bool:
        """True when the output so far is a complete match (a stop token may end it)."""
        return self.phase == 3 or (
            self.phase == 1 and not self.guide.suffix_ids and bool(self.guide.dfa.accepting[self.state])
        )

    def advance(self, token_id: int) -> None:
        """Consume one generated token (a stop token is ignored; an off-grammar token marks ``failed``)."""
        g = self.guide
        if token_id in g.stop_ids and self.accepting:
            self.phase = 3
            return
        if self.phase == 1:
            t = int(token_id)
            ok = 0 <= t < g.index.vocab_size and g.index.nonempty[t]
            self.state = g.dfa.walk(self.state, g.index.data[t]) if ok else g.dfa.dead
            if self.state == g.dfa.dead:
                self.failed = True
        elif self.phase in (0, 2):
            forced = g.prefix_ids if self.phase == 0 else g.suffix_ids
            if token_id != forced[self.pos]:
                self.failed = True
            self.pos += 1
        else:
            self.failed = True
        self._settle()

    def mask(self, vocab: int) -> torch.Tensor:
        """(vocab,) bool: the tokens allowed next."""
        g = self.guide
        if self.phase == 1:
            m = g.state_mask(self.state)
            if m.shape[0] != vocab:
                m = torch.cat([m, torch.zeros(max(0, vocab - m.shape[0]), dtype=torch.bool)])[:vocab]
            return m
        out = torch.zeros(vocab, dtype=torch.bool)
        ids = (
            [g.prefix_ids[self.pos]]
            if self.phase == 0
            else [g.suffix_ids[self.pos]]
            if self.phase == 2
            else g.stop_ids
        )
        out[[t for t in ids if t < vocab]] = True
        return out


class GuideProcessor:
    """The engine's logits processor: masks everything off-grammar to -inf.

    It advances its own ``GuideState`` by the tokens appended to the history since the last call.
    """

    def __init__(self, guide: Guide):
        self.state = guide.start()
        self.seen = 0

    def __call__(self, history: list[int], logits: torch.Tensor) -> torch.Tensor:
        for t in history[self.seen :]:
            self.state.advance(t)
        self.seen = len(history)
        if self.state.failed:
            raise ValueError("the output left the grammar (a token outside the mask was chosen)")
        mask = self.state.mask(logits.shape[-1]).to(logits.device)
        if not bool(mask.any()):
            raise ValueError("no token can continue the structured output (the tokenizer cannot spell it)")
        return logits.masked_fill(~mask, float("-inf"))
