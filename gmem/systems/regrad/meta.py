"""ReGrad's bi-level objective (spec §3.5) as pure functions of (trainable, frozen, rows).

trainable = {"lora": LoRA tree theta (gmem.adapters layout: {"model": {"layers_i": {"mlp":
{"gate_proj": {"lora_A": [D_in, r], "lora_B": [r, D_out]}, ...}}}}), "alpha": step sizes}, where
"alpha" mirrors the LoRA tree with scalar leaves (tie), with full-shape leaves (full), is one
scalar [] (same), or is absent (fix: the constant init_alpha).

  inner:  g = sum_i grad_theta L_LM(p_i; theta)      (one jax.grad over the K passages)
          theta' = theta - gamma * alpha (.) g       (per tensor)
  outer:  L_QA(q, a; theta')                         (mean CE over the answer tokens + "\\n")

The meta-gradient of L_QA with respect to theta and alpha is jax.grad of `meta_loss`: JAX
differentiates through the inner jax.grad, so this is full second-order MAML (the original's
create_graph=True), and no first-order shortcut is taken. Two ways to get it (MetaGrad):
`reverse` lets jax.grad run backward through the inner backward; `linearize` writes the chain
rule out, since theta' = theta - alpha (.) g(theta) with g the inner gradient:

  dL/dtheta = g_qa - H (alpha (.) g_qa)      H = the inner loss's Hessian (symmetric)
  dL/dalpha = -g (.) g_qa                    (summed per tensor for tie, over all for same)

with g_qa = grad L_QA at theta' and H v from jax.linearize of the inner jax.grad (forward mode
over its backward). Both are exact; they differ in rounding only. `task_loss` then carries the
written-out gradient in a custom_vjp, so a caller's jax.grad gets it unchanged.

L_LM(p) is the mean next-token CE over the passage's real tokens (HF's labels=input_ids loss);
an empty passage (retrieval padding) contributes nothing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmem.adapters import adapter_collection
from gmem.systems.regrad.options import AlphaMode, MetaGrad

Tree = Any


class Model:
    """A decoder module, its one LoRA spec and the alpha mode: what every loss here needs."""

    def __init__(self, module, spec, alpha_mode: AlphaMode | str = AlphaMode.tie,
                 init_alpha: float = 0.01, passage_loop: bool = False,
                 meta_grad: MetaGrad | str = MetaGrad.reverse):
        self.module, self.spec = module, spec
        self.meta_grad = MetaGrad(meta_grad)
        self.alpha_mode = AlphaMode(alpha_mode)
        self.init_alpha = float(init_alpha)
        # True: the inner loss runs the K passages one at a time instead of as one [K, L]
        # batch. The same sums; 1.2-1.3x faster on CPU (bench/bench_regrad.py times both),
        # likely because one passage's [L, V] logits make a smaller working set (not profiled).
        self.passage_loop = bool(passage_loop)

    def logits(self, lora: Tree | None, frozen: Tree, ids_BL, mask_BL) -> jax.Array:
        """logits [B, L, V] fp32; lora None = the base model."""
        variables = {"params": frozen}
        if lora is not None:
            variables["adapter"] = adapter_collection([self.spec], lora)
        return self.module.apply(variables, ids_BL, mask_BL)[0]

    # ---- alpha -------------------------------------------------------------------------
    def init_alpha_tree(self, lora: Tree):
        """The learnable alpha of init (None for fix)."""
        a = self.init_alpha
        m = self.alpha_mode
        if m == AlphaMode.tie:
            return jax.tree_util.tree_map(lambda _: jnp.asarray(a, jnp.float32), lora)
        if m == AlphaMode.full:
            return jax.tree_util.tree_map(lambda x: jnp.full(x.shape, a, jnp.float32), lora)
        if m == AlphaMode.same:
            return jnp.asarray(a, jnp.float32)
        return None

    def step_sizes(self, trainable: Tree) -> Tree:
        """alpha broadcast to the LoRA tree (a scalar or a full array per tensor)."""
        lora = trainable["lora"]
        m = self.alpha_mode
        if m in (AlphaMode.tie, AlphaMode.full):
            return trainable["alpha"]
        value = trainable["alpha"] if m == AlphaMode.same else jnp.asarray(self.init_alpha, jnp.float32)
        return jax.tree_util.tree_map(lambda _: value, lora)

    # ---- losses ------------------------------------------------------------------------
    def passage_losses(self, lora: Tree, frozen: Tree, ids_KL, mask_KL) -> jax.Array:
        """Per-passage mean next-token CE [K] over real tokens (0 for an empty row)."""
        if self.passage_loop and ids_KL.shape[0] > 1:
            # A Python loop, not lax.map: each passage gets its own ops, so no residual of the
            # backward is stacked into (and sliced out of) a [K, ...] buffer (7% of the step in
            # bench/xla_op_time.py), and XLA:CPU may run the passages' ops side by side. One
            # scratch A/B on 2 cores: 3.96 s a step against lax.map's 4.31; on one core the two
            # were within noise. Compile time grows with K (3 by default).
            return jnp.stack([self._batch_losses(lora, frozen, ids_KL[i, None], mask_KL[i, None])[0]
                              for i in range(ids_KL.shape[0])])
        return self._batch_losses(lora, frozen, ids_KL, mask_KL)

    def _batch_losses(self, lora: Tree, frozen: Tree, ids_KL, mask_KL) -> jax.Array:
        logits = self.logits(lora, frozen, ids_KL[:, :-1], mask_KL[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids_KL[:, 1:])
        m = mask_KL[:, 1:].astype(ce.dtype)
        return (ce * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)

    def inner_grads(self, lora: Tree, frozen: Tree, ids_KL, mask_KL) -> tuple[jax.Array, Tree]:
        """(sum of the K passage losses, its gradient = sum_i grad L_LM(p_i)) w.r.t. lora."""
        fn = lambda t: self.passage_losses(t, frozen, ids_KL, mask_KL).sum()
        return jax.value_and_grad(fn)(lora)

    def per_passage_grads(self, lora: Tree, frozen: Tree, ids_NL, mask_NL) -> tuple[jax.Array, Tree]:
        """(losses [N], gradients with leading dim N): one gradient per passage (the bank)."""
        one = lambda ids, mask: self.inner_grads(lora, frozen, ids[None], mask[None])
        return jax.vmap(one)(ids_NL, mask_NL)

    def adapt(self, trainable: Tree, grads: Tree, gamma=1.0) -> Tree:
        """theta' = theta - gamma * alpha (.) g."""
        alpha = self.step_sizes(trainable)
        return jax.tree_util.tree_map(lambda t, a, g: t - gamma * a * g.astype(t.dtype),
                                      trainable["lora"], alpha, grads)

    def qa_loss(self, lora: Tree | None, frozen: Tree, ids_L, mask_L, labels_L) -> tuple[jax.Array, jax.Array]:
        """(mean CE over the answer tokens, their count) of one QA row [Lq]."""
        logits = self.logits(lora, frozen, ids_L[None, :-1], mask_L[None, :-1])[0]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids_L[1:])
        m = labels_L[1:].astype(ce.dtype)
        return (ce * m).sum() / jnp.maximum(m.sum(), 1.0), m.sum()

    def task_loss(self, trainable: Tree, frozen: Tree, task: dict) -> tuple[jax.Array, dict]:
        """Outer loss of one task {"passage_ids" [K, Lp], "passage_mask", "qa_ids" [Lq],
        "qa_mask", "qa_labels"} after the inner step; its gradient w.r.t. trainable as
        self.meta_grad says."""
        if self.meta_grad == MetaGrad.linearize:
            return self._linearized_task_loss(trainable, frozen, task)
        return self._task_loss(trainable, frozen, task)

    def _task_loss(self, trainable: Tree, frozen: Tree, task: dict) -> tuple[jax.Array, dict]:
        inner, g = self.inner_grads(trainable["lora"], frozen, task["passage_ids"], task["passage_mask"])
        adapted = self.adapt(trainable, g)
        loss, n = self.qa_loss(adapted, frozen, task["qa_ids"], task["qa_mask"], task["qa_labels"])
        return loss, {"inner_loss": inner / task["passage_ids"].shape[0], "answer_tokens": n}

    def task_value_and_meta_grad(self, trainable: Tree, frozen: Tree, task: dict):
        """((outer loss, aux), d outer loss / d trainable) of one task, the chain rule written
        out (module docstring): one inner forward and backward kept linearized, one outer
        forward and backward at theta', one Hessian-vector product through the kept
        linearization."""
        grads = lambda t: self.inner_grads(t, frozen, task["passage_ids"], task["passage_mask"])
        (inner, g), hvp = jax.linearize(grads, trainable["lora"])
        adapted, adapt_vjp = jax.vjp(self.adapt, trainable, g)
        qa = lambda t: self.qa_loss(t, frozen, task["qa_ids"], task["qa_mask"], task["qa_labels"])
        (loss, n), g_qa = jax.value_and_grad(qa, has_aux=True)(adapted)
        # Through adapt with g held: g_qa for theta and -g (.) g_qa reduced as each alpha mode
        # shares alpha; and d theta'/d g = -alpha (.) g_qa, which H carries back to theta.
        d, d_g = adapt_vjp(g_qa)
        _, h_d_g = hvp(d_g)
        d = dict(d, lora=jax.tree_util.tree_map(jnp.add, d["lora"], h_d_g))
        aux = {"inner_loss": inner / task["passage_ids"].shape[0], "answer_tokens": n}
        return (loss, aux), d

    def _linearized_task_loss(self, trainable: Tree, frozen: Tree, task: dict):
        """task_loss whose VJP w.r.t. trainable is task_value_and_meta_grad's gradient (frozen
        and task get none: nothing here trains them)."""

        @jax.custom_vjp
        def f(tr, fr, t):   # called undifferentiated: the loss alone
            return self._task_loss(tr, fr, t)

        def bwd(d, cts):
            ct = cts[0]   # the aux outputs carry no gradient
            return jax.tree_util.tree_map(lambda x: (ct * x).astype(x.dtype), d), None, None

        f.defvjp(self.task_value_and_meta_grad, bwd)
        return f(trainable, frozen, task)

    def meta_loss(self, trainable: Tree, frozen: Tree, batch: dict) -> tuple[jax.Array, dict]:
        """Mean task loss over a batch of tasks (leading dim B); aux: mean inner loss per
        passage, answer token count. vmap over tasks: each has its own inner step."""
        fn = lambda t: self.task_loss(trainable, frozen, t)
        axes, rules = task_axes()
        if axes:
            # The task axis is sharded like a batch (spmd_axis_name), so each device runs its own
            # tasks, and inside a task no activation axis uses those mesh axes again. A plain vmap
            # replicates the task axis at every sharding constraint the model sets, so every
            # device holds every task: bench/aot_regrad.py, Llama-3.2-1B on fsdp=8, measured
            # 162.9 GiB per device that way and 48.7 GiB this way.
            with nn.logical_axis_rules(rules):
                losses, aux = jax.vmap(fn, spmd_axis_name=axes)(batch)
        else:
            losses, aux = jax.vmap(fn)(batch)
        return losses.mean(), {"inner_loss": aux["inner_loss"].mean(),
                               "answer_tokens": aux["answer_tokens"].sum()}


def task_axes() -> tuple[tuple | None, tuple]:
    """(mesh axes the logical "batch" axis maps to under the current rules and mesh, or None
    outside one; the rules with those mesh axes removed from every entry, for the activations
    of one task)."""
    rules = tuple(nn.get_logical_axis_rules())
    axes = dict(rules).get("batch")
    names = set(jax.sharding.get_abstract_mesh().axis_names)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if not axes or not names or not set(axes) <= names:
        return None, rules
    def without(v):   # a mesh axis holds tasks, so no activation axis may use it too
        v = (v,) if isinstance(v, str) else tuple(v or ())
        kept = tuple(a for a in v if a not in axes)
        return kept[0] if len(kept) == 1 else (kept or None)
    return axes, tuple((k, without(v)) for k, v in rules)
