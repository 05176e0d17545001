"""User mistakes end in one line naming the file, line or field, and exit code 2 (issue 18 items
6-8): bad encodings, empty or cut data files, mistyped sizes, unloadable relation tables,
impossible option values (a disk filling up during a save: tests/train/test_reliability.py).

train.py's main runs in this process (the same code path as the command, without a Python
start-up per case); tests/test_cli.py runs the commands themselves as subprocesses.
"""

import json
import pathlib
import runpy

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = runpy.run_path(str(ROOT / "train.py"))["main"]
TINY = str(ROOT / "configs" / "tiny_lm.yaml")
GMT = str(ROOT / "configs" / "gmt_tiny.yaml")


def corpus(tmp):
    p = tmp / "corpus.txt"
    p.write_text("to be or not to be that is the question\n" * 200)
    return p


def lm(tmp, *extra):
    return ["--config", TINY, f"system.corpus={corpus(tmp)}", f"train.run_dir={tmp / 'run'}", "train.steps=1", *extra]


def gmt(tmp, *extra):
    return ["--config", GMT, f"train.run_dir={tmp / 'run'}", "train.steps=1", *extra]


def label_kg(tmp, train=b"a\tr\tb\nb\ts\tc\nc\tr\ta\n", valid=b"a\tr\tb\n", test=b"b\ts\tc\n"):
    d = tmp / "kg"
    d.mkdir()
    for name, data in (("train", train), ("valid", valid), ("test", test)):
        (d / f"{name}.txt").write_bytes(data)
    return d


def openke_kg(tmp, train="3\n0 0 1\n1 1 2\n2 0 0\n"):
    d = tmp / "openke"
    d.mkdir()
    (d / "entity2id.txt").write_text("3\na\t0\nb\t1\nc\t2\n")
    (d / "relation2id.txt").write_text("2\nr\t0\ns\t1\n")
    (d / "train2id.txt").write_text(train)
    return d


def records(tmp, n=320):
    rows = [{"instruction": "Is this true?", "input": "x", "output": "True", "embedding_ids": [0, 0, 1]}
            for _ in range(n)]
    return rows


# Each case: (name, build(tmp) -> argv, expected text of the one stderr line).
def c_yaml_latin1(tmp):
    p = tmp / "c.yaml"
    p.write_bytes(b"extends: " + TINY.encode() + b"\nmodel:\n  source: caf\xe9\n")
    return ["--config", str(p)], f"{p}:3: not UTF-8 text (a YAML config): byte 0xe9 at offset"


def c_yaml_unknown_key_line(tmp):
    p = tmp / "c.yaml"
    p.write_text(f"extends: {TINY}\ntrain:\n  steps: 3\n  stepz: 4\n")
    return ["--config", str(p)], f"{p}:4: train.stepz: Key 'stepz' not in 'TrainConfig'. Did you mean: 'steps'?"


def c_yaml_wrong_type_in_list(tmp):
    p = tmp / "c.yaml"
    p.write_text(f"extends: {TINY}\nadapters:\n  - kind: lora\n    rank: 2\n  - name: b\n    rank: many\n")
    return ["--config", str(p)], f"{p}:6: adapters[1].rank: Value 'many' of type 'str' could not be converted to Integer"


def c_list_index(tmp):
    return lm(tmp, "adapters.3.rank=4"), ("override 'adapters.3.rank=4': adapters has 1 entry (adapters.0), "
                                          "so there is no adapters.3")


def c_dtype(tmp):
    return lm(tmp, "model.dtype=bf32"), "model.dtype: unknown dtype 'bf32'"


def c_checkpoint_every_0(tmp):
    return lm(tmp, "checkpoint.every=0"), "checkpoint.every=0: must be at least 1"


def c_batch_size_0(tmp):
    return lm(tmp, "data.batch_size=0"), "data.batch_size=0: must be at least 1"


def c_seq_len_0(tmp):
    return lm(tmp, "data.seq_len=0"), "data.seq_len=0: a row needs at least one input token"


def c_corpus_latin1(tmp):
    p = tmp / "latin.txt"
    p.write_bytes(b"to be or not to be\n" * 100 + b"caf\xe9\n")
    return (lm(tmp, f"system.corpus={p}"),
            f"{p}:101: not UTF-8 text (a text corpus): byte 0xe9 at offset 1903")


def c_jsonl_cut_line(tmp):
    p = tmp / "c.jsonl"
    rows = [json.dumps({"text": f"row {i} to be or not to be"}) for i in range(100)]
    rows[41] = rows[41][:9]
    p.write_text("\n".join(rows) + "\n")
    return lm(tmp, f"system.corpus={p}"), f"{p}:42:"


def c_config_json_two(tmp):
    d = tmp / "model"
    d.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 260, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": "two", "num_attention_heads": 4}
    text = json.dumps(cfg, indent=2)
    (d / "config.json").write_text(text)
    line = text[:text.index('"num_hidden_layers"')].count("\n") + 1
    return (lm(tmp, f"model.source={d}"),
            f"{d / 'config.json'}:{line}: num_hidden_layers: expected a positive integer, got \"two\"")


def c_config_json_comma(tmp):
    d = tmp / "model"
    d.mkdir()
    lines = json.dumps({f"field_{i}": i for i in range(400)}, indent=2).splitlines()
    lines[304] = lines[304].rstrip(",")
    (d / "config.json").write_text("\n".join(lines))
    return lm(tmp, f"model.source={d}"), f"{d / 'config.json'}:306:3: invalid JSON: Expecting ',' delimiter"


def c_tsv_latin1(tmp):
    d = label_kg(tmp, train=b"a\tr\tb\ncaf\xe9\tr\tb\n")
    return gmt(tmp, f"system.kg={d}"), f"{d / 'train.txt'}:2: not UTF-8 text (a knowledge-graph file)"


def c_tsv_empty(tmp):
    d = label_kg(tmp, train=b"")
    return gmt(tmp, f"system.kg={d}"), f"{d / 'train.txt'}: no triples"


def c_openke_count_only(tmp):
    d = openke_kg(tmp, train="0\n")
    return (gmt(tmp, f"system.kg={d}"),
            f"{d / 'train2id.txt'}: no triples (the file holds only its count line)")


def c_gmt_json_latin1(tmp):
    p = tmp / "train.json"
    p.write_bytes(json.dumps(records(tmp)).encode().replace(b"Is this", b"Is th\xefs"))
    return gmt(tmp, f"system.train_json={p}"), f"{p}:1: not UTF-8 text (GMT records)"


def c_gmt_json_comma(tmp):
    p = tmp / "train.json"
    lines = json.dumps(records(tmp, 60), indent=2).splitlines()
    lines[304] = lines[304].rstrip(",")
    p.write_text("\n".join(lines))
    return gmt(tmp, f"system.train_json={p}"), f"{p}:306:"


def c_rel_object_npy(tmp):
    p = tmp / "rel.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return gmt(tmp, f"system.rel_semantics={p}"), f"{p}: not a numeric .npy table: it holds Python objects"


def c_rel_garbage_safetensors(tmp):
    p = tmp / "rel.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage-garbage!")
    return gmt(tmp, f"system.rel_semantics={p}"), f"{p}: not a readable .safetensors file (SafetensorError"


def c_rel_torch_pickle(tmp):
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    p = tmp / "rel.pt"
    torch.save({"rel_embeddings": Evil()}, p)
    return gmt(tmp, f"system.rel_semantics={p}"), (f"{p}: refused: the file's pickle needs more than "
                                                         "tensors (Trying to load unsupported GLOBAL")


def c_model_torch_pickle(tmp):
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    d = tmp / "model"
    d.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 260, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save({"model.embed_tokens.weight": Evil()}, d / "pytorch_model.bin")
    return lm(tmp, f"model.source={d}"), (f"{d / 'pytorch_model.bin'}: refused: the file's pickle needs more "
                                         "than tensors (Trying to load unsupported GLOBAL")


CASES = [c_yaml_latin1, c_yaml_unknown_key_line, c_yaml_wrong_type_in_list, c_list_index, c_dtype,
         c_checkpoint_every_0, c_batch_size_0, c_seq_len_0, c_corpus_latin1, c_jsonl_cut_line,
         c_config_json_two, c_config_json_comma, c_tsv_latin1, c_tsv_empty, c_openke_count_only,
         c_gmt_json_latin1, c_gmt_json_comma, c_rel_object_npy, c_rel_garbage_safetensors,
         c_rel_torch_pickle, c_model_torch_pickle]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[2:] for c in CASES])
def test_mistake_exits_2_with_one_line(tmp_path, capsys, case):
    argv, message = case(tmp_path)
    rc = TRAIN(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()   # a refused start writes nothing into RUN_DIR


def test_old_format_torch_file_loads_without_mmap(tmp_path):
    """A pytorch_model.bin in the pre-1.6 (non-zip) format cannot be memory-mapped: it is read
    whole instead of failing with torch's mmap message."""
    import torch

    from gmem.hf.readers import TorchSource
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    src = TorchSource([tmp_path / "pytorch_model.bin"], str(tmp_path))
    assert src.keys() == ["w"] and src.shape("w") == (2, 3)
    np.testing.assert_array_equal(src.get("w"), np.arange(6.0).reshape(2, 3))



def test_run_cli_prints_gmem_warnings_as_one_line():
    """A command's own warnings are `warning: ...` lines (as errors are `error: ...`); a
    library's other categories keep Python's form; the format is restored afterwards. In a
    child process: pytest records warnings instead of printing them."""
    import subprocess
    import sys
    code = """
import warnings
from gmem.errors import run_cli
before = warnings.formatwarning
@run_cli
def main(argv):
    warnings.warn("the graph module stays at its random init")
    warnings.warn("old API", DeprecationWarning)
main([])
assert warnings.formatwarning is before
"""
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    assert err[0] == "warning: the graph module stays at its random init", r.stderr
    assert "DeprecationWarning: old API" in err[1], r.stderr
