"""nanoforge's wire contracts: generated protobuf and gRPC stubs, plus tiny client helpers.

Generated from ``protos/nanoforge/api/<domain>/v1/*.proto`` by ``tools/gen_protos.py`` (``make protos``);
the directory path equals the proto package, so ``nanoforge.api.inference.v1.inference_pb2`` is package
``nanoforge.api.inference.v1``. Domains: ``common``, ``inference``, ``retriever``, ``recommender``,
``trainer``. Client helpers live in :mod:`nanoforge.api.client`.

What this package deliberately does not do: implement any service, or import grpc on ``import
nanoforge.api`` (message modules ``*_pb2`` need only protobuf, so libraries may use them without grpc).
"""

__all__: list[str] = []
