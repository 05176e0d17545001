#!/usr/bin/env python
"""Evaluate and generate from a trained checkpoint; export adapters or the merged model.

    python infer.py --checkpoint runs/lm_lora                  # eval + generation
    python infer.py --checkpoint runs/lm_lora system.prompts='[ROMEO:, JULIET:]' system.max_new_tokens=64
    python infer.py --checkpoint runs/lm_lora --prompt "HAMLET:" --out preds/
    python infer.py --checkpoint runs/lm_lora --export-peft out/peft --export-hf out/merged
    python infer.py --checkpoint runs/gofa_instruct --graph my_graph.json   # GOFA: answer a graph

--checkpoint takes a run folder, its checkpoints/ folder (newest step that restores, or --step N)
or one step folder (RUN/checkpoints/10). A damaged newest step is skipped with a line saying why.
Writes OUT/predictions.jsonl and OUT/metrics.json; OUT defaults to RUN/infer for the run given
(CHECKPOINT_DIR/infer for a checkpoint folder outside a run), not the saved train.run_dir.
--graph FILE sets system.graph=FILE, for systems that read a graph (GOFA answers each question
node and completes each `complete` node of the file).
The saved config is used; key.sub=value pairs override parts that do not change the model.
Base weights other than the ones the checkpoint was trained on are refused
(train.allow_base_change=true uses them anyway).
"""

import sys

from gmem.errors import run_cli


def _take(argv, flag, many=False):
    vals, rest, it = [], [], iter(argv)
    for a in it:
        if a == flag:
            v = next(it, None)
            if v is None:
                from gmem.errors import GmemError
                raise GmemError(f"{flag}: expected a value after it")
            vals.append(v)
        elif a.startswith(flag + "="):
            vals.append(a.split("=", 1)[1])
        else:
            rest.append(a)
    return (vals if many else (vals[-1] if vals else None)), rest


@run_cli
def main(argv) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from gmem import config as gconfig
    from gmem.errors import GmemError

    ckpt, argv = _take(argv, "--checkpoint")
    out, argv = _take(argv, "--out")
    step, argv = _take(argv, "--step")
    prompts, argv = _take(argv, "--prompt", many=True)
    peft, argv = _take(argv, "--export-peft")
    hf, argv = _take(argv, "--export-hf")
    graph, argv = _take(argv, "--graph")
    if ckpt is None:
        raise GmemError("--checkpoint DIR is required")
    path, files, pairs, rest = gconfig.parse_cli(argv)
    if rest or path:
        raise GmemError(f"unknown argument {(rest or ['--config'])[0]!r}; infer.py takes --checkpoint, "
                        "--out, --step, --prompt, --graph, --export-peft, --export-hf, --override and key=value")
    if graph is not None:
        pairs.append(f"system.graph={graph}")
    if step is not None and not step.isdigit():
        raise GmemError(f"--step: expected a step number, got {step!r}")
    from gmem.train.infer import run_inference
    from gmem.train.export import export_hf, export_peft

    res = run_inference(ckpt, out, pairs, files, prompts or None, int(step) if step else None)
    for r in res["predictions"]:
        print(f"--- {r['prompt']!r}\n{r['generation']}")
    print("metrics: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in res["metrics"].items()))
    print(f"wrote {res['out']}/predictions.jsonl and metrics.json")
    if peft:
        print(f"PEFT adapters: {export_peft(res['system'], res['state'].trainable, peft)}")
    if hf:
        print(f"merged HF model: {export_hf(res['system'], res['state'].trainable, res['frozen'], hf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
