"""Training machinery that knows no system: sharding, state, step, loop, checkpoints, metrics.

Entry points: gmem.train.loop.train(cfg) (train.py), gmem.train.infer.run_inference (infer.py),
gmem.train.export (PEFT / merged HF folders), `python -m gmem.train.plot RUN_DIR`.
"""
