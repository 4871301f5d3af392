import os
import warnings

import pytest

# Tests never reach a model hub; a stray download attempt must fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """family -> (artifact path, the diffusers pipeline it was exported from); built once per family."""
    from edgegen.export.exporter import export
    from edgegen.export.families import get_family
    from edgegen.export.weights import Source, load_pipeline

    cache = {}

    def get(family: str):
        if family not in cache:
            source = Source("tiny", seed=0)
            pipe = load_pipeline(get_family(family), source)
            out = tmp_path_factory.mktemp("art") / family
            export(family, source, out, pipe=pipe)
            cache[family] = (out, pipe)
        return cache[family]

    return get
