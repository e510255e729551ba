"""Samplers: ancestral DDPM, DDIM and DPM-Solver++(2M) (Gaussian diffusion, respaced), Euler / Heun /
DDIM (flow).

Classifier-free guidance uses ONE batched forward per model evaluation: the batch [x; x] with labels
[y; null] goes through `model.forward_with_cfg` (official DiT convention) and the first half of the
guided output is kept, so exactly N samples come back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn
from tqdm.auto import tqdm

from .base import Diffusion, eval_mode
from .config import SAMPLERS, samplers_for
from .flow import FlowMatching
from .gaussian import GaussianDiffusion

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _validate(diffusion: Diffusion, sampler: str, steps: int, cfg_scale: float, eta: float) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid choices: {list(SAMPLERS)}")
    valid = samplers_for(diffusion.objective)
    if sampler not in valid:
        raise ValueError(
            f"sampler {sampler!r} does not apply to objective {diffusion.objective!r}; "
            f"valid choices: {list(valid)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if steps > diffusion.num_timesteps:
        raise ValueError(
            f"steps={steps} is larger than the {diffusion.num_timesteps} trained timesteps; "
            f"use 1..{diffusion.num_timesteps}"
        )
    if not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be >= 0 (1.0 = no guidance), got {cfg_scale}")
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM), got {eta}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta={eta} only applies to sampler='ddim', not {sampler!r}; leave eta=0")


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


Generators = torch.Generator | Sequence[torch.Generator] | None


def _randn(shape: Sequence[int], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal (shape); with a sequence of generators, row i from ``generator[i]`` (one per
    sample: a sample's draws then do not depend on which batch it is in)."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} samples: give one per sample")
        rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.stack(rows).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device).to(device)


def make_denoiser(
    model: nn.Module, y: torch.Tensor, cfg_scale: float = 1.0, guide_channels: int | None = None
) -> Denoiser:
    """(x (N, C, H, W), t_model (N,)) -> model output (N, C_out, H, W), guided when cfg_scale != 1."""
    if cfg_scale == 1.0:
        return lambda x, t: model(x, t, y).to(x.dtype)
    if not hasattr(model, "forward_with_cfg") or not hasattr(model, "num_classes"):
        raise ValueError(
            "cfg_scale != 1 needs a model with forward_with_cfg(x, t, y, cfg_scale) and num_classes"
        )
    y_both = torch.cat([y, torch.full_like(y, model.num_classes)])
    extra = {} if guide_channels is None else {"guide_channels": guide_channels}

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), y_both, cfg_scale, **extra)
        return out[: x.shape[0]].to(x.dtype)

    return denoise


def _labels(model: nn.Module, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """(N,) long labels on ``device``; ValueError for a label the model has no embedding for (a DiT
    built with class_dropout_prob 0 has no null label ``num_classes``)."""
    k = getattr(model, "num_classes", None)
    null = getattr(getattr(model, "config", None), "class_dropout_prob", 1.0) > 0  # DiT: has the null row
    if y is None:
        if k is None:
            raise ValueError("y=None means the null class, which needs model.num_classes")
        if not null:
            raise ValueError(
                "y=None means the null label, which this model does not have (built with "
                f"class_dropout_prob 0); give class labels in 0..{k - 1}"
            )
        return torch.full((n,), k, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match the batch, got {tuple(y.shape)}")
    y = y.long()
    if k is None or not n:
        return y
    lo, hi = int(y.min()), int(y.max())  # one sync per sample() call, not per step
    if lo < 0 or hi > (k if null else k - 1):
        what = f"and the null label {k}" if null else "no null label: class_dropout_prob 0"
        raise ValueError(
            f"y: label {lo if lo < 0 else hi} is outside the model's labels 0..{k - 1} ({what}); give "
            "labels in that range"
        )
    return y


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    cur: tuple[float, float],
    nxt: tuple[float, float],
    eta: float = 0.0,
    generator: Generators = None,
) -> torch.Tensor:
    """One DDIM step between noise levels x = a x0 + s eps: cur = (a, s) -> nxt = (a', s').

    x' = a' x0 + sqrt(s'^2 - sigma^2) eps + sigma z with sigma = eta * sqrt(posterior variance of
    x' given (x, x0)), i.e. eta = 0 is the deterministic DDIM and eta = 1 the ancestral step. Works for
    any Gaussian path (VP diffusion, linear flow interpolant) and in either direction when eta = 0.
    """
    (a, s), (a_n, s_n) = cur, nxt
    sigma = 0.0
    if eta > 0 and s > 0 and s_n > 0 and a_n > 0:
        sigma = eta * (s_n / s) * math.sqrt(max(s * s - (a / a_n) ** 2 * s_n * s_n, 0.0))
    out = a_n * x0 + math.sqrt(max(s_n * s_n - sigma * sigma, 0.0)) * eps
    if sigma > 0:
        out = out + sigma * _randn(x0.shape, generator, x0.device)
    return out


def dpmpp_2m_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor | None,
    cur: tuple[float, float],
    nxt: tuple[float, float],
    h_prev: float | None,
) -> tuple[torch.Tensor, float]:
    """One DPM-Solver++(2M) step (Lu et al. 2022, arXiv:2211.01095, Algorithm 2) from level
    cur = (a, s) to nxt = (a', s') of x = a x0 + s eps; returns (x', h), h = lambda' - lambda with
    lambda = log(a / s).

    x' = (s' / s) x + a' (1 - e^-h) D, where D = x0 on the first step (h_prev None: DDIM) and
    otherwise the multistep extrapolation D = (1 + 1/2r) x0 - (1/2r) x0_prev, r = h_prev / h.
    The step to clean data (s' = 0) is first order: x' = x0, as DDIM's last step."""
    (a, s), (a_n, s_n) = cur, nxt
    if s_n == 0:
        return x0, math.inf
    h = math.log(a_n / s_n) - math.log(a / s)
    d = x0
    if x0_prev is not None and h_prev is not None and math.isfinite(h_prev):
        c = h / (2.0 * h_prev)  # 1 / (2 r)
        d = (1.0 + c) * x0 - c * x0_prev
    return (s_n / s) * x - a_n * math.expm1(-h) * d, h


# ---------------------------------------------------------------------- Gaussian diffusion
def _levels(d: GaussianDiffusion, i: int) -> tuple[float, float]:
    """(a, s) = (sqrt(abar_i), sqrt(1 - abar_i)) of step i, or (1, 0) (clean data) for i = -1."""
    if i < 0:
        return 1.0, 0.0
    abar = float(d.alphas_cumprod[i])
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def _gaussian_predict(
    d: GaussianDiffusion, f: Denoiser, x: torch.Tensor, i: int, clip: bool = False
) -> dict[str, torch.Tensor]:
    """Model evaluation at step i (N, C, H, W) -> p_mean_variance dict (mean, log_variance, pred_x0/eps).
    ``clip``: x0_hat clamped to the data range [-1, 1] and eps_hat, the posterior mean made consistent
    with it (ADM's ``clip_denoised``, for pixel-space models)."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    p = d.p_mean_variance(f(x, d.model_timesteps(t)), x, t)
    if not clip:
        return p
    x0 = p["pred_x0"].clamp(-1.0, 1.0)
    a, s = _levels(d, i)
    mean, _, _ = d.q_posterior_mean_variance(x0, x, t)
    return {**p, "pred_x0": x0, "pred_eps": (x - a * x0) / s, "mean": mean}


# ---------------------------------------------------------------------- flow
def _flow_step(
    fm: FlowMatching,
    f: Denoiser,
    x: torch.Tensor,
    t: float,
    t_next: float,
    sampler: str,
    eta: float,
    generator: Generators,
) -> torch.Tensor:
    """One step of the flow sampler from time t to t_next (either direction when deterministic)."""
    n = x.shape[0]
    velocity = lambda x_, t_: f(x_, torch.full((n,), t_ * fm.num_timesteps, device=x.device))
    v = velocity(x, t)
    dt = t_next - t
    if sampler == "euler":
        return x + dt * v
    if sampler == "heun":
        return x + dt * 0.5 * (v + velocity(x + dt * v, t_next))
    # ddim (eta) or ddpm (ancestral = DDIM with eta = 1); at eta = 0 this equals the Euler step
    x0_hat, eps_hat = x - t * v, x + (1.0 - t) * v
    step_eta = 1.0 if sampler == "ddpm" else eta
    return ddim_step(x0_hat, eps_hat, (1.0 - t, t), (1.0 - t_next, t_next), step_eta, generator)


def _time_grid(steps: int) -> list[float]:
    """Sampling times 1 = t_0 > t_1 > ... > t_steps = 0 (uniform)."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


# ---------------------------------------------------------------------- public API
@torch.no_grad()
def sample(
    model: nn.Module,
    diffusion: Diffusion,
    shape: Sequence[int],
    y: torch.Tensor | None,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.0,
    eta: float = 0.0,
    generator: Generators = None,
    guide_channels: int | None = None,
    progress: bool = False,
    noise: torch.Tensor | None = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Draw N = shape[0] samples (N, C, H, W) from `model`.

    y: (N,) class labels (the null label model.num_classes is allowed; None = all null).
    Gaussian diffusion: sampler "ddpm" (ancestral, model variance), "ddim" (eta in [0, 1]) or
    "dpmpp_2m" (DPM-Solver++(2M), second order, deterministic) on `steps` evenly spaced trained
    timesteps. Flow: "euler", "heun" (ODE from t = 1 to 0 on a uniform
    grid of `steps` intervals; Heun costs 2 evaluations per step), "ddim" or "ddpm".
    cfg_scale: classifier-free guidance scale (1 = none), one batched forward per evaluation.
    noise: optional starting noise (N, C, H, W); otherwise drawn with `generator`.
    clip_denoised: clamp each step's x0 estimate to [-1, 1] (pixel-space data; Gaussian diffusion).
    The model runs in eval mode under no_grad; its training flag is restored afterwards.
    """
    _validate(diffusion, sampler, steps, cfg_scale, eta)
    shape = tuple(int(s) for s in shape)
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but shape={shape}")
    device = noise.device if noise is not None else _model_device(model)
    x = noise.float() if noise is not None else _randn(shape, generator, device)
    labels = _labels(model, y, shape[0], device)
    with eval_mode(model):
        f = make_denoiser(model, labels, cfg_scale, guide_channels)
        if isinstance(diffusion, FlowMatching):
            if clip_denoised:
                raise ValueError("clip_denoised is for Gaussian diffusion; flow sampling does not clip")
            times = _time_grid(steps)
            for t, t_next in tqdm(list(pairwise(times)), disable=not progress, desc=sampler):
                x = _flow_step(diffusion, f, x, t, t_next, sampler, eta, generator)
            return x
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"unsupported diffusion type {type(diffusion).__name__}")
        d = diffusion if steps == diffusion.num_timesteps else diffusion.respace(steps)
        x0_prev, h_prev = None, None
        for i in tqdm(range(d.num_timesteps - 1, -1, -1), disable=not progress, desc=sampler):
            p = _gaussian_predict(d, f, x, i, clip_denoised)
            if sampler == "dpmpp_2m":
                x0 = p["pred_x0"]
                x, h_prev = dpmpp_2m_step(x, x0, x0_prev, _levels(d, i), _levels(d, i - 1), h_prev)
                x0_prev = x0
            elif sampler == "ddpm":
                x = p["mean"]
                if i > 0:
                    x = x + torch.exp(0.5 * p["log_variance"]) * _randn(x.shape, generator, x.device)
            else:
                x = ddim_step(p["pred_x0"], p["pred_eps"], _levels(d, i), _levels(d, i - 1), eta, generator)
        return x


@torch.no_grad()
def invert(
    model: nn.Module,
    diffusion: Diffusion,
    x0: torch.Tensor,
    y: torch.Tensor | None,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.0,
    guide_channels: int | None = None,
    fixed_point_iters: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic inversion: data x0 (N, C, H, W) -> noise (N, C, H, W) from which
    `sample(..., sampler, steps, eta=0, noise=result)` returns x0.

    Gaussian diffusion: "ddim"; flow: "ddim", "euler" or "heun". Each step first takes the usual
    explicit inversion step (model evaluated at the less noisy point, error O(1/steps) overall), then
    `fixed_point_iters` fixed-point refinements (one model evaluation each, two for heun) that make
    the sampler's own step map the result back onto the previous point (a fixed-point solve of the
    implicit inversion equation), so the round trip becomes exact up to float precision. Needs
    ``steps >= 2``."""
    if isinstance(fixed_point_iters, bool) or not isinstance(fixed_point_iters, int) or fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters must be an int >= 0, got {fixed_point_iters!r}")
    _validate(diffusion, sampler, steps, cfg_scale, 0.0)
    if sampler == "ddpm":
        raise ValueError("the ancestral 'ddpm' sampler is stochastic and cannot be inverted; use 'ddim'")
    if steps < 2:  # one step reads pure noise: it maps almost every x_T to about the data mean
        raise ValueError(
            f"steps={steps} cannot be inverted: a one-step sampler maps nearly all noise to the same "
            "image, so no noise gives back x0; use steps >= 2 (e.g. 50 for a faithful round trip)"
        )
    if sampler == "dpmpp_2m":
        raise ValueError(
            "inversion is implemented for 'ddim' (Gaussian diffusion), not 'dpmpp_2m'; use 'ddim'"
        )
    labels = _labels(model, y, x0.shape[0], x0.device)
    with eval_mode(model):
        f = make_denoiser(model, labels, cfg_scale, guide_channels)
        x = x0.float()
        if isinstance(diffusion, FlowMatching):
            times = _time_grid(steps)[::-1]
            for t, t_next in tqdm(list(pairwise(times)), disable=not progress, desc=f"{sampler}-invert"):
                guess = _flow_step(diffusion, f, x, t, t_next, sampler, 0.0, None)
                for _ in range(fixed_point_iters):  # make the sampling step t_next -> t map guess onto x
                    guess = guess + (x - _flow_step(diffusion, f, guess, t_next, t, sampler, 0.0, None))
                x = guess
            return x
        d = diffusion if steps == diffusion.num_timesteps else diffusion.respace(steps)
        for i in tqdm(range(d.num_timesteps), disable=not progress, desc="ddim-invert"):
            # explicit guess: evaluate at the current (less noisy) level; from clean data x0_hat is x itself.
            p = _gaussian_predict(d, f, x, max(i - 1, 0))
            guess = ddim_step(x if i == 0 else p["pred_x0"], p["pred_eps"], _levels(d, i - 1), _levels(d, i))
            # refine until the DDIM sampling step i -> i-1 maps guess onto x (residual fixed-point iteration)
            for _ in range(fixed_point_iters):
                q = _gaussian_predict(d, f, guess, i)
                guess = guess + (x - ddim_step(q["pred_x0"], q["pred_eps"], _levels(d, i), _levels(d, i - 1)))
            x = guess
        return x
