"""Weights in and out: per-family key maps kept as data, readers (safetensors, torch .bin,
GGUF) and the HF-folder writer."""
