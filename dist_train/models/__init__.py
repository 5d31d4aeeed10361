"""Network definitions and the name-based model registry (see :func:`build_model`)."""

from dist_train.models.registry import available_models, build_model

__all__ = ["available_models", "build_model"]
