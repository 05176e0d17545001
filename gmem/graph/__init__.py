"""Graphs: knowledge graphs and their neighbour index (kg), padded GraphsTuple batches
(batching), relation semantics (relations), relation-centric message passing (layers: the
SGM), and GOFA's text graphs and GNN layer (tag, text_graph, text_buckets, sampling, gofa_gnn)."""
