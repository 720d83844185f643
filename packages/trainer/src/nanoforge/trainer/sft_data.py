"""Instruction / chat data for SFT: JSONL records -> rendered chats -> packed blocks with assistant-only labels.

A record is one JSON object per line, either a chat ``{"messages": [{"role", "content"}, ...]}`` or an
Alpaca-style ``{"instruction", "input"?, "output", "system"?}`` (turned into system?/user/assistant
messages, the input appended to the instruction after a blank line). Each conversation is rendered by the
tokenizer's chat renderer (``render_chat``), which marks the assistant's tokens with loss-mask 1.

Packing: conversations are concatenated into one stream, separated by the end-of-text token (mask 0),
and the stream is cut into blocks of ``block_size + 1`` tokens overlapping by one (stride ``block_size``),
so every token is a target exactly once. A label is the next token where that token's mask is 1 and
``-100`` (ignored by cross-entropy) elsewhere: the mask survives packing, and the tokens that count in the
loss are exactly the assistant tokens (tested). Cross-document attention: blocks use plain causal
attention, so a conversation can attend to the tail of the previous one in its block (as in GPT-style
pretraining packing); the separator token tells the model where one ends. Positions are not reset.
We accept this for simplicity; block-diagonal masks would need a varlen attention kernel.

What it does not do: tokenize without a chat template, stream corpora bigger than memory, or truncate
silently (long conversations simply span blocks).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanoforge.tokenizer.chat import RenderedChat, render_chat

IGNORE_INDEX = -100
Messages = list[dict[str, Any]]


def record_to_messages(record: Any, where: str) -> Messages:
    """One JSONL record -> chat messages.

    Example: ``{"instruction": "Add", "input": "2+2", "output": "4"}`` ->
    ``[{"role": "user", "content": "Add\\n\\n2+2"}, {"role": "assistant", "content": "4"}]``.

    Raises:
        ValueError: neither a ``messages`` record nor an instruction/output record (names ``where``).
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
            raise ValueError(f"{where}: no assistant message, so nothing to learn from")
        return msgs
    if "instruction" in record and "output" in record:
        fields = {k: record.get(k, "") for k in ("instruction", "input", "output", "system")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{where}: fields {bad} must be strings")
        prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        msgs = [{"role": "system", "content": fields["system"]}] if fields["system"] else []
        return [
            *msgs,
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": fields["output"]},
        ]
    raise ValueError(
        f"{where}: unknown record with keys {sorted(record)}; accepted: "
        "{'messages': [...]} or {'instruction', 'input'?, 'output', 'system'?}"
    )


def read_jsonl(path: str | os.PathLike[str]) -> list[Messages]:
    """All conversations of a JSONL file (blank lines skipped).

    Raises:
        ValueError: missing file, invalid JSON or a bad record, naming the line.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"SFT data file {p} not found; expected JSONL with 'messages' or instruction/output records"
        )
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: invalid JSON ({e.msg})") from None
        out.append(record_to_messages(record, f"{p}:{n}"))
    if not out:
        raise ValueError(f"{p}: no records")
    return out


def split_val(convs: list[Messages], val_fraction: float) -> tuple[list[Messages], list[Messages]]:
    """Deterministic train/val split by hashing each conversation's JSON (independent of file order)."""
    train: list[Messages] = []
    val: list[Messages] = []
    for conv in convs:
        h = int(hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()[:8], 16)
        (val if h / 0xFFFFFFFF < val_fraction else train).append(conv)
    return train, val


def render_all(tok: Any, convs: Sequence[Messages]) -> list[RenderedChat]:
    """Render every conversation (errors name the conversation index)."""
    out = []
    for i, conv in enumerate(convs):
        try:
            out.append(render_chat(tok, conv))
        except ValueError as e:
            raise ValueError(f"conversation {i}: {e}") from e
    return out


@dataclass(frozen=True)
class Packed:
    """Packed blocks: inputs and labels of shape (N, T); labels are -100 where no loss is taken."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def loss_tokens(self) -> int:
        return int((self.y != IGNORE_INDEX).sum())


def pack(chats: Sequence[RenderedChat], block_size: int, sep_id: int, pad_id: int = 0) -> Packed:
    """Concatenate chats (``sep_id`` between them, mask 0) and cut into (N, block_size) blocks.

    Example (block 4): ids ``a b c | d e`` with mask ``0 1 1 0 1`` -> stream ``a b c S d e`` and blocks
    x ``[a b c S]``, y ``[b c -100 -100]`` then x ``[d e P P]``... : only b, c, e are ever targets.
    """
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} must be > 0")
    ids: list[int] = []
    mask: list[int] = []
    for chat in chats:
        ids += [*chat.ids, sep_id]
        mask += [*chat.loss_mask, 0]
    n_blocks = max(1, -(-(len(ids) - 1) // block_size))  # ceil((L - 1) / T): every target once
    total = n_blocks * block_size + 1
    ids += [pad_id] * (total - len(ids))
    mask += [0] * (total - len(mask))
    stream = torch.tensor(ids, dtype=torch.long)
    m = torch.tensor(mask, dtype=torch.bool)
    idx = torch.arange(n_blocks)[:, None] * block_size + torch.arange(block_size + 1)[None]  # (N, T+1)
    blocks, keep = stream[idx], m[idx]  # (N, T+1) each
    x = blocks[:, :-1]  # (N, T)
    y = blocks[:, 1:].masked_fill(~keep[:, 1:], IGNORE_INDEX)  # (N, T)
    return Packed(x.contiguous(), y.contiguous())


class PackedBatches:
    """Random batches of packed blocks with a seeded, checkpointable generator (like ``data.Batches``)."""

    def __init__(self, packed: Packed, batch_size: int, seed: int) -> None:
        self.packed = packed
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (batch_size, T) on ``device``."""
        rows = torch.randint(len(self.packed.x), (self.batch_size,), generator=self.generator)
        return self.packed.x[rows].to(device), self.packed.y[rows].to(device)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
