"""The EDM samplers (Playground v2.5's schedulers) step by step against diffusers."""
import numpy as np
import pytest

# Playground v2.5's released scheduler config (its extra keys must be ignored or accepted at the values
# that change nothing).
from edgegen.export.families.playground_v25 import SCHEDULER as PLAYGROUND
from edgegen.runtimes.samplers import SAMPLERS, make_sampler

EDM = {name: cls for name, cls in SAMPLERS.items() if cls.edm}
CONFIGS = {"defaults": {}, "playground": PLAYGROUND, "v": {**PLAYGROUND, "prediction_type": "v_prediction"},
           "narrow": {"sigma_min": 0.01, "sigma_max": 20.0, "rho": 5.0, "sigma_data": 1.0}}


def test_registry():
    assert set(EDM) == {"edm_euler", "edm_dpmpp_2m"}


@pytest.mark.parametrize("name", sorted(EDM))
@pytest.mark.parametrize("cfg_id", sorted(CONFIGS))
@pytest.mark.parametrize("n", [1, 2, 4, 25])
def test_matches_diffusers_step_by_step(name, cfg_id, n):
    import diffusers
    import torch

    cfg = CONFIGS[cfg_id]
    ours = make_sampler(name, cfg)
    ref = getattr(diffusers, EDM[name].diffusers_class).from_config(cfg)
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6, atol=1e-7)
    assert ours.init_noise_sigma == pytest.approx(ref.init_noise_sigma, rel=1e-12)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((1, 4, 8, 8)) * ours.init_noise_sigma).astype(np.float32)
    xt = torch.from_numpy(x.copy())
    for i, t in enumerate(ref.timesteps):
        out = rng.standard_normal(x.shape).astype(np.float32)
        a, b = ours.scale_model_input(x, i), ref.scale_model_input(xt, t).numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))
        x = ours.step(out, i, x)
        xt = ref.step(torch.from_numpy(out), t, xt).prev_sample
        want = xt.numpy()
        np.testing.assert_allclose(x, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name,key,value", [("edm_euler", "sigma_schedule", "exponential"),
                                            ("edm_dpmpp_2m", "algorithm_type", "sde-dpmsolver++"),
                                            ("edm_dpmpp_2m", "thresholding", True),
                                            ("edm_euler", "prediction_type", "sample")])
def test_unsupported_options_refused(name, key, value):
    with pytest.raises(ValueError, match=key):
        make_sampler(name, {key: value})
