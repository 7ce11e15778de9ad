"""Retrieval-augmented diagnosis (SPEC §7): LanceDB tables of the retriever specialist's train-split embeddings."""
