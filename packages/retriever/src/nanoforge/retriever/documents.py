"""Documents and the loaders that turn files into them: plain text, Markdown, HTML, PDF, JSONL and BEIR.

What it does: reads files into ``Document`` records that keep their ``source`` (path, plus ``#line`` for
JSONL rows), ``title`` and free-form string ``metadata``. Loaders are a registry keyed by file suffix;
``load_path`` walks directories. HTML is reduced to visible text with the standard-library parser (no
script/style), PDF text comes from pypdf (optional extra ``nanoforge-retriever[pdf]``) and records where
each page starts in the text (``metadata["page_starts"]``), so a chunk's char offset maps back to a page.

What it deliberately does not do: OCR, layout analysis, or fetching URLs. Document text is what chunk
offsets point into: ``doc.text[chunk.start:chunk.end] == chunk.text`` always holds.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Largest document accepted by the store and the service (characters).
MAX_DOCUMENT_CHARS = 2_000_000


@dataclass(frozen=True)
class Document:
    """A source document.

    Attributes:
        id: stable identifier; upserting the same id replaces the document.
        text: the full text that chunk offsets point into.
        title: shown in citations; may be empty.
        source: where it came from (path or URI); may be empty.
        metadata: string attributes that search filters can match.
    """

    id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def content_id(text: str) -> str:
    """The id given to a document without one: the SHA-256 of its UTF-8 text, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def validate_document(doc: Document) -> None:
    """Raise ``ValueError`` naming the problem when ``doc`` cannot be stored."""
    if not doc.text:
        raise ValueError(f"document {doc.id!r} has empty text; every document needs some text")
    if len(doc.text) > MAX_DOCUMENT_CHARS:
        raise ValueError(
            f"document {doc.id!r} has {len(doc.text)} characters; the limit is {MAX_DOCUMENT_CHARS}"
        )
    for key, value in doc.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"document {doc.id!r} metadata {key!r}={value!r}: keys and values must be str")


# --- loaders -------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def load_text(path: Path) -> Iterator[Document]:
    """A plain-text file as one document titled by its file name."""
    text = _read_text(path)
    if text.strip():
        yield Document(
            id=str(path), text=text, title=path.stem, source=str(path), metadata={"format": "text"}
        )


def load_markdown(path: Path) -> Iterator[Document]:
    """A Markdown file as one document, kept verbatim; the title is the first ``#`` heading if any."""
    text = _read_text(path)
    title = path.stem
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip() or title
            break
    if text.strip():
        yield Document(
            id=str(path), text=text, title=title, source=str(path), metadata={"format": "markdown"}
        )


class _VisibleText(html.parser.HTMLParser):
    """Collects visible text; block elements become line breaks; script/style/head content is dropped."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "pre"})
    HIDDEN = frozenset({"script", "style", "head", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self.HIDDEN:
            self._hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._hidden:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str]:
    """Visible text and ``<title>`` of an HTML page: ``"<p>a</p><p>b</p>"`` -> ``("a\\n\\nb", "")``."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text, blank = [], False
    for line in lines:
        if line:
            text.append(line)
            blank = False
        elif not blank and text:
            text.append("")
            blank = True
    return "\n".join(text).strip(), " ".join(parser.title.split())


def load_html(path: Path) -> Iterator[Document]:
    """An HTML page as one document of its visible text, titled by ``<title>``."""
    text, title = html_to_text(_read_text(path))
    if text:
        yield Document(
            id=str(path), text=text, title=title or path.stem, source=str(path), metadata={"format": "html"}
        )


def load_pdf(path: Path) -> Iterator[Document]:
    """A PDF as one document; pages are joined by a blank line and ``page_starts`` records their offsets.

    Raises:
        ValueError: when pypdf (the ``pdf`` extra) is not installed.
    """
    try:
        import pypdf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(
            f"cannot read {path}: PDF support needs `pip install nanoforge-retriever[pdf]`"
        ) from exc
    reader = pypdf.PdfReader(str(path))
    pages, starts, pos = [], [], 0
    for page in reader.pages:
        page_text = (page.extract_text() or "").strip()
        starts.append(pos)
        pages.append(page_text)
        pos += len(page_text) + 2
    text = "\n\n".join(pages)
    title = (reader.metadata.title if reader.metadata and reader.metadata.title else "") or path.stem
    meta = {"format": "pdf", "pages": str(len(pages)), "page_starts": ",".join(map(str, starts))}
    if text.strip():
        yield Document(id=str(path), text=text, title=str(title), source=str(path), metadata=meta)


def _json_document(row: dict[str, object], where: str) -> Document:
    """A document from a JSON object with ``text`` and optional ``_id``/``id``, ``title``, ``metadata``."""
    text = row.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a string field 'text', got {type(text).__name__}")
    raw_id = row.get("_id", row.get("id"))
    doc_id = str(raw_id) if raw_id not in (None, "") else content_id(text)
    meta = row.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: 'metadata' must be an object, got {type(meta).__name__}")
    title = row.get("title") or ""
    return Document(
        id=doc_id,
        text=text,
        title=str(title),
        source=where,
        metadata={str(k): str(v) for k, v in meta.items()},
    )


def load_jsonl(path: Path) -> Iterator[Document]:
    """One document per JSON line (``{"_id"|"id", "title", "text", "metadata"}``); the BEIR corpus format.

    Raises:
        ValueError: on a line that is not a JSON object with a string ``text``.
    """
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}#{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if str(row.get("text", "")).strip():
                yield _json_document(row, where)


#: File suffix -> loader. Add a format by adding an entry.
LOADERS: dict[str, Callable[[Path], Iterator[Document]]] = {
    ".txt": load_text,
    ".text": load_text,
    ".rst": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".jsonl": load_jsonl,
}


def load_path(path: str | Path) -> Iterator[Document]:
    """Documents from a file, a directory (recursively, known suffixes only, sorted) or a BEIR dataset dir.

    A directory holding ``corpus.jsonl`` is read as a BEIR dataset (only its corpus).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for a file whose suffix has no loader.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {p}")
    if p.is_dir():
        if (p / "corpus.jsonl").is_file():
            yield from load_jsonl(p / "corpus.jsonl")
            return
        for child in sorted(p.rglob("*")):
            if child.is_file() and child.suffix.lower() in LOADERS:
                yield from LOADERS[child.suffix.lower()](child)
        return
    loader = LOADERS.get(p.suffix.lower())
    if loader is None:
        raise ValueError(f"cannot load {p}: unknown suffix {p.suffix!r}; known: {', '.join(sorted(LOADERS))}")
    yield from loader(p)


# --- BEIR ----------------------------------------------------------------------------------------------


def load_beir_queries(path: str | Path) -> dict[str, str]:
    """BEIR ``queries.jsonl``: ``{query_id: text}``."""
    out: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                row = json.loads(line)
                if "_id" not in row or "text" not in row:
                    raise ValueError(
                        f"{path}#{lineno}: a BEIR query needs '_id' and 'text', got {sorted(row)}"
                    )
                out[str(row["_id"])] = str(row["text"])
    return out


def load_beir_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (``query-id corpus-id score`` with a header): ``{query_id: {doc_id: grade}}``.

    Rows with a grade <= 0 are dropped (BEIR counts only positive grades as relevant).
    """
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if len(parts) < 3:
                raise ValueError(
                    f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}"
                )
            grade = int(parts[2])
            if grade > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels
