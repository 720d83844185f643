"""Streaming text for one request: incremental detokenization, stop strings and tool-call hold-back.

``TextStream.push(token_id)`` returns the text that may be shown now. It never returns a broken UTF-8
character (the tokenizer's stream decoder buffers partial bytes) and never shows text that could still
turn out to be the start of a stop string: the longest tail of the unshown text that is a prefix of some
stop string is held back until it is decided. When a stop string appears, everything before it is
released, the stop string and anything after it are dropped (OpenAI semantics) and ``stopped`` is set.
With ``hold_from`` (a tool-call start marker), everything from the marker on is held (not shown) so the
caller can parse it as a tool call at the end and show it only if it is not one.

Example (stop=["\\n\\n"]): pushes giving "Hi", "\\n", "\\n", "more" show "Hi", "", and then stop with "".
What it does not do: tokens, sampling, or parsing tool calls (``text.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from nanoforge.tokenizer.protocol import StreamDecoderLike


def held_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string.

    Example: held_prefix_len("abc\\n", ["\\n\\n"]) == 1.
    """
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """Incremental text of one generation."""

    def __init__(self, decoder: StreamDecoderLike, stop: Sequence[str] = (), hold_from: str | None = None):
        self._dec = decoder
        self._stops = [s for s in stop if s]
        self._hold_from = hold_from
        self._pending = ""  # decoded, not shown yet
        self.held = ""  # text from the hold marker on (never shown unless released)
        self.shown = ""  # everything shown so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one generated token; return the newly showable text."""
        if self.stopped:
            return ""
        return self._advance(self._dec.push(token_id), final=False)

    def finish(self) -> str:
        """End of generation: flush the decoder and release what is still pending."""
        if self.stopped:
            return ""
        return self._advance(self._dec.flush(), final=True)

    def release_held(self) -> str:
        """Show the held text after all (it was not a tool call)."""
        text, self.held = self.held, ""
        self.shown += text
        return text

    @property
    def full_text(self) -> str:
        """Shown + held text (the complete reply up to a stop string)."""
        return self.shown + self.held

    def _advance(self, new: str, final: bool) -> str:
        text = self._pending + new
        self._pending = ""
        # 1. a stop string ends everything (searched in the not-yet-shown text only: shown text never
        #    contains the start of a stop string).
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
            self.stopped = True
        # 2. the tool-call marker: from it on, text is held.
        if self.held:
            self.held += text
            return ""
        if self._hold_from:
            at = text.find(self._hold_from)
            if at >= 0:
                self.held = text[at:]
                text = text[:at]
            elif not final and not self.stopped:
                keep = held_prefix_len(text, [self._hold_from, *self._stops])
                self._pending, text = text[len(text) - keep :], text[: len(text) - keep]
        elif not final and not self.stopped:
            keep = held_prefix_len(text, self._stops)
            self._pending, text = text[len(text) - keep :], text[: len(text) - keep]
        self.shown += text
        return text
