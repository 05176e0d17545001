"""GOFA (Generative One-For-All): node and edge texts compressed into memory tokens, GNN layers
between the last decoder blocks, a decoder that answers about any graph (spec part A). Two
systems:

  gofa_compressor  compressor.GOFACompressorSystem: ICAE pretraining of the compressor
  gofa             system.GOFASystem: graph pretraining (phase: pretrain) and instruction
                   tuning (phase: instruct) of the GNN layers (+ decoder LoRA), zero-shot
                   evaluation, answering users' graphs

options: their typed options; layout: token layouts; model: the compressor, graph language
encoder and decoder as functions; batch: GraphRecords to padded batches; base: what both
systems share; checkpoint: the original GOFA / ICAE checkpoints; record, prompt_graph, tasks,
scoring, graph_io: graph records, task samplers, TAGLAS scoring, users' graph files.
"""

from gmem.systems.gofa.compressor import GOFACompressorSystem
from gmem.systems.gofa.options import GOFACompressorOptions, GOFAOptions
from gmem.systems.gofa.system import GOFASystem

__all__ = ["GOFACompressorOptions", "GOFACompressorSystem", "GOFAOptions", "GOFASystem"]
