"""The `system:` section of a ReGrad run (`system.name: regrad`), typed.

The LoRA itself is the shared `adapters:` section (one LoRA set; its targets are the MLP's
gate_proj/up_proj/down_proj in configs/regrad.yaml); `system.lora_layers` picks the layers, the
upper half of the decoder when left null, as every shipped config of the original does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from gmem.config import SystemOptions


def adapted_layers(lora_layers: Optional[List[int]], num_layers: int) -> tuple[int, ...]:
    """The decoder layers ReGrad puts LoRA on: `system.lora_layers`, or the upper half when null."""
    if lora_layers is not None:
        return tuple(lora_layers)
    return tuple(range(num_layers // 2, num_layers))


class AlphaMode(str, enum.Enum):
    """How the inner step size alpha is parameterised (the original's LearnerConfig.alpha_mode).

    tie:  one learnable scalar per LoRA tensor (lora_A / lora_B of every module).
    full: one learnable value per LoRA entry (same shape as the tensor).
    same: one learnable scalar for all tensors.
    fix:  the constant init_alpha, not learned.
    """

    tie = "tie"
    full = "full"
    same = "same"
    fix = "fix"


class MetaGrad(str, enum.Enum):
    """How the second-order meta-gradient is computed (the same value either way).

    reverse:   jax.grad of the outer loss through the inner jax.grad (reverse over reverse),
               as the original's create_graph=True backward.
    linearize: the chain rule written out: dL/dtheta = g_qa - H (alpha * g_qa) and
               dL/dalpha = -g * g_qa, with g_qa the outer gradient at theta' and the
               Hessian-vector product H v from jax.linearize of the inner jax.grad (forward
               over reverse). No reverse pass through the inner backward.
    """

    reverse = "reverse"
    linearize = "linearize"


MODES = ("direct", "rag", "regrad", "regrad_icl", "shift")


@dataclass
class RegradOptions(SystemOptions):
    """Data: `corpus` is 'wiki' (the embedded Wikipedia summaries in DPR passages) or a DPR
    `psgs_w100.tsv`-layout file; `index` a saved retriever directory (gmem.retrieval; '' =
    DATA_DIR/index, a BM25 index built there on first use). `train_file` / `dev_files` are
    augmented QA files in the original's format (gmem.systems.regrad.qa); left empty, the
    embedded sets (wiki_qa train/dev, FanOutQA dev) are retrieved for and written to DATA_DIR
    (`data_dir`, '' = RUN_DIR/data). train_limit / dev_limit keep the first N records
    (dev_limit 300 is the original's protocol).

    Model: lora_layers (null = the upper half); alpha_mode / init_alpha (see AlphaMode);
    blind_context: the QA prompt has no passages (ReGrad) or all top_k of them (ReGrad + ICL).
    Static shapes: a passage is cut to max_passage_len tokens (its LM loss is the inner loss);
    a QA row (prompt + answer + newline) is padded to max_prompt_len, the answer cut to
    max_answer_len tokens, the prompt's context to max_context_len tokens. passage_loop: the
    inner loss runs a task's top_k passages one at a time (the same loss and gradients; faster
    on CPU, bench/bench_regrad.py) instead of as one batch. meta_grad: how the meta-gradient
    is computed (see MetaGrad; the same gradient, different cost).

    Gradient bank (`--pass bank`): bank_dtype float32 | bfloat16, bank_chunk passages per
    shard file (one commit), bank_batch passages per device batch, bank_dir ('' =
    RUN_DIR/passes/bank).

    Inference (infer.py): modes among direct, rag, regrad, regrad_icl, shift; gamma scales the
    retrieved update; greedy decoding of up to max_new_tokens, stopped at the first newline;
    infer_batch questions per generation call (each row with its own adapted LoRA).
    eval_questions > 0 makes evaluate() (train.py every eval.every steps) also answer the first
    N questions of each dev set by ReGrad with gradients computed on the fly (as the
    original's training-time eval), besides the dev meta-loss.
    """

    name: str = "regrad"
    corpus: str = "wiki"
    index: str = ""
    data_dir: str = ""
    train_file: str = ""
    dev_files: Dict[str, str] = field(default_factory=dict)
    train_limit: Optional[int] = None
    dev_limit: Optional[int] = 300
    qa_seed: int = 0
    top_k: int = 3

    lora_layers: Optional[List[int]] = None
    alpha_mode: AlphaMode = AlphaMode.tie
    init_alpha: float = 0.01
    blind_context: bool = True
    max_passage_len: int = 160
    max_prompt_len: int = 128
    max_answer_len: int = 16
    max_context_len: int = 480
    passage_loop: bool = False
    meta_grad: MetaGrad = MetaGrad.reverse

    bank_dtype: str = "float32"
    bank_chunk: int = 64
    bank_batch: int = 8
    bank_dir: str = ""

    modes: List[str] = field(default_factory=lambda: list(MODES))
    gamma: float = 1.0
    max_new_tokens: int = 20
    infer_batch: int = 8
    eval_questions: int = 0
