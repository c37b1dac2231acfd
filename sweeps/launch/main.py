"""The launch: checks, models, Ray, the parent MLflow run, data once, the baseline, the trials, the report.

A sweep file declares a :class:`~sweeps.launch.spec.Sweep` and calls :func:`launch`. Everything a trial
needs besides its settings travels in a :class:`~trainables.common.tracking.TrialContext`, with absolute
paths and URIs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from eval.scorers import ScorerSpec
from sweeps.launch.cli import parse_args
from sweeps.launch.expand import expand_trials, optuna_space, samples_differ, validate_trials, with_preset
from sweeps.launch.parent_run import (
    close_orphan_runs,
    describe,
    experiment_id,
    mlflow_cli,
    print_summary,
    resolve_tracking_uri,
)
from sweeps.launch.ray_env import QUIET_ENV, get_or_fail, quiet_libraries, start_ray
from sweeps.launch.resume import (
    check_same_space,
    check_unfinished,
    close_launch,
    driver_tag,
    finished_baseline,
    space_hash,
    unfinished_launches,
)
from sweeps.launch.search import scheduler, search_alg
from sweeps.launch.spec import PRESETS, Preset, Sweep, SweepError
from trainables.common.tracking import slug
from trainables.registry import METHODS, TrialConfig


def launch(sweep: Sweep, argv: list[str] | None = None) -> int:
    """Run the sweep from the command line; returns the process exit code."""
    args = parse_args(argv, sweep)
    quiet_libraries()
    try:
        return _launch(sweep, args)
    except SweepError as err:
        if os.environ.get("SDSWEEP_DEBUG"):  # the cause's traceback, for a bug report
            import traceback

            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


def _launch(sweep: Sweep, args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    sweep = with_preset(sweep, preset, args)
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else preset.cpus_per_trial
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else preset.gpus_per_trial
    workers = args.workers_per_trial if args.workers_per_trial is not None else sweep.workers_per_trial
    _check_flags(sweep, args, cpus, gpus)
    _check_knobs(sweep)
    if workers < 1:
        raise SweepError(f"--workers-per-trial {workers}: use 1 (the trial's own process) or more")

    # 1. every trial's config is checked before anything starts
    configs = expand_trials(sweep, args, 1 if sweep.search_alg == "optuna" else args.num_samples)
    trials = validate_trials(sweep, configs)
    uneven = sorted({t.train.batch_size for t in trials if t.train.batch_size % workers})
    if uneven:
        raise SweepError(
            f"batch_size {uneven[0]} cannot be split evenly over {workers} workers per trial (each worker takes "
            f"batch_size / {workers} rows of every batch): use a batch_size divisible by {workers}, "
            "or another --workers-per-trial"
        )
    if gpus == 0 and any(t.train.mixed_precision != "no" for t in trials):
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
    storage_path = args.storage_path or str(Path.home() / "ray_results")  # Tune's default, made explicit
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())

    # 2. models: the tiny presets build their models from config, once, into the cache
    model, scorers = _models(args, preset, cache_dir)

    import mlflow
    import ray

    # 3. Ray, and whether its nodes can ever hold a trial: refused here, before any MLflow run exists
    start_ray(cpus * workers, dashboard=workers > 1)  # shut down in launch() whatever happens next
    max_concurrent = _check_resources(cpus, gpus, workers, args.max_concurrent_trials)
    resources = {"cpu": cpus, "gpu": gpus}
    if workers > 1:  # the trial only waits on its Train job, which reserves cpus/gpus per worker itself
        from sweeps.launch.resources import waiting_trial_resources

        resources = waiting_trial_resources()

    exp_id = experiment_id(sweep.name, tracking_uri)
    found = unfinished_launches(tracking_uri, exp_id, sweep.name)
    resuming = check_unfinished(found, sweep.name, args.resume, args.fresh)
    if args.fresh:
        for old in (u for u in found if not u.alive):
            close_launch(tracking_uri, exp_id, old.run_id, "abandoned: a later launch started over (--fresh)")
    methods = sorted({t.method for t in trials})
    n_trials = len(trials) if sweep.search_alg != "optuna" else args.num_samples
    if resuming is not None:
        tune_path = resuming.tune_path
        check_same_space(mlflow.MlflowClient(tracking_uri).get_run(resuming.run_id).data.tags, configs, sweep.name)
        parent = mlflow.start_run(run_id=resuming.run_id)
        mlflow.set_tag("sdsweep.driver", driver_tag())
        print(f"[sdsweep] resuming {sweep.name} (MLflow run {parent.info.run_id}, started {resuming.started}): "
              f"{resuming.trials_done} of {resuming.trials_total} trials had finished")  # fmt: skip
    else:
        run_name = f"{sweep.name}-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.urandom(2).hex()}"  # unique per launch
        tune_path = f"{storage_path.rstrip('/')}/{run_name}"
        tags = {"sdsweep.sweep": sweep.name, "sdsweep.tune_path": tune_path, "sdsweep.driver": driver_tag(),
                "sdsweep.space_hash": space_hash(configs), **_source_tags()}  # fmt: skip
        parent = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags)
    if resuming is None:
        print(f"[sdsweep] {sweep.name}: {n_trials} trials ({', '.join(methods)}), preset {args.preset}, model {model}")
    print(f"[sdsweep] MLflow run {parent.info.run_id} in {tracking_uri}")
    try:
        if resuming is None:
            mlflow.log_params(
                {
                    "sweep": sweep.name, "preset": args.preset, "model": model, "methods": ",".join(methods),
                    "data": sweep.data.kind, "search_alg": sweep.search_alg, "scheduler": sweep.scheduler,
                    "metric": sweep.metric, "mode": sweep.mode, "num_samples": args.num_samples,
                    "num_trials": n_trials, "cpus_per_trial": cpus, "gpus_per_trial": gpus,
                    "workers_per_trial": workers, "scorers": scorers.text(),
                    **({"knobs": json.dumps(sweep.knobs)} if sweep.knobs else {}),
                    **({"preset_note": preset.caveat} if preset.caveat and not args.model else {}),
                }
            )  # fmt: skip
            mlflow.log_dict(
                {"base_config": sweep.base_config, "arms": [describe(a) for a in sweep.all_arms()], "trials": configs},
                "sweep.json",
            )

        # 3. data: built once, encoded once with the frozen VAE/text encoder, class images generated once
        class_sets = _class_set_requests(trials, preset)
        prepare = ray.remote(num_returns=2, num_cpus=cpus, num_gpus=gpus, max_retries=0)(_prepare)
        sampling = replace(preset.sampling, resolution=trials[0].train.resolution)
        data_ref, eval_ref = prepare.remote(
            sweep.data, model, trials[0].train.resolution, cache_dir, class_sets, sampling
        )
        eval_set = get_or_fail(eval_ref, "preparing the data")
        if resuming is None:
            _log_references(eval_set)
        context = _trial_context(model, tracking_uri, exp_id, parent.info.run_id, eval_set, sampling, scorers)
        context = replace(context, tags=_source_tags(), mixed_precision=trials[0].train.mixed_precision,
                          num_class_images=preset.num_class_images, workers_per_trial=workers, cpus_per_worker=cpus,
                          gpus_per_worker=gpus, storage_path=tune_path, max_failures=args.max_failures,
                          knobs=dict(sweep.knobs))  # fmt: skip

        # 4. the no-fine-tune baseline, same prompts and seeds (also proves model and scorers load)
        baseline_metrics = None
        if resuming is not None:
            baseline_metrics = finished_baseline(tracking_uri, exp_id, parent.info.run_id)
        if baseline_metrics is None:
            baseline = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_baseline)
            print(f"[sdsweep] evaluating the baseline (no fine-tune) on {len(eval_set.prompts)} prompts")
            baseline_metrics = get_or_fail(baseline.remote(context), "evaluating the baseline")

        # 5. the trials
        progress = _progress(sweep, configs, trials, n_trials, baseline_metrics)
        results = _fit(sweep, args, configs, replace(context, data=data_ref), resources, tune_path, trials,
                       restore=resuming is not None, max_concurrent=max_concurrent, progress=progress)  # fmt: skip
        failed = [r for r in results if r.error]
        close_orphan_runs(tracking_uri, exp_id, parent.info.run_id, results)
        print_summary(sweep, results, baseline_metrics)

        # 6. the report, from MLflow only
        from reports.compare import build_report

        report_dir = Path(args.report_dir).expanduser().resolve() / sweep.name
        report = build_report(tracking_uri, parent.info.run_id, report_dir, sweep.metric, sweep.mode)
        verdict = _record_verdict(report_dir)
        _log_best(tracking_uri, verdict["winner_run_id"])
        best_files = _best_files(tracking_uri, verdict["winner_run_id"], results, parent.info.run_id)
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
        mlflow.set_tag("sdsweep.complete", "true")
        mlflow.end_run(status="FAILED" if failed and len(failed) == len(results) else "FINISHED")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    finally:
        ray.shutdown()

    for line in verdict["lines"]:
        print(f"[sdsweep] {line}")
    if best_files:
        print(f"[sdsweep] best trial's files: {best_files}")
    print(f"[sdsweep] report: {report.with_name('report.html')} (open in a browser; Markdown beside it: "
          f"{report.name}; also in MLflow run {parent.info.run_id}, artifacts report/)")  # fmt: skip
    # MLflow 3's UI opens an experiment on its GenAI pages; this route opens the runs table, trials nested
    runs_page = f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith("sqlite:"):
        print(f"[sdsweep] browse the runs: {mlflow_cli()} ui --backend-store-uri {tracking_uri}, then open "
              f"http://127.0.0.1:5000/{runs_page}")  # fmt: skip
    else:
        print(f"[sdsweep] browse the runs at {tracking_uri.rstrip('/')}/{runs_page}")
    if failed:
        print(f"[sdsweep] {len(failed)} of {len(results)} trials failed; their errors are above and in MLflow")
        return 1
    return 0


def _check_flags(sweep: Sweep, args: argparse.Namespace, cpus: float, gpus: float) -> None:
    for flag, value in (("--cache-dir", args.cache_dir), ("--report-dir", args.report_dir),
                        ("--storage-path", args.storage_path)):  # fmt: skip
        if value and "://" not in value:
            _check_folder(flag, Path(value).expanduser())
    if cpus <= 0 or gpus < 0:
        raise SweepError(
            f"--cpus-per-trial {cpus} / --gpus-per-trial {gpus}: use cpus > 0 (fractions allowed), gpus >= 0"
        )
    if args.max_failures < 0:
        raise SweepError(f"--max-failures {args.max_failures}: use 0 (never restart a trial) or more")
    if args.num_samples < 1:
        raise SweepError(f"--num-samples {args.num_samples}: use 1 or more")
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise SweepError(f"--max-concurrent-trials {args.max_concurrent_trials}: use 1 or more, or leave it out")
    if args.num_samples > 1 and not samples_differ(sweep):
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


def _source_tags() -> dict[str, str]:
    """The code that produced the runs: MLflow's own git-commit tag, on the parent and every child run."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:  # not a git checkout (a `ray job submit` copy leaves .git out)
        return {}
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                           text=True, timeout=10).stdout.strip()  # fmt: skip
    return {"mlflow.source.git.commit": commit.stdout.strip(), "sdsweep.git_dirty": "true" if dirty else "false"}


def _log_best(tracking_uri: str, run_id: str | None) -> None:
    """The winner's files (adapter, embeddings or model, with its card) copied to the parent run as ``best/``."""
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    if not run_id:
        return
    client = MlflowClient(tracking_uri)
    try:
        for kind in ("adapter", "embeddings", "model"):
            if client.list_artifacts(run_id, kind):
                with tempfile.TemporaryDirectory() as tmp:
                    mlflow.log_artifacts(client.download_artifacts(run_id, kind, tmp), artifact_path="best")
                return
    except Exception as err:  # a convenience copy: the winner's own run still holds the files
        print(f"[sdsweep] note: could not copy the best trial's files to the sweep's run ({err}); they are in "
              f"its own run {run_id}")  # fmt: skip


def _best_files(tracking_uri: str, run_id: str | None, results, parent_run_id: str) -> str:
    """Where the winner's trained files are: its trial folder's final files, and the MLflow command that
    fetches them (the parent run's ``best/``) from any machine ("" without a winner)."""
    from mlflow.tracking import MlflowClient

    if not run_id:
        return ""
    run = MlflowClient(tracking_uri).get_run(run_id)
    trial_id = run.data.tags.get("sdsweep.trial_id")
    folder = next((Path(r.path) for r in results if r.metrics and r.metrics.get("trial_id") == trial_id), None)
    cli = f"MLFLOW_TRACKING_URI={tracking_uri} {mlflow_cli()}"
    fetch = f"{cli} artifacts download -u runs:/{parent_run_id}/best -d best"
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" or p.name == "pipeline") if folder else []
    return (", ".join(str(f) for f in files) + "; " if files else "") + f"fetch them with: {fetch}"


def _record_verdict(report_dir: Path) -> dict:
    """The report's verdict on the parent run (the best trial, its difference to the baseline and that
    difference's interval); returns ``verdict.json``'s content."""
    import json
    import math

    import mlflow

    verdict = json.loads((report_dir / "verdict.json").read_text(encoding="utf-8"))
    beats = verdict["winner"] is not None and verdict["winner"] in verdict["beats_baseline"]
    mlflow.set_tags({
        "sdsweep.best_trial": verdict["winner"] or "",
        "sdsweep.best_run_id": verdict["winner_run_id"] or "",
        "sdsweep.verdict": "beats the baseline" if beats else "no trial beats the baseline beyond the spread",
    })  # fmt: skip
    delta = verdict["delta"] or {}
    values = {"best/value": verdict["winner_value"], "baseline/value": verdict["baseline_value"],
              "best/delta": delta.get("mean"), "best/delta_low": delta.get("low"),
              "best/delta_high": delta.get("high")}  # fmt: skip
    mlflow.log_metrics({k: v for k, v in values.items() if isinstance(v, float) and math.isfinite(v)})
    return verdict


def _check_resources(cpus: float, gpus: float, workers: int, max_concurrent: int | None) -> int | None:
    """Refuse, before any trial starts, trials no node set can hold; returns the cap on trials at once (a
    multi-worker trial reserves its workers only inside its Train job, so Tune must not start more trials than
    fit, or they would wait on each other's workers)."""
    from sweeps.launch.resources import AUTOSCALING_CONFIG, autoscaled_nodes, check_fits, live_nodes

    shapes = live_nodes()
    if os.environ.get("RAY_ADDRESS"):  # a cluster: its autoscaler may add nodes of the types its config lists
        shapes += autoscaled_nodes(Path(os.environ.get("SDSWEEP_CLUSTER_YAML", AUTOSCALING_CONFIG)).expanduser())
    fits = check_fits(cpus, gpus, workers, shapes)
    if workers == 1 or max_concurrent is not None:
        return max_concurrent
    return fits


def _check_folder(flag: str, folder: Path) -> None:
    """A folder the sweep writes to: created if missing; a file, or a folder it cannot write, is an error."""
    if folder.exists() and not folder.is_dir():
        raise SweepError(f"{flag} {folder} is a file, not a folder: pass a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"{flag} {folder} cannot be created ({err.strerror}): pass a folder you can write") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SweepError(f"{flag} {folder} is not writable by this user: pass a folder you can write")


def _class_set_requests(trials: list[TrialConfig], preset: Preset) -> list[tuple[str | None, int]]:
    """The distinct prior-preservation sets the trials need: (class prompt or None for the data's, count)."""
    wanted = set()
    for t in trials:
        if METHODS[t.method].uses_class_images(t.spec):
            wanted.add((t.spec.class_prompt, t.spec.num_class_images or preset.num_class_images))
    return sorted(wanted, key=lambda k: (k[0] or "", k[1]))


def _models(args, preset: Preset, cache_dir: Path) -> tuple[str, ScorerSpec]:
    from eval.scorers import build_tiny_clip, build_tiny_dino
    from trainables.models import build_tiny_sd

    tiny_dir = cache_dir / "models"
    if args.model:
        model = args.model
        if Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())
    elif preset.model is None and preset.tiny_model == "learned":
        from trainables.tiny_learned import learned_tiny

        model = str(learned_tiny(cache_dir))
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


def _prepare(data, model: str, resolution: int, cache_dir: Path, class_sets, sampling):
    """One Ray task: the data kind's preparation, then the class images every prior-preservation trial
    shares. Returns ``(PreparedData, EvalSet)`` so the driver fetches only the small second part."""
    quiet_libraries()
    from trainables.data.class_images import add_class_sets

    prepared = data.prepare(model, resolution, cache_dir)
    add_class_sets(prepared, class_sets, model, resolution, cache_dir, sampling)
    return prepared, prepared.eval


def _baseline(context):
    quiet_libraries()
    from trainables.baseline import evaluate_baseline

    return evaluate_baseline(context)


def _log_references(eval_set) -> None:
    """Ground truth beside the samples, for the report's grid: per-prompt references, or the subject photos."""
    import mlflow

    for i, prompt in enumerate(eval_set.prompts):
        if prompt.reference is not None:
            mlflow.log_image(prompt.reference, artifact_file=f"references/{i:02d}_{slug(prompt.name)}.png")
    for i, image in enumerate(eval_set.references):
        mlflow.log_image(image, artifact_file=f"references/subject/{i:02d}.png")


def _check_knobs(sweep: Sweep) -> None:
    """A bad knob grid, or a metric naming a knob setting the grid lacks, is refused before anything starts."""
    from eval.knobs import BEST, base_metric, is_knob_key, knob_grid, knob_text

    try:
        combos = knob_grid(dict(sweep.knobs))
    except ValueError as err:
        raise SweepError(f"sweep {sweep.name!r}: {err}") from None
    if is_knob_key(sweep.metric) and sweep.scheduler == "asha":
        raise SweepError(
            f"metric {sweep.metric!r} with scheduler 'asha': knob settings are scored only at a trial's end, ASHA "
            f"compares trials at every evaluation: use the plain {base_metric(sweep.metric)!r} or scheduler 'fifo'"
        )
    if is_knob_key(sweep.metric):
        setting = sweep.metric.split(" ", 1)[1]
        known = [BEST, *(knob_text(c) for c in combos)] if sweep.knobs else []
        if setting not in known:
            raise SweepError(
                f"metric {sweep.metric!r}: the knob setting {setting!r} is not in the sweep's knobs "
                f"({', '.join(repr(f'{base_metric(sweep.metric)} {k}') for k in known) or 'none set'}): "
                "use one of those, or the plain metric"
            )


def _trial_context(model, tracking_uri, exp_id, parent_run_id, eval_set, sampling, scorers):
    from trainables.common.tracking import TrialContext

    return TrialContext(
        model=model,
        tracking_uri=tracking_uri,
        experiment_id=exp_id,
        parent_run_id=parent_run_id,
        eval=eval_set,
        sampling=sampling,
        scorers=scorers,
    )


def _progress(sweep: Sweep, configs, trials, n_trials: int, baseline: dict[str, float]):
    """The console's trial lines: each trial named by the settings that tell it from the others."""
    import math

    from sweeps.launch.parent_run import trial_label, varied_keys
    from sweeps.launch.progress import Progress
    from trainables.registry import trial_settings

    if sweep.search_alg == "optuna":
        varied = list(dict.fromkeys(k for arm in sweep.all_arms() for k in arm))
    else:
        varied = varied_keys(configs)
    with_method = len({t.method for t in trials}) > 1 or (sweep.search_alg == "optuna" and len(sweep.all_arms()) > 1)

    def label(config: dict) -> str:
        return trial_label(trial_settings(config), varied, with_method)

    max_steps = max(t.train.max_steps for t in trials)
    return Progress(n_trials, sweep.metric, baseline.get(sweep.metric, math.nan), max_steps, label)


def _fit(sweep, args, configs, context, resources, tune_path: str, trials, restore: bool = False,
         max_concurrent: int | None = None, progress=None):  # fmt: skip
    """Run the trials on Tune, in the run folder ``tune_path``; ``restore`` continues that folder's run
    (finished trials are not run again; unfinished and errored ones continue from their checkpoints)."""
    from ray import tune

    from trainables.run_trial import run_trial

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=context), resources)
    if sweep.search_alg == "optuna":
        param_space, num_samples = optuna_space(sweep, args), args.num_samples
    else:  # exactly the configs validated above, in order
        param_space, num_samples = {"trial": tune.grid_search(run_order(configs, sweep.scheduler))}, 1
    if restore:
        if not tune.Tuner.can_restore(tune_path):
            raise SweepError(
                f"cannot resume: Tune's run folder {tune_path} is missing or incomplete (was --storage-path on "
                "shared storage?); pass --fresh to start over"
            )
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=True, param_space=param_space)
        return list(tuner.fit())
    max_steps = max(t.train.max_steps for t in trials)
    storage, name = tune_path.rsplit("/", 1)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=search_alg(sweep),
            scheduler=scheduler(sweep, max_steps, min(min(t.train.eval_every, t.train.max_steps) for t in trials)),
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            # a finished trial's process runs the next one: imports, the base model, the scorers and the
            # data are loaded once per process, not per trial (trainables.models.load_for_training copies
            # the model each trial trains). A Train job's workers are Train's own, so not for workers > 1.
            reuse_actors=context.workers_per_trial == 1,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            # a trial whose process dies restarts from its last checkpoint, in the same MLflow run
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # the trial directory (its final files) goes to --storage-path too, not only checkpoints
            sync_config=tune.SyncConfig(sync_artifacts=True),
            # our own trial lines (sweeps.launch.progress) instead of Tune's tables
            verbose=0,
            callbacks=[progress] if progress is not None else None,
        ),
    )
    return list(tuner.fit())


def run_order(configs: list[dict], scheduler_name: str) -> list[dict]:
    """The order Tune starts the trials in: as written for FIFO; for ASHA a seeded shuffle. ASHA stops a
    trial only when it is worse than the trials that reached the same rung before it. A grid written from
    weak to strong settings (lowest learning rate first) would never stop anything: on the tiny kanji
    grid, 0 of 1080 steps were saved in the written order (benchmarks/asha_vs_fifo.py)."""
    if scheduler_name != "asha":
        return list(configs)
    import random

    order = list(configs)
    random.Random(0).shuffle(order)
    return order


def _trial_name(trial) -> str:
    """``run_trial_<id>``: short, and the same in Tune's table, its folders and the MLflow run names."""
    return f"run_trial_{trial.trial_id}"


__all__ = ["QUIET_ENV", "launch"]
