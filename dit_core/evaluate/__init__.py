"""Evaluation: sample a model, then FID / sFID / IS / precision-recall against cached reference stats.

    from dit_core.evaluate import evaluate_model, evaluate_samples, log_metrics
    m = evaluate_model(model, diffusion, num_samples=500, batch_size=100, sampler="ddim", steps=50,
                       cfg_scale=1.5, seed=0, num_classes=10, image_size=16, channels=1,
                       reference="digits", metrics=("fid_digits", "is_digits"))
    log_metrics(m, step)   # -> MLflow eval/fid_digits, eval/is_digits at `step`

FID uses clean-fid's "clean" preprocessing (its own PIL bicubic resizer) and the TF Inception weights
from a local file (see ``features.resolve_inception_weights``); ``*_digits`` and ``*_photos`` metrics
use a small CNN trained on that dataset's training images (``domain_classifier``). See docs/evaluation.md.
"""

from .domain_classifier import DomainClassifierRecipe, DomainExtractor, digits_recipe, photos_recipe
from .features import (
    FeatureExtractor,
    InceptionExtractor,
    RandomConvExtractor,
    resolve_inception_weights,
    to_uint8,
)
from .frechet import GaussianStats, fid_from_features, frechet_distance
from .metrics import (
    DIGITS_METRICS,
    INCEPTION_METRICS,
    METRICS,
    PHOTOS_METRICS,
    default_metrics,
    evaluate_samples,
    inception_score,
    precision_recall,
)
from .reference import reference_stats, resolve_reference
from .sampling import evaluate_model, generate_images, log_metrics, shard

__all__ = [
    "DIGITS_METRICS",
    "INCEPTION_METRICS",
    "METRICS",
    "PHOTOS_METRICS",
    "DomainClassifierRecipe",
    "DomainExtractor",
    "FeatureExtractor",
    "GaussianStats",
    "InceptionExtractor",
    "RandomConvExtractor",
    "default_metrics",
    "digits_recipe",
    "evaluate_model",
    "evaluate_samples",
    "fid_from_features",
    "frechet_distance",
    "generate_images",
    "inception_score",
    "log_metrics",
    "photos_recipe",
    "precision_recall",
    "reference_stats",
    "resolve_inception_weights",
    "resolve_reference",
    "shard",
    "to_uint8",
]
