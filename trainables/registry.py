"""Every fine-tuning method by name: its config class, its recipe, the data it trains on, what it writes.

A trial's flat config (what Tune hands a trial) becomes a :class:`TrialConfig` here: ``method``, the
shared :class:`~trainables.common.config.TrainArgs` and the method's own config. A key that no method
knows, or a key of another method, is an error naming the field and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.common.config import TrainArgs, bad, field_names, flat_params
from trainables.methods import dreambooth, dreambooth_lora, full, lora, textual_inversion


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    train: Callable  # train(trial: TrialConfig, ctx: TrialContext, out_dir: Path) -> None
    run_name: Callable[[Any], str]  # a short run name from the method's config ("lora-r8-a8")
    data_kinds: tuple[str, ...]  # the data kinds it trains on ("kanji", "subject", "captioned")
    writes: tuple[str, ...]  # the files it leaves in the trial directory and the MLflow run
    trains_text_encoder: Callable[[Any], bool] = lambda spec: False
    uses_class_images: Callable[[Any], bool] = lambda spec: False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", lora.LoRAConfig, lora.train_lora, lora.run_name, ("kanji", "subject", "captioned"),
               (lora.ADAPTER_FILE,), trains_text_encoder=lambda spec: spec.train_text_encoder),
        Method("dreambooth", dreambooth.DreamBoothConfig, dreambooth.train_dreambooth, dreambooth.run_name,
               ("subject",), ("unet/", "text_encoder/ (with train_text_encoder)"),
               trains_text_encoder=lambda spec: spec.train_text_encoder,
               uses_class_images=lambda spec: spec.with_prior_preservation),
        Method("dreambooth_lora", dreambooth_lora.DreamBoothLoRAConfig, dreambooth_lora.train_dreambooth_lora,
               dreambooth_lora.run_name, ("subject",), (dreambooth_lora.ADAPTER_FILE,),
               trains_text_encoder=lambda spec: spec.train_text_encoder,
               uses_class_images=lambda spec: spec.with_prior_preservation),
        Method("full", full.FullConfig, full.train_full, full.run_name, ("kanji", "subject", "captioned"), ("unet/",)),
        Method("textual_inversion", textual_inversion.TextualInversionConfig,
               textual_inversion.train_textual_inversion, textual_inversion.run_name, ("subject", "captioned"),
               (textual_inversion.EMBEDDINGS_FILE,), trains_text_encoder=lambda spec: True),
    )
}  # fmt: skip


@dataclass(frozen=True)
class TrialConfig:
    """One trial's typed settings: the method, the shared training settings, the method's own."""

    method: str
    train: TrainArgs
    spec: Any  # the method's config dataclass
    cache_text_embeddings: bool | None = None  # None: cached unless the method trains the text encoder

    @property
    def cached_text(self) -> bool:
        """Whether the trial reads the sweep's cached caption embeddings (else it runs the text encoder)."""
        return self.cache_text_embeddings is not False and not METHODS[self.method].trains_text_encoder(self.spec)

    def params(self) -> dict[str, Any]:
        """Flat params for MLflow: the method and only the settings that apply to it (unset options left out)."""
        params = {"method": self.method, **flat_params(self.train), **flat_params(self.spec)}
        params.update(getattr(self.spec, "resolved", dict)())
        return {k: v for k, v in params.items() if v is not None}


def method_of(name: str) -> Method:
    if name not in METHODS:
        bad("method", name, f"choose one of {sorted(METHODS)}")
    return METHODS[name]


def owners(key: str) -> list[str]:
    """The methods that have a setting called ``key``."""
    return sorted(name for name, m in METHODS.items() if key in field_names(m.config_cls))


def parse_trial_config(config: dict[str, Any]) -> TrialConfig:
    """Split and validate a flat trial config; raises ``ValueError`` naming the field, the value and the fix."""
    if "method" not in config:
        raise ValueError(f"method is not set: add 'method' to the base config or the arm, one of {sorted(METHODS)}")
    method = method_of(config["method"])
    shared, own = field_names(TrainArgs), field_names(method.config_cls)
    for key in sorted(set(config) - shared - own - {"method", "cache_text_embeddings"}):
        elsewhere = owners(key)
        if elsewhere:
            raise ValueError(
                f"{key} is a setting of {' and '.join(elsewhere)}, not of method {method.name!r}: "
                f"remove it from this arm (or give it its own arm with method {elsewhere[0]!r})"
            )
        raise ValueError(
            f"unknown setting {key!r} for method {method.name!r}: known settings are "
            f"{sorted(own)} plus the shared {sorted(shared)}"
        )
    train = TrainArgs(**{k: v for k, v in config.items() if k in shared})
    spec = method.config_cls(**{k: v for k, v in config.items() if k in own})
    cache = config.get("cache_text_embeddings")
    if cache not in (None, True, False):
        bad(
            "cache_text_embeddings", cache, "use True, False, or leave it unset (cached unless the text encoder trains)"
        )
    if cache is True and method.trains_text_encoder(spec):
        bad("cache_text_embeddings", cache,
            f"method {method.name!r} trains the text encoder here, so its embeddings change every step: "
            "drop cache_text_embeddings (token ids are cached instead)")  # fmt: skip
    return TrialConfig(method.name, train, spec, cache)


def trial_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The flat settings of a trial from what Tune passes: the launcher hands every validated trial to
    Tune as ``{"trial": {...}}`` (a grid over exact configs); Optuna's points arrive flat."""
    return dict(config["trial"]) if "trial" in config else dict(config)
