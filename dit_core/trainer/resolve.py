"""Resolving a config against its data: what the user may leave open, filled before training."""

from __future__ import annotations

import dataclasses

from ..config import TrainConfig
from ..configio import ConfigError, require
from ..data.config import DataConfig
from ..spec import FOLDER_DATASETS, model_config, resolve_budget_steps, train_flops_per_image
from .evaluation import check_evaluation
from .lr_schedule import check_schedule
from .validation import check_validation

__all__ = ["resolve_config"]


def resolve_config(cfg: TrainConfig, dataset) -> TrainConfig:
    """Fill the model's open fields from ``dataset`` and the diffusion, and the budget's step count
    (``budget.max_steps``) and planned FLOPs (``budget.train_flops``); see `ModelConfig.resolve`.
    The validation and sample-evaluation settings are checked here, before training
    (`check_validation`, `check_evaluation`)."""
    for key in ("root", "val_root"):  # a folder given to bundled data is a forgotten --data (not in
        # DataConfig itself: a saved config that carries one must still load)
        require(
            cfg.data.name in FOLDER_DATASETS or getattr(cfg.data, key) is None,
            f"data.{key}",
            f"{cfg.data.name!r} is bundled and reads no folder; unset data.{key}, or set data.name to "
            "imagefolder or latents (--data) to train on that folder",
        )
    size, extracted = cfg.data.image_size, getattr(dataset, "image_size", None)
    require(
        cfg.data.name != "latents" or size in (DataConfig.image_size, extracted),
        "data.image_size",
        f"{size} px, but the latents in {cfg.data.root} were extracted at {extracted} px (latents take "
        f"their size from the manifest); drop --image-size, or extract the images again with "
        f"--image-size {size} into a new --output",
    )
    needs_sigma = cfg.diffusion.model_learns_sigma
    if cfg.model.learn_sigma is not None and cfg.model.learn_sigma != needs_sigma:
        raise ConfigError(
            f"model.learn_sigma: {cfg.model.learn_sigma} but the diffusion (objective="
            f"{cfg.diffusion.objective!r}, learn_sigma={cfg.diffusion.learn_sigma}) needs {needs_sigma}; "
            + (
                "a flow model never outputs a variance (diffusion.learn_sigma is ignored for it): leave "
                "model.learn_sigma unset or false"
                if cfg.diffusion.objective == "flow"
                else "leave model.learn_sigma unset or set diffusion.learn_sigma to match"
            )
        )
    res, patch = int(dataset.resolution), cfg.model.patch_size or model_config(cfg.model.name).patch_size
    if patch > 0 and res % patch and cfg.model.input_size in (None, res):  # in the words of the data
        up = -(-res // patch) * patch
        raise ConfigError(
            f"model.patch_size: patch_size={patch} does not divide input_size={res}, "
            + (
                f"the latents' size in {cfg.data.root} (from {extracted} px images); give a --patch-size "
                f"that divides {res}, or extract the images again with another --image-size into a new "
                "--output"
                if cfg.data.name == "latents"
                else f"the image size (data.image_size); give an --image-size that is a multiple of {patch} "
                f"(e.g. {up}), or a --patch-size that divides {res}"
            )
        )
    model = cfg.model.resolve(
        input_size=int(dataset.resolution),
        in_channels=int(dataset.channels),
        num_classes=int(dataset.num_classes),
        learn_sigma=needs_sigma,
    )
    if (model.input_size, model.in_channels) != (dataset.resolution, dataset.channels):
        raise ConfigError(
            f"model.input_size: the model input {model.in_channels}x{model.input_size}x{model.input_size} "
            f"does not match the data ({dataset.channels}x{dataset.resolution}x{dataset.resolution}); "
            "leave model.input_size / model.in_channels unset to take them from the data"
        )
    if model.num_classes < dataset.num_classes:  # a label >= num_classes would index past the table
        raise ConfigError(
            f"model.num_classes: {model.num_classes} but the data has {dataset.num_classes} classes; "
            f"leave model.num_classes unset to take it from the data, or set it >= {dataset.num_classes}"
        )
    fpi = train_flops_per_image(model.to_dit_config())
    steps = resolve_budget_steps(cfg.budget, fpi)
    flops = cfg.budget.train_flops
    if flops is None:
        flops = float(steps * cfg.budget.global_batch_size * fpi)
    budget = dataclasses.replace(cfg.budget, max_steps=steps, train_flops=flops)
    resolved = dataclasses.replace(cfg, model=model, budget=budget)
    check_schedule(resolved.optim, steps)
    check_validation(resolved)
    check_evaluation(resolved)
    return resolved
