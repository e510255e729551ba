"""`DiffusionConfig`: the typed, validated description of a diffusion process and its training loss."""

from __future__ import annotations

from dataclasses import dataclass

from ..configio import check_fields, require

OBJECTIVES = ("eps", "v", "x0", "flow")
SCHEDULES = ("linear", "cosine", "quadratic")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
FIXED_VARIANCES = ("large", "small")
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "euler", "heun")
GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")  # eps / v / x0
FLOW_SAMPLERS = ("euler", "heun", "ddim", "ddpm")


def samplers_for(objective: str) -> tuple[str, ...]:
    """The samplers that apply to a diffusion ``objective``."""
    return FLOW_SAMPLERS if objective == "flow" else GAUSSIAN_SAMPLERS


@dataclass
class DiffusionConfig:
    """How data is noised and what the model predicts.

    objective: "eps" | "v" | "x0" (discrete-time Gaussian diffusion, DDPM family) or "flow"
        (rectified flow: x_t = (1 - t) x0 + t noise, t in [0, 1], t = 1 is pure noise, the model
        predicts the velocity noise - x0; it receives t * num_timesteps as its timestep).
    schedule: beta schedule of the Gaussian diffusion (ignored by "flow" and when `betas` is given).
    num_timesteps: trained number of discrete steps T; model timesteps are on the 0..T scale.
    learn_sigma: eps/v/x0 only: the model also outputs C channels that interpolate the log
        variance, trained with the hybrid loss mse + vb_lambda * T * L_t (improved DDPM; DiT).
        Ignored by "flow" (a flow model never outputs a variance).
    timestep_sampling: "uniform" or "logit_normal" (t = sigmoid(N(mean, std)), SD3-style).
    logit_normal_mean / logit_normal_std: mean and std of that normal (SD3: 0 and 1).
    betas: optional custom beta sequence (length num_timesteps, values in (0, 1)).
    vb_lambda: weight lambda of the variational bound L_vlb = T * E_t[L_t] (1e-3 as in improved
        DDPM / DiT, so that with T = 1000 the loss is mse + vb as in DiT).
    fixed_variance: reverse variance when learn_sigma is False: "large" (beta_t, DiT's default)
        or "small" (the posterior variance).
    beta_start / beta_end: endpoints of the linear and quadratic schedules at T = 1000 (they are
        scaled by 1000 / T for other T, as in improved DDPM).
    """

    objective: str = "eps"
    schedule: str = "linear"
    num_timesteps: int = 1000
    learn_sigma: bool = True
    timestep_sampling: str = "uniform"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    betas: tuple[float, ...] | None = None
    vb_lambda: float = 1e-3
    fixed_variance: str = "large"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        choices = {"objective": OBJECTIVES, "schedule": SCHEDULES, "timestep_sampling": TIMESTEP_SAMPLINGS}
        check_fields(self, "diffusion.", {**choices, "fixed_variance": FIXED_VARIANCES})
        t = self.num_timesteps
        require(
            not isinstance(t, bool) and isinstance(t, int),
            "diffusion.num_timesteps",
            f"must be an int >= 1, got {t!r}",
        )
        rules = {"num_timesteps": ">= 1", "logit_normal_std": "a finite number > 0"}
        rules |= {"logit_normal_mean": "finite", "vb_lambda": "a finite number >= 0"}
        check_fields(self, "diffusion.", rules)
        require(
            0 < self.beta_start <= self.beta_end < 1,
            "diffusion.beta_start",
            f"needs 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, "
            f"beta_end={self.beta_end}",
        )
        if self.betas is not None:
            betas = tuple(float(b) for b in self.betas)
            require(
                len(betas) == t,
                "diffusion.betas",
                f"has {len(betas)} entries but num_timesteps={t}; set diffusion.num_timesteps={len(betas)}",
            )
            bad = [b for b in betas if not (0 < b < 1)]
            require(not bad, "diffusion.betas", f"must lie in (0, 1); offending values: {bad[:5]}")
            self.betas = betas

    @property
    def model_learns_sigma(self) -> bool:
        """True iff the model must output 2*C channels (eps/v/x0 with learn_sigma; flow never)."""
        return self.learn_sigma and self.objective != "flow"
