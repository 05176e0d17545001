"""Small parts every model shares: projection (with the adapter hook), attention, norms,
rotary embeddings, token embeddings, torch's bicubic resize (resize), SwiGLU with a lean
derivative (swiglu)."""
