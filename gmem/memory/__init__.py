"""Memories a model reads from: associative (vector store as state)."""

from gmem.memory.associative import AssociativeMemory, MemoryState

__all__ = ["AssociativeMemory", "MemoryState"]
