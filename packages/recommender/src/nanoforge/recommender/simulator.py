"""A synthetic shop: users with latent tastes walk view -> click -> cart -> purchase funnels.

What it does: ``simulate`` draws users, each with one favourite category, who browse items (mostly from
their category, Zipf-popular within it), click some of what they view, and convert by a KNOWN rule:

    CONVERSION RULE: right after a click that makes the user's click count in the current session reach
    ``clicks_to_buy`` (default 2), the user puts that item in the cart and purchases it; the session's
    click count then restarts at 0.

so a model given the event sequence can predict conversion from event types and the session structure
(time gaps), and the next item from the taste. ``oracle_conversion`` applies the rule to a prefix, which
lets tests compare a model with the best possible predictor. Item ``i`` is in category ``i % n_categories``.
What it does not do: model prices, inventory or anything beyond the rule above. Deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanoforge.recommender.events import Event

SESSION_GAP = 3600.0  # seconds; a longer pause starts a new session


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulator (all counts positive)."""

    n_users: int = 200  # users simulated
    n_items: int = 120  # catalogue size; item i belongs to category i % n_categories
    n_categories: int = 6  # number of tastes
    min_events: int = 20  # events per user drawn uniformly in [min_events, max_events]
    max_events: int = 60
    taste_prob: float = 0.85  # P(a viewed item comes from the user's favourite category)
    click_taste: float = 0.45  # P(click | viewed item is in the favourite category)
    click_other: float = 0.08  # P(click | other item)
    clicks_to_buy: int = 2  # the conversion rule's threshold (clicks in one session)
    session_prob: float = 0.15  # P(a new session starts before the next view)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_categories", "min_events", "max_events", "clicks_to_buy"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"SimConfig.{name}={v!r} must be a positive int")
        if self.max_events < self.min_events:
            raise ValueError(f"max_events={self.max_events} must be >= min_events={self.min_events}")
        if self.n_items < self.n_categories:
            raise ValueError(f"n_items={self.n_items} must be >= n_categories={self.n_categories}")


def _zipf_weights(n: int, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** 1.0
    rng.shuffle(w)
    return w / w.sum()


def simulate(config: SimConfig | None = None) -> tuple[list[Event], dict[str, int]]:
    """Simulate events; returns (events, user -> favourite category). Users are ``u0000``..; items ``i000``..

    Each user's events are in time order; timestamps start at a random day in a 30-day window, gaps inside
    a session are seconds to minutes, between sessions hours to days.
    """
    c = config or SimConfig()
    rng = np.random.default_rng(c.seed)
    cats = [list(range(k, c.n_items, c.n_categories)) for k in range(c.n_categories)]
    within = [_zipf_weights(len(items), rng) for items in cats]
    glob = _zipf_weights(c.n_items, rng)
    events: list[Event] = []
    tastes: dict[str, int] = {}
    width = len(str(c.n_items - 1))
    for u in range(c.n_users):
        user = f"u{u:04d}"
        taste = int(rng.integers(c.n_categories))
        tastes[user] = taste
        t = float(rng.uniform(0, 30 * 86400))
        target = int(rng.integers(c.min_events, c.max_events + 1))
        clicks = 0
        n = 0

        def emit(kind: str, item: int, gap: float, user: str = user) -> None:
            nonlocal t, n
            t += gap
            events.append(Event(user, round(t, 3), kind, f"i{item:0{width}d}"))
            n += 1

        first = True
        while n < target:
            if not first and rng.random() < c.session_prob:
                t += float(rng.uniform(2 * SESSION_GAP, 3 * 86400))
                clicks = 0
            first = False
            if rng.random() < c.taste_prob:
                item = int(rng.choice(cats[taste], p=within[taste]))
            else:
                item = int(rng.choice(c.n_items, p=glob))
            emit("view", item, float(rng.uniform(5, 300)))
            p_click = c.click_taste if item % c.n_categories == taste else c.click_other
            if rng.random() < p_click:
                emit("click", item, float(rng.uniform(2, 60)))
                clicks += 1
                if clicks >= c.clicks_to_buy:  # the known conversion rule
                    emit("cart", item, float(rng.uniform(5, 120)))
                    emit("purchase", item, float(rng.uniform(10, 300)))
                    clicks = 0
    return events, tastes


def oracle_conversion(history: list[Event], clicks_to_buy: int = 2) -> float:
    """The rule's prediction that the NEXT events bring a purchase: the session's click count so far.

    Returns a score (not a probability): higher = closer to the threshold; ``1.0`` when the last event is
    the click that triggers the rule or the cart that follows it.
    """
    clicks = 0
    prev = None
    for e in history:
        if prev is not None and e.timestamp - prev > SESSION_GAP:
            clicks = 0
        if e.event == "click":
            clicks += 1
        if e.event == "purchase":
            clicks = 0
        prev = e.timestamp
    if history and history[-1].event in ("cart",):
        return 1.0
    return min(1.0, clicks / clicks_to_buy)
