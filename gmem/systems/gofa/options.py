"""GOFA's typed options: the `system:` section of `gofa_compressor` and `gofa` runs.

Both run the same compressor (CompressorOptions): K memory slots per text, texts cut to
max_text_len tokens, encoder slabs padded to one of text_len_buckets. Adapters come from the
config's `adapters:` list by name: `encadapt` (the compressor's LoRA: trained by
gofa_compressor, frozen in gofa) and, for gofa, an optional `default` (the decoder LoRA, trained;
GOFA's dec_lora). Choices with a fixed set of values are enums, so the schema rejects others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List

from gmem.config import SystemOptions

ENCODER_ADAPTER = "encadapt"
DECODER_ADAPTER = "default"


@dataclass
class CompressorOptions(SystemOptions):
    """num_memory_tokens: K slots per text (GOFA: 128 on Mistral-7B); max_text_len: encoder
    truncation (GOFA's llm_max_length); text_len_buckets / dec_len_buckets: padded widths of
    encoder texts and decoder rows (one compilation per width used); tag_seed: the seed of the
    embedded Wikipedia graph's node splits (its held-out articles are held out here too)."""

    num_memory_tokens: int = 16
    max_text_len: int = 128
    text_len_buckets: List[int] = field(default_factory=lambda: [32, 64, 128])
    dec_len_buckets: List[int] = field(default_factory=lambda: [64, 128, 192, 256, 384])
    tag_seed: int = 0


@dataclass
class GOFACompressorOptions(CompressorOptions):
    """ICAE pretraining of the compressor on the embedded Wikipedia summaries (train split).
    Each text is an autoencoding sample (share ae_fraction: memory + [AE] -> the text) or a
    continuation sample (the first part compressed, memory + [LM] -> the next up to
    max_text_len tokens). Trained: the `encadapt` LoRA and the memory table; the decoder is
    the frozen base. Evaluation on eval_texts held-out (test split) summaries: teacher-forced
    reconstruction loss and token accuracy; eval_generate of them are also reconstructed by
    greedy decoding and scored by token BLEU-4 and exact match. import_icae: an ICAE checkpoint
    file to start from (memory_token_embed + LoRA, spec A2)."""

    name: str = "gofa_compressor"
    ae_fraction: float = 0.5
    eval_texts: int = 32
    eval_generate: int = 8
    eval_batch: int = 8
    import_icae: str = ""


class Phase(str, enum.Enum):
    """pretrain: GOFA's graph pretraining tasks, decoder LoRA off unless listed; instruct: topic
    and link questions with a prompt node (GOFA-T)."""

    pretrain = "pretrain"
    instruct = "instruct"


class Baseline(str, enum.Enum):
    """infer.py rows without GOFA's encoder: none (GOFA); text: the base LLM with the node's own
    text in the prompt; neighbours: the node and its subgraph's texts serialised in the prompt."""

    none = "none"
    text = "text"
    neighbours = "neighbours"


@dataclass
class GOFAOptions(CompressorOptions):
    """GOFA on the embedded Wikipedia mention graph (gmem.graph.tag).

    Model: gnn_layers GNN layers before the last decoder layers (GOFA: 6), RMSNorm eps as the
    LLM's. Start: compressor_ckpt (a gofa_compressor run: encadapt + memory table, frozen here)
    or import_icae (an original ICAE file); init_ckpt: a gofa run whose GNN (and decoder LoRA,
    if both have one) this run starts from (pretrain -> instruct); import_gofa: an original
    GOFA checkpoint (g_layers.* + decoder LoRA `default`).
    Data: phase picks the task mix unless tasks is given (pretrain: CS, SP, CN, IR_key,
    IR_content; instruct: topic, link); subgraphs of `hops` hops, max_nodes_per_hop per hop;
    `ways` candidate topics; graphs padded to the buckets (nodes, edges, unique node texts and
    unique edge texts each, targets); samples over the largest bucket are skipped in training.
    Questions cut to max_question_len tokens, answers to max_answer_len (EOS appended below).
    Evaluation (infer.py): eval_topic topic and eval_link yes/no questions on held-out (test)
    nodes, answered by generation (max_new_tokens, temperature 0 = greedy, top_k) and scored
    with TAGLAS's normalised exact match / yes-no rule. graph: a user's graph file
    (sample_graph.json or PyG-style JSON) to answer instead (infer.py --graph)."""

    name: str = "gofa"
    phase: Phase = Phase.pretrain
    tasks: List[str] = field(default_factory=list)
    gnn_layers: int = 6
    compressor_ckpt: str = ""
    import_icae: str = ""
    import_gofa: str = ""
    init_ckpt: str = ""
    hops: int = 3
    max_nodes_per_hop: int = 5
    ways: int = 5
    cs_additional: int = 3
    num_sp: int = 2
    num_cn: int = 2
    nodes_buckets: List[int] = field(default_factory=lambda: [8, 16, 32])
    edges_buckets: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    texts_buckets: List[int] = field(default_factory=lambda: [8, 16, 32])
    targets_buckets: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    max_question_len: int = 256
    max_answer_len: int = 128
    eval_topic: int = 50
    eval_link: int = 50
    eval_batch: int = 1
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    graph: str = ""
    baseline: Baseline = Baseline.none
