"""Built-in passes; importing this package registers them."""
from . import bf16, fp16, int4, prune, quant  # noqa: F401
