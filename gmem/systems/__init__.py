"""One package per system (lm, gmt, gift, varda, ...). Each registers its system class(es)
with gmem.config.register_system when imported; gmem.config.system_class finds them by name.
A package holds the system's typed options, model assembly, data, loss, evaluation and
original-checkpoint import, and nothing another system needs."""
