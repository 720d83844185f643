"""MovieLens rating files as events: ``u.data`` (100k, tab-separated) and ``ratings.dat`` (1M/10M, ``::``).

What it does: parses ``user item rating timestamp`` lines into ``Event(event="view")`` records with the
rating kept in ``context["rating"]``; ``load_movielens`` accepts a file or a directory holding one of the
two files. Every rating counts as an interaction (the usual implicit-feedback convention of SASRec/RecBole).
What it does not do: download anything (the data's licence forbids redistribution; point it at your copy)
or read the movie metadata files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nanoforge.recommender.events import Event


def _parse(path: Path, sep: str | None) -> list[Event]:
    out = []
    with open(path, encoding="latin-1") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(sep)
            if len(parts) != 4:
                raise ValueError(
                    f"{path}:{i}: expected 4 fields 'user item rating timestamp', got {len(parts)}: {line.strip()!r}"
                )
            user, item, rating, ts = parts
            try:
                stamp = float(int(ts))
                float(rating)
            except ValueError:
                raise ValueError(
                    f"{path}:{i}: rating/timestamp must be numbers, got {line.strip()!r}"
                ) from None
            out.append(Event(user, stamp, "view", item, {"rating": rating}))
    return out


#: File name -> field separator (None = any whitespace).
FORMATS: dict[str, Callable[[Path], list[Event]]] = {
    "u.data": lambda p: _parse(p, None),
    "ratings.dat": lambda p: _parse(p, "::"),
}


def load_movielens(path: str | Path) -> list[Event]:
    """Events from a MovieLens ``u.data`` / ``ratings.dat`` file, or a directory containing one.

    Raises:
        ValueError: no known ratings file found; a malformed line.
    """
    p = Path(path)
    if p.is_dir():
        found = [p / name for name in FORMATS if (p / name).is_file()]
        if not found:
            raise ValueError(f"{p}: no MovieLens ratings file; looked for {', '.join(FORMATS)}")
        p = found[0]
    if p.name not in FORMATS:
        raise ValueError(f"{p}: unknown MovieLens file name {p.name!r}; accepted: {', '.join(FORMATS)}")
    if not p.is_file():
        raise ValueError(f"{p}: file not found")
    return FORMATS[p.name](p)
