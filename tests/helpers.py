"""Helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""
import sys

import numpy as np
from click.testing import CliRunner


def run_cli(*args):
    from edgegen.export.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments):
    """A user mistake: exit 2, exactly one `error:` line containing `fragments`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in result.output


def patch_randn(monkeypatch, scheduler, rng):
    """Make a diffusers scheduler (class or instance) take its noise from `rng`, as our samplers draw it."""
    import torch

    module = sys.modules[scheduler.__module__]

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        draw = rng.standard_normal(tuple(shape)).astype(np.float32)
        return torch.from_numpy(draw).to(dtype or torch.float32)

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)


def assert_close(ours, ref):
    ref = np.asarray(ref, np.float64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
