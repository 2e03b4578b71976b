"""Configs: the typed dataclasses and their checks (:mod:`.schema`), named presets and variants' layer plans
(:mod:`.presets`), whole-run configs saved as YAML (:mod:`.run`), and reading them from YAML and the command line
(:mod:`.loading`). Everything is importable from
here: ``from lssvwm.config import RunConfig, model_preset, load_config``.

A run is ``RunConfig(model, diffusion, sampling, train)``.
"""
from .loading import (LEGACY_SAMPLING_FIELDS, MAX_YAML_BYTES, ae_config_from_dict, config_from_dict, layered_config,
                      load_ae_config, load_config, parse_overrides, parse_yaml, read_yaml)
from .presets import AUTOENCODER_PRESETS, MODEL_PRESETS, PAPER, Preset, autoencoder_preset, layer_plan, model_preset
from .run import AERunConfig, RunConfig
from .schema import (LAYOUTS, MAX_WINDOW, SCHEDULES, VARIANTS, AETrainConfig, Allowed, AutoencoderConfig,
                     ConfigError, DiffusionConfig, LayerSpec, LoopConfig, ModelConfig, SamplingConfig,
                     SamplingOverrides, TrainConfig, allowed)

__all__ = ["AERunConfig", "AETrainConfig", "Allowed", "allowed", "AUTOENCODER_PRESETS", "AutoencoderConfig",
           "ConfigError", "DiffusionConfig",
           "LAYOUTS", "LEGACY_SAMPLING_FIELDS", "LayerSpec", "LoopConfig", "MAX_WINDOW", "MAX_YAML_BYTES",
           "MODEL_PRESETS", "ModelConfig", "PAPER", "Preset", "RunConfig", "SCHEDULES", "SamplingConfig",
           "SamplingOverrides",
           "TrainConfig", "VARIANTS", "ae_config_from_dict", "autoencoder_preset", "config_from_dict",
           "layer_plan", "layered_config", "load_ae_config", "load_config", "model_preset", "parse_overrides",
           "parse_yaml", "read_yaml"]
