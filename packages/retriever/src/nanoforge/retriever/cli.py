"""``nanoforge retriever``: index files into a collection, search it, evaluate it on BEIR data, serve it.

    nanoforge retriever index --collection docs --input README.md docs/ [--chunker recursive] [--embedder minilm] [--ray]
    nanoforge retriever search --collection docs --query "how do I train?" [--mode hybrid] [-k 5]
    nanoforge retriever ask --collection docs --question "how do I train?" --inference 127.0.0.1:50051 [--json]
    nanoforge retriever calibrate --collection docs --questions dev.jsonl   # abstention threshold -> manifest
    nanoforge retriever eval --corpus ../shared/data/scifact --queries .../queries.jsonl --qrels .../qrels/test.tsv
    nanoforge retriever serve [--port 50052] [--embedder minilm] [--inference 127.0.0.1:50051]

Collections live under ``--root`` (default ``$NANOFORGE_RETRIEVER_ROOT`` or ``./nanoforge-collections``).
What it deliberately does not do: anything the library does not (it only parses options and prints).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from nanoforge.cli import UserError
from nanoforge.retriever.chunking import CHUNKERS, SPANNERS, ChunkerSpec
from nanoforge.retriever.dense import INDEX_BUILDERS, IndexSpec
from nanoforge.retriever.embedders import EMBEDDERS, EmbedderSpec

DEFAULT_ROOT = "nanoforge-collections"


def _root(value: str | None) -> Path:
    return Path(value or os.environ.get("NANOFORGE_RETRIEVER_ROOT") or DEFAULT_ROOT)


_F = TypeVar("_F", bound=Callable[..., Any])


def _embedder_options(f: _F) -> _F:
    f = click.option("--embedder", type=click.Choice(sorted(EMBEDDERS)), default="minilm", show_default=True,
                     help="Embedding model for new collections.")(f)  # fmt: skip
    f = click.option("--embedder-url", default="", help="openai: base URL (…/v1); inference: host:port.")(f)
    f = click.option("--embedder-model", default="", help="Model name for openai / inference embedders.")(f)
    f = click.option(
        "--embedder-key-env", default="", help="Env var holding the embedder's API key / token."
    )(f)
    return f


def _spec(embedder: str, url: str, model: str, key_env: str) -> EmbedderSpec:
    return EmbedderSpec(kind=embedder, model=model, url=url, api_key_env=key_env)


root_option = click.option("--root", default=None, help="Directory of collections.")


@click.group(name="retriever")
def group() -> None:
    """Chunk, embed and index documents; search with FAISS + BM25; evaluate; serve over gRPC."""


@group.command()
@click.option("--collection", required=True, help="Collection name ([a-z0-9_-]{1,64}); created if missing.")
@click.option("--input", "inputs", required=True, multiple=True, help="File or directory (repeatable).")
@click.option("--chunker", type=click.Choice(sorted(CHUNKERS)), default="recursive", show_default=True)
@click.option("--chunk-size", type=int, default=256, show_default=True, help="Max tokens per chunk.")
@click.option("--overlap", type=int, default=0, show_default=True, help="Tokens shared by neighbour chunks.")
@click.option("--chunk-tokenizer", type=click.Choice(sorted(SPANNERS)), default="words", show_default=True)
@_embedder_options
@click.option(
    "--index", "index_kind", type=click.Choice(sorted(INDEX_BUILDERS)), default="flat", show_default=True
)
@click.option("--batch", type=int, default=256, show_default=True, help="Documents per atomic upsert.")
@click.option("--ray", "use_ray", is_flag=True, help="Chunk and embed on a Ray Data actor pool (needs ray).")
@click.option("--ray-actors", type=int, default=2, show_default=True, help="Embedder actors with --ray.")
@root_option
def index(
    collection: str, inputs: tuple[str, ...], chunker: str, chunk_size: int, overlap: int, chunk_tokenizer: str,
    embedder: str, embedder_url: str, embedder_model: str, embedder_key_env: str, index_kind: str, batch: int,
    use_ray: bool, ray_actors: int, root: str | None,
) -> None:  # fmt: skip
    """Load files (txt, md, html, pdf, jsonl, BEIR dir) and upsert them into a collection."""
    from nanoforge.retriever.documents import load_path
    from nanoforge.retriever.library import Library

    lib = Library(_root(root))
    spec = ChunkerSpec(chunker, chunk_size, overlap, chunk_tokenizer)
    col = lib.create(collection, _spec(embedder, embedder_url, embedder_model, embedder_key_env), spec,
                     IndexSpec(index_kind), exist_ok=True)  # fmt: skip
    col.embedder.show_progress = True
    docs = [d for path in inputs for d in load_path(path)]
    if not docs:
        raise UserError(f"no documents found in {', '.join(inputs)}")
    written = 0
    if use_ray:
        try:
            from nanoforge.retriever.ray_ingest import chunk_and_embed_with_ray
        except ImportError as err:
            raise UserError(
                f"--ray needs the ray extra (pip install 'nanoforge-retriever[ray]'): {err}"
            ) from err
        docs = col.prepare_documents(docs)
        per_doc, vecs = chunk_and_embed_with_ray(
            docs, col.embedder_spec, spec, col.dim, num_actors=ray_actors
        )
        row = 0
        for i in range(0, len(docs), batch):
            part = per_doc[i : i + batch]
            n = sum(len(c) for c in part)
            written += col.upsert_embedded(docs[i : i + batch], part, vecs[row : row + n]).chunks_written
            row += n
    else:
        for i in range(0, len(docs), batch):
            written += col.upsert(docs[i : i + batch], spec).chunks_written
    st = col.stats()
    click.echo(f"indexed {len(docs)} documents ({written} chunks) into {collection!r}: "
               f"{st['documents']} documents, {st['chunks']} chunks in total")  # fmt: skip
    lib.close()


@group.command()
@click.option("--collection", required=True)
@click.option("--query", required=True)
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default="hybrid", show_default=True)
@click.option("-k", "k", type=int, default=5, show_default=True)
@click.option("--filter", "filters", multiple=True, help="key=value metadata equality filter (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON lines.")
@root_option
def search(
    collection: str, query: str, mode: str, k: int, filters: tuple[str, ...], as_json: bool, root: str | None
) -> None:
    """Search a collection and print the hits."""
    from nanoforge.retriever.library import Library
    from nanoforge.retriever.search import MetadataFilter

    parsed = []
    for f in filters:
        if "=" not in f:
            raise UserError(f"bad --filter {f!r}: expected key=value")
        key, value = f.split("=", 1)
        parsed.append(MetadataFilter(key, "eq", (value,)))
    lib = Library(_root(root))
    hits = lib.get(collection).search(query, mode=mode, k=k, filters=parsed)
    for rank, h in enumerate(hits, start=1):
        if as_json:
            click.echo(json.dumps(h.__dict__, ensure_ascii=False))
        else:
            snippet = " ".join(h.text.split())[:160]
            click.echo(f"{rank:2d}. {h.score:.4f} {h.chunk_id} {h.title!r}\n    {snippet}")
    lib.close()


def _print_answer(res: Any, as_json: bool) -> None:
    from nanoforge.retriever.convert import ask_result_dict

    data = ask_result_dict(res)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    click.echo(data["answer"])
    if data["abstained"]:
        click.echo(f"(abstained: {data['abstain_reason']})")
    for c in data["citations"]:
        snippet = " ".join(c["quote"].split())[:120]
        click.echo(f"  [{c['marker']}] {c['chunk_id']} {c['title']!r}: {snippet}")
    click.echo(f"support {data['support']:.3f} (threshold {data['threshold']:.3f}), "
               f"groundedness {data['groundedness']:.3f}")  # fmt: skip


def _read_history(path: str) -> tuple[Any, ...]:
    """The ``--history`` JSONL file as ``rewrite.Turn`` s (one-line ``UserError`` for a bad line)."""
    from nanoforge.retriever.rewrite import Turn

    turns = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                turns.append(Turn(str(obj["role"]), str(obj["content"])))
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(
                    f"{path}:{n}: expected a JSON object with 'role' and 'content' ({type(err).__name__}: {err})"
                ) from err
    return tuple(turns)


@group.command()
@click.option("--collection", required=True)
@click.option("--question", required=True)
@click.option(
    "--inference", default="", help="InferenceService host:port (needed for --answer-mode generative)."
)
@click.option("--inference-token-env", default="", help="Env var holding the InferenceService bearer token.")
@click.option("--answer-mode", type=click.Choice(["generative", "extractive"]), default="generative",
              show_default=True)  # fmt: skip
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default="hybrid", show_default=True)
@click.option("-k", "k", type=int, default=5, show_default=True)
@click.option(
    "--threshold", type=float, default=None, help="Support threshold (default: the calibrated one)."
)
@click.option("--min-groundedness", type=float, default=0.5, show_default=True)
@click.option("--drop-unsupported", is_flag=True, help="Drop unsupported sentences instead of flagging them.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--max-context-tokens", type=int, default=1024, show_default=True, help="Budget for passages.")
@click.option("--model", default="", help="InferenceService model (default: its default).")
@click.option("--adapter", default="", help="LoRA adapter of that model (default: the base model).")
@click.option(
    "--history",
    "history_path",
    default="",
    help='JSONL of earlier turns, oldest first: {"role": "user"|"assistant"|..., "content": ...}.',
)
@click.option(
    "--rewrite",
    type=click.Choice(["heuristic", "llm", "none"]),
    default="heuristic",
    show_default=True,
    help="How a follow-up question is rewritten from --history (llm needs --inference).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result (with trace) as one JSON object.")
@root_option
def ask(
    collection: str, question: str, inference: str, inference_token_env: str, answer_mode: str, mode: str, k: int,
    threshold: float | None, min_groundedness: float, drop_unsupported: bool, max_new_tokens: int,
    max_context_tokens: int, model: str, adapter: str, history_path: str, rewrite: str, as_json: bool,
    root: str | None,
) -> None:  # fmt: skip
    """Answer a question from a collection with citations, or abstain ("Not in the documents.")."""
    from nanoforge.api.inference_client import sampling_params
    from nanoforge.retriever.library import Library
    from nanoforge.retriever.rag import AskOptions
    from nanoforge.retriever.rag import ask as run_ask

    if answer_mode == "generative" and not inference:
        raise UserError(
            "--answer-mode generative needs --inference HOST:PORT (or use --answer-mode extractive)"
        )
    opts = AskOptions(
        mode=mode, k=k, abstain_threshold=threshold, answer_mode=answer_mode, min_groundedness=min_groundedness,
        drop_unsupported=drop_unsupported, model=model, adapter=adapter, max_context_tokens=max_context_tokens,
        sampling=sampling_params(temperature=0.0, max_new_tokens=max_new_tokens),
        history=_read_history(history_path) if history_path else (), rewrite=rewrite,
    )  # fmt: skip
    lib = Library(_root(root))
    col = lib.get(collection)

    async def run() -> Any:
        gen = None
        if inference:
            from nanoforge.retriever.remote_gen import GrpcGenerator

            gen = GrpcGenerator(
                inference, token=os.environ.get(inference_token_env) if inference_token_env else None
            )
        try:
            return await run_ask(col, question, opts, gen)
        finally:
            if gen is not None:
                await gen.close()

    try:
        _print_answer(asyncio.run(run()), as_json)
    finally:
        lib.close()


@group.command()
@click.option("--collection", required=True)
@click.option(
    "--questions", required=True, help='JSONL of {"question", "answerable": bool} (or BEIR queries).'
)
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default="hybrid", show_default=True)
@click.option("-k", "k", type=int, default=5, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the threshold without writing it to the manifest.")
@root_option
def calibrate(collection: str, questions: str, mode: str, k: int, dry_run: bool, root: str | None) -> None:
    """Pick the abstention threshold that maximises abstention F1 on labelled questions; save it."""
    from nanoforge.retriever.calibrate import calibrate_collection, load_labelled, save_threshold
    from nanoforge.retriever.library import Library
    from nanoforge.retriever.rag import AskOptions

    labelled = load_labelled(questions)
    lib = Library(_root(root))
    col = lib.get(collection)
    cal = calibrate_collection(col, labelled, AskOptions(mode=mode, k=k))
    click.echo(f"threshold {cal.threshold:.4f}: abstention F1 {cal.f1:.3f} (precision {cal.precision:.3f}, "
               f"recall {cal.recall:.3f}, accuracy {cal.accuracy:.3f}) on {cal.n_answerable} answerable + "
               f"{cal.n_unanswerable} unanswerable questions")  # fmt: skip
    if not dry_run:
        save_threshold(col, cal, source=str(questions))
        click.echo(
            f"saved to {col.path / 'manifest.json'} (the default of ask / Ask when no threshold is given)"
        )
    lib.close()


@group.command(name="eval")
@click.option("--corpus", required=True, help="BEIR dataset dir (corpus.jsonl) or corpus.jsonl.")
@click.option("--queries", default=None, help="queries.jsonl (default: <corpus dir>/queries.jsonl).")
@click.option("--qrels", default=None, help="qrels TSV (default: <corpus dir>/qrels/test.tsv).")
@click.option("--collection", default=None, help="Collection to evaluate (indexed from --corpus if missing).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["dense", "bm25", "hybrid"]),
              default=("bm25", "dense", "hybrid"), show_default=True)  # fmt: skip
@click.option("--chunker", type=click.Choice(sorted(CHUNKERS)), default="recursive", show_default=True)
@click.option("--chunk-size", type=int, default=256, show_default=True)
@click.option("--chunk-tokenizer", type=click.Choice(sorted(SPANNERS)), default="minilm", show_default=True)
@_embedder_options
@click.option(
    "--report", default="retrieval_eval", show_default=True, help="Writes <report>.md and <report>.json."
)
@root_option
def eval_cmd(
    corpus: str, queries: str | None, qrels: str | None, collection: str | None, modes: tuple[str, ...],
    chunker: str, chunk_size: int, chunk_tokenizer: str, embedder: str, embedder_url: str, embedder_model: str,
    embedder_key_env: str, report: str, root: str | None,
) -> None:  # fmt: skip
    """recall@1/5/10/100, MRR@10, nDCG@10 and latency on BEIR data, plus a failure report."""
    from nanoforge.retriever.documents import load_beir_qrels, load_beir_queries, load_path
    from nanoforge.retriever.evaluate import evaluate_collection, write_report
    from nanoforge.retriever.library import Library

    base = Path(corpus) if Path(corpus).is_dir() else Path(corpus).parent
    q = load_beir_queries(queries or base / "queries.jsonl")
    rels = load_beir_qrels(qrels or base / "qrels/test.tsv")
    lib = Library(_root(root))
    name = collection or f"eval-{base.name.lower()}-{chunker}-{embedder}"
    col = lib.create(name, _spec(embedder, embedder_url, embedder_model, embedder_key_env),
                     ChunkerSpec(chunker, chunk_size, 0, chunk_tokenizer), exist_ok=True)  # fmt: skip
    if col.stats()["documents"] == 0:
        col.embedder.show_progress = True
        docs = list(load_path(corpus))
        for i in range(0, len(docs), 512):
            col.upsert(docs[i : i + 512])
    results = [evaluate_collection(col, q, rels, mode, show_progress=True) for mode in modes]
    for r in results:
        vals = "  ".join(f"{k}={v:.4f}" for k, v in r.metrics.items())
        click.echo(f"{r.mode:7s} {vals}  p50={r.latency_ms['p50']:.2f}ms  failures@10={len(r.failures)}")
    click.echo(f"report: {write_report(col, results, report)}")
    lib.close()


@group.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=50052, show_default=True)
@_embedder_options
@click.option(
    "--index", "index_kind", type=click.Choice(sorted(INDEX_BUILDERS)), default="flat", show_default=True
)
@click.option("--token-env", default="", help="Env var holding the bearer token clients must send.")
@click.option(
    "--inference", default="", help="InferenceService host:port for generative Ask (default: none)."
)
@click.option("--inference-token-env", default="", help="Env var holding the InferenceService bearer token.")
@click.option("--tls-cert", default=None, help="PEM certificate (with --tls-key).")
@click.option("--tls-key", default=None, help="PEM private key.")
@root_option
def serve(
    host: str, port: int, embedder: str, embedder_url: str, embedder_model: str, embedder_key_env: str,
    index_kind: str, token_env: str, inference: str, inference_token_env: str, tls_cert: str | None,
    tls_key: str | None, root: str | None,
) -> None:  # fmt: skip
    """Run the RetrieverService until SIGINT/SIGTERM (then drain and stop)."""
    from nanoforge.api.server import wait_for_stop_signal
    from nanoforge.retriever.library import Library
    from nanoforge.retriever.service import start_server

    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        raise UserError(f"--token-env {token_env}: that environment variable is empty or unset")

    async def run() -> None:
        running = await start_server(
            Library(_root(root)), _spec(embedder, embedder_url, embedder_model, embedder_key_env), host=host,
            port=port, token=token, tls_cert=tls_cert, tls_key=tls_key, default_index=IndexSpec(index_kind),
            inference=inference,
            inference_token=os.environ.get(inference_token_env) if inference_token_env else None,
        )  # fmt: skip
        click.echo(f"RetrieverService listening on {host}:{running.port} (root {_root(root)})", err=True)
        await wait_for_stop_signal()
        await running.stop(grace=10.0)

    asyncio.run(run())
