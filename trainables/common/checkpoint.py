"""A trial's full training state as safetensors + JSON, so a restored trial continues exactly.

A checkpoint folder holds what the method writes (adapter, embeddings or model folders) and ``state/``:

- ``state/tensors.safetensors``: the trained tensors (``trained.*``), the optimizer's tensors
  (``optimizer.*``), every random generator's state (``rng.*``), the batch cursors' orders (``cursor.*``)
  and the loss sums of the open logging window (``window.*``);
- ``state/state.json``: the step, the optimizer's and LR scheduler's other values, the grad scaler, Python's
  and NumPy's RNG, the cursors' positions, the train time so far and the trial's MLflow run id.

No pickle anywhere: a checkpoint from another machine can be inspected and loaded safely.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_DIR = "state"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class Trained:
    """What a method trains, as named tensors: ``state()`` to save, ``load()`` to put them back."""

    state: Callable[[], dict[str, torch.Tensor]]
    load: Callable[[dict[str, torch.Tensor]], None]


def trained_parameters(**modules: torch.nn.Module) -> Trained:
    """The parameters that require grad in each module (LoRA layers, a whole UNet), keyed ``<module>.<name>``."""

    def state() -> dict[str, torch.Tensor]:
        return {
            f"{m}.{name}": p.detach()
            for m, module in modules.items()
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    def load(tensors: dict[str, torch.Tensor]) -> None:
        live = state()
        missing = sorted(set(live) - set(tensors))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained tensors (first: {missing[0]})")
        with torch.no_grad():
            for key, value in live.items():
                value.copy_(tensors[key].to(value.device, value.dtype))

    return Trained(state, load)


# ---------------------------------------------------------------- nested state -> tensors + JSON


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON skeleton of ``obj`` with every tensor moved into ``tensors`` under a dotted key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
        return {"__items__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
    return obj


# ---------------------------------------------------------------- random generators


def _rng_state(generators: dict[str, torch.Generator], tensors: dict[str, torch.Tensor]) -> dict:
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, gen in generators.items():
        tensors[f"rng.generator.{name}"] = gen.get_state()
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }


def _set_rng_state(saved: dict, generators: dict[str, torch.Generator], tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available() and saved["cuda_devices"] == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(saved["cuda_devices"])])
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.generator.{name}"])
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- save / load


def save_state(folder: Path, *, step: int, trained: Trained, stepper, generators: dict[str, torch.Generator],
               cursors: dict[str, Any], extra: dict[str, Any]) -> Path:  # fmt: skip
    """Write ``folder/state/``; ``extra`` is JSON-able values plus tensors (the recorder's open window)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for key, value in trained.state().items():
        tensors[f"trained.{key}"] = value.detach().cpu().contiguous()
    state = {
        "format": FORMAT_VERSION,
        "step": step,
        "optimizer": _flatten(stepper.optimizer.state_dict(), "optimizer", tensors),
        "schedule": _flatten(stepper.schedule.state_dict(), "schedule", tensors),
        "scaler": _flatten(stepper.scaler.state_dict(), "scaler", tensors),
        "rng": _rng_state(generators, tensors),
        "cursors": {name: _flatten(c.state_dict(), f"cursor.{name}", tensors) for name, c in cursors.items()},
        "extra": _flatten(extra, "extra", tensors),
    }
    out = Path(folder) / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / TENSORS_FILE))
    (out / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    return out


def read_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON part and the tensors of ``folder/state/``; a missing or damaged file is a one-line error."""
    from safetensors.torch import load_file

    out = Path(folder) / STATE_DIR
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(out / TENSORS_FILE))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {out} cannot be read ({err}): delete it to restart the trial") from err
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {out} has format {state.get('format')}, this sdsweep reads {FORMAT_VERSION}")
    return state, tensors


def load_state(folder: Path, *, trained: Trained, stepper, generators: dict[str, torch.Generator],
               cursors: dict[str, Any]) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Put a saved state back into live objects; returns ``(step, extra)``."""
    state, tensors = read_state(folder)
    trained.load({k.removeprefix("trained."): v for k, v in tensors.items() if k.startswith("trained.")})
    stepper.optimizer.load_state_dict(_unflatten(state["optimizer"], tensors))
    stepper.schedule.load_state_dict(_unflatten(state["schedule"], tensors))
    stepper.scaler.load_state_dict(_unflatten(state["scaler"], tensors))
    for name, cursor in cursors.items():
        cursor.load_state_dict(_unflatten(state["cursors"][name], tensors))
    _set_rng_state(state["rng"], generators, tensors)
    return state["step"], _unflatten(state["extra"], tensors)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (damaged, or from an incompatible version)."""
