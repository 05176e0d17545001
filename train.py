#!/usr/bin/env python
"""Train a gmem system.

    python train.py                                   # configs/default.yaml (the embedded job)
    python train.py --config configs/lm_lora.yaml train.steps=200 sharding.mesh.fsdp=4
    python train.py --config configs/lm_lora.yaml --override my_changes.yaml
    python train.py --config configs/X.yaml --pass NAME   # a system's offline pass (resumable)

Overrides are `key.sub=value` pairs or `--override FILE.yaml`; the resolved config is printed
at the start, written to RUN_DIR/config.yaml once the run is accepted and saved with every
checkpoint. Running the same command again resumes from the newest checkpoint in
RUN_DIR/checkpoints that restores (a damaged one is skipped with a line saying why, and moved
aside to STEP.unrestorable); a checkpoint of another model or of other base weights is refused
(train.allow_base_change=true continues on new base weights anyway). Ctrl-C saves a checkpoint
and exits cleanly. A NaN/inf loss stops the run naming the last good checkpoint.
Bad input (unknown key, wrong type, missing file, ...) prints one line and exits with code 2.
"""

import sys

from gmem.errors import run_cli


@run_cli
def main(argv) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from gmem import config as gconfig
    from gmem.errors import GmemError

    pass_name = None
    if "--pass" in argv:
        i = argv.index("--pass")
        if i + 1 >= len(argv):
            raise GmemError("--pass: expected the name of one of the system's offline passes")
        pass_name, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    path, files, pairs, rest = gconfig.parse_cli(argv)
    if rest:
        raise GmemError(f"unknown argument {rest[0]!r}; use --config FILE, --override FILE or key.sub=value")
    cfg = gconfig.load_config(path or gconfig.DEFAULT_CONFIG, pairs, files)
    print("# resolved config\n" + gconfig.to_yaml(cfg), flush=True)
    from gmem.train.loop import train
    from gmem.train.sharding import maybe_initialize_distributed

    maybe_initialize_distributed()
    obj = gconfig.to_object(cfg)
    if pass_name is not None:
        from gmem.train.passes import run_configured_pass
        summary = run_configured_pass(obj, pass_name)
        print(f"pass {pass_name}: {summary['done']}/{summary['total']} done in {summary['out']}", flush=True)
        return 0
    # The loop writes RUN_DIR/config.yaml once the run is accepted (after the resume checks).
    summary = train(obj)
    if summary.get("interrupted"):
        print(f"stopped at step {summary['step']} (interrupted); run the same command to resume", flush=True)
    elif summary.get("losses"):
        print(f"done: step {summary['step']}, last loss {summary['losses'][-1]:.4f}, "
              f"checkpoints in {summary['checkpoint_dir']}", flush=True)
    else:
        print(f"nothing to do: already at step {summary['step']} ({summary['checkpoint_dir']})", flush=True)
    if "eval" in summary:
        print("eval: " + ", ".join(f"{k}={v:.4f}" for k, v in summary["eval"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
