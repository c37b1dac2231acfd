"""Search algorithms and schedulers: Tune's variant generator or Optuna; FIFO or ASHA."""

from __future__ import annotations

from sweeps.launch.spec import Sweep


def search_alg(sweep: Sweep, seed: int = 0):
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


def scheduler(sweep: Sweep, max_steps: int, grace: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler == "asha":
        # rungs on the step count, which every eval report carries
        # stop_last_trials=False: a trial that reaches max_t ends by itself, with its final adapter
        return ASHAScheduler(
            time_attr="step", max_t=max_steps, grace_period=max(1, grace), reduction_factor=2, stop_last_trials=False
        )
    return FIFOScheduler()
