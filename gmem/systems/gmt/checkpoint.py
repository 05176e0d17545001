"""Import GMT's own PyTorch checkpoint files (specs/gofa-gmt.md B10): graph_encoder.pth,
memory_attn.pth and gmt_config.json, as written by the reference's `save_gmt`.

graph_encoder.pth (GraphMemoryEncoder state dict):
  sgm.rel_semantic.weight [R_edge, d_rel]; sgm.rel_proj.{weight [D, d_rel], bias} (d_rel != D);
  sgm.layers.{i}.<mha>.in_proj_weight [3D, D], in_proj_bias [3D], <mha>.out_proj.{weight, bias};
  sgm.layers.{i}.norm1/norm2.{weight, bias}; linear1.{weight [4D, D], bias}; linear2.{weight
  [D, 4D], bias}; tokenizer.memory_queries [M, D]; tokenizer.<mha>.in_proj_* / out_proj.*;
  proj.{weight [D_llm, D], bias [D_llm]}.
memory_attn.pth (entries of the LLaMA with memory_attn / memory_gate / memory_layernorm):
  ...layers.{i}.memory_attn.{q,k,v,o}_proj.weight [out, in] (the frozen copy; `.base.weight` /
  `.base_layer.weight` also accepted), ...lora_A.weight [r, in], ...lora_B.weight [out, r],
  ...layers.{i}.memory_gate [] or [1], ...layers.{i}.memory_layernorm.weight [D_llm].

torch kernels are [out, in]; gmem's are [in, out]. nn.MultiheadAttention packs q, k, v in
in_proj (rows 0:D, D:2D, 2D:3D). In the SGM's context layers only v and out are used (a single
key gets softmax weight 1), so the q/k rows are read and dropped. Files are read with
torch.load(weights_only=True).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from gmem.errors import GmemError
from gmem.hf.readers import torch_load
from gmem.systems.gmt import graph as G
from gmem.systems.gmt.original import parse_layers, read_json

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(memory_attn|memory_gate|memory_layernorm)(?:\.(.*))?$")
_NORM = {"1": "norm1", "2": "norm2"}


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)


def read_state_dict(path: str, key: str | None = None) -> dict[str, np.ndarray]:
    """A torch state dict of tensors (any float dtype: fp16 and bf16 as the original saves
    them, read into float32). key: the entry holding it in a wrapping dict ({"sgm": ...})."""
    if not os.path.isfile(path):
        raise GmemError(f"{path}: checkpoint file not found")
    try:
        sd = torch_load(path, mmap=False)  # one line, with the reason
    except GmemError as e:
        raise GmemError(f"{path}: not a readable torch state dict: {str(e).removeprefix(f'{path}: ')}") from None
    for k in (key, "state_dict"):
        if k and isinstance(sd, dict) and isinstance(sd.get(k), dict):
            sd = sd[k]
            break
    return {k: _np(v) for k, v in sd.items()}


def _mha(sd: dict, prefix: str, where: str) -> dict:
    """{q,k,v,out}: (kernel [in, out], bias) of the MultiheadAttention under prefix."""
    keys = [k for k in sd if k.startswith(prefix) and k.endswith("in_proj_weight")]
    if len(keys) != 1:
        raise GmemError(f"{where}: expected one MultiheadAttention under {prefix!r}, found {keys}")
    m = keys[0][: -len("in_proj_weight")]
    w, b = sd[m + "in_proj_weight"], sd[m + "in_proj_bias"]
    d = w.shape[1]
    out = {n: {"kernel": w[i * d:(i + 1) * d].T, "bias": b[i * d:(i + 1) * d]}
           for i, n in enumerate(("q_proj", "k_proj", "v_proj"))}
    out["out_proj"] = {"kernel": sd[m + "out_proj.weight"].T, "bias": sd[m + "out_proj.bias"]}
    return out, m


def _taker(sd, where, used):
    def take(k):
        if k not in sd:
            raise GmemError(f"{where}: missing key {k!r}")
        used.add(k)
        return sd[k]
    return take


def sgm_params(sd: dict, prefix: str, where: str, used: set) -> dict:
    """The SemanticGraphModule's entries of a state dict (keys under `prefix`: "sgm." in
    graph_encoder.pth, "" in the stage-1 sgm_state.pth) -> gmem SGM params (numpy)."""
    take = _taker(sd, where, used)
    sgm = {"rel_semantic": take(prefix + "rel_semantic.weight")}
    if prefix + "rel_proj.weight" in sd:
        sgm["rel_proj"] = {"kernel": take(prefix + "rel_proj.weight").T, "bias": take(prefix + "rel_proj.bias")}
    pat = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
    n_layers = len({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})
    for i in range(n_layers):
        p = f"{prefix}layers.{i}."
        mha, m = _mha(sd, p, where)
        used.update(k for k in sd if k.startswith(m))
        layer = {"v_proj": mha["v_proj"], "out_proj": mha["out_proj"]}
        for k in [k for k in sd if k.startswith(p) and not k.startswith(m)]:
            rest = k[len(p):]
            mod, leaf = rest.rsplit(".", 1)
            norm = re.fullmatch(r"(?:norm|ln|layer_?norm)_?([12])", mod, re.I)
            lin = re.fullmatch(r"(?:linear|fc|ffn\.)_?([12])", mod, re.I)
            if norm:
                layer.setdefault(_NORM[norm.group(1)], {})["scale" if leaf == "weight" else "bias"] = take(k)
            elif lin:
                name = f"linear{lin.group(1)}"
                layer.setdefault(name, {})["kernel" if leaf == "weight" else "bias"] = (
                    take(k).T if leaf == "weight" else take(k))
        for need in ("norm1", "norm2", "linear1", "linear2"):
            if need not in layer:
                raise GmemError(f"{where}: layer {i} has no {need} (keys under {p!r}: "
                                f"{sorted(k[len(p):] for k in sd if k.startswith(p))})")
        sgm[f"layers_{i}"] = layer
    return sgm


def _no_leftovers(sd, used, where):
    left = sorted(set(sd) - used)
    if left:
        raise GmemError(f"{where}: unexpected keys {left[:6]}{' ...' if len(left) > 6 else ''}")


def graph_encoder_params(sd: dict, where: str = "graph_encoder.pth") -> dict:
    """GMT GraphMemoryEncoder state dict -> gmem {sgm, tokenizer, proj} params (numpy)."""
    used = set()
    take = _taker(sd, where, used)
    sgm = sgm_params(sd, "sgm.", where, used)
    tmha, tm = _mha(sd, "tokenizer.", where)
    used.update(k for k in sd if k.startswith(tm))
    tok = dict(tmha, memory_queries=take("tokenizer.memory_queries"))
    proj = {"kernel": take("proj.weight").T, "bias": take("proj.bias")}
    _no_leftovers(sd, used, where)
    return {"sgm": sgm, "tokenizer": tok, "proj": proj}


def is_original_stage1(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "sgm_state.pth"))


def load_stage1_checkpoint(folder: str) -> dict:
    """{config, sgm} from an original stage-1 folder (pretrain_gmt.py: sgm_state.pth =
    {"sgm": state_dict}, sgm_config.json = its settings; the config may be absent)."""
    path = os.path.join(folder, "sgm_state.pth")
    cpath = os.path.join(folder, "sgm_config.json")
    cfg = read_json(cpath) if os.path.isfile(cpath) else {}
    sd = read_state_dict(path, key="sgm")
    used = set()
    sgm = sgm_params(sd, "", path, used)
    _no_leftovers(sd, used, path)
    return {"config": cfg, "sgm": sgm}


def memory_params(sd: dict, where: str = "memory_attn.pth") -> tuple[dict, dict, dict]:
    """(frozen q/k/v/o copies {layers_i: {q_proj: {kernel}}}, trainable {layers_i: {memory_gate,
    memory_layernorm: {scale}}}, LoRA tree {"model": {layers_i: {memory_attn: {q_proj:
    {lora_A [in, r], lora_B [r, out]}}}}})."""
    base, mem, lora = {}, {}, {}
    for k, v in sd.items():
        m = _LAYER.search(k)
        if m is None:
            raise GmemError(f"{where}: unexpected key {k!r}")
        name, part, rest = f"layers_{m.group(1)}", m.group(2), m.group(3) or ""
        if part == "memory_gate":
            mem.setdefault(name, {})["memory_gate"] = np.asarray(v, np.float32).reshape(())
        elif part == "memory_layernorm":
            mem.setdefault(name, {})["memory_layernorm"] = {"scale": v}
        else:
            pm = re.fullmatch(r"([qkvo]_proj)\.(?:(?:base|base_layer)\.)?(weight|bias|lora_A(?:\.weight)?|lora_B(?:\.weight)?)", rest)
            if pm is None:
                raise GmemError(f"{where}: unexpected memory_attn key {k!r}")
            proj, leaf = pm.group(1), pm.group(2).split(".")[0]
            if leaf == "weight":
                base.setdefault(name, {}).setdefault(proj, {})["kernel"] = v.T
            elif leaf == "bias":
                base.setdefault(name, {}).setdefault(proj, {})["bias"] = v
            else:
                node = lora.setdefault(name, {}).setdefault("memory_attn", {}).setdefault(proj, {})
                node[leaf] = v.T
    return base, mem, {"model": lora} if lora else {}


def read_config(folder: str) -> dict:
    """gmt_config.json, with memory_layers as a 0-based list."""
    cfg = read_json(os.path.join(folder, "gmt_config.json"))
    if cfg.get("memory_layers"):
        cfg["memory_layers"] = parse_layers(cfg["memory_layers"], bool(cfg.get("memory_layers_1based")))
        cfg["memory_layers_1based"] = False
    return cfg


def lora_rank(ck: dict) -> int | None:
    """The rank of the memory LoRA tensors in an imported checkpoint (None: no LoRA)."""
    for layer in ck["lora"].get("model", {}).values():
        for proj in layer.get("memory_attn", {}).values():
            return int(proj["lora_A"].shape[1])
    return None


def load_gmt_checkpoint(folder: str) -> dict:
    """{config, encoder, memory_base, memory, lora} from a GMT output folder."""
    cfg = read_config(folder)
    enc = graph_encoder_params(read_state_dict(os.path.join(folder, "graph_encoder.pth")),
                               os.path.join(folder, "graph_encoder.pth"))
    base, mem, lora = memory_params(read_state_dict(os.path.join(folder, "memory_attn.pth")),
                                    os.path.join(folder, "memory_attn.pth"))
    layers = sorted(int(n.split("_")[1]) for n in mem)
    if cfg.get("memory_layers") and sorted(cfg["memory_layers"]) != layers:
        raise GmemError(f"{folder}: gmt_config.json memory_layers {cfg['memory_layers']} but memory_attn.pth "
                        f"holds layers {layers}")
    if not cfg.get("memory_layers"):
        cfg["memory_layers"] = layers
    return {"config": cfg, "encoder": enc, "memory_base": base, "memory": mem, "lora": lora}


def apply_to_system(ck: dict, system, trainable: dict, frozen: dict) -> tuple[dict, dict]:
    """Put an imported checkpoint into a stage-2 GMT system's (trainable, frozen) trees; shapes
    are checked. The SGM goes where the system keeps it: `frozen` (with its edge-state table
    rebuilt) or, with train_graph_module, `trainable` (its relation table in `frozen`)."""
    def fit(new, old, where):
        n, o = jax.tree_util.tree_structure(new), jax.tree_util.tree_structure(old)
        if n != o:
            raise GmemError(f"GMT checkpoint: {where} has a different structure than this model")
        for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)):
            if np.shape(a) != np.shape(b):
                raise GmemError(f"GMT checkpoint: {where} shape {np.shape(a)} != model's {np.shape(b)}")
        return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.asarray(b).dtype), new, old)

    if sorted(ck["config"]["memory_layers"]) != sorted(system.memory_layers):
        raise GmemError(f"GMT checkpoint: memory layers {ck['config']['memory_layers']} != "
                        f"system's {list(system.memory_layers)}")
    t, f = dict(trainable), dict(frozen)
    enc = ck["encoder"]
    t["enc"] = dict(t["enc"], tokenizer=fit(enc["tokenizer"], trainable["enc"]["tokenizer"], "tokenizer"),
                    proj=fit(enc["proj"], trainable["enc"]["proj"], "proj"))
    t["mem"] = fit({k: ck["memory"][k] for k in trainable["mem"]}, trainable["mem"], "memory gates/norms")
    if ck["lora"]:
        names = [s.name for s in system.specs if s.kind == "lora" and all(
            str(x).startswith("memory_attn") for x in (s.targets if isinstance(s.targets, tuple) else (s.targets,)))]
        if not names:
            raise GmemError("GMT checkpoint: it holds memory LoRA but this config has no LoRA on memory_attn")
        t["lora"] = dict(trainable["lora"], **{names[0]: fit(ck["lora"], trainable["lora"][names[0]], "memory LoRA")})
    llm = f["llm"]
    model = dict(llm["model"])
    for name, projs in ck["memory_base"].items():
        blk = dict(model[name]["memory_attn"])
        for p, leaves in projs.items():
            blk[p] = fit(leaves, blk[p], f"{name}/memory_attn/{p}")
        model[name] = dict(model[name], memory_attn=blk)
    f["llm"] = dict(llm, model=model)
    if "sgm" in f:
        f["sgm"] = fit(enc["sgm"], f["sgm"], "sgm")
        f["table"] = G.edge_table(system.gcfg, f["sgm"], f["hist"])
    else:                                               # train_graph_module: the SGM is trained
        sgm = fit(enc["sgm"], dict(trainable["enc"]["sgm"], rel_semantic=frozen["rel_semantic"]), "sgm")
        f["rel_semantic"] = sgm.pop("rel_semantic")
        t["enc"] = dict(t["enc"], sgm=sgm)
    return t, f
