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

The gRPC service lives in ``nanoforge.retriever.service``, the CLI in ``nanoforge.retriever.cli``.
What this package deliberately does not do yet: retrieval-augmented answers (Ask / AskStream) and Ray.
"""

__all__: list[str] = []
