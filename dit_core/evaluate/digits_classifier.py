"""The digits preset of the domain classifier (``fid_digits``), under its original names.

``DigitsExtractor(resolution)`` is ``DomainExtractor(digits_recipe(resolution))``; the recipe class
and the training function are the shared ones (`domain_classifier`), whose defaults are the digits recipe.
"""

from __future__ import annotations

from .domain_classifier import DomainClassifierRecipe, DomainExtractor, digits_recipe, train_domain_classifier

DigitsClassifierRecipe = DomainClassifierRecipe
train_digits_classifier = train_domain_classifier


class DigitsExtractor(DomainExtractor):
    """Digits features: ``pool`` (N, 64) penultimate activations, ``probs`` (N, 10)."""

    def __init__(self, resolution: int = 16, recipe: DomainClassifierRecipe | None = None) -> None:
        super().__init__(recipe or digits_recipe(resolution))
