"""Evaluation protocols, labelled so results from different protocols are never mixed up.

Next-item (one target per test case, candidates are the KNOWN items of the training vocabulary):

    full            rank among ALL known items; items already in the history stay candidates
                    (what RecBole does for sequential models)
    full_excl_seen  rank among all known items except those in the user's history
    sampled100      rank among the target + 100 negatives: known items the user never interacted with,
                    drawn uniformly ONCE with a fixed seed (``sample_negatives``) and reused for every model

A target item absent from the training vocabulary (it only maps to a hashed bucket) cannot be ranked: it
counts as a miss in every protocol, and ``n_unknown_targets`` reports how many there were.
Conversion: for every position of every evaluation sequence whose label is observable (see
``dataset.conversion_labels``), the model's probability of a purchase within the horizon; AUC, log loss
and ECE. ``ModelScorer`` adapts a ``SeqRec`` to the same ``Scorer`` interface as the baselines.
What it does not do: training, or baselines' fitting.
"""

from __future__ import annotations

import numpy as np
import torch

from nanoforge.recommender.baselines import Scorer
from nanoforge.recommender.dataset import conversion_labels, encode
from nanoforge.recommender.events import Event
from nanoforge.recommender.metrics import auc, ece, log_loss, ranking_metrics, target_ranks
from nanoforge.recommender.model import SeqRec
from nanoforge.recommender.splits import Case
from nanoforge.recommender.vocab import ItemVocab, tokenize

PROTOCOLS = ("full", "full_excl_seen", "sampled100")


class ModelScorer:
    """A trained ``SeqRec`` as a ``Scorer``: next-item logits at the last event of each history."""

    def __init__(self, model: SeqRec, vocab: ItemVocab, batch_size: int = 256) -> None:
        self.model, self.vocab, self.batch_size = model, vocab, batch_size

    @torch.no_grad()
    def hidden_last(self, histories: list[list[Event]]) -> torch.Tensor:
        """(B, C) hidden state after each history's last event."""
        self.model.eval()
        device = next(self.model.parameters()).device
        outs = []
        for i in range(0, len(histories), self.batch_size):
            x = encode(histories[i : i + self.batch_size], self.vocab, self.model.rec.max_len)
            h = self.model(x["items"].to(device), x["types"].to(device), x["gaps"].to(device))
            outs.append(h[:, -1].float().cpu())  # left padding: the last column is the last event
        return torch.cat(outs)

    def __call__(self, histories: list[list[Event]]) -> np.ndarray:
        h = self.hidden_last(histories)
        return self.model.item_logits(h.to(self.model.item_emb.weight.device)).detach().cpu().double().numpy()

    @torch.no_grad()
    def conversion(self, histories: list[list[Event]]) -> np.ndarray:
        """P(purchase within the horizon) after each history's last event, (B,)."""
        h = self.hidden_last(histories)
        return torch.sigmoid(self.model.conversion_logit(h)).double().numpy()


def sample_negatives(cases: list[Case], vocab: ItemVocab, n: int = 100, seed: int = 0) -> np.ndarray:
    """(N, n) item ids per case: known items outside the user's history and target, uniform, seeded.

    Raises:
        ValueError: fewer than ``n`` eligible items for some case.
    """
    rng = np.random.default_rng(seed)
    known = np.arange(vocab.first_item_id, vocab.size)
    out = np.zeros((len(cases), n), dtype=np.int64)
    for i, c in enumerate(cases):
        seen = {vocab.id(e.item) for e in c.history} | {vocab.id(c.target.item)}
        pool = known[~np.isin(known, list(seen))]
        if len(pool) < n:
            raise ValueError(f"case {i} (user {c.user}): only {len(pool)} eligible negatives, need {n}")
        out[i] = rng.choice(pool, size=n, replace=False)
    return out


def evaluate_ranking(
    scorer: Scorer,
    cases: list[Case],
    vocab: ItemVocab,
    negatives: np.ndarray | None = None,
    *,
    k: int = 10,
    batch_size: int = 512,
) -> dict[str, dict[str, float]]:
    """HR@k / NDCG@k / MRR for each protocol in ``PROTOCOLS`` (sampled100 only with ``negatives``)."""
    if not cases:
        raise ValueError("no evaluation cases")
    lo, V = vocab.first_item_id, vocab.size
    ranks: dict[str, list[np.ndarray]] = {p: [] for p in PROTOCOLS}
    n_unknown = 0
    for s in range(0, len(cases), batch_size):
        batch = cases[s : s + batch_size]
        scores = np.asarray(scorer([c.history for c in batch]), dtype=np.float64)  # (B, V)
        if scores.shape != (len(batch), V):
            raise ValueError(f"scorer returned shape {scores.shape}, expected {(len(batch), V)}")
        targets = np.array([vocab.id(c.target.item) for c in batch])
        known_t = targets >= lo
        n_unknown += int((~known_t).sum())
        cand = scores[:, lo:]  # (B, n_known) known items only
        tcol = np.where(known_t, targets - lo, 0)
        seen = np.ones_like(cand, dtype=bool)
        for b, c in enumerate(batch):
            ids = np.array([vocab.id(e.item) for e in c.history])
            ids = ids[(ids >= lo) & (ids != targets[b])] - lo
            seen[b, ids] = False
        n_known = V - lo
        for name, valid in (("full", None), ("full_excl_seen", seen)):
            r = target_ranks(cand, tcol, valid)
            ranks[name].append(np.where(known_t, r, n_known))
        if negatives is not None:
            neg = negatives[s : s + batch_size]
            cols = np.concatenate([targets[:, None], neg], axis=1)  # (B, 1 + n)
            sub = np.take_along_axis(scores, cols, axis=1)
            r = target_ranks(sub, np.zeros(len(batch), dtype=np.int64))
            ranks["sampled100"].append(np.where(known_t, r, neg.shape[1]))
    out: dict[str, dict[str, float]] = {}
    for name, parts in ranks.items():
        if parts:
            out[name] = ranking_metrics(np.concatenate(parts), k)
    out["counts"] = {"n_cases": float(len(cases)), "n_unknown_targets": float(n_unknown)}
    return out


@torch.no_grad()
def conversion_predictions(
    model: SeqRec, vocab: ItemVocab, seqs: dict[str, list[Event]], horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) at every observable position of every sequence.

    Sequences longer than ``max_len`` are read in windows of ``max_len`` advancing by ``max_len // 2``;
    each position is predicted once, from a window that shows it with at least ``max_len // 2`` events of
    context (or all of its history when shorter).
    """
    model.eval()
    device = next(model.parameters()).device
    T = model.rec.max_len
    labels, probs = [], []
    for events in seqs.values():
        if len(events) < 2:
            continue
        items, types, gaps = tokenize(events, vocab)
        lab = conversion_labels(types, horizon)
        n, stride, done = len(items), max(1, T // 2), 0
        start = 0
        while done < n:
            end = min(n, start + T)
            x = [torch.from_numpy(a[start:end])[None].to(device) for a in (items, types, gaps)]
            p = torch.sigmoid(model.conversion_logit(model(*x)))[0].double().cpu().numpy()
            keep = slice(done - start, end - start)
            lab_w = lab[start:end][keep]
            ok = lab_w >= 0
            labels.append(lab_w[ok])
            probs.append(p[keep][ok])
            done = end
            start += stride if end < n else 0
    y, p = np.concatenate(labels), np.concatenate(probs)
    return y, p


def conversion_metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """AUC, log loss, ECE and the base rate of a set of conversion predictions."""
    return {
        "AUC": auc(labels, probs),
        "log_loss": log_loss(labels, probs),
        "ECE": ece(labels, probs, n_bins),
        "positive_rate": float(np.mean(labels)),
        "n": float(len(labels)),
    }
