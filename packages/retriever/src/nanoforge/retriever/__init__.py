"""nanoforge.retriever: chunking, embeddings, FAISS + BM25 hybrid search, crash-safe collections, BEIR eval.

Public API (import from the modules; this file stays light so ``import nanoforge.retriever`` loads nothing
heavy)::

    from nanoforge.retriever.library import Library            # named collections under a root dir
    from nanoforge.retriever.collection import Collection      # one collection: upsert, delete, search
    from nanoforge.retriever.documents import Document, load_path
    from nanoforge.retriever.chunking import ChunkerSpec, build_chunker, CHUNKERS
    from nanoforge.retriever.embedders import EmbedderSpec, build_embedder, EMBEDDERS
    from nanoforge.retriever.dense import IndexSpec, INDEX_BUILDERS
    from nanoforge.retriever.search import MetadataFilter, Hit

    from nanoforge.retriever.rag import AskOptions, ask, ask_events   # grounded answers with citations
    from nanoforge.retriever.calibrate import calibrate_collection, save_threshold

The gRPC service lives in ``nanoforge.retriever.service``, the CLI in ``nanoforge.retriever.cli``, Ray
ingest in ``nanoforge.retriever.ray_ingest`` (optional ``ray`` extra).
What this package deliberately does not do: generate text itself (it asks an InferenceService over gRPC).
"""

__all__: list[str] = []
