"""gmem: JAX/Flax language models that read from graphs and memories.

`import gmem` stays light (no jax import): submodules are imported on use,
e.g. `from gmem.models import llama`.
"""

from gmem.errors import GmemError

__version__ = "0.1.0"
__all__ = ["GmemError", "__version__"]
