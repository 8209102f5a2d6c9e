"""Configs (a leaf layer): typed, frozen, validated dataclasses and the logical axis names."""

from jaxscale.config.schema import (
    ConfigError,
    DataConfig,
    MeshConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_overrides,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "MeshConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_overrides",
]
