"""Text loading, tokenization, fixed-length chunking and deterministic batching."""
