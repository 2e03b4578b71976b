"""Whole-run configs: ``RunConfig(model, diffusion, sampling, train)`` for a world model and ``AERunConfig``
for the frame autoencoder, with their presets' defaults; printed at the start of a run and saved as YAML beside
every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .presets import model_preset
from .schema import (AETrainConfig, AutoencoderConfig, ConfigError, DiffusionConfig, ModelConfig, SamplingConfig,
                     TrainConfig)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class _YamlSections:
    """Whole-run configs: printed at the start of a run and saved as YAML beside every checkpoint."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


@dataclass
class RunConfig(_YamlSections):
    model: ModelConfig = field(default_factory=lambda: model_preset("small"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Every section's values, with errors that name the field (also for configs built in Python)."""
        self.model.validate()
        self.diffusion.validate()
        self.sampling.validate()
        self.train.validate()
        inv, m = self.diffusion.inverse_actions, self.model
        if inv and (m.action_dim > 0 or len(inv) != m.num_actions or max(inv) >= m.num_actions):
            raise ConfigError(f"diffusion.inverse_actions {inv} must give one id in [-1, {m.num_actions}) per "
                              f"discrete action (model.num_actions={m.num_actions}), or be empty"
                              + (" (continuous actions: leave it empty)" if m.action_dim > 0 else ""))
        d = self.diffusion
        if d.own_rollout_grad and d.own_rollout_prob > 0 and self.sampling.history_guidance > 0:
            raise ConfigError("diffusion.own_rollout_grad: a rollout with gradient does not support history guidance; "
                              "set sampling.history_guidance=0 or diffusion.own_rollout_grad=0")


@dataclass
class AERunConfig(_YamlSections):
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AETrainConfig = field(default_factory=AETrainConfig)

    def validate(self) -> None:
        self.autoencoder.validate()
        self.train.validate()
