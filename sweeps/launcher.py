"""The shared launcher: command line, Ray start/connect, data preparation, baseline, Tuner, MLflow, report.

A sweep file declares a :class:`Sweep` and calls :func:`launch`. Everything a trial needs besides its
hyperparameters travels in a :class:`~trainables.tracking.TrialContext`, with absolute paths and URIs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from eval.evaluate import SamplingConfig
from eval.scorers import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, DEFAULT_DINO_MODEL, ScorerSpec
from trainables.kanji_data import DEFAULT_CACHE_DIR, KanjiData
from trainables.lora import LoRATrialConfig, train_lora
from trainables.models import SD15_MODEL
from trainables.tracking import slug

TRAINABLES: dict[str, tuple[Callable, type]] = {"lora": (train_lora, LoRATrialConfig)}
SEARCH_ALGS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")


class SweepError(RuntimeError):
    """Bad sweep input found before trials start; printed as one line."""


@dataclass(frozen=True)
class Sweep:
    """One experiment: a base config, a search space, how to search it, and its data."""

    name: str  # MLflow experiment, Ray run and report name
    base_config: dict[str, Any]
    search_space: dict[str, Any]
    data: KanjiData
    trainable: str = "lora"
    search_alg: str = "grid"  # grid/random: Tune's variant generator; optuna: OptunaSearch (TPE)
    scheduler: str = "fifo"  # fifo runs every trial to the end; asha stops weak trials at eval points
    metric: str = "eval/clip_t"  # what "best" means for the searcher, the scheduler and the summary
    mode: str = "max"


@dataclass(frozen=True)
class Preset:
    """Model, scorers and settings for one kind of machine."""

    model: str | None  # None: the tiny model built from config
    scorers: ScorerSpec | None  # None: tiny scorers built from config
    trial_overrides: dict[str, Any]
    sampling: SamplingConfig
    data_overrides: dict[str, Any] = field(default_factory=dict)
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0


PRESETS = {
    # SD 1.5 at 512 px on one GPU per trial, with real CLIP ViT-L/14 and DINO ViT-S/16 scorers
    "sd15": Preset(
        model=SD15_MODEL,
        scorers=ScorerSpec(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, DEFAULT_DINO_MODEL),
        trial_overrides=dict(
            resolution=512, batch_size=8, max_steps=3000, unet_lr=1e-4, eval_every=500, log_every=10,
            mixed_precision="fp16",
        ),
        sampling=SamplingConfig(steps=30, guidance_scale=7.5, resolution=512, batch_size=8),
        data_overrides=dict(n_heldout=8),
        cpus_per_trial=4,
        gpus_per_trial=1,
    ),
    # random tiny models on CPU: exercises every part in minutes; its images and scores mean nothing
    "tiny": Preset(
        model=None,
        scorers=None,
        trial_overrides=dict(
            resolution=64, batch_size=4, max_steps=20, unet_lr=1e-3, eval_every=10, log_every=5,
            mixed_precision="no",
        ),
        sampling=SamplingConfig(steps=10, guidance_scale=7.5, resolution=64, batch_size=8),
        data_overrides=dict(max_chars=400, n_heldout=4),
        cpus_per_trial=1,
        gpus_per_trial=0,
    ),
}  # fmt: skip


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None, sweep: Sweep) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python sweeps/{sweep.name}.py",
        description=f"Run the {sweep.name} sweep on Ray Tune, tracked in MLflow.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sd15", help="sd15 (GPU, default) or tiny (CPU)")
    parser.add_argument("--model", help="Stable Diffusion hub id or local folder (overrides the preset)")
    parser.add_argument("--max-steps", type=int, help="training steps per trial (overrides the preset)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="Tune num_samples: repeats of the grid, or trials drawn by random/optuna search (default 1)",
    )
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (preset default)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (preset default)")
    parser.add_argument("--max-concurrent-trials", type=int, help="cap on trials running at once")
    parser.add_argument("--storage-path", help="Ray Tune results: a folder or s3://... (default ~/ray_results)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="dataset, encoded latents and tiny models (default ~/.cache/sdsweep)",
    )
    parser.add_argument("--max-chars", type=int, help="use only the first N kanji (overrides the preset)")
    parser.add_argument("--report-dir", default="reports", help="reports go to REPORT_DIR/<sweep>/ (default reports)")
    parser.add_argument("--clip-model", help=f"open_clip model name or local-dir:DIR (default {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--clip-pretrained", help=f"open_clip weights tag or file (default {DEFAULT_CLIP_PRETRAINED})")
    parser.add_argument("--dino-model", help=f"DINO hub id or local folder (default {DEFAULT_DINO_MODEL})")
    return parser.parse_args(argv)  # fmt: skip


# ---------------------------------------------------------------- expansion and validation (no Ray needed)


def trial_base_config(sweep: Sweep, args: argparse.Namespace) -> dict[str, Any]:
    """The base config a trial sees: the preset's settings, the sweep's, then command-line overrides."""
    config = {**PRESETS[args.preset].trial_overrides, **sweep.base_config}
    if args.max_steps is not None:
        config["max_steps"] = args.max_steps
    return config


def expand_trials(sweep: Sweep, base_config: dict[str, Any], num_samples: int = 1, seed: int = 0) -> list[dict]:
    """The trial configs the search space expands to (grid points; random draws for sampled dimensions),
    without starting Ray. Optuna draws its own points at run time; they are checked the same way here."""
    import random

    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    random.seed(seed)
    np.random.seed(seed)
    spec = {**base_config, **sweep.search_space}
    configs = []
    for _ in range(num_samples):
        configs.extend(resolved for _, resolved in generate_variants(spec))
    return configs


def validate_trials(sweep: Sweep, configs: list[dict]) -> list[Any]:
    """Build each trial's typed config; the first bad one raises :class:`SweepError` naming the trial."""
    if sweep.trainable not in TRAINABLES:
        raise SweepError(f"trainable={sweep.trainable!r} is unknown: choose one of {sorted(TRAINABLES)}")
    if sweep.search_alg not in SEARCH_ALGS:
        raise SweepError(f"search_alg={sweep.search_alg!r} is unknown: choose one of {SEARCH_ALGS}")
    if sweep.scheduler not in SCHEDULERS:
        raise SweepError(f"scheduler={sweep.scheduler!r} is unknown: choose one of {SCHEDULERS}")
    if sweep.mode not in ("min", "max"):
        raise SweepError(f"mode={sweep.mode!r} is not valid: use 'min' or 'max'")
    if sweep.search_alg == "optuna":
        _check_optuna_space(sweep.search_space)
    config_cls = TRAINABLES[sweep.trainable][1]
    typed = []
    for i, config in enumerate(configs):
        try:
            typed.append(config_cls.from_dict(config))
        except (ValueError, TypeError) as err:
            swept = {k: config.get(k) for k in sweep.search_space}
            raise SweepError(f"trial {i} {swept}: {err}") from err
    precisions = {c.mixed_precision for c in typed}
    if len(precisions) > 1:
        raise SweepError(
            f"mixed_precision takes {sorted(precisions)} across trials: the baseline is sampled once at the "
            "trials' precision, so sweep precision in separate launches"
        )
    resolutions = {c.resolution for c in typed}
    if len(resolutions) > 1:
        raise SweepError(
            f"resolution takes {sorted(resolutions)} across trials: latents are encoded once per sweep, so "
            "sweep resolution in separate launches"
        )
    try:
        sweep.data.check()
    except Exception as err:
        raise SweepError(str(err)) from err
    return typed


def _samples_differ(sweep: Sweep) -> bool:
    """Whether repeated samples of the space can differ: a sampled dimension, or a searcher that draws."""
    from ray.tune.search.sample import Domain, Function

    return sweep.search_alg == "optuna" or any(
        isinstance(v, Domain) and not isinstance(v, Function) for v in sweep.search_space.values()
    )


def _check_optuna_space(space: dict[str, Any]) -> None:
    from ray.tune.search.sample import Domain, Function

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
    if not any(isinstance(v, Domain) for v in space.values()):
        raise SweepError("search_alg='optuna' needs at least one sampled dimension (tune.choice, tune.uniform, ...)")


# ---------------------------------------------------------------- MLflow and storage


def resolve_tracking_uri(cli_uri: str | None) -> str:
    """--mlflow-uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db; sqlite paths made absolute (trials run
    in their own working directories)."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    elif "://" not in uri:
        raise SweepError(f"--mlflow-uri {uri} is not a URI MLflow 3 accepts: use sqlite:///path.db or http://host:5000")
    return uri


def _experiment_id(name: str, tracking_uri: str) -> str:
    """The sweep's experiment, created on first use; an unreachable store is a one-line error."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"  # fail in seconds here, not after minutes of retries
    try:
        experiment = mlflow.get_experiment_by_name(name)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise SweepError(
            f"cannot reach MLflow at {tracking_uri} ({reason}): start the server (mlflow server) or pass "
            "--mlflow-uri sqlite:///mlflow.db"
        ) from err
    finally:
        if retries is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):  # artifacts beside the database, as an absolute path
        location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


# ---------------------------------------------------------------- Ray


# environment for the driver and, through Ray's runtime_env, for every task and trial process
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # our trials report train/loss between evals; results without eval/* are expected, not an error
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # num_to_keep forces a state snapshot per checkpoint; Tune's "may become a bottleneck" hint is noise here
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def _quiet_libraries() -> None:
    """Keep the console to what a person needs: progress, results, errors."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "huggingface_hub", "httpx", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _start_ray(cpus: float):
    import ray

    env = {k: os.environ[k] for k in _QUIET_ENV}  # a user's own settings win over the defaults
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a running cluster
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)),
            include_dashboard=False,
            runtime_env={"env_vars": env},
            log_to_driver=True,
        )


def _search_alg(sweep: Sweep, seed: int = 0):
    if sweep.search_alg != "optuna":
        return None  # Tune's variant generator: grid_search expands, sampled dimensions draw at random
    # OptunaSearch does not inherit metric/mode from TuneConfig when given its own space
    return _make_eval_optuna_search(metric=sweep.metric, mode=sweep.mode, seed=seed)


def _make_eval_optuna_search(**kwargs):
    from ray.tune.search.optuna import OptunaSearch

    class EvalOptunaSearch(OptunaSearch):
        """OptunaSearch that sees only the results carrying its metric.

        Trials report ``train/loss`` between evals; plain OptunaSearch raises KeyError on those. A trial
        that ends on a loss-only report (stopped by ASHA) is told to Optuna with its last eval score, not
        as pruned without a value.
        """

        def __init__(self, **kw):
            super().__init__(**kw)
            self._last_scored: dict[str, dict] = {}

        def on_trial_result(self, trial_id: str, result: dict):
            if self.metric in result:
                self._last_scored[trial_id] = result
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            last = self._last_scored.pop(trial_id, None)
            if last is not None and (result is None or self.metric not in result):
                result = last
            super().on_trial_complete(trial_id, result, error)

    return EvalOptunaSearch(**kwargs)


def _scheduler(sweep: Sweep, max_steps: int, grace: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler == "asha":
        # rungs on the step count, which every eval report carries
        # stop_last_trials=False: a trial that reaches max_t ends by itself, with its final adapter
        return ASHAScheduler(
            time_attr="step", max_t=max_steps, grace_period=max(1, grace), reduction_factor=2, stop_last_trials=False
        )
    return FIFOScheduler()


# ---------------------------------------------------------------- the launch


def launch(sweep: Sweep, argv: list[str] | None = None) -> int:
    """Run the sweep from the command line; returns the process exit code."""
    args = parse_args(argv, sweep)
    _quiet_libraries()
    try:
        return _launch(sweep, args)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _launch(sweep: Sweep, args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    data_overrides = dict(preset.data_overrides)
    if args.max_chars is not None:
        data_overrides["max_chars"] = args.max_chars
    sweep = replace(sweep, data=replace(sweep.data, **data_overrides))
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else preset.cpus_per_trial
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else preset.gpus_per_trial
    if cpus <= 0 or gpus < 0:
        raise SweepError(
            f"--cpus-per-trial {cpus} / --gpus-per-trial {gpus}: use cpus > 0 (fractions allowed), gpus >= 0"
        )
    if args.num_samples < 1:
        raise SweepError(f"--num-samples {args.num_samples}: use 1 or more")
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise SweepError(f"--max-concurrent-trials {args.max_concurrent_trials}: use 1 or more, or leave it out")
    if args.num_samples > 1 and not _samples_differ(sweep):
        raise SweepError(
            f"--num-samples {args.num_samples} would repeat identical trials (nothing in the search space is "
            "random, seed included): sweep seeds instead, e.g. search_space['seed'] = tune.grid_search([0, 1, 2])"
        )
    if gpus > 0 and not os.environ.get("RAY_ADDRESS"):
        import torch

        if torch.cuda.device_count() == 0:
            raise SweepError(
                f"--preset {args.preset} gives each trial {gpus:g} GPU and this machine has none: use --preset tiny "
                "on CPU, or submit to a GPU cluster (ray job submit, see cluster.yaml)"
            )

    # 1. every trial's config is checked before anything starts
    base = trial_base_config(sweep, args)
    trials = validate_trials(sweep, expand_trials(sweep, base, args.num_samples))
    if gpus == 0 and any(t.mixed_precision != "no" for t in trials):
        raise SweepError(
            "mixed_precision='fp16' needs a GPU but trials get none: pass --gpus-per-trial 1, or --preset tiny on CPU"
        )
    cache_dir = Path(args.cache_dir).expanduser().resolve()
    tracking_uri = resolve_tracking_uri(args.mlflow_uri)
    # RAY_JOB_CONFIG_JSON_ENV_VAR is set by `ray job submit` for its entrypoint
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and tracking_uri.startswith("sqlite:") and not args.mlflow_uri:
        print(
            f"[sdsweep] note: MLflow writes to {tracking_uri}, inside this job's temporary copy of the working "
            "dir; pass --mlflow-uri http://HEAD:5000 (see cluster.yaml) to keep the runs"
        )
    storage_path = args.storage_path
    if storage_path and "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())

    # 2. models: the tiny preset builds its random models from config, once, into the cache
    model, scorers = _models(args, preset, cache_dir)

    import mlflow
    import ray

    experiment_id = _experiment_id(sweep.name, tracking_uri)
    run_name = f"{sweep.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    _start_ray(cpus)
    resources = {"cpu": cpus, "gpu": gpus}
    parent = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={"sdsweep.sweep": sweep.name})
    print(f"[sdsweep] {sweep.name}: {len(trials)} trials, preset {args.preset}, model {model}")
    print(f"[sdsweep] MLflow run {parent.info.run_id} in {tracking_uri}")
    try:
        mlflow.log_params(
            {
                "sweep": sweep.name, "preset": args.preset, "model": model, "method": sweep.trainable,
                "search_alg": sweep.search_alg, "scheduler": sweep.scheduler, "metric": sweep.metric,
                "mode": sweep.mode, "num_samples": args.num_samples, "num_trials": len(trials),
                "cpus_per_trial": cpus, "gpus_per_trial": gpus,
            }
        )  # fmt: skip
        mlflow.log_dict({"base_config": base, "search_space": _describe(sweep.search_space)}, "sweep.json")

        # 3. data: rendered once, encoded once with the frozen VAE/text encoder, shared by every trial
        prepare = ray.remote(num_returns=2, num_cpus=cpus, num_gpus=gpus, max_retries=0)(_prepare)
        data_ref, prompts_ref = prepare.remote(sweep.data, model, trials[0].resolution, cache_dir)
        prompts = _get_or_fail(prompts_ref, "preparing the data")
        for i, prompt in enumerate(prompts):  # ground truth beside the samples, for the report's grid
            if prompt.reference is not None:
                mlflow.log_image(prompt.reference, artifact_file=f"references/{i:02d}_{slug(prompt.name)}.png")
        sampling = replace(preset.sampling, resolution=trials[0].resolution)
        context = _trial_context(model, tracking_uri, experiment_id, parent.info.run_id, prompts, sampling, scorers)
        context = replace(context, mixed_precision=trials[0].mixed_precision)

        # 4. the no-fine-tune baseline, same prompts and seeds (also proves model and scorers load)
        baseline = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_baseline)
        print(f"[sdsweep] evaluating the baseline (no fine-tune) on {len(prompts)} prompts")
        baseline_metrics = _get_or_fail(baseline.remote(context), "evaluating the baseline")

        # 5. the trials
        results = _fit(sweep, args, base, replace(context, data=data_ref), resources, storage_path, run_name, trials)
        failed = [r for r in results if r.error]
        _close_orphan_runs(tracking_uri, experiment_id, parent.info.run_id, results)
        _print_summary(sweep, results, baseline_metrics)

        # 6. the report, from MLflow only
        from reports.compare import build_report

        report_dir = Path(args.report_dir).expanduser().resolve() / sweep.name
        report = build_report(tracking_uri, parent.info.run_id, report_dir, sweep.metric, sweep.mode)
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        mlflow.end_run(status="FAILED" if failed and len(failed) == len(results) else "FINISHED")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    finally:
        ray.shutdown()

    print(f"[sdsweep] report: {report} (also in MLflow run {parent.info.run_id}, artifacts report/)")
    if tracking_uri.startswith("sqlite:"):
        print(
            f"[sdsweep] browse the runs: {_mlflow_cli()} ui --backend-store-uri {tracking_uri}  (http://127.0.0.1:5000)"
        )
    else:
        print(f"[sdsweep] browse the runs at {tracking_uri}")
    if failed:
        print(f"[sdsweep] {len(failed)} of {len(results)} trials failed; their errors are above and in MLflow")
        return 1
    return 0


def _models(args, preset: Preset, cache_dir: Path) -> tuple[str, ScorerSpec]:
    from eval.scorers import build_tiny_clip, build_tiny_dino
    from trainables.models import build_tiny_sd

    tiny_dir = cache_dir / "models"
    if args.model:
        model = args.model
        if Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())
    elif preset.model is None:
        model = str(build_tiny_sd(tiny_dir / "tiny-sd"))
    else:
        model = preset.model
    if preset.scorers is None:
        size = preset.sampling.resolution
        scorers = ScorerSpec(
            build_tiny_clip(tiny_dir / f"tiny-clip-{size}", size),
            None,
            str(build_tiny_dino(tiny_dir / f"tiny-dino-{size}", size)),
        )
    else:
        scorers = preset.scorers
    if args.clip_model or args.clip_pretrained or args.dino_model:
        scorers = ScorerSpec(
            args.clip_model or scorers.clip_model,
            args.clip_pretrained if args.clip_pretrained else (None if args.clip_model else scorers.clip_pretrained),
            args.dino_model or scorers.dino_model,
        )
    return model, scorers


def _prepare(data: KanjiData, model: str, resolution: int, cache_dir: Path):
    _quiet_libraries()
    return data.prepare(model, resolution, cache_dir)


def _baseline(context):
    _quiet_libraries()
    from trainables.baseline import evaluate_baseline

    return evaluate_baseline(context)


def _trial_context(model, tracking_uri, experiment_id, parent_run_id, prompts, sampling, scorers):
    from trainables.tracking import TrialContext

    return TrialContext(
        model=model,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        eval_prompts=tuple(prompts),
        sampling=sampling,
        scorers=scorers,
    )


def _close_orphan_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, results) -> None:
    """Close the child runs whose trial process ended without closing them: KILLED with a tag when the
    scheduler stopped the trial early (Tune ends its process at once), FAILED when the trial errored or
    its process died."""
    from mlflow.tracking import MlflowClient

    by_trial = {r.metrics.get("trial_id"): r for r in results if r.metrics}
    client = MlflowClient(tracking_uri)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], query):
        result = by_trial.get(run.data.tags.get("sdsweep.trial_id"))
        if result is not None and result.error is None:
            client.set_tag(
                run.info.run_id, "sdsweep.stopped_early", f"by the scheduler at step {result.metrics.get('step')}"
            )
            client.set_terminated(run.info.run_id, status="KILLED")
        else:
            client.set_tag(run.info.run_id, "sdsweep.error", "the trial process ended without closing its run")
            client.set_terminated(run.info.run_id, status="FAILED")


def _get_or_fail(ref, what: str):
    """ray.get, turning a task's exception into one line naming the cause and the fix."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        raise SweepError(f"{what} failed: {cause}") from err


def _fit(sweep, args, base, context, resources, storage_path, run_name, trials):
    from ray import tune

    trainable = TRAINABLES[sweep.trainable][0]
    max_steps = max(t.max_steps for t in trials)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, ctx=context), resources),
        param_space={**base, **sweep.search_space},
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=_search_alg(sweep),
            scheduler=_scheduler(sweep, max_steps, min(min(t.eval_every, t.max_steps) for t in trials)),
            num_samples=args.num_samples,
            max_concurrent_trials=args.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # the trial directory (its final adapter) goes to --storage-path too, not only checkpoints
            sync_config=tune.SyncConfig(sync_artifacts=True),
        ),
    )
    return list(tuner.fit())


def _mlflow_cli() -> str:
    """``mlflow`` if it is on PATH, else the one beside this Python (a venv that is not activated)."""
    import shutil

    beside = Path(sys.executable).parent / "mlflow"
    if shutil.which("mlflow") or not beside.exists():
        return "mlflow"
    return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)


def _print_summary(sweep: Sweep, results, baseline: dict[str, float]) -> None:
    keys = [sweep.metric] + sorted(k for k in baseline if k != sweep.metric)
    print(f"\n[sdsweep] results ({sweep.metric}, {sweep.mode} is best)")
    print("  " + "trial".ljust(34) + "".join(k.removeprefix("eval/").rjust(13) for k in keys))
    print("  " + "baseline (no fine-tune)".ljust(34) + "".join(f"{baseline.get(k, float('nan')):13.4f}" for k in keys))
    swept = [k for k in sweep.search_space]
    for r in results:
        config = r.config or {}
        name = " ".join(f"{k.removeprefix('lora_')}={config.get(k)}" for k in swept)[:32] or Path(r.path).name[:32]
        if r.error:
            print("  " + name.ljust(34) + f"  FAILED: {str(r.error).strip().splitlines()[-1][:120]}")
        else:
            print("  " + name.ljust(34) + "".join(f"{r.metrics.get(k, float('nan')):13.4f}" for k in keys))


def _describe(space: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, default=repr) if not hasattr(v, "domain_str") else v.domain_str for k, v in space.items()}
