"""The flow-matching numpy samplers (FLUX.1, SD3/3.5, SANA, SANA-Sprint) against diffusers.

torch and diffusers (the export extra) are needed only by the comparison tests.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from edgegen.runtimes.samplers import SAMPLERS, Sampler, calculate_shift, make_sampler
from helpers import assert_close, patch_randn

FLOW = {name: cls for name, cls in SAMPLERS.items() if cls.flow_matching}

# black-forest-labs/FLUX.1-schnell and FLUX.1-dev scheduler_config.json.
FLUX_SCHNELL = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
}
FLUX_DEV = FLUX_SCHNELL | {"shift": 3.0, "use_dynamic_shifting": True}
# stabilityai/stable-diffusion-3-medium-diffusers (3.5 has the same).
SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
       "num_train_timesteps": 1000, "shift": 3.0}
# Efficient-Large-Model/Sana_1600M_1024px_diffusers.
SANA = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": "0.32.0.dev0",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lambda_min_clipped": -float("inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}
# Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers.
SANA_SPRINT = {"_class_name": "SCMScheduler", "_diffusers_version": "0.33.0.dev0",
               "num_train_timesteps": 1000, "prediction_type": "trigflow", "sigma_data": 0.5}

SHAPE = (1, 4, 8, 8)
SEQ_LENS = (256, 1024, 4096, 6144)  # 512^2, 1024^2 (FLUX packs 2x2 latent patches), past max


def flux_sigmas(n):
    return np.linspace(1.0, 1 / n, n)  # FluxPipeline's default sigmas


def euler_cases():
    """(id, config, steps, set_timesteps kwargs) as the pipelines call set_timesteps."""
    for n in (1, 2, 4):
        # FluxPipeline passes mu even when the config doesn't shift dynamically (then unused).
        yield "schnell", FLUX_SCHNELL, n, {"sigmas": flux_sigmas(n), "mu": calculate_shift(4096)}
    for seq in SEQ_LENS:
        for n in (1, 4, 28):
            yield f"dev-seq{seq}", FLUX_DEV, n, {"sigmas": flux_sigmas(n), "mu": calculate_shift(seq)}
    for n in (1, 4, 7, 28):
        yield "sd3", SD3, n, {}
        yield "dev-no-sigmas", FLUX_DEV, n, {"mu": 0.8}
        yield "linear-shift", FLUX_DEV | {"time_shift_type": "linear"}, n, {"sigmas": flux_sigmas(n), "mu": 1.5}
        yield "odd-shift-sigmas", SD3 | {"shift": 2.7}, n, {"sigmas": flux_sigmas(n)}
        yield "class-defaults", {}, n, {}


def dpm_cases():
    configs = {
        "sana": SANA,
        "sana-shift1": SANA | {"flow_shift": 1.0},
        "euler-at-final": SANA | {"euler_at_final": True, "lower_order_final": False},
        "ignored-ddpm-options": SANA | {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1,
                                        "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        "class-defaults": {},
    }
    for cfg_name, cfg in configs.items():
        for n in (1, 2, 4, 7, 20):
            yield cfg_name, cfg, n, {}


def scm_cases():
    """(id, config, steps, our kwargs, diffusers kwargs)."""
    yield "sprint-2", SANA_SPRINT, 2, {}, {}  # the pipeline's defaults: [1.5708, 1.3, 0]
    yield "sprint-1", SANA_SPRINT, 1, {}, {"intermediate_timesteps": None}
    yield "sprint-2-max", SANA_SPRINT, 2, {"max_timesteps": 1.4, "intermediate_timesteps": 0.9}, \
        {"max_timesteps": 1.4, "intermediate_timesteps": 0.9}
    for n in (2, 4):
        yield f"linspace-{n}", SANA_SPRINT, n, {"intermediate_timesteps": None}, {"intermediate_timesteps": None}
    custom = [1.5708, 1.1, 0.6, 0.0]
    yield "custom", SANA_SPRINT | {"sigma_data": 0.7}, 3, {"timesteps": custom}, \
        {"timesteps": custom, "max_timesteps": None, "intermediate_timesteps": None}


def reference(name, cfg):
    diffusers = pytest.importorskip("diffusers")
    cls = SAMPLERS[name]
    return getattr(diffusers, cls.diffusers_class).from_config(getattr(cls, "diffusers_defaults", {}) | cfg)






def run_steps(monkeypatch, ours, ref):
    """Step both over the whole schedule from the same samples and outputs; compare each step."""
    torch = pytest.importorskip("torch")
    assert ours.timesteps.dtype == np.float32
    data = np.random.default_rng(len(ours.timesteps))
    ours_noise, ref_noise = np.random.default_rng(123), np.random.default_rng(123)
    patch_randn(monkeypatch, ref, ref_noise)
    ref.set_begin_index(0)  # as the pipelines do
    x = (data.standard_normal(SHAPE) * ours.init_noise_sigma).astype(np.float32)
    for i, t in enumerate(ref.timesteps[: len(ours.timesteps)]):
        out = data.standard_normal(SHAPE).astype(np.float32)
        expected = ref.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample.numpy()
        got = ours.step(out, i, x, rng=ours_noise)
        assert got.dtype == np.float32
        assert_close(got, expected)
        x = expected  # both continue from the same sample, so a mismatch points at its step
    assert ours_noise.bit_generator.state == ref_noise.bit_generator.state


@pytest.mark.parametrize("cfg,n,kwargs", [pytest.param(c, n, kw, id=f"{i}-{n}") for i, c, n, kw in euler_cases()])
def test_flow_euler_matches_diffusers(monkeypatch, cfg, n, kwargs):
    ref = reference("flow_euler", cfg)
    ref.set_timesteps(n, **kwargs)
    ours = make_sampler("flow_euler", cfg)
    ours.set_timesteps(n, **kwargs)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert ours.sigmas[-1] == 0 and len(ours.sigmas) == n + 1
    x = np.ones(SHAPE, np.float32)
    assert ours.scale_model_input(x, 0) is x and ours.init_noise_sigma == 1.0
    run_steps(monkeypatch, ours, ref)


@pytest.mark.parametrize("cfg,n", [pytest.param(c, n, id=f"{i}-{n}") for i, c, n, _ in dpm_cases()])
def test_flow_dpm_matches_diffusers(monkeypatch, cfg, n):
    ref = reference("flow_dpm", cfg)
    ref.set_timesteps(n)
    ours = make_sampler("flow_dpm", cfg)
    ours.set_timesteps(n)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float32))
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert ours.init_noise_sigma == float(ref.init_noise_sigma)
    run_steps(monkeypatch, ours, ref)


@pytest.mark.parametrize("cfg,n,ours_kw,ref_kw", [pytest.param(*c[1:], id=c[0]) for c in scm_cases()])
def test_scm_matches_diffusers(monkeypatch, cfg, n, ours_kw, ref_kw):
    ref = reference("scm", cfg)
    ref.set_timesteps(n, **{"max_timesteps": 1.57080, "intermediate_timesteps": 1.3} | ref_kw)
    ours = make_sampler("scm", cfg)
    ours.set_timesteps(n, **ours_kw)
    expected = ref.timesteps.numpy()
    linspace = "timesteps" not in ours_kw and (n != 2 or ours_kw.get("intermediate_timesteps", "auto") is None)
    if linspace:
        # torch.linspace rounds its own way in float32; ours is within 1 ulp.
        np.testing.assert_array_max_ulp(ours.angles, expected, maxulp=1)
        ref.timesteps = torch_tensor(ours.angles)  # step both along the same angles
    else:
        np.testing.assert_array_equal(ours.angles, expected)
    np.testing.assert_array_equal(ours.timesteps, ours.angles[:-1])
    assert ours.angles[-1] == 0
    run_steps(monkeypatch, ours, ref)


def torch_tensor(a):
    import torch

    return torch.from_numpy(np.array(a))


def test_scm_pipeline_loop():
    """The documented loop with our hooks reproduces SanaSprintPipeline's denoising loop."""
    torch = pytest.importorskip("torch")
    cfg = SANA_SPRINT
    ref = reference("scm", cfg)
    sd = ref.config.sigma_data
    weight = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    def transformer(x, t):  # a stand-in flow model, the same function in numpy and torch
        return np.tanh(x * weight + 3 * t) - 0.5 * x

    for n, kwargs in ((2, {}), (1, {"intermediate_timesteps": None}), (4, {"intermediate_timesteps": None})):
        noise = np.random.default_rng(n).standard_normal(SHAPE).astype(np.float32)
        # SanaSprintPipeline.__call__, steps 4-7 (guidance embedding left out: it only feeds the model).
        ref.set_timesteps(n, max_timesteps=1.57080, **({"intermediate_timesteps": 1.3} | kwargs))
        ref.set_begin_index(0)
        ref_noise = np.random.default_rng(7)
        with pytest.MonkeyPatch.context() as mp:
            patch_randn(mp, ref, ref_noise)
            latents = torch.from_numpy(noise) * sd
            for t in ref.timesteps[:-1]:
                timestep = t.expand(latents.shape[0])
                latents_model_input = latents / sd
                scm_timestep = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))
                s = scm_timestep.view(-1, 1, 1, 1)
                latent_model_input = latents_model_input * torch.sqrt(s**2 + (1 - s) ** 2)
                noise_pred = torch.from_numpy(transformer(latent_model_input.numpy(), float(scm_timestep[0])))
                noise_pred = ((1 - 2 * s) * latent_model_input + (1 - 2 * s + 2 * s**2) * noise_pred) / torch.sqrt(
                    s**2 + (1 - s) ** 2
                )
                noise_pred = noise_pred.float() * sd
                latents, denoised = ref.step(noise_pred, timestep, latents, return_dict=False)
            expected = (denoised / sd).numpy()

        ours, rng = make_sampler("scm", cfg), np.random.default_rng(7)
        ours.set_timesteps(n)
        x = noise * ours.init_noise_sigma
        for i in range(len(ours.timesteps)):
            out = transformer(ours.scale_model_input(x, i), ours.model_timestep(i))
            x = ours.step(ours.prepare_model_output(out, x, i), i, x, rng=rng)
        got = ours.final_sample(x)
        assert got.dtype == np.float32
        assert_close(got, expected)
        np.testing.assert_array_equal(ours.denoised, x)  # the last step lands on its x0
        assert rng.bit_generator.state == ref_noise.bit_generator.state


def test_scm_hooks_match_pipeline_formulas():
    torch = pytest.importorskip("torch")
    ours = make_sampler("scm", SANA_SPRINT)
    ours.set_timesteps(2)
    rng = np.random.default_rng(1)
    x, out = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    for i, t in enumerate(torch.tensor([1.57080, 1.3])):
        s = torch.sin(t) / (torch.cos(t) + torch.sin(t))
        assert ours.model_timestep(i) == pytest.approx(float(s), rel=1e-6)
        inp = torch.from_numpy(x) / 0.5 * torch.sqrt(s**2 + (1 - s) ** 2)
        assert_close(ours.scale_model_input(x, i), inp.numpy())
        flow = ((1 - 2 * s) * inp + (1 - 2 * s + 2 * s**2) * torch.from_numpy(out)) / torch.sqrt(s**2 + (1 - s) ** 2)
        assert_close(ours.prepare_model_output(out, x, i), (flow * 0.5).numpy())
    assert ours.init_noise_sigma == 0.5
    assert_close(ours.final_sample(x), x / 0.5)


def test_flow_dpm_timesteps_for_many_step_counts():
    for n in range(1, 61):
        ref = reference("flow_dpm", SANA)
        ref.set_timesteps(n)
        ours = make_sampler("flow_dpm", SANA)
        ours.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float32), err_msg=f"n={n}")
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy(), err_msg=f"n={n}")


@pytest.mark.parametrize("cfg", [FLUX_SCHNELL, FLUX_DEV, SD3], ids=["schnell", "dev", "sd3"])
def test_flow_euler_timesteps_for_many_step_counts(cfg):
    ours = make_sampler("flow_euler", cfg)
    for n in range(1, 61):
        kwargs = {"mu": ours.mu_for(1024)} if cfg is FLUX_DEV else {}
        if cfg is not SD3:
            kwargs["sigmas"] = flux_sigmas(n)
        ref = reference("flow_euler", cfg)
        ref.set_timesteps(n, **kwargs)
        ours.set_timesteps(n, **kwargs)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"n={n}")
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy(), err_msg=f"n={n}")


def test_calculate_shift_and_mu_for():
    pytest.importorskip("diffusers")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as ref_shift

    custom = FLUX_DEV | {"base_image_seq_len": 64, "max_image_seq_len": 8192, "base_shift": 0.3, "max_shift": 1.4}
    for seq in SEQ_LENS + (64, 4000):
        assert calculate_shift(seq) == ref_shift(seq)
        assert make_sampler("flow_euler", FLUX_DEV).mu_for(seq) == ref_shift(seq)
        # FluxPipeline reads these config keys (with these defaults when absent).
        expected = ref_shift(seq, 64, 8192, 0.3, 1.4)
        assert calculate_shift(seq, 64, 8192, 0.3, 1.4) == expected
        assert make_sampler("flow_euler", custom).mu_for(seq) == expected
    assert make_sampler("flow_euler", FLUX_SCHNELL).mu_for(4096) is None
    assert make_sampler("flow_euler", SD3).mu_for(4096) is None


def test_registry():
    assert set(FLOW) == {"flow_euler", "flow_dpm", "scm"}
    for name, cls in FLOW.items():
        assert issubclass(cls, Sampler) and cls.name == name
        assert cls.stochastic == (name == "scm")
    assert isinstance(make_sampler("flow_euler", FLUX_DEV), FLOW["flow_euler"])
    assert isinstance(make_sampler("flow_dpm", SANA), FLOW["flow_dpm"])
    assert isinstance(make_sampler("scm", SANA_SPRINT), FLOW["scm"])


@pytest.mark.parametrize("name", [n for n in SAMPLERS if not SAMPLERS[n].flow_matching])
def test_default_hooks_are_identities(name):
    ours = make_sampler(name, {})
    ours.set_timesteps(4)
    x, out = np.ones(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
    for i in range(4):
        assert ours.model_timestep(i) == ours.timesteps[i]
        assert ours.prepare_model_output(out, x, i) is out
    assert ours.final_sample(x) is x
    with pytest.raises(ValueError):
        ours.model_timestep(4)


UNSUPPORTED = [
    ("flow_euler", "shift_terminal", 0.1),
    ("flow_euler", "use_karras_sigmas", True),
    ("flow_euler", "use_exponential_sigmas", True),
    ("flow_euler", "use_beta_sigmas", True),
    ("flow_euler", "invert_sigmas", True),
    ("flow_euler", "stochastic_sampling", True),
    ("flow_euler", "time_shift_type", "cosine"),
    ("flow_dpm", "use_flow_sigmas", False),
    ("flow_dpm", "prediction_type", "epsilon"),
    ("flow_dpm", "prediction_type", "v_prediction"),
    ("flow_dpm", "use_dynamic_shifting", True),
    ("flow_dpm", "solver_order", 3),
    ("flow_dpm", "algorithm_type", "sde-dpmsolver++"),
    ("flow_dpm", "solver_type", "heun"),
    ("flow_dpm", "thresholding", True),
    ("flow_dpm", "use_karras_sigmas", True),
    ("flow_dpm", "use_exponential_sigmas", True),
    ("flow_dpm", "use_beta_sigmas", True),
    ("flow_dpm", "use_lu_lambdas", True),
    ("flow_dpm", "final_sigmas_type", "sigma_min"),
    ("flow_dpm", "timestep_spacing", "karras"),
    ("scm", "prediction_type", "epsilon"),
]
BASE_CONFIG = {"flow_euler": FLUX_DEV, "flow_dpm": SANA, "scm": SANA_SPRINT}


@pytest.mark.parametrize("name,key,value", UNSUPPORTED)
def test_unsupported_option_raises(name, key, value):
    with pytest.raises(ValueError, match=key) as err:
        make_sampler(name, BASE_CONFIG[name] | {key: value})
    assert "\n" not in str(err.value)


def test_flow_euler_accepts_falsy_shift_terminal():
    for off in (None, 0, 0.0, False):
        make_sampler("flow_euler", SD3 | {"shift_terminal": off})


@pytest.mark.parametrize("call,match", [
    (lambda s: s.set_timesteps(4), "mu"),  # use_dynamic_shifting needs mu
    (lambda s: s.set_timesteps(4, mu=1.0, sigmas=flux_sigmas(3)), "sigmas"),
    (lambda s: s.set_timesteps(0, mu=1.0), "num_steps"),
])
def test_flow_euler_bad_calls(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_sampler("flow_euler", FLUX_DEV))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_steps": 3, "intermediate_timesteps": 1.3}, "intermediate_timesteps"),
    ({"num_steps": 2, "timesteps": [1.5, 0.5, 0.0], "max_timesteps": 1.5}, "timesteps"),
    ({"num_steps": 2, "timesteps": [1.5, 0.0]}, "timesteps"),
    ({"num_steps": 2, "timesteps": [1.5, 0.7, 0.1]}, "end at 0"),
    ({"num_steps": 1001}, "num_train_timesteps"),
    ({"num_steps": 0}, "num_steps"),
])
def test_scm_bad_calls(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sampler("scm", SANA_SPRINT).set_timesteps(**kwargs)


@pytest.mark.parametrize("name", list(FLOW))
def test_bad_step_indices(name):
    sampler = make_sampler(name, BASE_CONFIG[name])
    sampler.set_timesteps(4, **({"mu": 1.0} if name == "flow_euler" else {}))
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError):
        sampler.step(x, 4, x, rng=np.random.default_rng(0))


def test_flow_dpm_set_timesteps_resets_multistep_state():
    ours = make_sampler("flow_dpm", SANA)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    ours.set_timesteps(10)
    first = ours.step(xs[0], 0, xs[1])
    ours.step(xs[1], 1, xs[0])
    ours.set_timesteps(10)
    np.testing.assert_array_equal(ours.step(xs[0], 0, xs[1]), first)


def test_flow_samplers_do_not_import_torch():
    code = ("import sys; from edgegen.runtimes.samplers import flow_euler, flow_dpm, scm; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scm_angles_are_trigflow():
    ours = make_sampler("scm", SANA_SPRINT)
    ours.set_timesteps(2)
    np.testing.assert_array_equal(ours.angles, np.array([1.57080, 1.3, 0], np.float32))
    assert float(ours.angles[0]) == pytest.approx(math.pi / 2, abs=1e-5)
