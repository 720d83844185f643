"""Cost / latency / quality sweep against the REAL server: quantization x decoding x concurrency.

    nice -n 5 .venv/bin/python tools/experiments/cost_quality_sweep.py --work out/cost_quality_sweep

1. Model: a 2-layer, width-128 BPE model (vocab 512) trained here on the first 90% of ../shared/data/tinyshakespeare
   (`nanoforge tokenizer train`, `train prepare`, `train pretrain` as subprocesses; skipped when
   WORK/run/final exists, or pass --model DIR).
2. For each quantization (fp32, int8, int4 = int4-g64) a `nanoforge serve --quantize Q --max-batch-size 16`
   child process on loopback; held-out quality from the last 10% of the text: bits per byte of held-out
   passages (Score RPC, a property of the weights) and ROUGE-L of generated continuations against the real
   ones (depends on decoding too).
3. For each decoding setting (greedy 32 tokens, greedy 64, sampling T=0.8 top-p 0.95 64 tokens) and each
   concurrency (1, 4, 16 requests in flight = decode batch size) the evaluation harness sends the same
   prompts (after a warm-up), ``--repeats`` times; per config: ROUGE-L, and the median over repeats of
   completion tokens/s (wall), p50/p99 latency, and cost per 1k requests = the server's measured
   CPU-seconds (/proc) x the cost table's $/CPU-hour (cost.DEFAULT_PRICES["local"]); the server's peak RSS.
4. The Pareto front on (ROUGE-L high, cost low, p50 latency low) comes from report.pareto_front.
5. RAG axis (``--rag``, on when ../shared/data/clapnq-dev exists): a `nanoforge retriever serve --inference`
   child over a seeded 200-passage ClapNQ dev subset (MiniLM embedder), 60 questions from the test half of
   docs/experiments/rag.md's split (half answerable), asked through the harness's ``rag`` task and
   ``RetrieverBackend``: search mode (bm25 / dense / hybrid) x k (2, 5) x answer setting (extractive;
   generative through a second `nanoforge serve` of the chat demo model, groundedness gate 0.5 or off).
   Per config: answer token-F1, citation precision, abstention rates, p50/p99 latency, cost per 1k requests
   from the CPU-seconds of BOTH servers; its own Pareto front and docs/experiments/cost_quality_sweep_rag.png.
   The sweep model cannot answer here: it has no chat template, which generative Ask needs.

Writes WORK/results.json, WORK/rag_results.json, the two PNGs and prints the Markdown tables.
What it deliberately does not do: GPU runs, chunking settings (see docs/experiments/retrieval.md), recalibrate
the abstention threshold, or tune the servers beyond --max-batch-size.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nanoforge.api.retriever.v1 import retriever_pb2 as ret_pb
from nanoforge.evaluation.backends import GrpcBackend, proc_cpu_seconds
from nanoforge.evaluation.cost import DEFAULT_PRICES
from nanoforge.evaluation.harness import RunOptions, percentile, run_system, summarise
from nanoforge.evaluation.io import write_text_atomic
from nanoforge.evaluation.metrics import token_f1
from nanoforge.evaluation.prompting import PromptTemplate
from nanoforge.evaluation.report import pareto_front
from nanoforge.evaluation.services import RetrieverBackend
from nanoforge.evaluation.task import Task

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CLAPNQ = ROOT.parent / "shared" / "data" / "clapnq-dev"
CLI = [sys.executable, "-m", "nanoforge.cli"]
QUANTS = {"fp32": None, "int8": "int8", "int4": "int4"}
DECODING = {
    "greedy-32": {"max_new_tokens": 32, "temperature": 0.0},
    "greedy-64": {"max_new_tokens": 64, "temperature": 0.0},
    "sample-64": {"max_new_tokens": 64, "temperature": 0.8, "top_p": 0.95, "seed": 0},
}
CONCURRENCY = (1, 4, 16)
#: demo-bpe shrunk so that training takes ~1-2 min on 2 idle cores: 2 blocks of width 128, 512-token steps.
MODEL_OVERRIDES = ["model.n_layer=2", "train.batch_size=8", "train.block_size=64", "train.eval_interval=100",
                   "checkpoint.interval=1000"]  # fmt: skip


def sh(cmd: list[str], log: Path) -> None:
    """Run a CLI step, its output appended to ``log``; raise with the log tail on failure."""
    with open(log, "ab") as fh:
        rc = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({rc}): {log.read_text()[-1500:]}")


def build_model(work: Path, iters: int) -> Path:
    """Tokenizer (vocab 512) + token shards + pretraining on the first 90% of tinyshakespeare."""
    final = work / "run" / "final"
    if (final / "config.json").is_file():
        return final
    text = DATA.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    # Paragraph documents so that `prepare` can hold some out for the training loss curve.
    write_text_atomic(work / "corpus" / "train.txt", text[:cut])
    log = work / "build.log"
    sh([*CLI, "tokenizer", "train", "--input", str(work / "corpus" / "train.txt"), "--vocab-size", "512",
        "--out", str(work / "tok"), "--chat-template", "none", "--force", "--workers", "1"], log)  # fmt: skip
    sh([*CLI, "train", "prepare", "--input", str(work / "corpus" / "train.txt"), "--tokenizer",
        str(work / "tok"), "--out", str(work / "data"), "--doc-split", "paragraph"], log)  # fmt: skip
    sh([*CLI, "train", "pretrain", "--config", "demo-bpe", "--out", str(work / "run"), f"data.dir={work / 'data'}",
        f"train.max_iters={iters}", f"schedule.decay_iters={iters}", f"schedule.warmup_iters={iters // 10}",
        *MODEL_OVERRIDES, "train.threads=2", "log.progress=false", "log.tensorboard=false"], log)  # fmt: skip
    return final


def held_out(n_gen: int, n_bpb: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Prompts (300 chars) + their real 300-char continuation; bpb passages (150-char context + 200 scored).

    At ~2 bytes per token both fit the model's 256-token context (prompt + 64 new tokens; context + scored).
    """
    text = DATA.read_text(encoding="utf-8")
    tail = text[int(len(text) * 0.9) :]
    step = (len(tail) - 700) // (n_gen + n_bpb)
    gen, bpb = [], []
    for i in range(n_gen + n_bpb):
        a = i * step
        if i < n_gen:
            gen.append({"prefix": tail[a : a + 300], "rest": tail[a + 300 : a + 600]})
        else:
            bpb.append({"prefix": tail[a : a + 150], "rest": tail[a + 150 : a + 350]})
    return gen, bpb


class Server:
    """A `nanoforge serve` child process (gRPC only) on a free loopback port."""

    def __init__(self, model: Path, quantize: str | None, log: Path, extra: tuple[str, ...] = ()) -> None:
        cmd = [
            *CLI,
            "serve",
            "--model",
            str(model),
            "--port",
            "0",
            "--no-http",
            "--max-batch-size",
            "16",
            *extra,
        ]
        if quantize:
            cmd += ["--quantize", quantize]
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh,
                                         env={**os.environ, "OMP_NUM_THREADS": "2"})  # fmt: skip
        end = time.monotonic() + 180
        while time.monotonic() < end:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("grpc listening on "):
                    self.target = f"127.0.0.1:{line.rsplit(':', 1)[1]}"
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("serve did not report its port in 180 s")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid) or 0.0

    def rss_mib(self) -> float:
        """Peak resident memory of the server process (VmHWM), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_task(kind: str, rows: list[dict[str, str]], sampling: dict[str, Any], metrics: list[str]) -> Task:
    return Task(name=f"shakespeare-{kind}", type=kind, records=rows, template=PromptTemplate("{{ prefix }}"),
                target_field="rest", metrics=metrics, sampling=dict(sampling))  # fmt: skip


async def run_config(server: Server, task: Task, concurrency: int) -> dict[str, Any]:
    """One harness run; CPU-seconds of the server and wall time measured around it."""
    backend = GrpcBackend(server.target, timeout=600)
    opts = RunOptions(concurrency=concurrency, n_resamples=200, retries=0)
    cpu0, t0 = server.cpu(), time.perf_counter()
    try:
        records = await run_system(task, backend, opts=opts)
    finally:
        await backend.aclose()
    wall, cpu = time.perf_counter() - t0, server.cpu() - cpu0
    summary = summarise(task, records, opts)
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} failed records, e.g. {failed[0]}")
    lat = [r.latency_ms for r in records]
    price = DEFAULT_PRICES["local"].cpu_hour_usd
    return {
        "n": len(records),
        "metrics": {
            k: {"value": v["value"], "low": v["low"], "high": v["high"]}
            for k, v in summary["metrics"].items()
        },
        "wall_s": wall,
        "server_cpu_s": cpu,
        "completion_tokens": summary["tokens"]["completion"],
        "tokens_per_s": summary["tokens"]["completion"] / wall,
        "p50_ms": percentile(lat, 0.5),
        "p99_ms": percentile(lat, 0.99),
        "usd_per_1k": cpu / len(records) * 1000 * price / 3600,
    }


def plot(results: list[dict[str, Any]], front: set[int], out: Path) -> None:
    """Quality vs cost and vs latency (outlined: the 3-D Pareto front; dashed: each panel's 2-D front),
    and throughput vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = {"fp32": "tab:blue", "int8": "tab:orange", "int4": "tab:green"}
    markers = {"greedy-32": "o", "greedy-64": "s", "sample-64": "^"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key, label in ((axes[0], "usd_per_1k", "USD per 1k requests (server CPU-s x $/CPU-h)"),
                           (axes[1], "p50_ms", "p50 latency (ms)")):  # fmt: skip
        for i, r in enumerate(results):
            ax.scatter(r[key], r["rouge_l"], c=colors[r["quant"]], marker=markers[r["decoding"]],
                       s=150 if i in front else 45, edgecolors="k" if i in front else "none", alpha=0.85)  # fmt: skip
        flat = pareto_front([(r[key], 0.0, r["rouge_l"]) for r in results])
        pts = sorted((results[i][key], results[i]["rouge_l"]) for i in flat)
        ax.step([p[0] for p in pts], [p[1] for p in pts], "k--", lw=0.8, where="post")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ROUGE-L of continuation (held out)")
    handles = [Line2D([], [], ls="", marker="o", c=c, label=q) for q, c in colors.items()]
    handles += [Line2D([], [], ls="", marker=m, c="grey", label=d) for d, m in markers.items()]
    axes[0].legend(handles=handles, fontsize=7, loc="lower right")
    for q in QUANTS:
        for d in DECODING:
            rows = sorted(
                (r["concurrency"], r["tokens_per_s"])
                for r in results
                if r["quant"] == q and r["decoding"] == d
            )
            axes[2].plot(
                [x for x, _ in rows], [y for _, y in rows], marker=markers[d], c=colors[q], label=f"{q} {d}"
            )
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("concurrency = decode batch size")
    axes[2].set_ylabel("completion tokens / s (median of repeats)")
    axes[2].legend(fontsize=7, ncol=2)
    axes[0].set_title("quality vs cost (outlined: Pareto front)")
    axes[1].set_title("quality vs p50 latency")
    axes[2].set_title("throughput")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def table(results: list[dict[str, Any]], front: set[int], bpb: dict[str, float]) -> str:
    head = ("| quant | decoding | conc | ROUGE-L [95% CI] | bpb | tok/s (wall) | tok / server CPU-s | p50 ms | p99 ms "
            "| server CPU-s | USD / 1k req | Pareto |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for i, r in enumerate(results):
        lines.append(
            f"| {r['quant']} | {r['decoding']} | {r['concurrency']} | {r['rouge_l']:.3f} [{r['rouge_l_low']:.3f}, "
            f"{r['rouge_l_high']:.3f}] | {bpb[r['quant']]:.4f} | {r['tokens_per_s']:.0f} | "
            f"{r['completion_tokens'] / r['server_cpu_s']:.0f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['server_cpu_s']:.2f} | {r['usd_per_1k']:.5f} | {'*' if i in front else ''} |"
        )
    return "\n".join(lines)


# --- RAG axis: a real RetrieverService over a ClapNQ subset, answering through the sweep's server --------

RAG_MODES = ("bm25", "dense", "hybrid")
RAG_KS = (2, 5)
#: answer setting -> (AskRequest.answer_mode, min_groundedness); "generative-g0" turns the sentence gate off.
RAG_ANSWER = {
    "extractive": (ret_pb.ANSWER_MODE_EXTRACTIVE, None),
    "generative": (ret_pb.ANSWER_MODE_GENERATIVE, 0.5),
    "generative-g0": (ret_pb.ANSWER_MODE_GENERATIVE, 0.0),
}
#: The support threshold calibrated on the calibration half of ClapNQ dev in docs/experiments/rag.md (MiniLM).
RAG_THRESHOLD = 0.661
#: Generative settings of docs/experiments/rag.md: a short context budget and answer for a 256-token model.
RAG_GEN = {"max_context_tokens": 100}
RAG_SAMPLING = {"temperature": 0.0, "max_new_tokens": 48}


def rag_data(n_questions: int, n_passages: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """Questions from the *test* half of docs/experiments/rag.md's seed-0 split (half answerable), and a
    seeded passage subset: every question's own passage (gold for answerable ones) plus random others."""
    from nanoforge.retriever.documents import Document

    corpus = [json.loads(x) for x in (CLAPNQ / "corpus.jsonl").read_text().splitlines() if x.strip()]
    questions = [json.loads(x) for x in (CLAPNQ / "answers.jsonl").read_text().splitlines() if x.strip()]
    rng = random.Random(0)
    picked: list[dict[str, Any]] = []
    for flag in (True, False):  # the same shuffles as rag.py, so none of these set its threshold
        group = [q for q in questions if q["answerable"] is flag]
        rng.shuffle(group)
        picked += group[len(group) // 2 :][: n_questions // 2]
    own = {q["passage_id"] for q in picked}
    others = sorted(d["_id"] for d in corpus if d["_id"] not in own)
    keep = own | set(random.Random(1).sample(others, max(0, min(len(others), n_passages - len(own)))))
    docs = [Document(d["_id"], d["text"], d["title"]) for d in corpus if d["_id"] in keep]
    rows = [{"id": q["query_id"], "question": q["question"], "answerable": q["answerable"],
             "gold": q["passage_id"], "answers": q["answers"], "target": (q["answers"] or [""])[0]}
            for q in picked]  # fmt: skip
    return rows, docs


class RetrieverServer:
    """A `nanoforge retriever serve` child process over WORK/rag/collections, generating through ``inference``."""

    def __init__(self, root: Path, embedder: str, inference: str, log: Path) -> None:
        cmd = [*CLI, "retriever", "serve", "--port", "0", "--root", str(root), "--embedder", embedder,
               "--inference", inference]  # fmt: skip
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh,
                                         env={**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
        end = time.monotonic() + 180
        while time.monotonic() < end:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("RetrieverService listening on "):
                    self.target = f"127.0.0.1:{line.split()[3].rsplit(':', 1)[1]}"
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"retriever serve exited: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("retriever serve did not report its port in 180 s")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid) or 0.0

    stop = Server.stop


def _strip_markers(text: str) -> str:
    return re.sub(r"\[\d+\]", " ", text)


def rag_scores(rows: list[dict[str, Any]], records: list[Any]) -> dict[str, Any]:
    """Answer token-F1 (best reference; abstaining scores 0 on an answerable question and 1 on an
    unanswerable one, answering an unanswerable one scores 0), its answerable-only part, citation precision
    (share of cited documents that are the gold passage, answered answerable questions; NaN when nothing was
    cited), abstention rates (all / answerable / unanswerable) and the p50 latency of answered questions."""
    f1, f1_ans, cites = [], [], []
    for row, rec in zip(rows, records, strict=True):
        if not row["answerable"]:
            f1.append(1.0 if rec.abstained else 0.0)
            continue
        score = 0.0 if rec.abstained else max(token_f1(_strip_markers(rec.output), a) for a in row["answers"])
        f1.append(score)
        f1_ans.append(score)
        if not rec.abstained:
            cites += [d == row["gold"] for d in rec.retrieved or []]
    reasons = Counter(
        re.sub(r"\d+\.\d+", "x", r.notes.get("abstain_reason", "")) for r in records if r.abstained
    )
    answered = [r.latency_ms for r in records if not r.abstained]

    def abstain(flag: bool) -> float:
        return statistics.fmean(bool(r.abstained) for w, r in zip(rows, records) if w["answerable"] is flag)

    return {"answer_f1": statistics.fmean(f1), "answerable_f1": statistics.fmean(f1_ans),
            "citation_precision": statistics.fmean(cites) if cites else float("nan"), "citations": len(cites),
            "abstention_rate": statistics.fmean(bool(r.abstained) for r in records),
            "abstain_answerable": abstain(True), "abstain_unanswerable": abstain(False),
            "p50_answered_ms": percentile(answered, 0.5) if answered else float("nan"),
            "abstain_reasons": dict(reasons)}  # fmt: skip


async def rag_config(task: Task, ret: RetrieverServer, inf: Server, concurrency: int) -> dict[str, Any]:
    """One harness run of the ``rag`` task; CPU-seconds of BOTH servers measured around it."""
    backend = RetrieverBackend(ret.target, timeout=600)
    opts = RunOptions(concurrency=concurrency, retries=0)
    cpu0 = ret.cpu() + inf.cpu()
    try:
        records = await run_system(task, backend, opts=opts)
    finally:
        await backend.aclose()
    cpu = ret.cpu() + inf.cpu() - cpu0
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} failed records, e.g. {failed[0]}")
    lat = [r.latency_ms for r in records]
    price = DEFAULT_PRICES["local"].cpu_hour_usd
    return {"records": records, "cpu_s": cpu, "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
            "usd_per_1k": cpu / len(records) * 1000 * price / 3600}  # fmt: skip


def rag_sweep(model: Path, adapter: Path | None, work: Path, n_questions: int, n_passages: int, embedder: str,
              concurrency: int, answers: tuple[str, ...] = tuple(RAG_ANSWER)) -> dict[str, Any]:  # fmt: skip
    """Index the subset, start both servers, run every (mode, k, answer mode); results + Pareto front."""
    from nanoforge.retriever.chunking import ChunkerSpec
    from nanoforge.retriever.embedders import EmbedderSpec
    from nanoforge.retriever.library import Library

    rows, docs = rag_data(n_questions, n_passages)
    (work / "rag").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lib = Library(work / "rag" / "collections")
    name = f"clapnq{len(docs)}-{embedder}"
    col = lib.create(name, EmbedderSpec(embedder), ChunkerSpec("recursive", 96, 0, "words"), exist_ok=True)
    if col.stats()["documents"] == 0:
        col.upsert(docs)
    chunks = col.stats()["chunks"]
    lib.close()
    index_s = time.perf_counter() - t0
    print(
        f"rag: {len(rows)} questions, {len(docs)} passages -> {chunks} chunks ({index_s:.0f} s)", flush=True
    )
    extra = ("--adapter", f"rag={adapter}") if adapter is not None else ()
    inf = Server(model, None, work / "rag" / "serve.log", extra)
    ret = None
    results: list[dict[str, Any]] = []
    try:
        ret = RetrieverServer(
            work / "rag" / "collections", embedder, inf.target, work / "rag" / "retriever.log"
        )
        for answer in answers:
            answer_mode, gate = RAG_ANSWER[answer]
            options: dict[str, Any] = {"abstain_threshold": RAG_THRESHOLD, "answer_mode": answer_mode}
            if answer_mode == ret_pb.ANSWER_MODE_GENERATIVE:
                options.update(RAG_GEN, min_groundedness=gate, adapter="rag" if adapter is not None else "")
            for mode in RAG_MODES:
                for k in RAG_KS:
                    task = Task(name="clapnq-rag", type="rag", records=rows, template=PromptTemplate("{{ question }}"),
                                id_field="id", target_field="target", metrics=["abstention_rate"],
                                sampling=RAG_SAMPLING if answer != "extractive" else {},
                                service={"collection": name, "mode": mode, "top_k": k, "options": options})  # fmt: skip
                    if mode == RAG_MODES[0] and k == RAG_KS[0]:  # warm-up of each answer path (lazy init)
                        for _ in range(2):
                            asyncio.run(rag_config(dataclasses.replace(task, records=rows[:8]), ret, inf, 1))
                    run = asyncio.run(rag_config(task, ret, inf, concurrency))
                    row = {
                        "answer": answer,
                        "mode": mode,
                        "k": k,
                        **rag_scores(rows, run.pop("records")),
                        **run,
                    }
                    results.append(row)
                    print(f"rag {answer} {mode} k={k}: F1 {row['answer_f1']:.3f} cite {row['citation_precision']:.3f} "
                          f"abstain {row['abstention_rate']:.2f} p50 {row['p50_ms']:.0f} ms cpu {row['cpu_s']:.1f} s",
                          flush=True)  # fmt: skip
    finally:
        if ret is not None:
            ret.stop()
        inf.stop()
    front = pareto_front([(r["usd_per_1k"], r["p50_ms"], r["answer_f1"]) for r in results])
    return {"model": str(model), "adapter": str(adapter or ""), "embedder": embedder, "questions": len(rows), "answerable": sum(r["answerable"] for r in rows),
            "passages": len(docs), "chunks": chunks, "index_seconds": index_s, "threshold": RAG_THRESHOLD,
            "concurrency": concurrency, "results": results, "pareto": sorted(front)}  # fmt: skip


def rag_plot(rag: dict[str, Any], out: Path) -> None:
    """Answer F1 vs cost and vs p50 latency (outlined: the 3-D Pareto front)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = {"bm25": "tab:blue", "dense": "tab:orange", "hybrid": "tab:green"}
    markers = {("extractive", 2): "o", ("extractive", 5): "s", ("generative", 2): "^", ("generative", 5): "v",
               ("generative-g0", 2): "<", ("generative-g0", 5): ">"}  # fmt: skip
    front = set(rag["pareto"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "usd_per_1k", "USD per 1k requests (retriever + inference CPU-s)"),
                           (axes[1], "p50_ms", "p50 latency (ms)")):  # fmt: skip
        for i, r in enumerate(rag["results"]):
            ax.scatter(r[key], r["answer_f1"], c=colors[r["mode"]], marker=markers[(r["answer"], r["k"])],
                       s=150 if i in front else 45, edgecolors="k" if i in front else "none", alpha=0.85)  # fmt: skip
        base = 1 - rag["answerable"] / rag["questions"]
        ax.axhline(base, c="grey", ls=":", lw=1, label="always abstain")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("answer token-F1 (abstention rule in the write-up)")
    handles = [Line2D([], [], ls="", marker="o", c=c, label=m) for m, c in colors.items()]
    handles += [
        Line2D([], [], ls="", marker=m, c="grey", label=f"{a} k={k}") for (a, k), m in markers.items()
    ]
    handles.append(Line2D([], [], ls=":", c="grey", label="always abstain (the scoring floor)"))
    axes[0].legend(handles=handles, fontsize=7, loc="center right")
    axes[0].set_title(f"RAG on ClapNQ ({rag['questions']} q): quality vs cost (outlined: Pareto)")
    axes[1].set_title("quality vs p50 latency")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def rag_table(rag: dict[str, Any]) -> str:
    def f(x: float, spec: str) -> str:
        return "–" if x != x else format(x, spec)  # NaN: nothing cited / nothing answered

    lines = ["| answer | search | k | answer F1 | F1 answerable | citation precision | abstain (ans / unans) | p50 ms "
             "| p50 answered ms | p99 ms | CPU-s (both servers) | USD / 1k req | Pareto |", "|" + "---|" * 13]  # fmt: skip
    for i, r in enumerate(rag["results"]):
        lines.append(f"| {r['answer']} | {r['mode']} | {r['k']} | {r['answer_f1']:.3f} | {r['answerable_f1']:.3f} | "
                     f"{f(r['citation_precision'], '.3f')} | {r['abstain_answerable']:.2f} / {r['abstain_unanswerable']:.2f} | "
                     f"{r['p50_ms']:.0f} | {f(r['p50_answered_ms'], '.0f')} | {r['p99_ms']:.0f} | {r['cpu_s']:.1f} | "
                     f"{r['usd_per_1k']:.5f} | {'*' if i in rag['pareto'] else ''} |")  # fmt: skip
    return "\n".join(lines)


def quant_sweep(args: argparse.Namespace, model: Path, t_start: float, t_model: float) -> None:
    """Quantization x decoding x concurrency on `nanoforge serve`; WORK/results.json, the first plot."""
    gen_rows, bpb_rows = held_out(args.n_prompts, args.n_bpb)
    results: list[dict[str, Any]] = []
    bpb: dict[str, float] = {}
    rss: dict[str, float] = {}
    for quant, mode in QUANTS.items():
        server = Server(model, mode, args.work / f"serve-{quant}.log")
        try:
            # Warm-up (first calls pay for allocations and lazy init), then quality of the weights.
            asyncio.run(
                run_config(server, make_task("generate", gen_rows[:4], DECODING["greedy-32"], ["rouge_l"]), 4)
            )
            ppl = asyncio.run(run_config(server, make_task("perplexity", bpb_rows, {}, ["bits_per_byte"]), 4))
            bpb[quant] = ppl["metrics"]["bits_per_byte"]["value"]
            print(f"{quant}: bits per byte {bpb[quant]:.4f}", flush=True)
            for dec, sampling in DECODING.items():
                task = make_task("generate", gen_rows, sampling, ["rouge_l"])
                for conc in CONCURRENCY:
                    # Repeats, median of the timings: the shared machine's load spikes move single runs.
                    runs = [asyncio.run(run_config(server, task, conc)) for _ in range(args.repeats)]
                    m = runs[0]["metrics"]["rouge_l"]
                    if any(r["metrics"]["rouge_l"]["value"] != m["value"] for r in runs):
                        print(f"note: {quant} {dec} c={conc}: ROUGE-L differs between repeats", flush=True)
                    timing = {k: statistics.median(r[k] for r in runs) for k in
                              ("wall_s", "server_cpu_s", "tokens_per_s", "p50_ms", "p99_ms", "usd_per_1k")}  # fmt: skip
                    row = {"quant": quant, "decoding": dec, "concurrency": conc, "rouge_l": m["value"],
                           "rouge_l_low": m["low"], "rouge_l_high": m["high"], "n": runs[0]["n"],
                           "completion_tokens": runs[0]["completion_tokens"], "repeats": args.repeats, **timing}  # fmt: skip
                    results.append(row)
                    print(f"{quant} {dec} c={conc}: rouge_l {m['value']:.3f} {row['tokens_per_s']:.0f} tok/s "
                          f"p50 {row['p50_ms']:.0f} ms cpu {row['server_cpu_s']:.2f} s", flush=True)  # fmt: skip
            rss[quant] = server.rss_mib()
        finally:
            server.stop()
    front = set(pareto_front([(r["usd_per_1k"], r["p50_ms"], r["rouge_l"]) for r in results]))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, front, args.plot)
    total = time.perf_counter() - t_start
    out = {"model": str(model), "model_seconds": t_model, "total_seconds": total, "bits_per_byte": bpb,
           "server_peak_rss_mib": rss,
           "price_cpu_hour_usd": DEFAULT_PRICES["local"].cpu_hour_usd, "pareto": sorted(front), "results": results,
           "load_avg": os.getloadavg()}  # fmt: skip
    write_text_atomic(args.work / "results.json", json.dumps(out, indent=1))
    print(table(results, front, bpb))
    print("\nserver peak RSS (MiB): " + ", ".join(f"{q} {v:.0f}" for q, v in rss.items()))
    print(f"\ntotal {total:.0f} s (model {t_model:.0f} s); load average {os.getloadavg()}; plot {args.plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "cost_quality_sweep")
    ap.add_argument("--model", type=Path, default=None, help="A model dir to serve instead of training one.")
    ap.add_argument("--iters", type=int, default=250, help="Pretraining steps.")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--n-bpb", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="Timed runs per config (median reported).")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "experiments" / "cost_quality_sweep.png")
    ap.add_argument("--replot", action="store_true", help="Only redraw the plots from WORK/*results.json.")
    ap.add_argument("--rag", action=argparse.BooleanOptionalAction, default=CLAPNQ.is_dir(),
                    help="Run the RAG section (default: when ../shared/data/clapnq-dev exists).")  # fmt: skip
    ap.add_argument("--rag-only", action="store_true", help="Skip the quantization sweep.")
    ap.add_argument("--rag-questions", type=int, default=60, help="Half answerable.")
    ap.add_argument(
        "--rag-passages", type=int, default=200, help="Indexed passages (the questions' own + random)."
    )
    ap.add_argument("--rag-embedder", choices=("minilm", "hash"), default="minilm")
    ap.add_argument("--rag-concurrency", type=int, default=1)
    ap.add_argument("--rag-model", type=Path, default=ROOT / "out" / "demo" / "run" / "final",
                    help="Chat model for generative answers (the sweep model has no chat template).")  # fmt: skip
    ap.add_argument("--rag-adapter", type=Path, default=ROOT / "out" / "demo" / "lora" / "adapter")
    ap.add_argument(
        "--rag-plot", type=Path, default=ROOT / "docs" / "experiments" / "cost_quality_sweep_rag.png"
    )
    args = ap.parse_args()
    if args.replot:
        if (args.work / "results.json").is_file():
            saved = json.loads((args.work / "results.json").read_text())
            plot(saved["results"], set(saved["pareto"]), args.plot)
            print(table(saved["results"], set(saved["pareto"]), saved["bits_per_byte"]))
        if (args.work / "rag_results.json").is_file():
            rag = json.loads((args.work / "rag_results.json").read_text())
            rag_plot(rag, args.rag_plot)
            print(rag_table(rag))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = args.model or build_model(args.work, args.iters)
    t_model = time.perf_counter() - t_start
    print(f"model {model} ready in {t_model:.0f} s", flush=True)
    if not args.rag_only:
        quant_sweep(args, model, t_start, t_model)
    if not args.rag:
        print(f"note: RAG section skipped ({CLAPNQ} missing or --no-rag)")
        return
    if not CLAPNQ.is_dir():
        raise SystemExit(f"error: --rag needs ClapNQ dev at {CLAPNQ}; it is missing")
    t0 = time.perf_counter()
    answers = tuple(RAG_ANSWER)
    rag_model, adapter = args.rag_model, args.rag_adapter if args.rag_adapter.is_dir() else None
    if not (rag_model / "config.json").is_file():  # the sweep model has no chat template: extractive only
        print(
            f"note: no chat model at {rag_model} (--rag-model); generative RAG settings skipped", flush=True
        )
        rag_model, adapter, answers = model, None, ("extractive",)
    rag = rag_sweep(rag_model, adapter, args.work, args.rag_questions, args.rag_passages, args.rag_embedder,
                    args.rag_concurrency, answers)  # fmt: skip
    rag.update(seconds=time.perf_counter() - t0, load_avg=os.getloadavg(),
               price_cpu_hour_usd=DEFAULT_PRICES["local"].cpu_hour_usd)  # fmt: skip
    write_text_atomic(args.work / "rag_results.json", json.dumps(rag, indent=1))
    args.rag_plot.parent.mkdir(parents=True, exist_ok=True)
    rag_plot(rag, args.rag_plot)
    print(rag_table(rag))
    print(f"\nRAG section {rag['seconds']:.0f} s; load average {os.getloadavg()}; plot {args.rag_plot}")


if __name__ == "__main__":
    main()
