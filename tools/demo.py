"""The main job, end to end, on the embedded default corpus (no download, no ../shared).

Stages that exist today (later issues extend this same script):
  1. corpus      the docstrings of the local Python standard library -> out/demo/corpus.txt
  2. tokenizer   train a byte-level BPE tokenizer with the ChatML specials; evaluate it; export to HF
  3. pretrain    token memmaps, then a small GPT pretrained with the trainer's demo recipe (about a minute)
  4. generate    stream text from it with `nanoforge model generate`
  4b. LoRA       `nanoforge train lora` on instruction records made from the corpus (PEFT-format adapter)
  5. serve       `nanoforge serve` on loopback with the adapter: a chat completion through the official
                 openai client, a streamed generation over gRPC, and the same chat with and without the adapter
  6. RAG         `nanoforge retriever index/calibrate/ask` over the same corpus: answers with citations,
                 and an abstention for a question whose answer is not in it (tools/demo_rag.py)
  7. recommender simulated user events -> a sequence model -> next-event recommendations, the
                 RecommenderService over gRPC, and the ad-copy studio once (tools/demo_recommender.py)
  8. evaluate    `nanoforge eval run` on held-out docstrings: bits per byte and continuation quality,
                 with bootstrap intervals, cost and latency, as Markdown/HTML reports

Every stage runs through the public `nanoforge` command, as a user would. Usage:
  python tools/demo.py [--out out/demo] [--vocab-size 4096] [--train-iters 600] [--corpus FILE]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Sibling scripts (tools/ is on sys.path when this file runs as a script).
from demo_rag import stage_rag
from demo_recommender import stage_recommender

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


def stage_model(out: Path, corpus: Path, tok_dir: Path, iters: int) -> Path:
    """Tokenize the corpus into memmaps, then pretrain a small GPT with the trainer's demo recipe."""
    banner(f"3. pretrain: a small GPT, {iters} steps (trainer config demo-bpe)")
    data, run_dir = out / "data", out / "run"
    nanoforge(
        "train", "prepare", "--input", str(corpus), "--tokenizer", str(tok_dir), "--out", str(data),
        "--doc-split", "paragraph",
    )  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time the demo runs
    nanoforge(
        "train", "pretrain", "--config", "demo-bpe", f"data.dir={data}", "--out", str(run_dir),
        f"train.max_iters={iters}", f"checkpoint.interval={max(iters // 2, 1)}", "log.progress=false",
    )  # fmt: skip
    model_dir = run_dir / "final"
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


def stage_lora(out: Path, corpus: Path, model_dir: Path, iters: int) -> Path:
    """LoRA-tune the pretrained model on a small instruction set made from the corpus itself."""
    banner(f"4b. LoRA SFT: one-sentence summaries of docstrings, {iters} steps (trainer config sft-demo)")
    import json

    records = []
    for doc in corpus.read_text(encoding="utf-8").split("\n\n"):
        first, _, body = doc.partition(". ")
        body = body.strip()
        if 20 <= len(first) <= 160 and "\n" not in first and 80 <= len(body) <= 600:
            records.append(
                {"instruction": "Summarize in one sentence.", "input": body, "output": first + "."}
            )
        if len(records) >= 600:
            break
    data = out / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"{len(records)} instruction records -> {data}")
    run_dir = out / "lora"
    shutil.rmtree(run_dir, ignore_errors=True)
    nanoforge(
        "train", "lora", "--config", "sft-demo", f"base.model={model_dir}", f"data.train={data}",
        "--out", str(run_dir), f"train.max_iters={iters}", "optim.lr=1e-3", "log.progress=false",
    )  # fmt: skip
    return run_dir / "adapter"


def _held_out_docstrings(n: int) -> tuple[list[str], str]:
    """Docstrings the demo model never trained on: idlelib's (the corpus skips that directory)."""
    from nanoforge.tokenizer.stdlib_corpus import stdlib_dir, stdlib_docstrings

    for sub in ("idlelib", "test"):
        root = stdlib_dir() / sub
        if root.is_dir():
            docs = [d for d in stdlib_docstrings(root) if len(d.split()) >= 24][:n]
            if docs:
                return docs, f"{root} (excluded from the training corpus)"
    return [], ""


def _write_eval_tasks(out: Path) -> list[Path]:
    """Two small tasks on held-out docstrings: perplexity / bits per byte, and greedy continuation."""
    import json

    docs, source = _held_out_docstrings(40)
    if not docs:
        print("no held-out docstrings found (no idlelib/ or test/ in this Python); skipping the evaluation")
        return []
    print(f"held-out text: {len(docs)} docstrings from {source}")
    rows = []
    for i, doc in enumerate(docs):
        words = doc.split()
        prefix, rest, tail = " ".join(words[:16]), " " + " ".join(words[16:24]), " " + " ".join(words[16:120])
        rows.append({"id": i, "prefix": prefix, "rest": rest, "tail": tail})
    tasks = out / "eval-tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "docstrings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tasks / "perplexity.yaml").write_text(
        "name: held-out docstrings, bits per byte after a 16-word prefix\ntype: perplexity\n"
        'data: docstrings.jsonl\ntemplate: "{{ prefix }}"\ntarget_field: tail\nmetrics: [perplexity, bits_per_byte]\n',
        encoding="utf-8",
    )
    (tasks / "continue.yaml").write_text(
        "name: held-out docstrings, greedy continuation\ntype: generate\ndata: docstrings.jsonl\n"
        'template: "{{ prefix }}"\ntarget_field: rest\nmetrics: [token_f1, rouge_l, chrf]\n'
        "sampling: {max_new_tokens: 12, temperature: 0.0}\n",
        encoding="utf-8",
    )
    return [tasks / "perplexity.yaml", tasks / "continue.yaml"]


def stage_serve_and_eval(out: Path, model_dir: Path, corpus: Path, adapter: Path | None = None) -> None:
    """Serve the model on loopback; call it with the openai client and over gRPC; evaluate it."""
    banner("5. serve: gRPC + OpenAI-compatible HTTP on loopback")
    import re
    import signal

    cmd = [str(BIN / "nanoforge"), "serve", "--model", str(model_dir), "--port", "0", "--http-port", "0"]
    if adapter is not None:
        cmd += ["--adapter", f"summaries={adapter}"]
    print("$ nanoforge " + " ".join(cmd[1:]), flush=True)
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    ports: dict[str, int] = {}
    try:
        assert server.stderr is not None
        deadline = time.time() + 120
        while len(ports) < 2 and time.time() < deadline:
            line = server.stderr.readline()
            if not line:
                sys.exit("demo: the server exited before it was ready")
            found = re.search(r"(grpc|http) listening on [\d.]+:(\d+)", line)
            if found:
                ports[found.group(1)] = int(found.group(2))
        if len(ports) < 2:
            sys.exit("demo: the server did not report its ports within 120 s")
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{ports['http']}/v1", api_key="unused")
        chat = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": "What does this module provide?"}],
            max_tokens=32,
            temperature=0.0,
        )
        print(f"openai client, chat completion: {chat.choices[0].message.content!r}")
        print(
            f"  usage: {chat.usage.prompt_tokens} prompt + {chat.usage.completion_tokens} completion tokens"
        )
        from nanoforge.api.inference_client import InferenceClient

        grpc_client = InferenceClient(f"127.0.0.1:{ports['grpc']}")
        print("gRPC GenerateStream: ", end="", flush=True)
        for chunk in grpc_client.generate_stream("Return the", max_new_tokens=32, temperature=0.7, seed=0):
            print(chunk.text, end="", flush=True)
        print()
        if adapter is not None:
            messages = [
                {"role": "user", "content": "Summarize in one sentence.\n\nReturn a new list of the items."}
            ]
            for name in ("", "summaries"):
                reply = grpc_client.generate(messages, adapter=name, max_new_tokens=24, temperature=0.0)
                print(f"chat over gRPC, adapter {name or '(base)'!r}: {reply.completions[0].text!r}")
        banner("6. RAG: index the corpus, answer with citations, abstain when the answer is not there")
        stage_rag(out, corpus, f"127.0.0.1:{ports['grpc']}")
        banner("7. recommender: next events for simulated users, the service, and the ad-copy studio")
        stage_recommender(out / "recommender", f"127.0.0.1:{ports['grpc']}")
        tasks = _write_eval_tasks(out)
        if tasks:
            banner("8. evaluate: held-out perplexity and continuation quality, with intervals")
            for task in tasks:
                nanoforge(
                    "eval", "run", str(task), "--backend", f"demo=grpc:127.0.0.1:{ports['grpc']}",
                    "--out", str(out / "eval" / task.stem), "--resamples", "500",
                )  # fmt: skip
            print(f"reports: {out / 'eval'}/*/report.md and report.html")
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: drains in-flight requests
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"), help="output directory")
    ap.add_argument("--corpus", default=None, help="a text file instead of the stdlib docstrings")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--train-iters", type=int, default=600, help="pretraining steps (about 1 minute)")
    ap.add_argument("--lora-iters", type=int, default=100, help="LoRA fine-tuning steps")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = stage_corpus(out, args.corpus)
    tok_dir = stage_tokenizer(out, corpus, args.vocab_size)
    model_dir = stage_model(out, corpus, tok_dir, args.train_iters)
    stage_generate(model_dir)
    adapter = stage_lora(out, corpus, model_dir, args.lora_iters)
    stage_serve_and_eval(out, model_dir, corpus, adapter)
    banner(f"done in {time.time() - t0:.0f} s; artifacts in {out}")


if __name__ == "__main__":
    main()
