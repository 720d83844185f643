"""Embeddings from nanoforge's InferenceService over gRPC (``Embed`` RPC); the only client-side gRPC here.

What it does: sends batches of texts to ``InferenceService.Embed`` with ``normalize=True, truncate=True``
on a blocking channel from ``nanoforge.api.client`` (bearer token optional) and returns float32 rows.

What it deliberately does not do: retries or load balancing (the channel's defaults apply), or import the
inference server's code: services only talk over the protos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nanoforge.api.client import make_sync_channel
from nanoforge.api.inference.v1 import inference_pb2, inference_pb2_grpc


class InferenceEmbedder:
    """Embedder backed by ``InferenceService.Embed`` at ``target`` (``host:port``)."""

    def __init__(
        self, target: str, model: str = "", dim: int = 0, *, token: str | None = None, timeout: float = 60.0
    ) -> None:
        self._target = target
        self._model = model
        self._dim = dim
        self._timeout = timeout
        self._channel = make_sync_channel(target, token=token)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    @property
    def key(self) -> str:
        return f"inference:{self._model or 'default'}"

    @property
    def dim(self) -> int:
        if not self._dim:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        req = inference_pb2.EmbedRequest(model=self._model, inputs=list(texts), normalize=True, truncate=True)
        reply = self._stub.Embed(req, timeout=self._timeout)
        vecs = np.asarray([list(e.values) for e in reply.embeddings], dtype=np.float32)  # (N, D)
        if vecs.shape[0] != len(texts):
            raise ValueError(f"{self._target} returned {vecs.shape[0]} embeddings for {len(texts)} inputs")
        self._dim = self._dim or int(reply.dimension)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def close(self) -> None:
        self._channel.close()
