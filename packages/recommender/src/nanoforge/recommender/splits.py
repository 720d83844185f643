"""Time-based train / validation / test splits with no leakage.

What it does: two protocols, each returning a ``Split`` of per-user sequences:

    leave_last_out   per user (time-ordered): the last TARGET event is the test target, the one before it the
                     validation target; training sees only the events before the validation target.
                     The test history is everything before the test target (it includes the validation
                     target, as in SASRec / RecBole), the validation history everything before that.
    time_cutoff      one global timestamp: events before it are training, each user's FIRST target event at
                     or after it is the test target, with that user's pre-cutoff events as history.

"Target events" are those whose type is in ``target_types`` (default: all); e.g. next-purchase evaluation
uses ``("purchase",)``. A user with too few events has no test case and only contributes training events.
What it does not do: tokenize or build vocabularies; build the vocabulary from ``Split.train`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nanoforge.recommender.events import EVENT_TYPES, Event


@dataclass(frozen=True)
class Case:
    """One evaluation case: the history a model sees and the event to predict."""

    user: str
    history: list[Event]
    target: Event


@dataclass
class Split:
    """Training sequences and the validation / test cases of one protocol."""

    protocol: str
    train: dict[str, list[Event]]
    valid: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)

    def train_events(self) -> list[Event]:
        return [e for seq in self.train.values() for e in seq]


def _check_types(target_types: tuple[str, ...] | None) -> tuple[str, ...]:
    types = tuple(EVENT_TYPES if target_types is None else target_types)
    bad = [t for t in types if t not in EVENT_TYPES]
    if bad or not types:
        raise ValueError(f"target_types={target_types!r} invalid; accepted: {', '.join(EVENT_TYPES)}")
    return types


def leave_last_out(
    seqs: dict[str, list[Event]], *, target_types: tuple[str, ...] | None = None, min_history: int = 1
) -> Split:
    """Per-user leave-last-out (see module docstring). Users need ``min_history`` events before targets."""
    types = _check_types(target_types)
    split = Split("leave_last_out", {})
    for user, seq in seqs.items():
        idx = [i for i, e in enumerate(seq) if e.event in types]
        if len(idx) < 2 or idx[-2] < min_history:
            split.train[user] = list(seq)
            continue
        t_test, t_valid = idx[-1], idx[-2]
        split.train[user] = list(seq[:t_valid])
        split.valid.append(Case(user, list(seq[:t_valid]), seq[t_valid]))
        split.test.append(Case(user, list(seq[:t_test]), seq[t_test]))
    return split


def time_cutoff(
    seqs: dict[str, list[Event]],
    cutoff: float,
    *,
    target_types: tuple[str, ...] | None = None,
    min_history: int = 1,
) -> Split:
    """Global-time split at ``cutoff`` seconds (see module docstring); no validation cases."""
    types = _check_types(target_types)
    split = Split("time_cutoff", {})
    for user, seq in seqs.items():
        before = [e for e in seq if e.timestamp < cutoff]
        if before:
            split.train[user] = before
        after = [e for e in seq if e.timestamp >= cutoff and e.event in types]
        if after and len(before) >= min_history:
            split.test.append(Case(user, before, after[0]))
    return split


def quantile_cutoff(seqs: dict[str, list[Event]], fraction: float) -> float:
    """The timestamp below which ``fraction`` of all events fall (for ``time_cutoff``)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1)")
    stamps = sorted(e.timestamp for seq in seqs.values() for e in seq)
    if not stamps:
        raise ValueError("no events to split")
    return stamps[min(len(stamps) - 1, int(fraction * len(stamps)))]


#: Protocol name -> builder ``(seqs, **options) -> Split``.
PROTOCOLS: dict[str, Callable[..., Split]] = {"leave_last_out": leave_last_out, "time_cutoff": time_cutoff}
