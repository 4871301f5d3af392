"""Facts about the host and library versions, stamped into every recorded result."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from edgegen.runtimes.host import cpu_model  # absolute: bench scripts import this file directly


def describe() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    vers = {}
    for pkg in ("edgegen", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "numpy"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "ram_gb": round(mem / 2**30, 1) if mem else None,
            "python": platform.python_version(), "versions": vers}
