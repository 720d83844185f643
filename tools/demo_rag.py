"""Demo stage "rag": index the demo corpus, calibrate abstention, ask cited questions and one with no answer.

Called by tools/demo.py as ``stage_rag(out, corpus, inference_addr)``; drives the public ``nanoforge
retriever`` CLI in subprocesses exactly as a user would, prints what it shows, and raises on failure:

1. ``index`` the corpus file (standard-library docstrings) into collection ``stdlib`` under
   ``out/rag-collections`` (hash embedder + BM25 hybrid, so it takes seconds, not minutes);
2. ``calibrate`` the abstention threshold on a small labelled set written next to it (on-topic questions
   are answerable, off-topic ones are not);
3. ``ask`` questions whose answers are in the docstrings (extractive answers with citations, then one
   generative answer through the InferenceService at ``inference_addr``), and one question whose answer
   is not there, which must come back as an abstention.

What it deliberately does not do: judge answer quality (the demo model is tiny), or start servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NANOFORGE = Path(sys.executable).parent / "nanoforge"

#: Labelled calibration questions (answerable from stdlib docstrings or not).
CALIBRATION = [
    ("What is the difference between shallow and deep copy?", True),
    ("What does the heap queue algorithm implement?", True),
    ("Which flag is passed to compile() to enable a future feature?", True),
    ("How do I join path components?", True),
    ("Who painted the Mona Lisa?", False),
    ("What is the capital city of Australia?", False),
    ("How many goals did Pele score in his career?", False),
    ("What is a good recipe for banana bread?", False),
]
ANSWERABLE = [
    "What does a deep copy insert into the new compound object?",
    "What does OptionalRelease record in __future__?",
]
UNANSWERABLE = "Who won the football world cup in 1998?"


def _run(*args: str) -> str:
    proc = subprocess.run([str(NANOFORGE), "retriever", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"nanoforge retriever {args[0]} failed: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def _ask(root: Path, question: str, *extra: str) -> dict[str, Any]:
    out = _run("ask", "--collection", "stdlib", "--question", question, "--root", str(root), "--json", *extra)
    return json.loads(out)


def _show(res: dict[str, Any]) -> None:
    print(f"Q: {res['question']}")
    print(f"A: {res['answer']}")
    if res["abstained"]:
        print(f"   (abstained: {res['abstain_reason']})")
    for c in res["citations"]:
        print(f"   [{c['marker']}] {c['chunk_id']}: {' '.join(c['quote'].split())[:110]}...")
    print(
        f"   support {res['support']:.3f} / threshold {res['threshold']:.3f}, groundedness {res['groundedness']:.2f}"
    )


def stage_rag(out: Path, corpus: Path, inference_addr: str) -> None:
    """Index ``corpus``, calibrate, ask answerable questions (with citations) and one unanswerable one."""
    t0 = time.perf_counter()
    root = out / "rag-collections"
    print(_run("index", "--collection", "stdlib", "--input", str(corpus), "--embedder", "hash",
               "--chunk-size", "64", "--root", str(root)).strip())  # fmt: skip
    labelled = out / "rag-calibration.jsonl"
    labelled.write_text("".join(json.dumps({"question": q, "answerable": a}) + "\n" for q, a in CALIBRATION))
    print(
        _run("calibrate", "--collection", "stdlib", "--questions", str(labelled), "--root", str(root)).strip()
    )
    for q in ANSWERABLE:
        res = _ask(root, q, "--answer-mode", "extractive")
        _show(res)
        if res["abstained"] or not res["citations"]:
            raise RuntimeError(f"demo: expected a cited answer to {q!r}, got {res['answer']!r}")
    res = _ask(root, ANSWERABLE[0], "--inference", inference_addr, "--max-context-tokens", "100",
               "--max-new-tokens", "40")  # fmt: skip
    print("generative (the demo model through the InferenceService, citations constrained to the context):")
    _show(res)
    markers = {c["marker"] for c in res["citations"]}
    if not markers <= set(range(1, len(res["trace"]["context_chunk_ids"]) + 1)):
        raise RuntimeError(f"demo: a citation names a chunk that was not retrieved: {markers}")
    res = _ask(root, UNANSWERABLE, "--answer-mode", "extractive")
    _show(res)
    if not res["abstained"]:
        raise RuntimeError(f"demo: expected an abstention for {UNANSWERABLE!r}, got {res['answer']!r}")
    print(f"rag stage done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":  # by hand: python tools/demo_rag.py OUT CORPUS HOST:PORT
    stage_rag(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
