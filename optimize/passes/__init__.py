"""Built-in passes; importing this package registers them."""
from . import bf16, fp16, fuse, int4, nncf_quant, prune, quant, tome, weight_only  # noqa: F401
