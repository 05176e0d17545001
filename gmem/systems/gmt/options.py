"""GMT's typed options: the `system:` section of `gmt` (stage 2) and `gmt_stage1` runs.

Both stages read a knowledge graph and run the same semantic graph module (GraphOptions); stage 1
pretrains it on link prediction, stage 2 tunes the memory path of a frozen LLM on instructions.
Choices with a fixed set of values are enums, so the config schema rejects anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List

from gmem.config import SystemOptions


class Mode(str, enum.Enum):
    """gmt: graph memory; lora: the baseline (same data and steps, LoRA on the memory layers'
    self-attention, no graph); base: the zero-shot base model, nothing trained."""

    gmt = "gmt"
    lora = "lora"
    base = "base"


class Gate(str, enum.Enum):
    """The memory gate g: as is (the reference) or tanh(g)."""

    scalar = "scalar"
    tanh = "tanh"


class TripleFormat(str, enum.Enum):
    """Column order of an OpenKE triple file (the original's --triple_format)."""

    htr = "htr"
    hrt = "hrt"
    thr = "thr"
    trh = "trh"
    rht = "rht"
    rth = "rth"


class RelText(str, enum.Enum):
    """The text embedded for a relation without a definition: readable (underscores as spaces:
    'process_of' -> 'process of'; the default, which every gmem run so far used, so their saved
    configs rebuild the same table) or original (the name as the original's
    build_rel_semantics.py reads it: the first whitespace-separated token, unchanged)."""

    original = "original"
    readable = "readable"


class Init(str, enum.Enum):
    """Fresh graph-side weights (SGM, memory tokenizer, projection, rel_proj): gmem (normal(0.02)
    kernels, zero biases) or torch (the original's PyTorch defaults: nn.Linear kaiming-uniform(a=sqrt 5)
    weights and U(+-1/sqrt fan_in) biases, nn.MultiheadAttention xavier-uniform in-projection and
    zero biases)."""

    gmem = "gmem"
    torch = "torch"


class Protocol(str, enum.Enum):
    """infer.py's answer counting. gmem: greedy up to max_new_tokens, stopping at EOS; 'true' in
    the answer; link-prediction lists that parse to nothing count as misses. original (its
    inference_gmt.py): 16 new tokens, no EOS stop; 'true' anywhere; link-prediction samples whose
    parsed list (or gold list) is empty are skipped."""

    gmem = "gmem"
    original = "original"


class Ablation(str, enum.Enum):
    """infer.py diagnostics: does the model read its memory? zero: no memory content; shuffle:
    each row gets the next row's memory (another triple's subgraph)."""

    none = "none"
    zero = "zero"
    shuffle = "shuffle"


@dataclass
class GraphOptions(SystemOptions):
    """kg: an embedded KG (umls, nations, kinships), a label-TSV folder or an OpenKE folder, whose
    graph is triple_file read in triple_format column order; add_inverse: add the inverse of
    every relation (id r + R). rel_semantics: bert (all-MiniLM-L6-v2 embeddings of the relation
    texts: rel_definitions, a JSON {relation name: description} or the original's TSV/CSV form,
    else the name as rel_text says) | random | kge:<file> | a table file [R, d] (.pt/.pth read
    with weights_only, .npy, .safetensors; a tensor or {rel_embeddings: tensor}). The SGM's
    width, depth, heads, neighbours per edge (top_k), dropout and init."""

    kg: str = "umls"
    triple_file: str = "train2id.txt"
    triple_format: TripleFormat = TripleFormat.htr
    add_inverse: bool = False
    rel_semantics: str = "bert"
    rel_definitions: str = ""
    rel_text: RelText = RelText.readable
    graph_dim: int = 256
    sgm_layers: int = 2
    sgm_heads: int = 4
    top_k: int = 8
    graph_dropout: float = 0.1
    init: Init = Init.gmem


@dataclass
class GMTStage1Options(GraphOptions):
    """Stage 1 (SGM pretraining): DistMult scores, `num_negatives` head/tail corruptions per
    positive (filtered: never a known triple); trainable_rel_semantics: train the relation table."""

    name: str = "gmt_stage1"
    num_negatives: int = 64
    filtered_negatives: bool = False
    trainable_rel_semantics: bool = False


@dataclass
class GMTOptions(GraphOptions):
    """Stage 2 (instruction tuning). Data: {train,valid,test}_json (GMT's record format; '' = the
    KG's own classification sets, negatives seeded by neg_seed), max_train (0 = all).
    Memory: num_memory_tokens tokens of memory_heads heads read in memory_layers (empty = the
    top memory_top layers) through the gate; memory_norm RMS-normalises each memory token.
    sgm_ckpt: a stage-1 run to take the SGM from; train_graph_module: train it too.
    Loss: response only unless train_on_inputs; add_eos appends EOS to responses;
    pad_to_multiple_of > 0 cuts each batch to its longest row (rounded up), 0 pads to seq_len.
    Evaluation (infer.py): eval_split, max_eval records (0 = all; else a class-balanced subset
    drawn with eval_seed) in batches of eval_batch, max_new_tokens generated, answers counted
    by eval_protocol (gmem | original, see Protocol); link prediction by scoring lp_queries queries (lp_batch
    candidates per call) and by generated lists (lp_generate_queries, lp_candidates each).
    import_ckpt: an original GMT output folder to start from (its gmt_config.json settings are
    applied, gmem.systems.gmt.original); sgm_ckpt also takes an original stage-1 folder."""

    name: str = "gmt"
    mode: Mode = Mode.gmt
    mask_query: bool = True
    train_json: str = ""
    valid_json: str = ""
    test_json: str = ""
    max_train: int = 0
    neg_seed: int = 0
    num_memory_tokens: int = 16
    memory_heads: int = 4
    memory_layers: List[int] = field(default_factory=list)
    memory_top: int = 8
    gate: Gate = Gate.scalar
    memory_norm: bool = False
    train_on_inputs: bool = False
    add_eos: bool = False
    sgm_ckpt: str = ""
    train_graph_module: bool = False
    pad_to_multiple_of: int = 0
    eval_split: str = "test"
    max_eval: int = 0
    eval_seed: int = 0
    eval_batch: int = 16
    max_new_tokens: int = 0          # 0: the protocol's own (gmem: 4 for TC, 48 for LP lists; original: 16)
    eval_protocol: Protocol = Protocol.gmem
    memory_ablation: Ablation = Ablation.none
    lp_queries: int = 0
    lp_batch: int = 64
    lp_generate_queries: int = 0
    lp_candidates: int = 20
    import_ckpt: str = ""
