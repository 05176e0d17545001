"""GOFA (Generative One-For-All): node and edge texts compressed into memory tokens, GNN layers
between the last decoder blocks, a decoder that answers about any graph (spec part A)."""
