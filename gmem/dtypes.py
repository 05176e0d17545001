"""The dtype names a config may use (model.dtype, model.frozen_dtype), each to its canonical
numpy/jax name. A plain table, so gmem.config checks names without importing jax."""

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16",
               "float64": "float64"}   # float64: finite-difference tests only (needs jax_enable_x64)
