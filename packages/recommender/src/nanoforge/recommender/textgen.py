"""Structured text generation for the ad studio, through a nanoforge InferenceService over gRPC.

What it does: ``TextGenerator`` is the one call the ad studio needs (``generate_json``: N chat completions
constrained to a JSON Schema, each with its finish reason); ``InferenceTextGenerator`` implements it with
``nanoforge.api.inference_client.InferenceClient`` (``response_format={"json_schema": ...}``, so the
server's constrained decoding guarantees the JSON shape unless the token budget runs out first).
What it does not do: retries, or import the inference server (tests and the studio can pass any object
with ``generate_json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference_client import InferenceClient


@dataclass(frozen=True)
class Generated:
    """One sample: its text, why it ended (``FINISH_REASON_STOP`` / ``..._LENGTH`` ...) and its token count."""

    text: str
    finish_reason: str
    completion_tokens: int


class TextGenerator(Protocol):
    """What the ad studio needs from a language model."""

    def generate_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> list[Generated]:
        """``n`` chat completions whose text is constrained to ``schema``."""
        ...


class InferenceTextGenerator:
    """``TextGenerator`` over an InferenceService at ``target`` (host:port).

    Args:
        target: the service address.
        token: bearer token, when the service requires one.
        model: served model name; "" for the service's default.
        timeout: seconds per call.
    """

    def __init__(
        self, target: str, *, token: str | None = None, model: str = "", timeout: float = 300.0
    ) -> None:
        self.client = InferenceClient(target, token=token, timeout=timeout)
        self.model = model

    def generate_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> list[Generated]:
        reply = self.client.generate(
            messages,
            model=self.model,
            n=n,
            response_format={"json_schema": json.dumps(schema)},
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
        return [
            Generated(
                c.text,
                common_pb2.FinishReason.Name(c.finish_reason),
                len(c.token_ids),
            )
            for c in reply.completions
        ]

    def close(self) -> None:
        self.client.close()
