"""sCM (continuous-time consistency) sampler, matching diffusers' SCMScheduler (SANA-Sprint).

Trigflow: at angle t in [0, pi/2] the sample is x_t = cos(t) x0 + sin(t) noise, noise with
std sigma_data, and the model predicts the trigflow velocity F with x0 = cos(t) x_t - sin(t) F.
Each step jumps to x0 and re-noises it to the next angle with fresh noise (drawn on every
step, the last one too, where sin(0) = 0 drops it): the sampler is stochastic.

The SANA-Sprint transformer is a flow model, so SanaSprintPipeline converts around each call;
these methods do it (base.py's generic loop calls them), all indexed by step i:

    x = noise * init_noise_sigma                   # init_noise_sigma = sigma_data (pipeline: latents * sigma_data)
    for i in range(len(timesteps)):
        inp = scale_model_input(x, i)              # x / sigma_data * sqrt(s^2 + (1-s)^2)
        t = model_timestep(i)                      # s = sin(t) / (cos(t) + sin(t)), the flow time in [0, 1]
        out = transformer(inp, timestep=t, guidance=...)   # guidance embedding, no CFG batch
        x = step(prepare_model_output(out, x, i), i, x, rng)
        # prepare_model_output: ((1-2s) inp + (1-2s+2s^2) out) / sqrt(s^2 + (1-s)^2) * sigma_data
    latents = final_sample(x)                      # x / sigma_data (the pipeline decodes denoised / sigma_data)

`step` itself takes what diffusers' SCMScheduler.step takes (the converted output) and
`denoised` holds the x0 it predicted (the pipeline's `denoised`). Every schedule ends at t=0,
where the last step returns exactly that x0, so final_sample(x) is the pipeline's output.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Sampler, _check

MAX_TIMESTEPS = 1.57080  # SanaSprintPipeline's default (pi/2 to 5 digits)
INTERMEDIATE_TIMESTEPS = 1.3  # SanaSprintPipeline's default middle angle for 2 steps


class SCMSampler(Sampler):
    name = "scm"
    diffusers_class = "SCMScheduler"  # the scheduler it reproduces (tests compare against it)
    stochastic = True
    flow_matching = True
    DEFAULTS = {"num_train_timesteps": 1000, "prediction_type": "trigflow", "sigma_data": 0.5}
    UNSUPPORTED: dict = {}

    def _init_schedule(self) -> None:
        _check(self.name, self.config, "prediction_type", ("trigflow",))
        self.sigma_data = float(self.config["sigma_data"])
        self.init_noise_sigma = self.sigma_data  # diffusers' is 1; SanaSprintPipeline scales by sigma_data
        self.angles = np.zeros(0, np.float32)
        self.denoised = None

    def set_timesteps(self, num_steps: int, timesteps=None, max_timesteps: float | None = None,
                      intermediate_timesteps: float | None | str = "auto") -> None:
        """Like diffusers' set_timesteps with SanaSprintPipeline's arguments.

        timesteps: num_steps + 1 angles, descending to 0 (then max_timesteps must be None).
        max_timesteps: the first angle, default 1.57080. intermediate_timesteps: the middle
        angle of a 2-step schedule; "auto" means 1.3 for 2 steps (the pipeline's default) and
        none otherwise; None gives evenly spaced angles from max_timesteps to 0.
        """
        num_steps = self._check_steps(num_steps)
        if num_steps > self.num_train_timesteps:
            raise ValueError(f"{self.name}: num_steps {num_steps} exceeds num_train_timesteps "
                             f"{self.num_train_timesteps}")
        if intermediate_timesteps == "auto":
            intermediate_timesteps = INTERMEDIATE_TIMESTEPS if num_steps == 2 and timesteps is None else None
        if intermediate_timesteps is not None and num_steps != 2:
            raise ValueError(f"{self.name}: intermediate_timesteps needs num_steps == 2, got {num_steps}")
        if timesteps is not None:
            if max_timesteps is not None or intermediate_timesteps is not None:
                raise ValueError(f"{self.name}: pass timesteps or max_timesteps/intermediate_timesteps, not both")
            # diffusers: torch.tensor(list).float(), i.e. float64 values rounded to float32.
            t = np.asarray(timesteps, np.float64).astype(np.float32)
            if t.shape != (num_steps + 1,):
                raise ValueError(f"{self.name}: timesteps must have num_steps + 1 = {num_steps + 1} values, "
                                 f"got shape {t.shape}")
            if t[-1] != 0:
                raise ValueError(f"{self.name}: timesteps must end at 0, got {float(t[-1])}")
        else:
            top = MAX_TIMESTEPS if max_timesteps is None else max_timesteps
            if intermediate_timesteps is not None:
                t = np.array([top, intermediate_timesteps, 0], np.float64).astype(np.float32)
            else:
                # torch.linspace in float32 from float32(top); float64 linspace then rounding
                # lands within 1 ulp of it.
                t = np.linspace(float(np.float32(top)), 0.0, num_steps + 1).astype(np.float32)
        self.angles = t  # num_steps + 1 angles, the last one 0
        self.timesteps = t[:-1].copy()
        self.denoised = None

    def set_strength(self, strength: float, skip: int) -> None:
        raise ValueError(f"{self.name}: starting from an image is not supported (SANA-Sprint's img2img "
                         "is not reproduced)")

    def model_timestep(self, i: int) -> np.float32:
        t = float(self.timesteps[self._index(i)])
        return np.float32(math.sin(t) / (math.cos(t) + math.sin(t)))

    def _input_scale(self, i: int) -> tuple[float, float]:
        s = float(self.model_timestep(i))
        return s, math.sqrt(s**2 + (1 - s) ** 2)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        _, r = self._input_scale(i)
        return (np.asarray(sample, np.float64) / self.sigma_data * r).astype(np.float32)

    def prepare_model_output(self, model_output: np.ndarray, sample: np.ndarray, i: int) -> np.ndarray:
        s, r = self._input_scale(i)
        inp = np.asarray(sample, np.float64) / self.sigma_data * r
        out = np.asarray(model_output, np.float64)
        flow = ((1 - 2 * s) * inp + (1 - 2 * s + 2 * s**2) * out) / r
        return (flow * self.sigma_data).astype(np.float32)

    def final_sample(self, sample: np.ndarray) -> np.ndarray:
        return (np.asarray(sample, np.float64) / self.sigma_data).astype(np.float32)

    def _step(self, out, i, x, rng):
        s, t = float(self.angles[i]), float(self.angles[i + 1])
        x0 = math.cos(s) * x - math.sin(s) * out
        self.denoised = x0.astype(np.float32)
        noise = self._noise(rng, out.shape) * self.sigma_data
        return math.cos(t) * x0 + math.sin(t) * noise
