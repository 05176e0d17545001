"""The original checkpoints (spec A2, A14.2): GOFA's released files and ICAE's.

GOFA (`mistral_qamag03_best_ckpt.pth`, `nb_instruct.pth`, written by its save_partial): the
state dict of `g_layers` ("{g}.lin_qkv.weight", ...; a "g_layers." or longer prefix is accepted
too) plus every parameter whose name holds "default": the decoder LoRA
("model.layers.{i}.self_attn.q_proj.lora_A.default.weight" [r, D_in], "lora_B" [D_out, r]).
GNN layer g goes to decoder layer first + g (gnn_layers before the last layers).
ICAE (`mistral_7b_ft_icae.safetensors`): "memory_token_embed.weight" [K + 3, D] (memory slots,
then AE, LM, FT: gofa.layout's rows) and the encoder LoRA, named "default" in the file and
renamed to "encadapt" (as GOFA does on loading).

Torch files are read with torch.load(weights_only=True) (gmem.hf.readers), safetensors without
torch. The original loads with strict=False and silently drops what does not fit (a 5-layer
config reading a 6-layer file loses a layer); here every missing, unexpected and mis-shaped key
is reported in one GmemError. One exception, said out loud: a GOFA file without any decoder
LoRA key (the pretraining checkpoint) leaves a fresh decoder LoRA in place when the config asks
for one.
"""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
from safetensors.numpy import load_file

from gmem.errors import GmemError
from gmem.hf.readers import torch_load_checkpoint
from gmem.systems.lm import LMSystem
from gmem.tree import flatten, unflatten

_LIST = re.compile(r"^(.*)_(\d+)$")
_LORA = re.compile(r"(?:^|\.)(layers\.\d+\..*)\.(lora_[AB])\.(default|encadapt)\.weight$")


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """{key: float32 array} of a .safetensors file or a torch state dict (weights_only)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise GmemError(f"{p}: checkpoint file not found")
    if p.suffix == ".safetensors":
        try:
            sd = load_file(str(p))
        except Exception as e:  # noqa: BLE001 - not a safetensors file
            raise GmemError(f"{p}: not a readable safetensors file ({type(e).__name__})") from None
        return {k: np.asarray(v, np.float32) for k, v in sd.items()}
    sd = torch_load_checkpoint(p)
    if isinstance(sd, dict) and len(sd) == 1 and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))   # {"state_dict": {...}} wrappers
    if not isinstance(sd, dict):
        raise GmemError(f"{p}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "detach"):
            raise GmemError(f"{p}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().float().numpy()
    return out


def torch_name(flax_path: str) -> tuple[str, bool]:
    """(torch state-dict name, transposed?) of a GOFAGNNConv leaf: "ff/lins_0/kernel" ->
    ("ff.lins.0.weight", True); norms' "scale" -> "weight"; gates keep their names."""
    parts = []
    segs = flax_path.split("/")
    for seg in segs[:-1]:
        m = _LIST.match(seg)
        parts += [m.group(1), m.group(2)] if m else [seg]
    leaf = segs[-1]
    parts.append({"kernel": "weight", "scale": "weight"}.get(leaf, leaf))
    return ".".join(parts), leaf == "kernel"


def _lora_key(path: str, leaf: str, name: str) -> str:
    """gmem LoRA path model/layers_3/self_attn/q_proj -> the PEFT name in the file."""
    dotted = re.sub(r"layers_(\d+)", r"layers.\1", path).replace("/", ".")
    return f"{dotted}.{leaf}.{name}.weight"


def _lora_into(tree: dict, found: dict, name: str) -> tuple[dict, list]:
    """Fill a fresh LoRA tree from file entries keyed as _lora_key; -> (tree, errors)."""
    flat, errs = flatten(tree), []
    for path in list(flat):
        mod, _, leaf = path.rpartition("/")
        key = _lora_key(mod, leaf, name)
        if key not in found:
            errs.append(f"missing {key}")
            continue
        v = found.pop(key).T
        if v.shape != tuple(flat[path].shape):
            errs.append(f"{key}: shape {v.T.shape}, expected {tuple(flat[path].shape[::-1])}")
        flat[path] = v
    return unflatten(flat), errs


def _split_lora(sd: dict) -> tuple[dict, dict]:
    """(LoRA entries re-keyed "model.layers.i....", the rest)."""
    lora, rest = {}, {}
    for k, v in sd.items():
        m = _LORA.search(k)
        if m:
            lora[f"model.{m.group(1)}.{m.group(2)}.default.weight"] = v
        else:
            rest[k] = v
    return lora, rest


def load_gofa(path, system, fresh: dict) -> dict:
    """The trainable tree {"gnn", "default"?} from a GOFA file, fresh's structure and shapes."""
    where = f"system.import_gofa={str(path)!r}"
    lora, rest = _split_lora(read_state_dict(path))
    gnn_in = {}
    for k, v in rest.items():
        m = re.match(r"^(?:.*\bg_layers\.)?(\d+)\.(.+)$", k)
        if m is None:
            gnn_in[k] = v      # reported as unexpected below
        else:
            gnn_in[(int(m.group(1)), m.group(2))] = v
    errs, out = [], {"gnn": {}}
    first = system.gnn_layers[0]
    for name, tree in fresh["gnn"].items():
        g = int(name.split("_")[1]) - first
        flat = flatten(tree)
        for p_, leaf in flat.items():
            key, t = torch_name(p_)
            v = gnn_in.pop((g, key), None)
            if v is None:
                errs.append(f"missing g_layers.{g}.{key}")
                continue
            v = v.T if t else v
            if v.shape != tuple(leaf.shape):
                errs.append(f"g_layers.{g}.{key}: shape {v.T.shape if t else v.shape}, expected "
                            f"{tuple(leaf.shape[::-1]) if t else tuple(leaf.shape)}")
            flat[p_] = v
        out["gnn"][name] = unflatten(flat)
    if "default" in fresh and lora:
        out["default"], e = _lora_into(fresh["default"], lora, "default")
        errs += e
    elif "default" in fresh:
        out["default"] = fresh["default"]    # a pretraining file: no decoder LoRA to read
    errs += [f"unexpected {k if isinstance(k, str) else f'g_layers.{k[0]}.{k[1]}'}" for k in gnn_in]
    if lora and "default" not in fresh:
        errs.append(f"unexpected decoder LoRA ({len(lora)} keys, e.g. {next(iter(lora))}): the config lists no "
                    "adapter named 'default'")
    else:
        errs += [f"unexpected {k}" for k in lora]
    if errs:
        raise GmemError(f"{where}: does not fit this model ({len(system.gnn_layers)} GNN layers): " + "; ".join(errs))
    return out


def load_icae(path, system) -> dict:
    """{"encadapt": LoRA tree, "memory_table": [K + 3, D]} from an ICAE file."""
    where = f"system.import_icae={str(path)!r}"
    lora, rest = _split_lora(read_state_dict(path))
    fresh = jax.eval_shape(system.init_encoder, _abstract_llm(system), jax.random.PRNGKey(0))
    errs = []
    enc, e = _lora_into(jax.tree_util.tree_map(lambda a: np.zeros(a.shape, np.float32), fresh["encadapt"]),
                        lora, "default")
    errs += e
    table = [v for k, v in rest.items() if k.split(".")[-2:] == ["memory_token_embed", "weight"]]
    want = tuple(fresh["memory_table"].shape)
    if not table:
        errs.append("missing memory_token_embed.weight")
    elif table[0].shape != want:
        errs.append(f"memory_token_embed.weight: shape {table[0].shape}, expected {want} (K + 3 rows: "
                    f"system.num_memory_tokens={system.special.k})")
    errs += [f"unexpected {k}" for k in rest if k.split(".")[-2:] != ["memory_token_embed", "weight"]]
    errs += [f"unexpected {k}" for k in lora]
    if errs:
        raise GmemError(f"{where}: does not fit this model: " + "; ".join(errs))
    return {"encadapt": enc, "memory_table": table[0]}


def _abstract_llm(system):
    return LMSystem.abstract_base(system)[0]


def to_gofa_state_dict(system, trainable) -> dict[str, np.ndarray]:
    """The trainable tree in GOFA's layout (g_layers.{g}.*, decoder LoRA named default): what
    save_partial writes, for the original code or a round trip."""
    out, first = {}, system.gnn_layers[0]
    for name, tree in trainable["gnn"].items():
        g = int(name.split("_")[1]) - first
        for p_, leaf in flatten(tree).items():
            key, t = torch_name(p_)
            out[f"g_layers.{g}.{key}"] = np.asarray(leaf).T if t else np.asarray(leaf)
    for p_, leaf in flatten(trainable.get("default", {})).items():
        mod, _, ab = p_.rpartition("/")
        out[_lora_key(mod, ab, "default")] = np.asarray(leaf).T
    return out
