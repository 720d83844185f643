"""Prefix cache: hash-chained blocks of prompt tokens, reference-counted, evicted least-recently-used.

A prompt is cut into blocks of ``block_size`` tokens; block j's key is
``blake2b(key[j-1] + tokens of block j)`` with key[-1] = ``blake2b(salt)`` (the salt separates adapters),
so a key names the whole prefix up to the end of its block. Each cached block stores what is needed to
resume decoding from its end:

* softmax layers (KV cache indexed by slot): the block's own K/V slices, (nkv, block_size, hd) each —
  a prefix of m blocks is restored by copying m slices into a fresh row;
* every other layer (sliding-window ring buffer, recurrent linear / Performer / Linformer / RetNet state):
  a snapshot of the layer's whole row state at the block's end boundary. These states are not a
  concatenation of per-token pieces, so only the snapshot of the last matched block is restored. The
  engine therefore prefills such models in chunks that end on every block boundary (so every block has
  its snapshot); for a pure-softmax model any chunk size works.

Blocks used by a running request hold a reference (``acquire``/``release``) and are never evicted; when
the cache is full the least recently used unreferenced block goes first. A lookup touches the matched
blocks deepest-first, so a parent is always more recent than its children and leaves are evicted before
the prefixes they extend. The cache keeps hit statistics (``stats``).
What it does not do: share memory between rows (blocks are copied into a request's row — see ``kv``).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nanoforge.core_model.attention.softmax import SoftmaxMixer
from nanoforge.core_model.model import GPT
from nanoforge.core_model.state import ModelState


def chain_keys(tokens: Sequence[int], block_size: int, salt: str = "") -> list[bytes]:
    """Keys of the full blocks of ``tokens`` (a partial last block has no key).

    Example: 40 tokens with block_size 16 -> 2 keys; key[1] depends on all 32 first tokens.
    """
    key = hashlib.blake2b(salt.encode("utf-8"), digest_size=16).digest()
    keys = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        body = array("q", tokens[start : start + block_size]).tobytes()
        key = hashlib.blake2b(key + body, digest_size=16).digest()
        keys.append(key)
    return keys


@dataclass(eq=False)
class Block:
    """One cached block: per-layer K/V slices or end-of-block state snapshots."""

    key: bytes
    tokens: tuple[int, ...]
    layers: list[dict[str, torch.Tensor]]
    refs: int = 0


@dataclass
class CacheStats:
    """Counters since start: blocks looked up / found, tokens served from the cache, evictions."""

    lookup_blocks: int = 0
    hit_blocks: int = 0
    hit_tokens: int = 0
    inserted_blocks: int = 0
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up blocks found in the cache (0 when nothing was looked up)."""
        return self.hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0


class PrefixCache:
    """Block store for one model. ``capacity_blocks == 0`` disables it."""

    def __init__(self, model: GPT, block_size: int = 16, capacity_blocks: int = 256) -> None:
        if block_size < 1 or capacity_blocks < 0:
            raise ValueError(
                f"block_size={block_size} must be >= 1 and capacity_blocks={capacity_blocks} >= 0"
            )
        self.block_size = block_size
        self.capacity = capacity_blocks
        self.slot_layers = [isinstance(getattr(b.attn, "mixer", None), SoftmaxMixer) for b in model.blocks]
        self.needs_snapshots = not all(self.slot_layers)
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()  # least recently used first
        self.stats = CacheStats()
        self._pinned = 0  # blocks with refs > 0 (a counter, so other threads may read it safely)

    @property
    def enabled(self) -> bool:
        """False when the capacity is 0 (nothing is cached or matched)."""
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    # ------------------------------------------------------------------------------------------- lookup
    def match(self, keys: Sequence[bytes], tokens: Sequence[int]) -> list[Block]:
        """The longest run of ``keys`` (from the first) present in the cache, touched as recently used.

        ``tokens`` are the prompt's tokens: a hit is confirmed token for token, so a hash collision can
        never serve another prompt's state.
        """
        if not self.enabled:
            return []
        bs = self.block_size
        found: list[Block] = []
        for j, key in enumerate(keys):
            blk = self._blocks.get(key)
            if blk is None or blk.tokens != tuple(tokens[j * bs : (j + 1) * bs]):
                break
            found.append(blk)
        for blk in reversed(found):  # deepest first, so parents end up most recent
            self._blocks.move_to_end(blk.key)
        self.stats.lookup_blocks += len(keys)
        self.stats.hit_blocks += len(found)
        self.stats.hit_tokens += len(found) * bs
        return found

    def acquire(self, blocks: Sequence[Block]) -> None:
        """Pin ``blocks`` (a running request uses them)."""
        for b in blocks:
            b.refs += 1
            self._pinned += b.refs == 1

    def release(self, blocks: Sequence[Block]) -> None:
        """Unpin ``blocks``; they become evictable when no request holds them."""
        for b in blocks:
            if b.refs <= 0:
                raise RuntimeError(f"prefix block released more often than acquired (refs={b.refs})")
            b.refs -= 1
            self._pinned -= b.refs == 0

    # ------------------------------------------------------------------------------------ state transfer
    def restore(self, blocks: Sequence[Block], state: ModelState) -> int:
        """Write a matched prefix into row 0 of an empty 1-row ``state``; returns the tokens restored.

        The caller marks the slots as filled (``kv.set_prefix``).
        """
        if not blocks:
            return 0
        bs = self.block_size
        for i, is_slot in enumerate(self.slot_layers):
            layer = state.layers[i]
            if is_slot:
                for j, blk in enumerate(blocks):
                    for name, t in blk.layers[i].items():
                        layer[name][0, :, j * bs : (j + 1) * bs] = t  # (nkv, bs, hd) slice
            else:
                for name, t in blocks[-1].layers[i].items():
                    layer[name][0] = t
        return len(blocks) * bs

    def insert(self, key: bytes, tokens: Sequence[int], index: int, state: ModelState) -> Block | None:
        """Cache block ``index`` of the prompt in row 0 of ``state`` (the state must end at that block's
        end when the model needs snapshots). Returns the new block, or None when the cache is full of
        pinned blocks or disabled.
        """
        if not self.enabled or key in self._blocks:
            return self._blocks.get(key)
        if len(self._blocks) >= self.capacity and not self._evict_one():
            return None
        bs = self.block_size
        layers: list[dict[str, torch.Tensor]] = []
        for i, is_slot in enumerate(self.slot_layers):
            src = state.layers[i]
            if is_slot:
                layers.append(
                    {n: t[0, :, index * bs : (index + 1) * bs].clone() for n, t in src.items()}
                )  # (nkv, bs, hd)
            else:
                layers.append({n: t[0].clone() for n, t in src.items()})
        blk = Block(key, tuple(tokens), layers)
        self._blocks[key] = blk
        self.stats.inserted_blocks += 1
        return blk

    def _evict_one(self) -> bool:
        for key, blk in self._blocks.items():
            if blk.refs == 0:
                del self._blocks[key]
                self.stats.evicted_blocks += 1
                return True
        return False

    def pinned(self) -> int:
        """Number of blocks currently referenced by running requests."""
        return self._pinned
