"""A trial's MLflow writes, off the training path and never lost.

Every write (metrics, tags, images, files, the final status) is first put on disk in the trial's outbox
folder, then delivered in order by a background thread. While the tracking server is unreachable the thread
retries with backoff and training goes on; when it comes back the backlog is sent. At the end of a trial
:meth:`Outbox.close` waits a while for the backlog; whatever is still undelivered stays on disk, and the
trial says how to send it later:

    python -m trainables.common.outbox PATH/mlflow-outbox

A restarted trial (same trial folder) sends what its earlier attempt left first.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

OUTBOX_DIR = "mlflow-outbox"
# connection failures worth waiting out; anything else (a bad value) is reported and the write dropped
_TRANSIENT = ("max retries exceeded", "connection", "timed out", "timeout", "temporarily unavailable",
              "database is locked", "503", "502", "504", "bad gateway", "service unavailable")  # fmt: skip


def is_transient(err: BaseException) -> bool:
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    text = f"{type(err).__name__} {err}".lower()
    return any(marker in text for marker in _TRANSIENT)


class Outbox:
    """Ordered, persistent, retried delivery of one run's writes."""

    def __init__(self, tracking_uri: str, run_id: str, folder: Path, max_backoff_s: float = 30.0):
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri)
        self.max_backoff_s = max_backoff_s
        self.dropped: list[str] = []  # writes the server refused for good (not connectivity)
        self.outage_s = 0.0  # total time spent waiting for the server
        self._cond = threading.Condition()
        self._pending = sorted(self.folder.glob("*.json"))  # an earlier attempt's backlog goes first
        self._next = 1 + max((int(p.stem) for p in self._pending), default=0)
        self._closing = False
        self._failing = False  # the thread is waiting out an unreachable server
        self._thread = threading.Thread(target=self._run, name="mlflow-outbox", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ enqueue (called from the training loop)

    def put(self, kind: str, payload: dict[str, Any], files: dict[str, Path] | None = None) -> None:
        """Persist one write (copying its files into the outbox) and queue it."""
        with self._cond:
            number = self._next
            self._next += 1
        item = self.folder / f"{number:08d}.json"
        if files:
            store = self.folder / f"{number:08d}"
            store.mkdir()
            for name, path in files.items():
                target = store / name
                if Path(path).is_dir():
                    shutil.copytree(path, target)
                else:
                    shutil.copy2(path, target)
        tmp = item.with_suffix(".tmp")
        record = {"kind": kind, "run_id": self.run_id, "tracking_uri": self.tracking_uri, **payload}
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.rename(item)  # the thread never sees a half-written item
        with self._cond:
            self._pending.append(item)
            self._cond.notify()

    def pending_max_step(self) -> int:
        """The last metric step queued and not yet delivered (0 if none): those count as logged."""
        return max([0, *(data["step"] for data in self._pending_metrics())])

    def pending_has_metric(self, key: str) -> bool:
        """Whether a queued, undelivered record holds the metric ``key``."""
        return any(key in data["metrics"] for data in self._pending_metrics())

    def _pending_metrics(self) -> list[dict]:
        with self._cond:
            items = list(self._pending)
        out = []
        for item in items:
            try:
                data = json.loads(item.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data["kind"] == "metrics":
                out.append(data)
        return out

    # ------------------------------------------------------------ delivery

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                item = self._pending[0]
            self._deliver_with_retry(item)
            with self._cond:
                self._pending.pop(0)
                self._cond.notify_all()

    def _deliver_with_retry(self, item: Path) -> None:
        backoff, started = 0.5, None
        while True:
            try:
                deliver(self.client, item)
                with self._cond:
                    self._failing = False
                if started is not None:
                    self.outage_s += time.monotonic() - started
                return
            except Exception as err:
                with self._cond:
                    self._failing = is_transient(err)
                    self._cond.notify_all()
                if not is_transient(err):
                    self.dropped.append(f"{item.name}: {str(err).strip().splitlines()[0][:200]}")
                    _remove(item)
                    return
                if started is None:
                    started = time.monotonic()
                with self._cond:
                    if self._closing and self._give_up:
                        return
                time.sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)

    _give_up = False

    def drain(self, timeout_s: float) -> None:
        """Wait until the backlog is delivered, at most ``timeout_s``, and not at all while the server is
        unreachable: a trial calls this before Tune may end its process (a scheduler's stop)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending and not self._failing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 1.0))

    def close(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the backlog; returns how many writes are still undelivered (kept on
        disk for ``python -m trainables.common.outbox``)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            self._give_up = True
            left = len(self._pending)
        if left:
            print(
                f"[sdsweep] {left} MLflow writes of run {self.run_id} could not be delivered ({self.tracking_uri} "
                f"unreachable); they are kept in {self.folder}: send them with "
                f"`python -m trainables.common.outbox {self.folder}`",
                file=sys.stderr,
            )
        else:  # nothing left: no empty folders behind (the run's, then mlflow-outbox/ if it is empty too)
            for folder in (self.folder, self.folder.parent):
                try:
                    folder.rmdir()
                except OSError:
                    break
        for line in self.dropped:
            print(f"[sdsweep] MLflow refused a write of run {self.run_id} ({line})", file=sys.stderr)
        return left


def deliver(client, item: Path) -> None:
    """Send one outbox item to MLflow, then delete it."""
    from mlflow.entities import Metric, RunTag

    data = json.loads(item.read_text(encoding="utf-8"))
    run_id, kind, store = data["run_id"], data["kind"], item.with_suffix("")
    if kind == "metrics":
        metrics = [Metric(k, v, data["timestamp"], data["step"]) for k, v in data["metrics"].items()]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif kind == "params":
        client.log_batch(run_id, params=[_param(k, v) for k, v in data["params"].items()], synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in data["tags"].items()], synchronous=True)
    elif kind == "image":
        from PIL import Image

        with Image.open(store / "image.png") as image:
            image.load()
            if data.get("artifact_file"):
                client.log_image(run_id, image, artifact_file=data["artifact_file"])
            else:
                client.log_image(run_id, image, key=data["key"], step=data["step"], timestamp=data["timestamp"],
                                 synchronous=True)  # fmt: skip
    elif kind == "files":
        for path in sorted(store.iterdir()):
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=f"{data['artifact_path']}/{path.name}")
            else:
                client.log_artifact(run_id, str(path), artifact_path=data["artifact_path"])
    elif kind == "end":
        client.set_terminated(run_id, status=data["status"])
    else:
        raise ValueError(f"unknown outbox item kind {kind!r}")
    _remove(item)


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _remove(item: Path) -> None:
    store = item.with_suffix("")
    if store.is_dir():
        shutil.rmtree(store, ignore_errors=True)
    item.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Send what a trial could not deliver: ``python -m trainables.common.outbox FOLDER [--mlflow-uri URI]``."""
    import argparse

    from mlflow.tracking import MlflowClient

    parser = argparse.ArgumentParser(description="Send a trial's undelivered MLflow writes, in order.")
    parser.add_argument("folder", help="the trial's mlflow-outbox folder")
    parser.add_argument("--mlflow-uri", help="send to this tracking URI (default: the one the trial wrote to)")
    args = parser.parse_args(argv)
    items = sorted(Path(args.folder).glob("*.json"))
    if not items:
        print(f"[sdsweep] nothing to send in {args.folder}")
        return 0
    uri = args.mlflow_uri or json.loads(items[0].read_text(encoding="utf-8"))["tracking_uri"]
    client = MlflowClient(uri)
    for n, item in enumerate(items, 1):
        try:
            deliver(client, item)
        except Exception as err:
            print(f"error: {item} not delivered ({str(err).splitlines()[0][:200]}); {len(items) - n + 1} left: "
                  "run this again when the server is reachable", file=sys.stderr)  # fmt: skip
            return 1
    print(f"[sdsweep] delivered {len(items)} MLflow writes from {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
