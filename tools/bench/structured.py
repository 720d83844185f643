"""Structured-output benchmark: per-token mask cost of our JSON-schema guide vs llguidance, xgrammar and
outlines-core, side by side in one run on the same tokenizer, schemas and token sequences.

    .venv/bin/python tools/bench/structured.py                 # writes docs/bench/structured.md
    .venv/bin/python tools/bench/structured.py --vocab 8000 --no-write

Setup: a GPT-2-style byte-level BPE (HF ``tokenizers``) trained here on ../shared/data/tinyshakespeare plus a
little JSON text, ``--vocab`` tokens; three JSON schemas with one valid compact instance each, tokenized
normally. For every library and schema we replay that instance token by token: before each token the
library computes the mask of allowed next tokens (ours: a (V,) bool tensor; the libraries: their packed
int32 bitmask), then consumes the token (which must be allowed: checked). Reported per library and schema:
compile time (schema -> ready matcher; outlines-core builds its whole index here), mean mask cost per token
on the first replay (cold: includes lazily computed work) and on a second replay with a fresh matcher of the
same compiled grammar (warm caches). The fastest of ``--repeats`` runs is kept. One thread
(``torch.set_num_threads(1)``, RAYON/OMP threads 1) for everyone.
What it does not do: measure the model forward (a mask costs on top of it), batch masks, or quality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from nanoforge.inference_server.structured import Guide, Structurer, build_dfa, schema_to_node
from nanoforge.tokenizer.hf import load_hf_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bench" / "structured.md"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "person (flat)": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "age": {"type": "integer"},
                "email": {"type": "string"},
                "admin": {"type": "boolean"},
            },
            "required": ["name", "age", "email", "admin"],
        },
        {"name": "Juliet Capulet", "age": 14, "email": "juliet@verona.example", "admin": False},
    ),
    "order (nested + arrays)": (
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "qty": {"type": "integer"},
                            "price": {"type": "number"},
                        },
                        "required": ["sku", "qty", "price"],
                    },
                    "minItems": 1,
                    "maxItems": 8,
                },
                "note": {"type": "string"},
            },
            "required": ["id", "items", "note"],
        },
        {
            "id": 1042,
            "items": [{"sku": "AB-12", "qty": 2, "price": 9.5}, {"sku": "ZX-9", "qty": 1, "price": 120.25}],
            "note": "leave it at the door, thou knave",
        },
    ),
    "classifier (enums)": (
        {
            "type": "object",
            "properties": {
                "label": {"enum": ["positive", "negative", "neutral", "mixed"]},
                "confidence": {"type": "number"},
                "topics": {
                    "type": "array",
                    "items": {"enum": ["love", "war", "death", "comedy", "kings"]},
                    "maxItems": 5,
                },
            },
            "required": ["label", "confidence", "topics"],
        },
        {"label": "mixed", "confidence": 0.87, "topics": ["love", "death", "kings"]},
    ),
}


def train_tokenizer(vocab: int, out: Path) -> Path:
    """Train a byte-level BPE on tinyshakespeare + the instances, save tokenizer.json (+ config) in ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = DATA.read_text(encoding="utf-8") if DATA.is_file() else ""
    extra = [json.dumps(inst, separators=(",", ":")) for _, inst in SCHEMAS.values()] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*text.split("\n\n"), *extra], trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "add_bos_token": False})
    )
    return out


# Each engine: compile(schema) -> factory; factory() -> (mask_fn, consume_fn).
Engine = Callable[[dict[str, Any]], Callable[[], tuple[Callable[[], Any], Callable[[int], None]]]]


def ours(tok: Any, eos: int) -> Engine:
    structurer = Structurer(tok, tok.vocab_size, [eos])
    structurer.index  # noqa: B018  built once per tokenizer (not per schema), like the libraries' tokenizer setup

    def compile_(schema: dict[str, Any]):
        # A new Guide every time (not structurer.response_guide, whose LRU would hand back a warm one).
        guide = Guide(build_dfa(schema_to_node(schema)), structurer.index, [eos])

        def fresh():
            st = guide.start()

            def consume(t: int) -> None:
                st.advance(t)
                if st.failed:
                    raise AssertionError("ours rejected a valid token")

            return (lambda: st.mask(tok.vocab_size)), consume

        return fresh

    return compile_


def llg(hf: Any, eos: int) -> Engine:
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    lltok = llguidance.hf.from_tokenizer(hf)

    def compile_(schema: dict[str, Any]):
        grm = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )

        def fresh():
            m = llguidance.LLMatcher(lltok, grm)
            mask = lt.allocate_token_bitmask(1, lltok.vocab_size)

            def consume(t: int) -> None:
                if not m.consume_token(t):
                    raise AssertionError(f"llguidance rejected a valid token: {m.get_error()}")

            return (lambda: lt.fill_next_token_bitmask(m, mask, 0)), consume

        return fresh

    return compile_


def xgr(hf: Any, eos: int) -> Engine:
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=len(hf))
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile_(schema: dict[str, Any]):
        compiled = compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":")
        )

        def fresh():
            m = xgrammar.GrammarMatcher(compiled)
            mask = xgrammar.allocate_token_bitmask(1, info.vocab_size)

            def consume(t: int) -> None:
                if not m.accept_token(t):
                    raise AssertionError("xgrammar rejected a valid token")

            return (lambda: m.fill_next_token_bitmask(mask)), consume

        return fresh

    return compile_


def outlines(tok: Any, eos: int) -> Engine:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    groups: dict[bytes, list[int]] = {}
    for t in range(tok.vocab_size):
        if t != eos:
            groups.setdefault(tok.token_bytes(t), []).append(t)
    vocab = Vocabulary(eos, groups)

    def compile_(schema: dict[str, Any]):
        index = Index(build_regex_from_schema(json.dumps(schema), whitespace_pattern=""), vocab)

        def fresh():
            g = Guide(index)
            mask = torch.zeros((tok.vocab_size + 31) // 32, dtype=torch.int32)

            def consume(t: int) -> None:
                g.advance(t)

            return (lambda: g.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())), consume

        return fresh

    return compile_


def replay(fresh: Callable, ids: list[int]) -> float:
    """Mean seconds per token of computing the mask (then consuming the token) over ``ids``."""
    mask_fn, consume = fresh()
    spent = 0.0
    for t in ids:
        t0 = time.perf_counter()
        mask_fn()
        spent += time.perf_counter() - t0
        consume(t)
    return spent / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as d:
        path = train_tokenizer(args.vocab, Path(d))
        tok = load_hf_tokenizer(path)
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), eos_token="<|endoftext|>")
    eos = tok.special_tokens["<|endoftext|>"]
    builders = {"ours (numpy DFA walk)": ours, "llguidance": llg, "xgrammar": xgr, "outlines-core": outlines}
    engines: dict[str, Engine] = {}
    setup: dict[str, float] = {}
    for name, build in builders.items():
        t0 = time.perf_counter()
        try:
            engines[name] = build(hf if name in ("llguidance", "xgrammar") else tok, eos)
        except ImportError as e:
            print(f"skip {name}: {e}")
            continue
        setup[name] = time.perf_counter() - t0
    rows = []
    for sname, (schema, inst) in SCHEMAS.items():
        ids = tok.encode(json.dumps(inst, separators=(",", ":")))
        for name, eng in engines.items():
            best = {"compile": 1e9, "cold": 1e9, "warm": 1e9}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fresh = eng(schema)
                best["compile"] = min(best["compile"], time.perf_counter() - t0)
                best["cold"] = min(best["cold"], replay(fresh, ids))
                best["warm"] = min(best["warm"], replay(fresh, ids))
            rows.append((sname, name, len(ids), best))
            print(f"{sname:26s} {name:24s} tokens={len(ids):3d} compile={best['compile'] * 1e3:8.2f} ms "
                  f"cold={best['cold'] * 1e6:8.1f} us/tok warm={best['warm'] * 1e6:7.1f} us/tok")  # fmt: skip
    if args.no_write:
        return
    ours_name = "ours (numpy DFA walk)"
    lines = [
        "# Structured output: per-token mask cost",
        "",
        f"`.venv/bin/python tools/bench/structured.py --vocab {args.vocab}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), 1 thread, torch {torch.__version__}; tokenizer: byte-level BPE with "
        f"{tok.vocab_size} tokens trained on tinyshakespeare. Fastest of {args.repeats} runs.",
        "",
        "Per-tokenizer setup (once, not per schema): "
        + ", ".join(f"{n} {s * 1e3:.0f} ms" for n, s in setup.items())
        + ".",
        "",
        "| schema | library | tokens | compile ms | cold mask us/token | warm mask us/token | warm vs ours |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ours_warm = {s: b["warm"] for s, n, _, b in rows if n == ours_name}
    for sname, name, n, b in rows:
        ratio = b["warm"] / ours_warm[sname] if sname in ours_warm else float("nan")
        lines.append(
            f"| {sname} | {name} | {n} | {b['compile'] * 1e3:.1f} | {b['cold'] * 1e6:.1f} | "
            f"{b['warm'] * 1e6:.1f} | {ratio:.2f}x |"
        )
    table = "\n".join([START, *lines[2:], END])
    old = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    if START in old and END in old:  # keep the hand-written analysis around the generated table
        text = old[: old.index(START)] + table + old[old.index(END) + len(END) :]
    else:
        text = "\n".join(lines[:2]) + table + "\n"
    tmp = DOC.with_suffix(".md.tmp")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, DOC)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
