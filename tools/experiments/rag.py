"""Experiment: grounded RAG on ClapNQ dev: answer F1, citation precision, calibrated abstention.

    nice -n 5 .venv/bin/python tools/experiments/rag.py --data ../shared/data/clapnq-dev --out docs/experiments

What it does, in order:

1. Indexes the 597 ClapNQ dev passages into a collection (embedder ``minilm``, recursive chunks of at most
   96 words, FAISS flat, hybrid search), and a second collection WITHOUT the 300 gold passages of the
   answerable questions (sharing the embedding cache). Collections live under ``--work``.
2. Splits the 600 questions in two halves, stratified by answerability (seed 0): *calibration* and *test*.
3. Asks every question in ``extractive`` mode with abstention off, keeping the support score (best
   question-passage cosine), the answer and its citations; abstention at threshold t is then exactly
   "support < t" (the support check comes before reading, see rag.py).
4. Calibrates t on the calibration half (``calibrate.best_threshold``: max F1 of abstention on the
   unanswerable questions) and reports on the test half: answer token-F1 (SQuAD normalisation, best
   reference; an abstention on an answerable question scores 0), citation precision (a cited chunk
   belongs to the gold passage), abstention precision / recall on the unanswerable questions, and the
   abstention rate of answerable test questions once their gold passage is removed from the index.
5. ``generative`` mode: serves the demo model (``--model``, with its LoRA adapter if present) with
   ``nanoforge serve`` on loopback and asks ``--gen-limit`` test questions through the InferenceService
   (regex-constrained citations); same metrics, next to extractive on the same questions.

Writes ``rag.png`` into ``--out``, prints the results as JSON (docs/experiments/rag.md is the write-up of
that output), and keeps the raw per-question results in ``--work``/rag_results.json.
What it does not do: tune anything on the test half, or use an external LLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# --- metrics ------------------------------------------------------------------------------------------


def _norm_tokens(text: str) -> list[str]:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, split on whitespace."""
    text = re.sub(r"\[\d+\]", " ", text.lower())
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(pred: str, refs: list[str]) -> float:
    """Best token-level F1 of ``pred`` against any reference."""
    p = _norm_tokens(pred)
    best = 0.0
    for ref in refs:
        r = _norm_tokens(ref)
        common = sum((Counter(p) & Counter(r)).values())
        if common:
            prec, rec = common / len(p), common / len(r)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def summarize(rows: list[dict[str, Any]], t: float) -> dict[str, float]:
    """Metrics of one set of answered questions at threshold t."""
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]

    def abstains(r: dict[str, Any]) -> bool:
        return r["support"] < t or r["abstained"]

    f1 = [0.0 if abstains(r) else token_f1(r["answer"], r["refs"]) for r in ans]
    f1_answered = [token_f1(r["answer"], r["refs"]) for r in ans if not abstains(r)]
    cites = [d == r["gold"] for r in ans if not abstains(r) for d in r["cited_docs"]]
    tp = sum(abstains(r) for r in una)
    fp = sum(abstains(r) for r in ans)
    return {
        "answer_f1": sum(f1) / max(1, len(f1)),
        "answer_f1_when_answered": sum(f1_answered) / max(1, len(f1_answered)),
        "citation_precision": sum(cites) / max(1, len(cites)),
        "abstain_precision": tp / max(1, tp + fp),
        "abstain_recall": tp / max(1, len(una)),
        "answered_answerable": sum(not abstains(r) for r in ans) / max(1, len(ans)),
        "gold_in_context": sum(r["gold"] in r["context_docs"] for r in ans) / max(1, len(ans)),
    }


# --- running questions --------------------------------------------------------------------------------


def _row(res: Any, q: dict[str, Any]) -> dict[str, Any]:
    return {
        "qid": q["query_id"], "answerable": q["answerable"], "gold": q["passage_id"], "refs": q["answers"],
        "support": res.support, "answer": res.answer, "abstained": res.abstained,
        "abstain_reason": res.abstain_reason, "groundedness": res.groundedness,
        "cited_docs": [res.context[m - 1].document_id for m in res.cited],
        "context_docs": [h.document_id for h in res.context],
        "raw": "".join(s.text for s in res.sentences),
    }  # fmt: skip


def run_questions(col: Any, qs: list[dict[str, Any]], opts: Any, target: str = "") -> list[dict[str, Any]]:
    from nanoforge.cli import progress
    from nanoforge.retriever.rag import ask

    async def go() -> list[dict[str, Any]]:
        from nanoforge.retriever.remote_gen import GrpcGenerator

        generator = GrpcGenerator(target) if target else None  # its aio channel needs the running loop
        out = []
        with progress() as bar:
            task = bar.add_task(f"ask {opts.answer_mode}", total=len(qs), info=col.name)
            for q in qs:
                out.append(_row(await ask(col, q["question"], opts, generator), q))
                bar.advance(task)
        return out

    return asyncio.run(go())


def start_inference(model: Path, adapter: Path | None, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [str(BIN / "nanoforge"), "serve", "--model", str(model), "--port", "0", "--http-port", "0"]
    if adapter is not None:
        cmd += ["--adapter", f"rag={adapter}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("grpc listening on "):
                return proc, f"127.0.0.1:{int(line.rsplit(':', 1)[1])}"
        if proc.poll() is not None:
            raise RuntimeError(f"nanoforge serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("nanoforge serve did not report its port in 180 s")


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/clapnq-dev"))
    ap.add_argument("--out", default=str(ROOT / "docs/experiments"))
    ap.add_argument("--work", default=str(ROOT / "out/experiments/rag"))
    ap.add_argument("--model", default=str(ROOT / "out/demo/run/final"))
    ap.add_argument("--adapter", default=str(ROOT / "out/demo/lora/adapter"))
    ap.add_argument("--gen-limit", type=int, default=100, help="Test questions asked in generative mode.")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from nanoforge.api.inference_client import sampling_params
    from nanoforge.retriever.calibrate import abstention_prf, best_threshold
    from nanoforge.retriever.chunking import ChunkerSpec
    from nanoforge.retriever.documents import Document
    from nanoforge.retriever.embedders import EmbedderSpec
    from nanoforge.retriever.library import Library
    from nanoforge.retriever.rag import AskOptions

    t_start = time.time()
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    corpus = [json.loads(x) for x in (data / "corpus.jsonl").read_text().splitlines() if x.strip()]
    questions = [json.loads(x) for x in (data / "answers.jsonl").read_text().splitlines() if x.strip()]
    gold = {q["passage_id"] for q in questions if q["answerable"]}
    docs = [Document(d["_id"], d["text"], d["title"]) for d in corpus]

    lib = Library(work / "collections")
    spec = ChunkerSpec("recursive", 96, 0, "words")
    col = lib.create("clapnq", EmbedderSpec("minilm"), spec, exist_ok=True)
    nogold = lib.create("clapnq-nogold", EmbedderSpec("minilm"), spec, exist_ok=True)
    nogold.cache_path = col.cache_path
    t0 = time.time()
    if col.stats()["documents"] == 0:
        col.embedder.show_progress = True
        col.upsert(docs)
    if nogold.stats()["documents"] == 0:
        nogold.upsert([d for d in docs if d.id not in gold])
    index_s = time.time() - t0
    print(
        f"indexed: {col.stats()['chunks']} chunks; without gold: {nogold.stats()['chunks']} ({index_s:.0f} s)"
    )

    rng = random.Random(0)
    calib, test = [], []
    for flag in (True, False):
        group = [q for q in questions if q["answerable"] is flag]
        rng.shuffle(group)
        calib += group[: len(group) // 2]
        test += group[len(group) // 2 :]

    ext = AskOptions(mode="hybrid", k=5, answer_mode="extractive", abstain_threshold=-1.0)
    t0 = time.time()
    rows_cal = run_questions(col, calib, ext)
    rows_test = run_questions(col, test, ext)
    ext_s = time.time() - t0
    rows_nogold = run_questions(nogold, [q for q in test if q["answerable"]], ext)

    cal = best_threshold([r["support"] for r in rows_cal], [r["answerable"] for r in rows_cal])
    t = cal.threshold
    print(f"calibrated threshold {t:.4f} (calibration-half abstention F1 {cal.f1:.3f})")
    results: dict[str, Any] = {
        "threshold": t,
        "calibration": {
            "f1": cal.f1,
            "precision": cal.precision,
            "recall": cal.recall,
            "accuracy": cal.accuracy,
        },
        "extractive_test": summarize(rows_test, t),
        "extractive_test_no_threshold": summarize(rows_test, -1.0),
        "nogold_abstention_rate": sum(r["support"] < t for r in rows_nogold) / max(1, len(rows_nogold)),
        "timing_s": {"index": index_s, "extractive_600": ext_s},
    }

    # --- generative, through the InferenceService ---
    model, adapter = Path(args.model), Path(args.adapter)
    if (model / "model.safetensors").is_file() and args.gen_limit > 0:
        subset = [q for q in test if q["answerable"]][: args.gen_limit // 2]
        subset += [q for q in test if not q["answerable"]][: args.gen_limit - len(subset)]
        proc, target = start_inference(model, adapter if adapter.is_dir() else None, work / "serve.log")
        gen_opts = AskOptions(
            mode="hybrid", k=3, answer_mode="generative", abstain_threshold=-1.0, max_context_tokens=100,
            adapter="rag" if adapter.is_dir() else "", min_groundedness=0.5,
            sampling=sampling_params(temperature=0.0, max_new_tokens=48), max_sentence_chars=80,
        )  # fmt: skip
        try:
            t0 = time.time()
            rows_gen = run_questions(col, subset, gen_opts, target)
            gen_s = time.time() - t0
        finally:
            proc.terminate()
            proc.wait(30)
        ids = {q["query_id"] for q in subset}
        same = [r for r in rows_test if r["qid"] in ids]
        results["generative_subset"] = summarize(rows_gen, t)
        results["extractive_subset"] = summarize(same, t)
        results["generative_model_abstained"] = sum(
            r["abstain_reason"].startswith("the model") for r in rows_gen
        )
        results["generative_groundedness_abstained"] = sum(
            "groundedness" in r["abstain_reason"] for r in rows_gen
        )
        raw_f1 = [token_f1(r["raw"], r["refs"]) for r in rows_gen if r["answerable"]]
        results["generative_raw_answer_f1"] = sum(raw_f1) / max(1, len(raw_f1))
        results["generative_raw_groundedness"] = sum(r["groundedness"] for r in rows_gen) / max(
            1, len(rows_gen)
        )
        results["generative_context_cut_or_empty"] = sum(not r["context_docs"] for r in rows_gen)
        results["generative_examples"] = [
            {"question": q["question"], "raw": r["raw"], "answer": r["answer"], "reason": r["abstain_reason"]}
            for q, r in list(zip(subset, rows_gen))[:3]
        ]
        results["timing_s"]["generative"] = gen_s
        results["gen_n"] = len(subset)
    else:
        rows_gen = []
    results["timing_s"]["total"] = time.time() - t_start
    (work / "rag_results.json").write_text(
        json.dumps(
            {"results": results, "test": rows_test, "calibration": rows_cal, "generative": rows_gen}, indent=1
        )
    )
    lib.close()

    # --- plot ---
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = [r["support"] for r in rows_test]
    lab = [r["answerable"] for r in rows_test]
    grid = sorted(set(sc))
    prf = [abstention_prf(sc, lab, g) for g in grid]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(grid, [p[0] for p in prf], label="abstention precision")
    a1.plot(grid, [p[1] for p in prf], label="abstention recall")
    a1.plot(grid, [p[2] for p in prf], label="abstention F1")
    a1.axvline(t, color="k", ls="--", label=f"calibrated t={t:.3f}")
    a1.set_xlabel("support threshold (best question-passage cosine)")
    a1.set_title("test half: abstain iff support < t")
    a1.legend(fontsize=8)
    a2.hist([s for s, a in zip(sc, lab) if a], bins=30, alpha=0.6, label="answerable")
    a2.hist([s for s, a in zip(sc, lab) if not a], bins=30, alpha=0.6, label="unanswerable")
    a2.hist([r["support"] for r in rows_nogold], bins=30, alpha=0.6, label="answerable, gold removed")
    a2.axvline(t, color="k", ls="--")
    a2.set_xlabel("support score")
    a2.set_title("support score distributions (test half)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "rag.png", dpi=110)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
