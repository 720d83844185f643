"""A small regular-expression engine over bytes: pattern -> AST -> Thompson NFA -> trimmed DFA table.

What it does: ``compile_regex(pattern)`` parses a practical regex subset (literals, ``.``, escapes ``\\d \\w
\\s \\D \\W \\S`` and ``\\`` + punctuation, classes ``[a-z_]`` / ``[^...]``, groups ``(...)`` / ``(?:...)``,
``|``, quantifiers ``* + ? {n} {n,} {n,m}``, an optional leading ``^`` / trailing ``$``) and builds a DFA
whose alphabet is the 256 byte values. The pattern always has to match the WHOLE output. Characters
outside ASCII in literals become their UTF-8 byte sequence; ``.``, ``\\W`` and negated classes match ASCII
characters only (so every accepted byte string is valid UTF-8). The DFA is *trimmed*: a state from which
no accepting state can be reached is removed, so a walk that stays alive can always be completed.
What it does not do: backreferences, lookaround, lazy quantifiers, flags, Unicode classes; tokens
(``token_mask``) or JSON (``json_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanoforge.inference_server.errors import InvalidRequest

#: Hard limits keeping compilation fast and memory small; larger patterns are rejected.
MAX_NFA_STATES = 200_000
MAX_DFA_STATES = 50_000
MAX_REPEAT = 1_000

_ALL = (1 << 256) - 1
_ASCII = (1 << 128) - 1


def _bits(*chars: str) -> int:
    m = 0
    for c in chars:
        m |= 1 << ord(c)
    return m


def _span(lo: str, hi: str) -> int:
    return sum(1 << b for b in range(ord(lo), ord(hi) + 1))


_DIGIT = _span("0", "9")
_WORD = _span("a", "z") | _span("A", "Z") | _DIGIT | _bits("_")
_SPACE = _bits(" ", "\t", "\n", "\r", "\f", "\v")
_CLASS_ESCAPES = {
    "d": _DIGIT,
    "w": _WORD,
    "s": _SPACE,
    "D": _ASCII & ~_DIGIT,
    "W": _ASCII & ~_WORD,
    "S": _ASCII & ~_SPACE,
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}

# AST nodes: ("set", bitmask) one byte | ("cat", [nodes]) | ("alt", [nodes]) | ("rep", node, lo, hi|None)
Node = tuple


def literal(text: str) -> Node:
    """The AST matching exactly ``text`` (its UTF-8 bytes)."""
    return ("cat", [("set", 1 << b) for b in text.encode("utf-8")])


class _Parser:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0

    def error(self, what: str) -> InvalidRequest:
        return InvalidRequest(f"invalid regex {self.p!r} at position {self.i}: {what}")

    def peek(self) -> str | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def take(self) -> str:
        c = self.p[self.i]
        self.i += 1
        return c

    def parse(self) -> Node:
        if self.peek() == "^":
            self.i += 1
        node = self.alt()
        if self.peek() == "$" and self.i == len(self.p) - 1:
            self.i += 1
        if self.i != len(self.p):
            raise self.error(f"unexpected {self.p[self.i]!r}")
        return node

    def alt(self) -> Node:
        branches = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.cat())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def cat(self) -> Node:
        items: list[Node] = []
        while (c := self.peek()) is not None and c not in "|)":
            if c == "$" and self.i == len(self.p) - 1:
                break
            items.append(self.repeat(self.atom()))
        return ("cat", items)

    def repeat(self, node: Node) -> Node:
        while (c := self.peek()) is not None and c in "*+?{":
            if c == "{":
                end = self.p.find("}", self.i)
                body = self.p[self.i + 1 : end] if end > 0 else ""
                parts = body.split(",")
                if (
                    end < 0
                    or len(parts) > 2
                    or not parts[0].isdigit()
                    or (len(parts) == 2 and parts[1] and not parts[1].isdigit())
                ):
                    raise self.error("bad {n,m} quantifier; accepted: {n}, {n,} or {n,m}")
                lo = int(parts[0])
                hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
                if (hi is not None and hi < lo) or lo > MAX_REPEAT or (hi or 0) > MAX_REPEAT:
                    raise self.error(f"bad repeat {{{body}}}; accepted: n <= m <= {MAX_REPEAT}")
                self.i = end + 1
            else:
                self.i += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
            if self.peek() in ("?", "+"):
                raise self.error("lazy / possessive quantifiers are not supported")
            node = ("rep", node, lo, hi)
        return node

    def atom(self) -> Node:
        c = self.take()
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.error("only (?:...) groups are supported (no lookaround or named groups)")
            node = self.alt()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return self.char_class()
        if c == ".":
            return ("set", _ASCII & ~_bits("\n"))
        if c == "\\":
            return self.escape(in_class=False)
        if c in "*+?{":
            raise self.error(f"nothing to repeat before {c!r}")
        if c in ")]}":
            raise self.error(f"unbalanced {c!r}")
        return literal(c)

    def escape(self, in_class: bool) -> Node:
        if self.peek() is None:
            raise self.error("trailing backslash")
        c = self.take()
        if c in _CLASS_ESCAPES:
            return ("set", _CLASS_ESCAPES[c])
        if c in _CHAR_ESCAPES:
            return literal(_CHAR_ESCAPES[c])
        if c.isalnum():
            raise self.error(f"unsupported escape \\{c}")
        return literal(c)

    def char_class(self) -> Node:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        mask = 0
        extra: list[Node] = []  # non-ASCII characters: their UTF-8 byte sequences
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("missing ']'")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            self.i += 1
            if c == "\\":
                node = self.escape(in_class=True)
                if node[0] == "set":
                    mask |= node[1]
                    continue
                c = bytes(n[1].bit_length() - 1 for n in node[1]).decode("utf-8")
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                hi = self.take()
                if hi == "\\":
                    node = self.escape(in_class=True)
                    if node[0] == "set":
                        raise self.error("a class escape cannot end a range")
                    hi = bytes(n[1].bit_length() - 1 for n in node[1]).decode("utf-8")
                if ord(hi) < ord(c):
                    raise self.error(f"bad range {c}-{hi}")
                if ord(hi) >= 128:
                    if negate or ord(hi) - ord(c) > 4096:
                        raise self.error("ranges beyond ASCII must be short and not negated")
                    extra += [literal(chr(x)) for x in range(max(ord(c), 128), ord(hi) + 1)]
                    hi = chr(min(ord(hi), 127))
                if ord(c) < 128:
                    mask |= _span(c, hi)
            elif ord(c) < 128:
                mask |= 1 << ord(c)
            else:
                if negate:
                    raise self.error("negated classes may only list ASCII characters")
                extra.append(literal(c))
        if negate:
            mask = _ASCII & ~mask
        ascii_set: Node = ("set", mask)
        return ("alt", [ascii_set, *extra]) if extra else ascii_set


def parse_regex(pattern: str) -> Node:
    """Parse ``pattern`` into an AST. Raises InvalidRequest naming the problem and position."""
    if not isinstance(pattern, str):
        raise InvalidRequest(f"regex must be a string; got {type(pattern).__name__}")
    return _Parser(pattern).parse()


class _NFA:
    """Thompson NFA: ``eps[s]`` epsilon targets, ``edges[s]`` (bitmask, target) pairs."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int]]] = []

    def new(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise InvalidRequest(f"constraint too large: over {MAX_NFA_STATES} automaton states; simplify it")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: Node) -> tuple[int, int]:
        """Add ``node``; returns its (start, end) states."""
        kind = node[0]
        s = self.new()
        if kind == "set":
            e = self.new()
            if node[1]:
                self.edges[s].append((node[1], e))
            return s, e
        if kind == "cat":
            cur = s
            for child in node[1]:
                a, b = self.build(child)
                self.eps[cur].append(a)
                cur = b
            return s, cur
        if kind == "alt":
            e = self.new()
            for child in node[1]:
                a, b = self.build(child)
                self.eps[s].append(a)
                self.eps[b].append(e)
            return s, e
        _, child, lo, hi = node
        cur = s
        for _ in range(lo):
            a, b = self.build(child)
            self.eps[cur].append(a)
            cur = b
        if hi is None:  # star: loop on one more copy
            a, b = self.build(child)
            e = self.new()
            self.eps[cur] += [a, e]
            self.eps[b] += [a, e]
            return s, e
        e = self.new()
        self.eps[cur].append(e)
        for _ in range(hi - lo):  # optional copies, each may end the repetition
            a, b = self.build(child)
            self.eps[cur].append(a)
            self.eps[b].append(e)
            cur = b
        return s, e


@dataclass
class DFA:
    """A trimmed DFA over bytes.

    Attributes:
        table: (n_states + 1, 257) int32; ``table[s, b]`` is the next state or ``dead`` (= n_states, a sink
            row); column 256 maps every state to itself (the padding byte of ``token_mask``).
        accepting: (n_states + 1,) bool.
        terminal: (n_states + 1,) bool, accepting with no way to continue (generation must end).
        start: the start state.
    """

    table: np.ndarray
    accepting: np.ndarray
    terminal: np.ndarray
    start: int

    @property
    def dead(self) -> int:
        """The sink state index."""
        return self.table.shape[0] - 1

    def walk(self, state: int, data: bytes) -> int:
        """The state after ``data`` (``dead`` once it leaves the language)."""
        for b in data:
            state = int(self.table[state, b])
        return state

    def matches(self, data: bytes) -> bool:
        """True when ``data`` is in the language."""
        return bool(self.accepting[self.walk(self.start, data)])


def build_dfa(node: Node) -> DFA:
    """Subset construction of ``node``'s NFA, then trimming of states that cannot reach acceptance.

    Raises:
        InvalidRequest: the automaton exceeds the size limits, or it accepts nothing.
    """
    nfa = _NFA()
    start, final = nfa.build(node)
    masks = sorted({m for edges in nfa.edges for m, _ in edges})
    # Byte classes: bytes that every edge treats alike share one column of work.
    classes: dict[tuple[bool, ...], list[int]] = {}
    for b in range(256):
        classes.setdefault(tuple(bool(m >> b & 1) for m in masks), []).append(b)
    reps = [(bs[0], bs) for bs in classes.values()]

    def closure(states: frozenset[int] | set[int]) -> frozenset[int]:
        out, todo = set(states), list(states)
        while todo:
            for t in nfa.eps[todo.pop()]:
                if t not in out:
                    out.add(t)
                    todo.append(t)
        return frozenset(out)

    first = closure({start})
    index = {first: 0}
    order = [first]
    rows: list[list[int]] = []
    k = 0
    while k < len(order):
        cur = order[k]
        row = [-1] * 256
        for rep, members in reps:
            bit = 1 << rep
            moved = {t for s in cur for m, t in nfa.edges[s] if m & bit}
            if not moved:
                continue
            nxt = closure(moved)
            j = index.get(nxt)
            if j is None:
                if len(order) >= MAX_DFA_STATES:
                    raise InvalidRequest(
                        f"constraint too large: over {MAX_DFA_STATES} DFA states; simplify it"
                    )
                j = index[nxt] = len(order)
                order.append(nxt)
            for b in members:
                row[b] = j
        rows.append(row)
        k += 1
    n = len(order)
    acc = np.array([final in st for st in order], dtype=bool)
    raw = np.array(rows, dtype=np.int64).reshape(n, 256)
    # Trim: keep states from which an accepting state is reachable (backwards fixpoint).
    live = acc.copy()
    while True:
        targets = np.where(raw >= 0, raw, 0)  # (n, 256) next state, 0 where there is none
        reach = live | ((raw >= 0) & live[targets]).any(axis=1)
        if (reach == live).all():
            break
        live = reach
    if not live[0]:
        raise InvalidRequest("the constraint accepts no output at all")
    dead = n
    table = np.full((n + 1, 257), dead, dtype=np.int32)
    ok = (raw >= 0) & live[np.where(raw >= 0, raw, 0)]
    table[:n, :256] = np.where(ok, raw, dead)
    table[:, 256] = np.arange(n + 1)
    table[dead, :256] = dead
    accepting = np.append(acc & live, False)
    terminal = accepting & (table[:, :256] == dead).all(axis=1)
    return DFA(table=table, accepting=accepting, terminal=terminal, start=0)


def compile_regex(pattern: str) -> DFA:
    """``parse_regex`` + ``build_dfa``."""
    return build_dfa(parse_regex(pattern))
