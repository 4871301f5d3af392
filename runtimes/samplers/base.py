"""Shared schedule code for the numpy samplers.

Each sampler reproduces one diffusers scheduler, read from the same config dict
(a model's scheduler_config.json). Math runs in float64; outputs are float32.
"""

from __future__ import annotations

import operator

import numpy as np

# Allowed values for boolean options we only support switched off (None counts as off,
# as in diffusers).
OFF = (False, None)


class Sampler:
    name = ""
    stochastic = False
    flow_matching = False  # True for the flow-matching (rectified-flow / trigflow) samplers
    edm = False            # True for the EDM (Karras sigma, preconditioned) samplers
    # The options this sampler reads, with the defaults of the diffusers class it mirrors:
    # a config that leaves a key out must give the same result as diffusers would.
    DEFAULTS: dict = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    # Options not implemented, with the values under which diffusers' result doesn't depend
    # on them; anything else is refused rather than silently giving different images.
    UNSUPPORTED: dict = {"rescale_betas_zero_snr": OFF}
    # Per-step tables that a late start (set_strength) cuts: n timesteps, n + 1 sigmas or angles.
    STEP_TABLES = ("timesteps", "_t", "sigmas", "angles")
    begin_index = 0  # steps of the full schedule skipped by set_strength

    def __init__(self, config: dict):
        for key, allowed in self.UNSUPPORTED.items():
            if key in config and config[key] not in allowed:
                raise ValueError(f"{self.name}: unsupported option {key}={config[key]!r}")
        self.config = {k: config.get(k, v) for k, v in self.DEFAULTS.items()}
        self.num_train_timesteps = int(self.config["num_train_timesteps"])
        self.timesteps = np.zeros(0, np.float32)
        self.init_noise_sigma = 1.0
        self._init_schedule()

    def _init_schedule(self) -> None:
        """Check the config and build the training schedule (DDPM betas; flow samplers have none)."""
        cfg = self.config
        _check(self.name, cfg, "prediction_type", ("epsilon", "v_prediction"))
        _check(self.name, cfg, "timestep_spacing", ("leading", "trailing", "linspace"))
        # diffusers builds the schedule in float32 (torch's CPU cumprod accumulates in
        # double). Near t=0, 1 - alphas_cumprod keeps only a few digits in float32, so
        # low sigmas differ from the float64 ones by ~1e-4 relative: round the same way.
        alphas = (1 - self._betas().astype(np.float32)).astype(np.float64)
        self.alphas_cumprod = np.cumprod(alphas).astype(np.float32).astype(np.float64)

    def _betas(self) -> np.ndarray:
        cfg, n = self.config, self.num_train_timesteps
        if cfg["trained_betas"] is not None:
            # diffusers holds given betas as float32; round the same way.
            return np.asarray(cfg["trained_betas"], np.float32).astype(np.float64)
        _check(self.name, cfg, "beta_schedule", ("linear", "scaled_linear"))
        if cfg["beta_schedule"] == "linear":
            return np.linspace(cfg["beta_start"], cfg["beta_end"], n)
        return np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n) ** 2

    def _spaced(self, n: int) -> np.ndarray:
        """Timesteps for n steps per timestep_spacing, as Euler and DDIM lay them out.

        The numpy expressions copy diffusers' so that rounding quirks (e.g. trailing
        spacing when num_train_timesteps / n isn't whole) come out the same.
        """
        total, spacing = self.num_train_timesteps, self.config["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, total - 1, n)[::-1].copy()
        if spacing == "leading":
            return (np.arange(n) * (total // n)).round()[::-1] + self.config["steps_offset"]
        return np.arange(total, 0, -total / n).round() - 1

    def set_timesteps(self, num_steps: int) -> None:
        self._set_schedule(self._check_steps(num_steps))

    def _check_steps(self, num_steps: int) -> int:
        num_steps = operator.index(num_steps)
        if num_steps < 1:
            raise ValueError(f"{self.name}: num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        return num_steps

    def _set_schedule(self, num_steps: int) -> None:
        raise NotImplementedError

    def set_strength(self, strength: float, skip: int) -> None:
        """Start `skip` steps into the prepared schedule (img2img, inpainting with strength < 1),
        as diffusers' get_timesteps runs timesteps[skip:] after set_begin_index(skip). Step
        indices then count from the first step that runs. `strength` is for samplers whose
        schedule itself depends on it (LCM); the caller's pipeline rule gives `skip`."""
        skip = operator.index(skip)
        n = len(self.timesteps)
        if not 0 <= skip < n:
            raise ValueError(f"strength {strength} leaves none of the {n} steps to run; raise the strength "
                             "or the steps")
        for name in self.STEP_TABLES:
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[skip:].copy())
        self.begin_index = skip

    def add_noise(self, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """`sample` (clean latents) noised to the level of the first step that runs: diffusers'
        add_noise at that timestep, where img2img starts. DDPM schedules: sqrt(a) x + sqrt(1 - a) n."""
        a = self.alphas_cumprod[int(self.timesteps[0])]
        return self._mix(sample, a**0.5, noise, (1 - a) ** 0.5)

    @staticmethod
    def _mix(sample, a: float, noise, b: float) -> np.ndarray:
        return (a * np.asarray(sample, np.float64) + b * np.asarray(noise, np.float64)).astype(np.float32)

    def _index(self, i: int) -> int:
        i = operator.index(i)
        if not 0 <= i < len(self.timesteps):
            raise ValueError(f"{self.name}: step index {i} outside 0..{len(self.timesteps) - 1}"
                             " (call set_timesteps first)")
        return i

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        self._index(i)
        return sample

    # The three hooks below are identities except where a sampler's parameterization needs the
    # caller to transform around the model call (SCM's trigflow). A runtime loop that calls them
    # works for every sampler:
    #     x = noise * s.init_noise_sigma      # img2img: s.set_strength(...); x = s.add_noise(x0, noise)
    #     for i in range(len(s.timesteps)):
    #         out = model(s.scale_model_input(x, i), s.model_timestep(i))
    #         x = s.step(s.prepare_model_output(out, x, i), i, x, rng)
    #     latents = s.final_sample(x)
    def model_timestep(self, i: int) -> np.float32:
        """The timestep value to give the model at step i (before any model-specific scaling)."""
        return self.timesteps[self._index(i)]

    def prepare_model_output(self, model_output: np.ndarray, sample: np.ndarray, i: int) -> np.ndarray:
        """The model's raw output (after guidance) as `step` takes it."""
        self._index(i)
        return model_output

    def final_sample(self, sample: np.ndarray) -> np.ndarray:
        """The latents to decode, from the sample the last step returned."""
        return sample

    def step(self, model_output: np.ndarray, i: int, sample: np.ndarray,
             rng: np.random.Generator | None = None) -> np.ndarray:
        i = self._index(i)
        out = np.asarray(model_output, np.float64)
        x = np.asarray(sample, np.float64)
        return self._step(out, i, x, rng).astype(np.float32)

    def _step(self, out: np.ndarray, i: int, x: np.ndarray, rng) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _noise(rng: np.random.Generator | None, shape) -> np.ndarray:
        # Drawn as float32 because that is what callers reproduce diffusers' draws with;
        # no rng means fresh entropy, like diffusers with generator=None.
        rng = np.random.default_rng() if rng is None else rng
        return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


def _check(name: str, cfg: dict, key: str, allowed: tuple) -> None:
    if cfg[key] not in allowed:
        raise ValueError(f"{name}: unsupported {key}={cfg[key]!r} (supported: {', '.join(allowed)})")
