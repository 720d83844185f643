"""The token-level inference engine: continuous batching, chunked prefill, prefix cache, per-row sampling.

    from nanoforge.inference_server.engine import Engine, EngineConfig, EngineRequest, AsyncEngine

What it does not do: text (``nanoforge.inference_server.text``) or networking (the servers).
"""

from nanoforge.inference_server.engine.async_engine import AsyncEngine
from nanoforge.inference_server.engine.engine import Engine, EngineConfig
from nanoforge.inference_server.engine.request import EngineEvent, EngineRequest, RequestStats

__all__ = ["AsyncEngine", "Engine", "EngineConfig", "EngineEvent", "EngineRequest", "RequestStats"]
