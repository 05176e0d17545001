"""The ReGrad meta-training task both ReGrad benches time (bench_regrad.py against PyTorch,
xla_op_time.py per HLO op): SmolLM2-135M-Instruct from the embedded GGUF, fp32, LoRA r 8
(alpha 16, scale 2) on gate/up/down of the upper half of the layers, alpha `tie` 0.01, one task
of K passages of random tokens and a QA row whose last 6 tokens are the answer, and the jitted
step (meta-gradient, clip 0.5, AdamW 4e-4 with weight decay 0.01) that trains on it.

Imports jax lazily, so a bench can still set XLA_FLAGS and the CPU affinity first.
"""

from __future__ import annotations

import numpy as np

RANK, ALPHA, LR, INIT_ALPHA = 8, 16.0, 4e-4, 0.01
TARGETS = ("gate_proj", "up_proj", "down_proj")


def upper_half(config) -> tuple[int, ...]:
    """The layers ReGrad adapts by default (lora_layers null)."""
    from gmem.systems.regrad.options import adapted_layers
    return adapted_layers(None, config.num_hidden_layers)


def random_task(config, k: int, passage: int, qa: int, rng: np.random.Generator) -> dict:
    """One task: K passages of `passage` random token ids, a QA row of `qa` ids, the last 6 the
    answer (ids from 100 up: no special tokens)."""
    pid = rng.integers(100, config.vocab_size, (k, passage)).astype(np.int32)
    qid = rng.integers(100, config.vocab_size, (qa,)).astype(np.int32)
    return {"passage_ids": pid, "passage_mask": np.ones_like(pid), "qa_ids": qid,
            "qa_mask": np.ones_like(qid), "qa_labels": (np.arange(qa) >= qa - 6).astype(np.int32)}


def adapter_spec(config):
    from gmem.adapters import AdapterSpec
    return AdapterSpec(targets=TARGETS, rank=RANK, alpha=ALPHA, layers_to_transform=upper_half(config))


def meta_optimizer():
    import optax
    return optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(LR, weight_decay=0.01))


def meta_step(model, opt):
    """step(trainable, opt_state, frozen, task) -> (trainable, opt_state, meta-loss): one
    meta-gradient of model.task_loss and one optimizer update (jit it)."""
    import jax
    import optax

    def step(tr, st, frozen, t):
        loss, g = jax.value_and_grad(lambda x: model.task_loss(x, frozen, t)[0])(tr)
        upd, st = opt.update(g, st, tr)
        return optax.apply_updates(tr, upd), st, loss

    return step
