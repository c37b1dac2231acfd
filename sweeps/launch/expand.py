"""From a sweep file to validated trial configs, without starting Ray.

Grid and random search expand here, once, with a fixed seed: Tune then runs exactly these configs (a
grid over them), so every trial that starts was checked. Optuna picks its points at run time; its space
is checked here and each point is validated inside its own trial.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from sweeps.launch.spec import PRESETS, SCHEDULERS, SEARCH_ALGS, Preset, Sweep, SweepError
from trainables.registry import METHODS, TrialConfig, parse_trial_config


def with_preset(sweep: Sweep, preset: Preset, args: argparse.Namespace | None = None) -> Sweep:
    """The sweep's data with the preset's settings for its kind, then the command line's data flags."""
    data = replace(sweep.data, **preset.data_overrides.get(sweep.data.kind, {}))
    if args is not None:
        data = data.with_cli_args(args)
    return replace(sweep, data=data)


def layered(config: dict[str, Any], preset: Preset, cli: dict[str, Any], swept=()) -> dict[str, Any]:
    """A trial's settings, later layers winning: the preset's shared settings, the preset's settings for
    the trial's method, the sweep (base config and arm), what the preset forces (the tiny preset's size and
    step count) unless the sweep varies it, then the command line."""
    method = config.get("method")
    own = preset.method_overrides.get(method, {}) if isinstance(method, str) else {}
    forced = {k: v for k, v in preset.forced.items() if k not in swept}
    return {**preset.trial_overrides, **own, **config, **forced, **cli}


def swept_keys(space: dict[str, Any]) -> set[str]:
    """The keys a search space varies (grid_search, sampled or sample_from dimensions)."""
    from ray.tune.search.sample import Domain

    return {k for k, v in space.items() if isinstance(v, Domain) or (isinstance(v, dict) and "grid_search" in v)}


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_steps": args.max_steps} if getattr(args, "max_steps", None) is not None else {}


def expand_trials(sweep: Sweep, args: argparse.Namespace, num_samples: int = 1, seed: int = 0) -> list[dict]:
    """Every trial's flat config: each arm's grid points (and one draw per sampled dimension, per sample),
    layered over the preset; arms in the order the sweep lists them."""
    import random

    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    preset, cli = PRESETS[args.preset], cli_overrides(args)
    random.seed(seed)
    np.random.seed(seed)
    configs = []
    for arm in sweep.all_arms():
        spec = {**sweep.base_config, **arm}
        swept = swept_keys(spec)
        for _ in range(num_samples):
            configs.extend(layered(resolved, preset, cli, swept) for _, resolved in generate_variants(spec))
    return configs


def optuna_space(sweep: Sweep, args: argparse.Namespace) -> dict[str, Any]:
    """The one arm's Tune space layered over the preset, for OptunaSearch to draw from."""
    (arm,) = sweep.all_arms()
    space = {**sweep.base_config, **arm}
    return layered(space, PRESETS[args.preset], cli_overrides(args), swept_keys(space))


def validate_trials(sweep: Sweep, configs: list[dict]) -> list[TrialConfig]:
    """Build each trial's typed config; the first bad one raises :class:`SweepError` naming the trial."""
    if sweep.search_alg not in SEARCH_ALGS:
        raise SweepError(f"search_alg={sweep.search_alg!r} is unknown: choose one of {SEARCH_ALGS}")
    if sweep.scheduler not in SCHEDULERS:
        raise SweepError(f"scheduler={sweep.scheduler!r} is unknown: choose one of {SCHEDULERS}")
    if sweep.mode not in ("min", "max"):
        raise SweepError(f"mode={sweep.mode!r} is not valid: use 'min' or 'max'")
    arms = sweep.all_arms()
    if sweep.search_alg == "optuna":
        _check_optuna_space(sweep, arms)
    try:  # the data first: without photos or a class noun, every trial's own checks would mislead
        sweep.data.check()
    except Exception as err:
        raise SweepError(str(err)) from err
    varied = [k for arm in arms for k in arm]
    typed = []
    for i, config in enumerate(configs):
        swept = {k: config[k] for k in dict.fromkeys(varied) if k in config}
        try:
            trial = parse_trial_config(config)
            _check_method_and_data(trial, sweep.data)
        except (ValueError, TypeError) as err:
            raise SweepError(f"trial {i} {swept}: {err}") from err
        typed.append(trial)
    for name, what in (("mixed_precision", "the baseline is sampled once at the trials' precision"),
                       ("resolution", "latents are encoded once per sweep")):  # fmt: skip
        values = {getattr(t.train, name) for t in typed}
        if len(values) > 1:
            raise SweepError(
                f"{name} takes {sorted(values)} across trials: {what}, so sweep {name} in separate launches"
            )
    return typed


def _check_method_and_data(trial: TrialConfig, data) -> None:
    method = METHODS[trial.method]
    if data.kind not in method.data_kinds:
        raise ValueError(
            f"method {trial.method!r} trains on {' or '.join(method.data_kinds)} data and this sweep's data is "
            f"{data.kind}: drop the arm or use a sweep with {method.data_kinds[0]} data"
        )
    if method.uses_class_images(trial.spec) and not (trial.spec.class_prompt or getattr(data, "class_prompt", None)):
        raise ValueError(
            "with_prior_preservation=True needs a class prompt and neither the trial (class_prompt) nor the data "
            "names a class: set class_prompt='a photo of dog', or the data's class_noun"
        )


def samples_differ(sweep: Sweep) -> bool:
    """Whether repeated samples of the space can differ: a sampled dimension, or a searcher that draws."""
    from ray.tune.search.sample import Domain, Function

    return sweep.search_alg == "optuna" or any(
        isinstance(v, Domain) and not isinstance(v, Function) for arm in sweep.all_arms() for v in arm.values()
    )


def _check_optuna_space(sweep: Sweep, arms: list[dict]) -> None:
    from ray.tune.search.sample import Domain, Function

    if len(arms) > 1:
        raise SweepError(
            f"search_alg='optuna' takes one search space and this sweep has {len(arms)} arms: use "
            "search_alg='grid' or 'random' for method arms, or one Optuna sweep per method"
        )
    space = {**sweep.base_config, **arms[0]}
    for key, value in space.items():
        if isinstance(value, dict) and "grid_search" in value:
            raise SweepError(
                f"search_space[{key!r}] is a grid_search, which Optuna cannot take: use tune.choice(...) "
                "or search_alg='grid'"
            )
        if isinstance(value, Function):
            raise SweepError(
                f"search_space[{key!r}] is a sample_from function, which Optuna cannot take: sample it as "
                "its own dimension (e.g. tune.loguniform) or use search_alg='random'"
            )
    if isinstance(space.get("method"), Domain):
        raise SweepError("search_alg='optuna' needs one fixed method: list methods as arms with search_alg='grid'")
    if not any(isinstance(v, Domain) for v in space.values()):
        raise SweepError("search_alg='optuna' needs at least one sampled dimension (tune.choice, tune.uniform, ...)")
