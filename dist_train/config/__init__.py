"""One typed schema for every run: defaults < YAML file < dotted command-line overrides.

The pieces: :mod:`~dist_train.config.ranges` (the range mini-language), :mod:`~dist_train.config.schema`
(the dataclasses), :mod:`~dist_train.config.loading` (layers, overrides, :func:`load_config`) and
:mod:`~dist_train.config.validation` (every static check). No torch here: ``dist-train --help`` stays light.
"""

from dist_train.config.loading import load_config, parse_overrides, to_dict, to_yaml
from dist_train.config.ranges import MAX_LIST, SEED_MAX, Range, bounded, limits
from dist_train.config.schema import (
    AugmentConfig,
    BNConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    DiffusionConfig,
    DistConfig,
    ModelConfig,
    NoiseScaleConfig,
    OptimConfig,
    RegimeConfig,
    ScheduleConfig,
    SwapConfig,
    SwapPhase2Config,
    TargetConfig,
    TrainConfig,
    flatten,
    valid_keys,
)
from dist_train.config.validation import check_name, check_plan_inputs, check_ranges, check_reference, validate
from dist_train.data.catalog import DATASETS
from dist_train.yamlio import MAX_FILE_BYTES, MAX_VALUES, read_text, read_yaml_mapping

_valid_keys = valid_keys  # the name it had

__all__ = [
    "DATASETS",
    "MAX_FILE_BYTES",
    "MAX_LIST",
    "MAX_VALUES",
    "SEED_MAX",
    "AugmentConfig",
    "BNConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DiffusionConfig",
    "DistConfig",
    "ModelConfig",
    "NoiseScaleConfig",
    "OptimConfig",
    "Range",
    "RegimeConfig",
    "ScheduleConfig",
    "SwapConfig",
    "SwapPhase2Config",
    "TargetConfig",
    "TrainConfig",
    "bounded",
    "check_name",
    "check_plan_inputs",
    "check_ranges",
    "check_reference",
    "flatten",
    "limits",
    "load_config",
    "parse_overrides",
    "read_text",
    "read_yaml_mapping",
    "to_dict",
    "to_yaml",
    "valid_keys",
    "validate",
]
