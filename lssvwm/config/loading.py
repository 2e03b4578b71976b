"""Run configs from YAML and from the command line: hardened YAML reading (size limit, no aliases bombs, YAML 1.2
numbers), building typed configs with errors that name the field, ``--set`` overrides, the layering of a preset,
a config file and overrides, and the migration of configs saved by older versions."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from .presets import autoencoder_preset, model_preset
from .run import AERunConfig, RunConfig
from .schema import (AETrainConfig, AutoencoderConfig, ConfigError, DiffusionConfig, ModelConfig, SamplingConfig,
                     TrainConfig, _show)

def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if cls is not RunConfig else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true/false, got {_show(value)}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name} must be a number, got {_show(value)}")
            value = type(default)(value) if isinstance(default, float) else value
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {_show(value)}")
        kwargs[name] = value
    return cls(**kwargs)


def _section(data: dict, name: str):
    """A copy of a config section (empty when absent); a non-mapping is returned as is for _build to refuse."""
    value = data.get(name) or {}
    return dict(value) if isinstance(value, dict) else value


def config_from_dict(data: dict) -> RunConfig:
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping with sections model/diffusion/train, got {type(data).__name__}")
    unknown = set(data) - {"model", "diffusion", "sampling", "train", "preset", "variant"}
    if unknown:
        raise ConfigError(f"config: unknown section(s) {sorted(unknown)}; known: model, diffusion, sampling, train, "
                          f"preset, variant")
    diffusion, sampling = _section(data, "diffusion"), _section(data, "sampling")
    train = _section(data, "train")
    if isinstance(diffusion, dict) and isinstance(sampling, dict):  # runs saved before the sampling section
        for old, new in LEGACY_SAMPLING_FIELDS.items():
            if old in diffusion:
                sampling.setdefault(new, diffusion.pop(old))
    if isinstance(diffusion, dict) and isinstance(train, dict) and "curriculum_steps" in diffusion:
        train.setdefault("curriculum_steps", diffusion.pop("curriculum_steps"))  # moved to train
    model_data = dict(data.get("model") or {})
    if "preset" in data or "variant" in data or not model_data:  # preset (default small), then overrides
        base = model_preset(data.get("preset", "small"), data.get("variant", "hybrid"))
        model = dataclasses.replace(base, **{k: v for k, v in _build(ModelConfig, model_data, "model").__dict__.items()
                                             if k in model_data})
    else:
        model = _build(ModelConfig, model_data, "model")
    model.validate()
    sampling_cfg = _build(SamplingConfig, sampling, "sampling")
    sampling_cfg.validate()
    cfg = RunConfig(model=model, diffusion=_build(DiffusionConfig, diffusion, "diffusion"), sampling=sampling_cfg,
                    train=_build(TrainConfig, train, "train"))
    cfg.validate()
    return cfg


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.steps=500", "model.d_model=64"]`` -> ``{"train": {"steps": 500}, "model": {"d_model": 64}}``
    (values are YAML: numbers, true/false, lists ...)."""
    out: dict = {}
    for pair in pairs or []:
        key = pair.split("=", 1)[0]
        if "=" not in pair or "." not in key or not all(key.split(".", 1)):
            raise ConfigError(f"--set expects section.field=value (e.g. train.steps=500), got {_show(pair)}")
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = parse_yaml(pair.split("=", 1)[1], f"--set {key}")
    return out


def layered_config(kind: str, config: str | Path | None = None, preset: str | None = None,
                   variant: str | None = None, overrides: list[str] | dict | None = None, data: str | None = None,
                   out: str | None = None, resume: bool = False) -> "RunConfig | AERunConfig":
    """A run config built in layers, the way ``lssvwm train`` and ``lssvwm train-ae`` build theirs: the YAML
    ``config`` (with ``resume`` and no config: the run's own ``out/config.yaml``; else defaults), then the named
    ``preset`` (and ``variant``) replacing the model (``kind="run"``) or autoencoder (``kind="ae"``) section, then
    ``overrides`` (``section.field=value`` strings or a dict of sections), then ``data`` and ``out``."""
    if kind not in ("run", "ae"):
        raise ValueError(f"kind must be 'run' or 'ae', got {kind!r}")
    load = load_config if kind == "run" else load_ae_config
    if not config and resume and out and (Path(out) / "config.yaml").exists():
        config = Path(out) / "config.yaml"
    base = load(config).to_dict() if config else {}
    section = "model" if kind == "run" else "autoencoder"
    if preset or variant or not config:
        if kind == "run":
            base[section] = asdict(model_preset(preset or "small", variant or "hybrid"))
        else:
            base[section] = asdict(autoencoder_preset(preset or "memory-maze"))
    sets = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    for name, values in sets.items():
        if not isinstance(base.setdefault(name, {}), dict) or not isinstance(values, dict):
            raise ConfigError(f"--set {name}: {name} is not a config section")
        base[name].update(values)
    base.setdefault("train", {})
    if data:
        base["train"]["data"] = str(data)
    if out:
        base["train"]["out"] = str(out)
    return config_from_dict(base) if kind == "run" else ae_config_from_dict(base)


# diffusion.<old> in configs saved before SamplingConfig existed -> sampling.<new>
LEGACY_SAMPLING_FIELDS = {"sampling_steps": "steps", "context_noise_level": "stabilization"}


MAX_YAML_BYTES = 1 << 20


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reads YAML 1.1, where ``1e-3`` (no dot) is a string; a config means the number, as
    YAML 1.2 and every other reader do. This loader resolves such scientific notation to floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str, where: str):
    """YAML text -> plain data, or a ConfigError that says what is wrong with it (never a traceback): not YAML,
    nested too deeply, or larger than any config needs."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters is not a config (more than {MAX_YAML_BYTES})")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(e).split())[:300]}") from e
    except RecursionError as e:
        raise ConfigError(f"{where}: YAML nested too deeply") from e


def read_yaml(path: str | Path):
    """A YAML file -> plain data, or a ConfigError naming the file: missing, unreadable, binary, not YAML."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is not a config file (more than {MAX_YAML_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a folder, not a config file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e
    return parse_yaml(text, str(path))


def load_config(path: str | Path) -> RunConfig:
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as e:
        raise ConfigError(e if str(e).startswith(str(path)) else f"{path}: {e}") from e


def ae_config_from_dict(data: dict) -> AERunConfig:
    data = data or {}
    if not isinstance(data, dict) or set(data) - {"autoencoder", "train"}:
        raise ConfigError(f"autoencoder config must be a mapping with sections autoencoder/train, got "
                          f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    cfg = AERunConfig(autoencoder=_build(AutoencoderConfig, _section(data, "autoencoder"), "autoencoder"),
                      train=_build(AETrainConfig, _section(data, "train"), "train"))
    cfg.validate()
    return cfg


def load_ae_config(path: str | Path) -> AERunConfig:
    try:
        return ae_config_from_dict(read_yaml(path))
    except ConfigError as e:
        raise ConfigError(e if str(e).startswith(str(path)) else f"{path}: {e}") from e
