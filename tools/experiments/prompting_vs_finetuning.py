"""Experiment: prompting vs fine-tuning on TREC question classification, all through the real gRPC server.

    .venv/bin/python tools/experiments/prompting_vs_finetuning.py --out docs/experiments

Needs the models of ``tools/experiments/lora_vs_full.py`` (``out/lora_vs_full/manifest.json``): the
pretrained base, the full fine-tune and the LoRA adapters (each also saved merged). Every variant below
runs against ``nanoforge serve`` child processes over gRPC with nanoforge-evaluation's harness
(``run_system``: few-shot selection, prompt rendering, CoT answer extraction, per-record latency, tokens
and cost priced from the server's measured CPU time):

- the SAME base model, prompted (raw text, because it was never trained on chats): zero-shot and k-shot
  (fixed = one example per class, random = seeded, similar = bag-of-words nearest neighbours) label scoring
  with the Score RPC (log-likelihood of each label: the classifier of ``prompting.py``), zero-shot and
  similar-k-shot greedy generation with label extraction, and zero-shot chain-of-thought (a model this
  small does not reason; it is reported anyway);
- the fine-tuned models, asked the chat they were trained on: full FT and the best LoRA (by its validation
  accuracy) scored with the Score RPC (``messages`` context, label + end-of-turn ids as continuations),
  and the same LoRA *as an adapter* on the base server (``serve --adapter``), by greedy generation: the
  multi-LoRA serving path.
  The Score RPC serves base weights only, so the LoRA is scored on its merged copy (same function).

Reported per variant: accuracy with a 95% bootstrap interval, calibration (ECE over 10 bins of the top
label probability; label probabilities = softmax of the six label log-likelihoods; reliability plot),
latency p50/p99 (client-observed, one request in flight), prompt tokens, cost per 1k requests (server
CPU-seconds x the CPU-hour price of ``evaluation.cost``) and, for the fine-tunes, the training cost (CPU
seconds of the fine-tune, same price). A paired bootstrap compares the best prompting variant with the
best fine-tuned one on the same questions. Writes ``prompting_vs_finetuning.md``/``.png``/``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.api.inference_client import chat_message, score_request
from nanoforge.evaluation.backends import GrpcBackend, Reply, ScoreReply
from nanoforge.evaluation.cost import DEFAULT_PRICES
from nanoforge.evaluation.harness import Record, RunOptions, run_system
from nanoforge.evaluation.prompting import FewShotConfig, PromptTemplate
from nanoforge.evaluation.stats import bootstrap_ci, paired_bootstrap
from nanoforge.evaluation.task import Task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import INSTRUCTION, LABELS, read_trec

PRICE = DEFAULT_PRICES["grpc"]  # CPU-hour price for our own server (a placeholder, see evaluation.cost)
SHOTS = 6
BASE_HEAD = (
    "Classify the question type as ABBR (abbreviation), DESC (description), ENTY (entity), HUM (human), "
    "LOC (location) or NUM (number).\n\n"
)
# The base model was pretrained on raw text, so it is prompted with raw text; shots are laid out by the template.
BASE_TEMPLATE = (
    BASE_HEAD + "{% for ex in examples %}Question: {{ ex.question }}\nType: {{ ex.label }}\n\n{% endfor %}"
    "Question: {{ question }}\nType:"
)
COT_TEMPLATE = BASE_HEAD + "Question: {{ question }}"  # the harness appends the CoT instruction
CHAT_TEMPLATE = INSTRUCTION + "{{ question }}"  # the user turn the fine-tunes were trained on


# ---------------------------------------------------------------------------------------------- servers
@dataclass
class Server:
    """A ``nanoforge serve`` child process on a loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        """utime + stime of the server process from /proc (Linux), else None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.unlink(missing_ok=True)


def start_server(model: str, adapters: Mapping[str, str] | None = None, timeout: float = 180.0) -> Server:
    """``nanoforge serve --model MODEL --port 0 --no-http [--adapter NAME=DIR ...]``; waits for its port."""
    fd, name = tempfile.mkstemp(prefix="pvf-serve-", suffix=".log")
    cmd = [sys.executable, "-m", "nanoforge.cli", "serve", "--model", model, "--port", "0", "--no-http"]
    for k, v in (adapters or {}).items():
        cmd += ["--adapter", f"{k}={v}"]
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = Path(name).read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("grpc listening on "):
                return Server(proc, int(line.rsplit(":", 1)[1]), Path(name))
        if proc.poll() is not None:
            raise OSError(f"nanoforge serve --model {model} exited with {proc.returncode}: {text[-800:]}")
        time.sleep(0.2)
    proc.kill()
    raise OSError(f"nanoforge serve --model {model} did not report a port within {timeout:g} s")


class ServedBackend:
    """A harness backend for one model (optionally one adapter) of a :class:`Server`.

    Composition over ``GrpcBackend``: plain text prompts go through it unchanged; ``adapter`` is added to
    generation requests; with ``chat_score`` the Score RPC gets the prompt as a user turn (``messages``
    context, rendered by the server's chat template) and each label as its token ids plus end-of-turn,
    which is exactly what the fine-tunes were trained to produce. CPU seconds come from the server process.
    """

    kind = "grpc"

    def __init__(self, server: Server, *, adapter: str = "", chat_score: bool = False) -> None:
        self.server, self.adapter, self.chat_score = server, adapter, chat_score
        self.inner = GrpcBackend(server.target)
        self.target = server.target + (f"+{adapter}" if adapter else "")
        self.model = ""
        self.label_ids: dict[str, list[int]] = {}

    async def start(self) -> None:
        if self.chat_score and not self.label_ids:
            for label in LABELS:
                reply = await self.inner.client.tokenize(label + "<|im_end|>", allow_special=True)
                self.label_ids[label] = list(reply.token_ids)

    async def generate(
        self, prompt: str, params: Mapping[str, Any], *, chat: bool, response_format: Mapping[str, Any] | None
    ) -> Reply:
        extra = {"adapter": self.adapter} if self.adapter else {}
        return await self.inner.generate(
            prompt, {**params, **extra}, chat=chat, response_format=response_format
        )

    async def score(self, context: str, continuations: Sequence[str]) -> ScoreReply:
        # Built here rather than by GrpcBackend.score: the Score reply's Usage has no prefill/decode times,
        # so its total_time_ms is what prices the request, and chat contexts need the messages field.
        t0 = time.perf_counter()
        if self.chat_score:
            request = inference_pb2.ScoreRequest(
                messages=common_pb2.ChatMessages(
                    messages=[chat_message({"role": "user", "content": context})]
                ),
                continuations=[
                    inference_pb2.Continuation(token_ids=common_pb2.TokenIds(ids=self.label_ids[c.strip()]))
                    for c in continuations
                ],
            )
        else:
            request = score_request(context, list(continuations))
        reply = await self.inner.client.stub.Score(request, timeout=120.0)
        return ScoreReply(
            [(s.logprob, s.num_tokens) for s in reply.scores],
            prompt_tokens=reply.usage.prompt_tokens,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            compute_ms=reply.usage.total_time_ms,
        )

    def is_transient(self, exc: BaseException) -> bool:
        return self.inner.is_transient(exc)

    def format_unsupported(self, exc: BaseException) -> bool:
        return self.inner.format_unsupported(exc)

    def cpu_seconds(self) -> float | None:
        return self.server.cpu_seconds()

    async def aclose(self) -> None:
        await self.inner.aclose()


# ---------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One row of the table: which server, how the task is set up, and whether it is a fine-tune."""

    name: str
    server: str  # key of the servers dict: base | full | lora
    type: str  # choice (Score) | generate
    template: str
    shots: int = 0
    mode: str = "fixed"
    cot: bool = False
    chat: bool = False
    max_new_tokens: int = 4
    adapter: str = ""
    finetuned: str = ""  # manifest variant whose training cost applies


VARIANTS = [
    Variant("zero-shot (score)", "base", "choice", BASE_TEMPLATE),
    Variant(f"{SHOTS}-shot fixed (score)", "base", "choice", BASE_TEMPLATE, SHOTS, "fixed"),
    Variant(f"{SHOTS}-shot random (score)", "base", "choice", BASE_TEMPLATE, SHOTS, "random"),
    Variant(f"{SHOTS}-shot similar (score)", "base", "choice", BASE_TEMPLATE, SHOTS, "similar"),
    Variant("zero-shot (generate)", "base", "generate", BASE_TEMPLATE),
    Variant(f"{SHOTS}-shot similar (generate)", "base", "generate", BASE_TEMPLATE, SHOTS, "similar"),
    Variant("zero-shot CoT (generate)", "base", "generate", COT_TEMPLATE, cot=True, max_new_tokens=48),
    Variant("full FT (score)", "full", "choice", CHAT_TEMPLATE, chat=True, finetuned="full"),
    Variant("LoRA (score, merged)", "lora", "choice", CHAT_TEMPLATE, chat=True, finetuned="lora"),
    Variant(
        "LoRA (generate, adapter)",
        "base",
        "generate",
        CHAT_TEMPLATE,
        chat=True,
        adapter="lora",
        finetuned="lora",
    ),
]


def build_task(v: Variant, records: list[dict[str, Any]], pool: list[dict[str, Any]]) -> Task:
    """A harness Task for one variant (built in code: the same fields a task YAML has)."""
    return Task(
        name=v.name,
        type=v.type,
        records=records,
        template=PromptTemplate(v.template, name=v.name),
        target_field="label",
        id_field="id",
        chat=v.chat,
        metrics=["loglik_accuracy" if v.type == "choice" else "exact_match"],
        sampling={"max_new_tokens": v.max_new_tokens, "temperature": 0.0},
        fewshot=FewShotConfig(k=v.shots, mode=v.mode, seed=0, query_field="question"),
        fewshot_pool=pool,
        cot=v.cot,
        extract={"method": "label"} if v.type == "generate" else {"method": "none"},
        labels=LABELS,
    )


def correct_of(rec: Record) -> float:
    """1.0 when the record's answer is the gold label (a failed record counts as wrong)."""
    if rec.error is not None:
        return 0.0
    if rec.choice_index is not None:
        return float(rec.choice_index == rec.target_index)
    return float(rec.prediction == rec.target)


def label_probs(rec: Record) -> np.ndarray | None:
    """Softmax of the six label log-likelihoods (None for generation records)."""
    if rec.choice_scores is None:
        return None
    s = np.array(rec.choice_scores, dtype=np.float64)
    p = np.exp(s - s.max())
    return p / p.sum()


def calibration(records: Sequence[Record], bins: int = 10) -> dict[str, Any] | None:
    """Expected calibration error of the top label probability, and the reliability curve."""
    probs = [label_probs(r) for r in records]
    if any(p is None for p in probs) or not probs:
        return None
    conf = np.array([p.max() for p in probs])  # type: ignore[union-attr]
    correct = np.array([correct_of(r) for r in records])
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece, curve = 0.0, []
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
            curve.append({"conf": float(conf[m].mean()), "acc": float(correct[m].mean()), "n": int(m.sum())})
    return {"ece": float(ece), "mean_conf": float(conf.mean()), "curve": curve}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else math.nan


def context_tokens(tok: Any, prompt: str, chat: bool) -> int:
    """Tokens of a Score context as the server builds it (one user turn plus the assistant header, or raw text)."""
    from nanoforge.tokenizer.chat import render_chat

    if chat:
        return len(render_chat(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True).ids)
    return len(tok.encode(prompt))


def summarise(
    v: Variant, records: list[Record], opts: RunOptions, train: Mapping[str, Any] | None, tok: Any
) -> dict:
    """The numbers of one variant (records stay in memory for the paired comparison)."""
    correct = [correct_of(r) for r in records]
    ci = bootstrap_ci(correct, lambda xs: float(np.mean(xs)), n_resamples=opts.n_resamples, seed=opts.seed)
    ok = [r for r in records if r.error is None]
    lat = [r.latency_ms for r in ok]
    cost = sum(r.cost_usd for r in ok)
    cpu = sum(r.cpu_seconds or 0.0 for r in ok)
    out = {
        "variant": v.name,
        "config": asdict(v) | {"template": v.template},
        "accuracy": ci.to_dict(),
        "calibration": calibration(records),
        "latency_ms": {
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "mean": float(np.mean(lat)) if lat else None,
        },
        # generation: the server's Usage; scoring: counted here (Score's Usage counts continuation tokens only)
        "prompt_tokens_mean": float(
            np.mean(
                [
                    r.prompt_tokens if v.type == "generate" else context_tokens(tok, r.prompt, v.chat)
                    for r in ok
                ]
            )
        )
        if ok
        else None,
        "completion_tokens_mean": float(np.mean([r.completion_tokens for r in ok])) if ok else None,
        "server_cpu_s_per_request": cpu / len(ok) if ok else None,
        "cost_per_1k_usd": 1000 * cost / len(ok) if ok else None,
        "answers": dict(Counter(r.prediction or "(none)" for r in records).most_common()),
        "n": len(records),
        "n_failed": len(records) - len(ok),
        "errors": sorted({r.error for r in records if r.error})[:3],
        "examples": [{"q": r.prompt[-120:], "out": r.output[:120], "gold": r.target} for r in records[:3]],
    }
    if train is not None:
        out["train_cpu_s"] = train["train_cpu_s"]
        out["train_cost_usd"] = train["train_cpu_s"] * PRICE.cpu_hour_usd / 3600.0
    return out


async def evaluate(
    variants: Sequence[Variant], servers: Mapping[str, Server], records: list[dict], pool: list[dict],
    opts: RunOptions, manifest: Mapping[str, Any], lora_name: str, tok: Any,
) -> tuple[list[dict], dict[str, list[Record]]]:  # fmt: skip
    results, all_records = [], {}
    for (
        server
    ) in servers.values():  # one untimed request of each kind first: imports, allocator, thread pools
        warm = GrpcBackend(server.target)
        await warm.score("Question: warm up\nType:", [" NUM", " LOC"])
        await warm.generate("Question: warm up\nType:", {"max_new_tokens": 4, "temperature": 0.0}, chat=False,
                            response_format=None)  # fmt: skip
        await warm.aclose()
    for v in variants:
        backend = ServedBackend(
            servers[v.server], adapter=v.adapter, chat_score=v.chat and v.type == "choice"
        )
        t0 = time.perf_counter()
        recs = await run_system(build_task(v, records, pool), backend, opts=opts)
        await backend.aclose()
        train = (
            manifest["variants"][lora_name if v.finetuned == "lora" else v.finetuned] if v.finetuned else None
        )
        res = summarise(v, recs, opts, train, tok)
        res["wall_s"] = time.perf_counter() - t0
        results.append(res)
        all_records[v.name] = recs
        acc = res["accuracy"]
        print(
            f"{v.name:32s} acc {100 * acc['value']:5.1f}% [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}]  "
            f"p50 {res['latency_ms']['p50']:.1f} ms  ${res['cost_per_1k_usd']:.6f}/1k  ({res['wall_s']:.0f} s, "
            f"{res['n_failed']} failed)",
            flush=True,
        )
    return results, all_records


# ---------------------------------------------------------------------------------------------- main
def load_data(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed seeded subset of the test set, and the train pool (one example per class first: ``fixed``)."""
    test = [
        {"id": f"t{i}", "question": q, "label": lab} for i, (lab, q) in enumerate(read_trec("TREC_10.label"))
    ]
    if n < len(test):
        test = sorted(random.Random(seed).sample(test, n), key=lambda r: int(r["id"][1:]))
    train = [
        {"id": f"p{i}", "question": q, "label": lab}
        for i, (lab, q) in enumerate(read_trec("train_5500.label"))
    ]
    rng = random.Random(seed)
    first = [rng.choice([r for r in train if r["label"] == lab]) for lab in LABELS]
    return test, first + [r for r in train if r not in first]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/experiments"))
    ap.add_argument("--work", type=Path, default=Path("out/lora_vs_full"), help="lora_vs_full.py's --work")
    ap.add_argument("--n", type=int, default=500, help="test questions (a seeded subset when < 500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--only", help="comma-separated variant names (debugging)")
    a = ap.parse_args()
    mpath = a.work / "manifest.json"
    if not mpath.is_file():
        raise SystemExit(
            f"error: {mpath} not found; run tools/experiments/lora_vs_full.py first (its --work)"
        )
    if a.n < 10:
        raise SystemExit(f"error: --n must be >= 10, got {a.n}")
    manifest = json.loads(mpath.read_text())
    loras = {k: v for k, v in manifest["variants"].items() if k.startswith("lora")}
    # the best LoRA of lora_vs_full by its validation accuracy (older manifests: test accuracy)
    lora_name = max(
        loras, key=lambda k: (loras[k].get("val_accuracy", loras[k]["accuracy"]), -loras[k]["val_loss"])
    )
    records, pool = load_data(a.n, a.seed)
    from nanoforge.tokenizer.hf import load_any_tokenizer

    tok = load_any_tokenizer(Path(manifest["base"]) / "tokenizer")
    opts = RunOptions(concurrency=1, retries=2, seed=a.seed, n_resamples=a.resamples)
    variants = [v for v in VARIANTS if not a.only or v.name in a.only.split(",")]
    t_start = time.perf_counter()
    servers: dict[str, Server] = {}
    try:
        servers["base"] = start_server(manifest["base"], {"lora": loras[lora_name]["adapter"]})
        servers["full"] = start_server(manifest["variants"]["full"]["final"])
        servers["lora"] = start_server(loras[lora_name]["final"])
        results, recs = asyncio.run(
            evaluate(variants, servers, records, pool, opts, manifest, lora_name, tok)
        )
    finally:
        for s in servers.values():
            s.stop()
    total_s = time.perf_counter() - t_start
    write_report(a, results, recs, manifest, lora_name, total_s, opts)


# ---------------------------------------------------------------------------------------------- report
def write_report(
    a: argparse.Namespace, results: list[dict], recs: Mapping[str, list[Record]], manifest: Mapping[str, Any],
    lora_name: str, total_s: float, opts: RunOptions,
) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompting = [r for r in results if not r["config"]["finetuned"]]
    tuned = [r for r in results if r["config"]["finetuned"]]
    paired = None
    if prompting and tuned:
        bp = max(prompting, key=lambda r: r["accuracy"]["value"])
        bt = max(tuned, key=lambda r: r["accuracy"]["value"])
        pr = paired_bootstrap(
            [correct_of(r) for r in recs[bp["variant"]]],
            [correct_of(r) for r in recs[bt["variant"]]],
            lambda xs: float(np.mean(xs)),
            n_resamples=opts.n_resamples,
            seed=opts.seed,
        )
        paired = {"prompting": bp["variant"], "finetuned": bt["variant"], **pr.to_dict()}
    golds = [r.target for r in next(iter(recs.values()))]
    majority = max(golds.count(lab) for lab in LABELS) / len(golds)
    base_cost = manifest["base_cost"]
    pretrain_usd = base_cost["cpu_s"] * PRICE.cpu_hour_usd / 3600.0
    a.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "results": results,
        "paired": paired,
        "lora": lora_name,
        "pretrain": {"cpu_s": base_cost["cpu_s"], "usd": pretrain_usd},
        "price": asdict(PRICE),
        "n": a.n,
        "seed": a.seed,
        "total_s": total_s,
        "load_avg": os.getloadavg(),
    }
    (a.out / "prompting_vs_finetuning.json").write_text(json.dumps(payload, indent=1, default=str))

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5))
    names = [r["variant"] for r in results]
    acc = np.array([100 * r["accuracy"]["value"] for r in results])
    err = np.array([[100 * (r["accuracy"]["value"] - r["accuracy"]["low"]) for r in results],
                    [100 * (r["accuracy"]["high"] - r["accuracy"]["value"]) for r in results]])  # fmt: skip
    colors = ["tab:orange" if r["config"]["finetuned"] else "tab:blue" for r in results]
    ax1.barh(names, acc, xerr=err, color=colors)
    ax1.axvline(100 * majority, ls="--", color="gray", label="most frequent label")
    ax1.invert_yaxis()
    ax1.set_xlabel("accuracy (%) with 95% bootstrap CI")
    ax1.legend(loc="lower right")
    ax2.plot([0, 1], [0, 1], ":", color="gray")
    scored = [r for r in results if r["calibration"]]
    shots = [r for r in scored if not r["config"]["finetuned"] and r["config"]["shots"]]
    keep = {r["variant"] for r in scored if r["config"]["finetuned"] or not r["config"]["shots"]}
    keep |= {max(shots, key=lambda r: r["accuracy"]["value"])["variant"]} if shots else set()
    for r in scored:
        if r["variant"] in keep:  # zero-shot, the best k-shot and the fine-tunes: more lines would not read
            c = r["calibration"]["curve"]
            ax2.plot(
                [p["conf"] for p in c],
                [p["acc"] for p in c],
                "o-",
                label=f"{r['variant']} (ECE {r['calibration']['ece']:.2f})",
            )
    ax2.set_xlabel("top-label probability")
    ax2.set_ylabel("accuracy")
    ax2.set_title("reliability (label-scoring variants)")
    ax2.legend(fontsize=7)
    for r, col in zip(results, colors, strict=True):
        ax3.scatter(r["cost_per_1k_usd"] * 1e3, 100 * r["accuracy"]["value"], color=col)
        ax3.annotate(r["variant"], (r["cost_per_1k_usd"] * 1e3, 100 * r["accuracy"]["value"]), fontsize=7)
    ax3.set_xscale("log")
    ax3.set_xlabel("cost per 1k requests (milli-USD, server CPU time)")
    ax3.set_ylabel("accuracy (%)")
    fig.tight_layout()
    fig.savefig(a.out / "prompting_vs_finetuning.png", dpi=110)

    rows = [
        "| variant | accuracy [95% CI] | ECE | latency p50 / p99 (ms) | prompt tok | server CPU-ms / req "
        "| cost / 1k req (USD) | training cost | most frequent answer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        acc_ = r["accuracy"]
        cal = f"{r['calibration']['ece']:.3f}" if r["calibration"] else "–"
        train = f"{r['train_cpu_s']:.0f} CPU-s = ${r['train_cost_usd']:.5f}" if "train_cpu_s" in r else "–"
        rows.append(
            f"| {r['variant']} | {100 * acc_['value']:.1f}% [{100 * acc_['low']:.1f}, {100 * acc_['high']:.1f}] | "
            f"{cal} | {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} | {r['prompt_tokens_mean']:.0f} | "
            f"{1000 * r['server_cpu_s_per_request']:.1f} | {r['cost_per_1k_usd']:.6f} | {train} | {top_answer(r)} |"
        )
    subset = "all 500" if a.n >= 500 else f"a fixed seeded subset (seed {a.seed}) of {a.n} of the 500"
    cmd = f"python tools/experiments/prompting_vs_finetuning.py --n {a.n} --seed {a.seed} --resamples {a.resamples}"
    text = (
        "# Prompting vs fine-tuning (TREC question classification, one base model)\n\n"
        f"Command: `{cmd}` (after `lora_vs_full.py`, whose models it loads) — {total_s / 60:.1f} min on this "
        f"machine, load average {os.getloadavg()[0]:.1f} at the end (2 CPU cores shared with other jobs: "
        "latencies and CPU times are inflated and noisy).\n\n"
        f"Every variant answers the same questions ({subset} TREC-10 test questions), through `nanoforge serve` child "
        "processes over gRPC, driven by nanoforge-evaluation's harness (one request in flight). Base model: the "
        "4-layer, width-128 GPT of `lora_vs_full.md`; prompting variants use it as is, with raw-text prompts "
        f"(it never saw a chat template); the fine-tunes are full FT and {lora_name} (the best LoRA there by validation accuracy"
        + (
            f"; its adapter also trains the embedding rows of {len(token_rows)} chat special tokens, ids "
            f"{', '.join(map(str, token_rows))}, which the server applies per request like the LoRA factors"
            if (token_rows := manifest["variants"][lora_name].get("token_rows"))
            else ""
        )
        + "). "
        f"Cost = server CPU-seconds x ${PRICE.cpu_hour_usd}/CPU-hour (the placeholder price of "
        "`evaluation.cost`); the shared pretraining of the base cost "
        f"{base_cost['cpu_s']:.0f} CPU-s = ${pretrain_usd:.5f} and is needed by every variant.\n\n"
        + "\n".join(rows)
        + "\n\n![accuracy, reliability, cost](prompting_vs_finetuning.png)\n\n"
        'Label scoring ("score") asks the Score RPC for the log-likelihood of each of the six labels and picks '
        "the largest; its softmax gives the label probabilities used for ECE (10 equal-width bins of the top "
        'probability). "generate" variants decode greedily and take the last label the text mentions '
        "(`extract: label`); an output naming no label counts as wrong, and they have no probabilities.\n\n"
        "Notes: the base server also carries the LoRA adapter (`serve --adapter lora=...`), so the prompting "
        "rows pay the multi-LoRA wrappers' (small) overhead; the Score RPC serves base weights only (an adapter "
        "name is refused with NOT_FOUND), hence the merged LoRA copy for scoring; Score's `Usage.prompt_tokens` "
        "counts the continuation tokens only, so the prompt tokens of scoring rows are counted here with the same "
        "tokenizer. Latency is client-observed (gRPC round trip included) with one request in flight; cost "
        "shares the server process's measured CPU time over the requests of a variant.\n\n"
        "Sample generations (first question):\n\n"
        + "\n".join(
            f"- {r['variant']}: `{json.dumps(r['examples'][0]['out'][:100])}` (gold {r['examples'][0]['gold']})"
            for r in results
            if r["config"]["type"] == "generate"
        )
        + "\n\n"
        + "## When does fine-tuning beat prompting?\n\n"
        + interpret(results, paired, pretrain_usd, majority, lora_name, manifest.get("n_train"))
        + "\n"
    )
    (a.out / "prompting_vs_finetuning.md").write_text(text)


def top_answer(r: Mapping[str, Any]) -> str:
    """``"HUM (100%)"``: the answer a variant gives most often and its share of the questions."""
    label, count = next(iter(r["answers"].items()))
    return f"{label} ({count / r['n']:.0%})"


def interpret(
    results: list[dict],
    paired: Mapping[str, Any] | None,
    pretrain_usd: float,
    majority: float,
    lora_name: str = "LoRA",
    n_train: int | None = None,
) -> str:
    """Statements computed from the numbers (nothing here is written before the run); ``n_train`` is the
    number of labelled questions the fine-tunes trained on, when the manifest says."""
    if paired is None:
        return "- Not enough variants ran for a comparison."
    by = {r["variant"]: r for r in results}
    bp, bt = by[paired["prompting"]], by[paired["finetuned"]]
    sig = "significant" if paired["low"] > 0 or paired["high"] < 0 else "not significant"
    lines = [
        f"- Best prompting: {bp['variant']} at {100 * paired['a']:.1f}%; best fine-tuned: {bt['variant']} at "
        f"{100 * paired['b']:.1f}%. Paired bootstrap on the same {paired['n']} questions: difference "
        f"{100 * paired['diff']:+.1f} points [95% CI {100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}], "
        f"sign flips in {paired['p_value']:.1%} of resamples ({sig} at 95%).",
    ]
    cal = [(r["variant"], r["calibration"]["ece"]) for r in results if r["calibration"]]
    if cal:
        lines.append(
            "- Calibration (ECE, lower is better): " + ", ".join(f"{n} {e:.3f}" for n, e in cal) + "."
        )
    cp, ct = bp["cost_per_1k_usd"], bt["cost_per_1k_usd"]
    train_usd = bt.get("train_cost_usd", 0.0)
    if cp > ct:
        breakeven = train_usd / ((cp - ct) / 1000.0)
        lines.append(
            f"- Cost: {bp['variant']} costs ${cp:.6f} per 1k requests ({bp['prompt_tokens_mean']:.0f} prompt tokens) "
            f"vs ${ct:.6f} for {bt['variant']} ({bt['prompt_tokens_mean']:.0f}); the fine-tune's training "
            f"(${train_usd:.5f}) is paid back after about {breakeven:,.0f} requests."
        )
    else:
        lines.append(
            f"- Cost: {bt['variant']} is not cheaper per request (${ct:.6f} vs ${cp:.6f} per 1k), so its training "
            f"(${train_usd:.5f}) is never paid back by serving cost; it pays only through accuracy."
        )
    above = paired["a"] - majority
    verdict = (
        f"fine-tuning beats prompting by {100 * paired['diff']:.1f} points"
        if paired["low"] > 0
        else "fine-tuning does not beat prompting by a margin the interval can resolve"
    )
    why = (
        "a base model this small (1M parameters, never instruction-tuned) draws little from instructions or "
        "in-context examples, while "
        + (f"{n_train:,} " if n_train else "")
        + "labelled train questions teach the mapping directly"
        if above < 0.05
        else "prompting does extract some of the task from the examples"
    )
    if next(iter(bp["answers"].values())) / bp["n"] > 0.9:
        lines.append(
            f"- The best prompt barely classifies at all: it answers {top_answer(bp)} of the questions with the "
            "same label (see the table's last column for the other rows); summed label "
            "log-likelihoods favour the label whose tokens the base model finds likeliest in any context."
        )
    loras = [r for r in results if r["variant"].startswith("LoRA")]
    if loras and "full FT (score)" in by:
        lines.append(
            f"- {lora_name}: "
            + ", ".join(
                f"{r['variant']} {100 * r['accuracy']['value']:.1f}% ({top_answer(r)})" for r in loras
            )
            + f" vs full FT {100 * by['full FT (score)']['accuracy']['value']:.1f}%: the LoRA fine-tune stays well "
            'behind full FT on this model; `lora_vs_full.md` ("What it means") measures where its loss sits.'
            if by["full FT (score)"]["accuracy"]["value"] - max(r["accuracy"]["value"] for r in loras) > 0.05
            else f"- {lora_name}: "
            + ", ".join(f"{r['variant']} {100 * r['accuracy']['value']:.1f}%" for r in loras)
            + f" vs full FT {100 * by['full FT (score)']['accuracy']['value']:.1f}%."
        )
    lines.append(
        f"- So, on this task and model, {verdict}. The best prompt is {100 * above:+.1f} points from always "
        f"answering the most frequent label ({100 * majority:.1f}% of these questions): {why}. At these prices "
        f"every bill is a tiny fraction of a cent (pretraining the base: ${pretrain_usd:.5f}); the ranking, not "
        "the dollar figure, is the result. With a large instruction-tuned model the prompting rows would likely "
        "be the strong ones; that was not measured here."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
