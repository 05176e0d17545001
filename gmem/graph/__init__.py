"""Graphs: knowledge graphs and subgraphs (kg), padded GraphsTuple batches (batching),
relation semantics (relations) and GMT's graph layers (layers)."""
