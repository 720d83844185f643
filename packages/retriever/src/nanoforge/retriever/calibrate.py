"""Calibrate the abstention threshold of Ask on labelled answerable / unanswerable questions.

The decision: abstain when the support score (``rag.support_score``: best question-passage cosine) is below
a threshold t. Treat "abstain" as the positive class and "the question is unanswerable from the
collection" as the truth; ``best_threshold`` tries every midpoint between consecutive distinct scores (and
both ends) and keeps the t with the highest F1 of abstention (ties: higher accuracy, then lower t, i.e.
the one that abstains least)::

    best_threshold([0.9, 0.8, 0.3, 0.2], [True, True, False, False]).threshold  -> 0.55

``save_threshold`` stores it in the collection manifest under ``"rag"``, where the service and the CLI read
it as the default of requests that leave ``abstain_threshold`` unset.

What it deliberately does not do: calibrate the groundedness threshold (our readers do not produce
labelled grounded/ungrounded answers; it stays a request option), or fit per-mode thresholds.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nanoforge.retriever.collection import Collection, write_json_atomic
from nanoforge.retriever.rag import MANIFEST_KEY, AskOptions, retrieve


@dataclass(frozen=True)
class Calibration:
    """A chosen threshold and how it did on the labelled set it was chosen on."""

    threshold: float
    f1: float
    precision: float
    recall: float
    accuracy: float
    n_answerable: int
    n_unanswerable: int
    curve: list[tuple[float, float]] = field(default_factory=list)  # (threshold, F1) of every candidate


def abstention_prf(
    scores: Sequence[float], answerable: Sequence[bool], t: float
) -> tuple[float, float, float, float]:
    """(precision, recall, F1, accuracy) of "abstain iff score < t" against "unanswerable"."""
    tp = sum(s < t and not a for s, a in zip(scores, answerable))
    fp = sum(s < t and a for s, a in zip(scores, answerable))
    fn = sum(s >= t and not a for s, a in zip(scores, answerable))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    acc = (len(scores) - fp - fn) / len(scores) if scores else 0.0
    return p, r, f1, acc


def best_threshold(scores: Sequence[float], answerable: Sequence[bool]) -> Calibration:
    """The threshold maximising the F1 of abstention on unanswerable questions.

    Raises:
        ValueError: when lengths differ or a class is missing.
    """
    if len(scores) != len(answerable):
        raise ValueError(f"{len(scores)} scores but {len(answerable)} labels")
    n_ans = sum(bool(a) for a in answerable)
    if n_ans == 0 or n_ans == len(answerable):
        raise ValueError(
            f"calibration needs answerable and unanswerable questions; got {n_ans} answerable of {len(answerable)}"
        )
    uniq = sorted(set(float(s) for s in scores))
    cands = [uniq[0] - 1e-6] + [(a + b) / 2 for a, b in itertools.pairwise(uniq)] + [uniq[-1] + 1e-6]
    best: tuple[float, float, float] | None = None  # (f1, accuracy, -t)
    curve = []
    for t in cands:
        _, _, f1, acc = abstention_prf(scores, answerable, t)
        curve.append((t, f1))
        if best is None or (f1, acc, -t) > best:
            best = (f1, acc, -t)
    assert best is not None
    t = -best[2]
    p, r, f1, acc = abstention_prf(scores, answerable, t)
    return Calibration(t, f1, p, r, acc, n_ans, len(answerable) - n_ans, curve)


def load_labelled(path: str | Path) -> list[tuple[str, bool]]:
    """(question, answerable) pairs from JSONL: ``{"question", "answerable"}`` or BEIR-style
    ``{"text", "metadata": {"answerable"}}`` lines.

    Raises:
        ValueError: on a line without a question or an answerable flag (names the line).
    """
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        q = rec.get("question", rec.get("text"))
        a = rec.get("answerable", rec.get("metadata", {}).get("answerable"))
        if not isinstance(q, str) or not q.strip() or not isinstance(a, bool):
            raise ValueError(
                f"{path}:{n}: expected {{'question': str, 'answerable': bool}} (or BEIR 'text' + "
                f"metadata.answerable), got keys {sorted(rec)}"
            )
        out.append((q, a))
    return out


def support_scores(col: Collection, questions: Sequence[str], opts: AskOptions) -> list[float]:
    """The support score of each question (retrieval only; no generation)."""
    return [retrieve(col, q, opts)[1] for q in questions]


def calibrate_collection(
    col: Collection, labelled: Sequence[tuple[str, bool]], opts: AskOptions | None = None
) -> Calibration:
    """Support scores of the labelled questions on ``col`` -> ``best_threshold``."""
    opts = opts or AskOptions()
    scores = support_scores(col, [q for q, _ in labelled], opts)
    return best_threshold(scores, [a for _, a in labelled])


def save_threshold(col: Collection, cal: Calibration, source: str = "") -> None:
    """Write the threshold (and its scores on the calibration set) into the collection manifest."""
    entry = {k: v for k, v in asdict(cal).items() if k != "curve"}
    entry.update(support_threshold=cal.threshold, calibrated_at=time.time(), source=source)
    entry.pop("threshold")
    with col._lock:
        col.manifest[MANIFEST_KEY] = entry
        write_json_atomic(col.path / "manifest.json", col.manifest)
