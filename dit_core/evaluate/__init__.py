"""Evaluation: sample a model (`evaluate_model`), then FID / sFID / IS / precision-recall against
cached reference stats (`evaluate_samples`), logged as MLflow ``eval/<metric>`` (`log_metrics`).
Usage, metrics and protocol: docs/evaluation.md.
"""

from .domain_classifier import DomainClassifierRecipe, DomainExtractor, digits_recipe, photos_recipe
from .features import FeatureExtractor, InceptionExtractor, resolve_inception_weights, to_uint8
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
from .sampling import SampleSettings, evaluate_model, generate_images, log_metrics, shard

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
    "SampleSettings",
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
