"""ReGrad's objective against PyTorch on a tiny random LLaMA (transformers + PEFT, fp32, eager
attention, 2 layers), LoRA (r=4, scale 2) on gate/up/down of layer 1 (the upper half), lora_B
non-zero.

1. The inner gradient of one passage, grad_theta L_LM(p) with HF's labels=input_ids loss,
   against torch.autograd.grad on the PEFT model: max error / max |g| <= 1e-5.
2. The meta-loss and its gradient with respect to theta and alpha (tie: one scalar per tensor)
   against a reference written here: the inner gradient summed over 2 passages with
   create_graph=True, theta' = theta - alpha * g, the outer loss on the answer tokens through
   torch.func.functional_call on theta'; loss and gradients within 1e-4 (scaled to the
   reference's largest value), with the K passages as one batch and one at a time
   (passage_loop), and with the meta-gradient by reverse over reverse and by the written-out
   chain rule with a Hessian-vector product (meta_grad: reverse | linearize).
Measured (this machine): inner gradient 9e-7, meta-loss 1e-7, meta-gradients 2.3e-6 (theta)
and 1.7e-6 (alpha).
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import regrad_helpers as H  # noqa: E402

from gmem.tree import flatten, unflatten  # noqa: E402


@pytest.fixture(scope="module")
def twins():
    hf, cfg = H.torch_llama()
    params = H.gmem_params(hf)
    pm = H.peft_wrap(hf)
    lora, names = H.gmem_lora(pm)
    return pm, cfg, params, lora, names


def _torch_lm_loss(model, params, ids, mask, labels):
    from torch.func import functional_call
    out = functional_call(model, params, (), {"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out.loss


def test_inner_gradient_of_one_passage_matches_peft(twins):
    pm, cfg, params, lora, names = twins
    t = H.task(k=1, lens=(12,))
    ids = torch.as_tensor(t["passage_ids"], dtype=torch.long)
    theta = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    loss = pm(input_ids=ids, labels=ids).loss
    want = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))
    model = H.gmem_model(cfg)
    got_loss, got = jax.jit(model.inner_grads)(lora, params, t["passage_ids"], t["passage_mask"])
    assert abs(float(got_loss) - float(loss)) <= 1e-5 * abs(float(loss))
    errs = {}
    for path, g in flatten(jax.device_get(got)).items():
        w = want[names[path]].numpy().T
        errs[path] = H.scaled_err(g, w)
    assert max(errs.values()) <= 1e-5, errs
    assert all(np.abs(np.asarray(v)).max() > 0 for v in flatten(jax.device_get(got)).values())


def _torch_meta(pm, t, alphas: dict):
    """The reference: (meta-loss, {name: d/dtheta}, {name: d/dalpha})."""
    theta = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    alpha = {n: torch.tensor(a, requires_grad=True) for n, a in alphas.items()}
    pid = torch.as_tensor(t["passage_ids"], dtype=torch.long)
    pmask = torch.as_tensor(t["passage_mask"], dtype=torch.long)
    inner = 0.0
    for i in range(pid.shape[0]):  # one sequence per passage, labels -100 on padding
        lab = torch.where(pmask[i:i + 1] > 0, pid[i:i + 1], torch.full_like(pid[i:i + 1], -100))
        inner = inner + _torch_lm_loss(pm, theta, pid[i:i + 1], pmask[i:i + 1], lab)
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    adapted = {n: theta[n] - alpha[n] * g for n, g in zip(theta, grads)}
    qid = torch.as_tensor(t["qa_ids"], dtype=torch.long)[None]
    qmask = torch.as_tensor(t["qa_mask"], dtype=torch.long)[None]
    lab = torch.where(torch.as_tensor(t["qa_labels"])[None] > 0, qid, torch.full_like(qid, -100))
    outer = _torch_lm_loss(pm, adapted, qid, qmask, lab)
    g_theta = torch.autograd.grad(outer, list(theta.values()) + list(alpha.values()))
    n = len(theta)
    return (float(outer), dict(zip(theta, g_theta[:n])), dict(zip(alpha, g_theta[n:])))


# the K passages as one batch / one at a time; the meta-gradient by jax.grad through the inner
# jax.grad, or written out with a Hessian-vector product (MetaGrad.linearize)
@pytest.mark.parametrize("passage_loop,meta_grad", [(False, "reverse"), (True, "reverse"),
                                                    (False, "linearize"), (True, "linearize")])
def test_meta_loss_and_its_gradient_match_a_torch_second_order_reference(twins, passage_loop, meta_grad):
    pm, cfg, params, lora, names = twins
    t = H.task(k=2, lens=(12, 8))
    paths = sorted(names)
    alphas = {names[p]: 0.05 * (1 + i) for i, p in enumerate(paths)}
    want_loss, want_theta, want_alpha = _torch_meta(pm, t, alphas)
    model = H.gmem_model(cfg, passage_loop=passage_loop, meta_grad=meta_grad)
    trainable = {"lora": lora, "alpha": unflatten({p: np.float32(alphas[names[p]]) for p in paths})}
    fn = jax.jit(jax.value_and_grad(lambda tr: model.task_loss(tr, params, t)[0]))
    loss, grads = fn(trainable)
    assert abs(float(loss) - want_loss) <= 1e-4 * abs(want_loss)
    g_lora, g_alpha = flatten(jax.device_get(grads["lora"])), flatten(jax.device_get(grads["alpha"]))
    errs = {p: H.scaled_err(g_lora[p], want_theta[names[p]].numpy().T) for p in paths}
    assert max(errs.values()) <= 1e-4, errs
    a_got = np.array([g_alpha[p] for p in paths])
    a_want = np.array([float(want_alpha[names[p]]) for p in paths])
    assert H.scaled_err(a_got, a_want) <= 1e-4, (a_got, a_want)
    assert np.abs(a_want).min() > 0  # every alpha moves the loss
