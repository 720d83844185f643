"""The main job, end to end, on the embedded default corpus (no download, no ../shared).

Stages that exist today (later issues extend this same script):
  1. corpus      the docstrings of the local Python standard library -> out/demo/corpus.txt
  2. tokenizer   train a byte-level BPE tokenizer with the ChatML specials; evaluate it; export to HF
  3. model       train a tiny GPT on the token ids for about a minute, save a model dir with its tokenizer
  4. generate    stream text from it with `nanoforge model generate`

Every stage runs through the public `nanoforge` command, as a user would. Usage:
  python tools/demo.py [--out out/demo] [--vocab-size 4096] [--train-seconds 60] [--corpus FILE]
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def nanoforge(*args: str) -> None:
    """Run one `nanoforge` sub-command, echoing it; stop the demo if it fails."""
    cmd = [str(BIN / "nanoforge"), *args]
    print("$ nanoforge " + " ".join(args), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        sys.exit(f"demo: `nanoforge {' '.join(args)}` failed with exit status {rc}")


def stage_corpus(out: Path, corpus: str | None) -> Path:
    banner("1. corpus")
    if corpus:
        path = Path(corpus)
        if not path.is_file():
            sys.exit(f"demo: --corpus {corpus!r} is not a file")
        print(f"using {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return path
    from nanoforge.tokenizer.stdlib_corpus import stdlib_dir, write_stdlib_corpus

    path = out / "corpus.txt"
    n = write_stdlib_corpus(path)
    print(f"wrote {n / 1e6:.2f} MB of docstrings from {stdlib_dir()} to {path}")
    return path


def stage_tokenizer(out: Path, corpus: Path, vocab_size: int) -> Path:
    banner("2. tokenizer")
    tok_dir = out / "tokenizer"
    nanoforge(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", str(vocab_size),
        "--out", str(tok_dir), "--chat-template", "chatml",
    )  # fmt: skip
    nanoforge(
        "tokenizer", "eval", "--tokenizer", str(tok_dir), "--input", str(corpus),
        "--plot", str(out / "tokenizer_eval.png"),
    )  # fmt: skip
    nanoforge("tokenizer", "encode", "--tokenizer", str(tok_dir), "--text", "Return the value of x.")
    nanoforge(
        "tokenizer", "export", "--tokenizer", str(tok_dir), "--format", "hf", "--out", str(out / "hf-tok")
    )
    return tok_dir


def stage_model(out: Path, corpus: Path, tok_dir: Path, seconds: float) -> Path:
    """A minimal next-token training loop, until the trainer package lands (issue 4)."""
    banner(f"3. model: a tiny GPT trained for ~{seconds:.0f} s")
    import numpy as np
    import torch

    from nanoforge.core_model import ModelConfig, build_model, save_model
    from nanoforge.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    ids = np.asarray(tok.encode(corpus.read_text(encoding="utf-8")), dtype=np.int64)
    print(f"{len(ids):,} tokens ({corpus.stat().st_size / len(ids):.2f} bytes/token)")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=4, n_head=4, n_kv_head=2, d_model=128, mlp="swiglu",
        norm="rmsnorm", positions="rope", max_seq_len=256, tie_embeddings=True,
        qkv_bias=False, out_bias=False, mlp_bias=False, norm_bias=False,
    )  # fmt: skip
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    block, batch = 128, 16
    rng = np.random.default_rng(0)
    t0, step = time.time(), 0
    while time.time() - t0 < seconds:
        starts = rng.integers(0, len(ids) - block - 1, size=batch)
        x = torch.from_numpy(np.stack([ids[s : s + block] for s in starts]))
        y = torch.from_numpy(np.stack([ids[s + 1 : s + block + 1] for s in starts]))
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({loss.item() / math.log(2):.2f} bits/token)")
        step += 1
    print(f"trained {step} steps in {time.time() - t0:.0f} s, final loss {loss.item():.3f}")
    model_dir = out / "model"
    save_model(model, model_dir)
    shutil.copytree(tok_dir, model_dir / "tokenizer", dirs_exist_ok=True)
    nanoforge("model", "info", str(model_dir))
    return model_dir


def stage_generate(model_dir: Path) -> None:
    banner("4. generate")
    for prompt in ("Return the", "This module provides"):
        nanoforge(
            "model", "generate", "--model", str(model_dir), "--prompt", prompt,
            "--max-new-tokens", "40", "--temperature", "0.8", "--top-k", "40", "--seed", "0",
        )  # fmt: skip
        print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"), help="output directory")
    ap.add_argument("--corpus", default=None, help="a text file instead of the stdlib docstrings")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = stage_corpus(out, args.corpus)
    tok_dir = stage_tokenizer(out, corpus, args.vocab_size)
    model_dir = stage_model(out, corpus, tok_dir, args.train_seconds)
    stage_generate(model_dir)
    banner(f"done in {time.time() - t0:.0f} s; artifacts in {out}")


if __name__ == "__main__":
    main()
