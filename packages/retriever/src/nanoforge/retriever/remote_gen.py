"""Generation for Ask through nanoforge's InferenceService over gRPC (``GenerateStream`` and ``Tokenize``).

What it does: ``GrpcGenerator`` implements ``rag.Generator``: it counts context tokens with the served
model's tokenizer (``Tokenize``) and streams a regex-constrained chat completion (``GenerateStream`` with
``response_format.regex``), turning RPC failures into ``InferenceError`` whose ``grpc_status`` the
service's error interceptor passes on (UNAVAILABLE names the address that could not be reached).

What it deliberately does not do: import the inference server, retry, or pick a model (the request's
``model`` or the server's default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference.v1 import inference_pb2
from nanoforge.api.inference_client import AsyncInferenceClient, generate_request
from nanoforge.retriever.rag import AskOptions, GenPiece

#: Sampling when the request sets none: greedy, 256 new tokens.
DEFAULT_MAX_NEW_TOKENS = 256


class InferenceError(ConnectionError):
    """The InferenceService failed or could not be reached; ``grpc_status`` is its status code name."""

    def __init__(self, target: str, err: grpc.aio.AioRpcError) -> None:
        code = err.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            msg = f"cannot reach the InferenceService at {target}: {err.details()}"
        else:
            msg = f"InferenceService at {target} failed: {code.name}: {err.details()}"
        super().__init__(msg)
        self.grpc_status = code.name


class GrpcGenerator:
    """``rag.Generator`` over an ``AsyncInferenceClient`` to ``target`` (host:port)."""

    def __init__(self, target: str, *, token: str | None = None, timeout: float = 300.0) -> None:
        self.target = target
        self.client = AsyncInferenceClient(target, token=token, timeout=timeout)

    async def count_tokens(self, texts: Sequence[str], model: str) -> list[int]:
        """Token count of each text under the served model's tokenizer."""
        out = []
        try:
            for t in texts:
                out.append(len((await self.client.tokenize(t, model=model)).token_ids))
        except grpc.aio.AioRpcError as err:
            raise InferenceError(self.target, err) from err
        return out

    async def stream(
        self, messages: list[dict[str, str]], regex: str, opts: AskOptions
    ) -> AsyncIterator[GenPiece]:
        """Stream the constrained completion; the last piece carries finish reason and token counts."""
        req = generate_request(
            messages, model=opts.model, adapter=opts.adapter, response_format={"regex": regex}
        )
        sampling = common_pb2.SamplingParams()
        if opts.sampling is not None:
            sampling.CopyFrom(opts.sampling)
        if not sampling.HasField("temperature"):
            sampling.temperature = 0.0
        if not sampling.max_new_tokens:
            sampling.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        req.sampling.CopyFrom(sampling)
        stream_req = inference_pb2.GenerateStreamRequest.FromString(req.SerializeToString())
        call = self.client.stub.GenerateStream(stream_req, timeout=self.client.timeout)
        finish = common_pb2.FINISH_REASON_UNSPECIFIED
        try:
            async for chunk in call:
                finish = chunk.finish_reason or finish
                if chunk.HasField("usage"):
                    u = chunk.usage
                    yield GenPiece(chunk.text, finish, u.prompt_tokens, u.completion_tokens)
                elif chunk.text:
                    yield GenPiece(chunk.text)
        except grpc.aio.AioRpcError as err:
            raise InferenceError(self.target, err) from err
        finally:
            call.cancel()

    async def close(self) -> None:
        """Close the channel."""
        await self.client.close()
