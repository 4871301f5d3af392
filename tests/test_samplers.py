"""The numpy samplers against the diffusers schedulers they reproduce.

torch and diffusers (the export extra) are needed only by the comparison tests.
"""

import subprocess
import sys

import numpy as np
import pytest

from edgegen.runtimes.samplers import SAMPLERS, Sampler, make_sampler
from helpers import assert_close, patch_randn

# The DDPM-schedule samplers; the flow-matching ones are in test_flow_samplers.py, the EDM ones in
# test_edm_samplers.py.
DDPM = {name: cls for name, cls in SAMPLERS.items() if not cls.flow_matching and not cls.edm}
REFERENCE = {name: cls.diffusers_class for name, cls in DDPM.items()}

# runwayml/stable-diffusion-v1-5 scheduler_config.json (a PNDM config: the extra keys must be ignored).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
# stabilityai/stable-diffusion-2-1 (768, v-prediction); no timestep_spacing, so each class's default.
SD21 = {k: v for k, v in SD15.items() if k != "timestep_spacing"} | {
    "_diffusers_version": "0.10.0.dev0",
    "prediction_type": "v_prediction",
}
CONFIGS = {
    "sd15": SD15,
    "sd21_v": SD21,
    "trailing": SD15 | {"timestep_spacing": "trailing"},
    "linspace": SD15 | {"timestep_spacing": "linspace"},
    "trailing_v": SD21 | {"timestep_spacing": "trailing"},
    "linear_betas": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "timestep_spacing": "leading"},
    "trained_betas": {"trained_betas": list(np.linspace(0.0001, 0.02, 1000)), "timestep_spacing": "trailing"},
    "class_defaults": {},
}
# Per sampler: its own options (clipping, LCM's schedule), and options diffusers ignores for
# that class or that don't matter under its other defaults.
EXTRA_CONFIGS = {
    "euler_a": {"ignored_karras": SD15 | {"use_karras_sigmas": True}},
    "ddim": {"clip_sample": SD21 | {"clip_sample": True, "clip_sample_range": 1.5}},
    "lcm": {
        "orig_steps": SD15 | {"original_inference_steps": 100, "timestep_scaling": 5.0},
        "alpha_one_clip": SD21 | {"set_alpha_to_one": True, "clip_sample": True},
    },
    "dpmpp_2m": {"final_options": SD15 | {"lower_order_final": False, "euler_at_final": True},
                 "solver_alias": SD21 | {"solver_type": "logrho"}},
}
STEPS = {"lcm": (1, 2, 4, 8)}
DEFAULT_STEPS = (1, 4, 7, 25)
SHAPE = (1, 4, 8, 8)


def cases():
    for name in DDPM:
        for cfg_name, cfg in (CONFIGS | EXTRA_CONFIGS.get(name, {})).items():
            for n in STEPS.get(name, DEFAULT_STEPS):
                yield pytest.param(name, cfg, n, id=f"{name}-{cfg_name}-{n}")


def reference_cls(name):
    diffusers = pytest.importorskip("diffusers")
    return getattr(diffusers, REFERENCE[name])






def pair(name, cfg, n):
    ref = reference_cls(name).from_config(cfg)
    ref.set_timesteps(n)
    ours = make_sampler(name, cfg)
    ours.set_timesteps(n)
    return ours, ref


@pytest.mark.parametrize("name,cfg,n", list(cases()))
def test_matches_diffusers(monkeypatch, name, cfg, n):
    torch = pytest.importorskip("torch")
    ours, ref = pair(name, cfg, n)
    assert ours.timesteps.dtype == np.float32
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float32))
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)

    data = np.random.default_rng(n)
    ours_noise, ref_noise = np.random.default_rng(123), np.random.default_rng(123)
    patch_randn(monkeypatch, type(ref), ref_noise)
    x = (data.standard_normal(SHAPE) * ours.init_noise_sigma).astype(np.float32)
    for i, t in enumerate(ref.timesteps):
        assert_close(ours.scale_model_input(x, i), ref.scale_model_input(torch.from_numpy(x), t).numpy())
        out = data.standard_normal(SHAPE).astype(np.float32)
        expected = ref.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample.numpy()
        got = ours.step(out, i, x, rng=ours_noise)
        assert got.dtype == np.float32
        assert_close(got, expected)
        x = expected  # both continue from the same sample, so a mismatch points at its step
    # Same number of draws, in the same order: the generators end in the same state.
    assert ours_noise.bit_generator.state == ref_noise.bit_generator.state


@pytest.mark.parametrize("name", [n for n in DDPM if n != "lcm"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_for_many_step_counts(name, spacing):
    cfg = SD15 | {"timestep_spacing": spacing}
    for n in range(1, 61):
        ours, ref = pair(name, cfg, n)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float32), err_msg=f"n={n}")


def test_lcm_timesteps_for_many_step_counts():
    for n in range(1, 51):
        ours, ref = pair("lcm", SD15, n)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float32), err_msg=f"n={n}")


def test_registry():
    assert set(DDPM) == {"euler", "euler_a", "ddim", "lcm", "dpmpp_2m"}
    for name, cls in DDPM.items():
        assert issubclass(cls, Sampler) and cls.name == name
        assert cls.stochastic == (name in ("euler_a", "lcm"))
        assert isinstance(make_sampler(name, SD15), cls)


def test_unknown_sampler_lists_known_names():
    with pytest.raises(ValueError, match="euler_a.*dpmpp_2m|dpmpp_2m.*euler_a"):
        make_sampler("heun", SD15)


UNSUPPORTED = [
    ("euler", "use_karras_sigmas", True),
    ("euler", "use_exponential_sigmas", True),
    ("euler", "use_beta_sigmas", True),
    ("euler", "interpolation_type", "log_linear"),
    ("euler", "timestep_type", "continuous"),
    ("euler", "final_sigmas_type", "sigma_min"),
    ("ddim", "thresholding", True),
    ("lcm", "thresholding", True),
    ("dpmpp_2m", "use_karras_sigmas", True),
    ("dpmpp_2m", "use_exponential_sigmas", True),
    ("dpmpp_2m", "use_beta_sigmas", True),
    ("dpmpp_2m", "use_lu_lambdas", True),
    ("dpmpp_2m", "use_flow_sigmas", True),
    ("dpmpp_2m", "thresholding", True),
    ("dpmpp_2m", "solver_order", 3),
    ("dpmpp_2m", "algorithm_type", "sde-dpmsolver++"),
    ("dpmpp_2m", "algorithm_type", "deis"),
    ("dpmpp_2m", "solver_type", "heun"),
    ("dpmpp_2m", "final_sigmas_type", "sigma_min"),
    ("dpmpp_2m", "lambda_min_clipped", -5.1),
    ("dpmpp_2m", "variance_type", "learned_range"),
] + [
    (name, key, value)
    for name in REFERENCE
    for key, value in [
        ("rescale_betas_zero_snr", True),
        ("prediction_type", "sample"),
        ("timestep_spacing", "karras"),
        ("beta_schedule", "squaredcos_cap_v2"),
    ]
]


@pytest.mark.parametrize("name,key,value", UNSUPPORTED)
def test_unsupported_option_raises(name, key, value):
    with pytest.raises(ValueError, match=key) as err:
        make_sampler(name, SD15 | {key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(DDPM))
def test_bad_step_counts_and_indices(name):
    sampler = make_sampler(name, SD15)
    for n in (0, -1):
        with pytest.raises(ValueError):
            sampler.set_timesteps(n)
    sampler.set_timesteps(4)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError):
        sampler.step(x, 4, x, rng=np.random.default_rng(0))


def test_lcm_rejects_more_steps_than_original():
    with pytest.raises(ValueError, match="original_inference_steps"):
        make_sampler("lcm", SD15).set_timesteps(51)


def test_set_timesteps_resets_multistep_state():
    ours = make_sampler("dpmpp_2m", SD15)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    ours.set_timesteps(10)
    first = ours.step(xs[0], 0, xs[1])
    ours.step(xs[1], 1, xs[0])
    ours.set_timesteps(10)
    np.testing.assert_array_equal(ours.step(xs[0], 0, xs[1]), first)


def test_samplers_do_not_import_torch():
    code = "import sys, edgegen.runtimes.samplers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
