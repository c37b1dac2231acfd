"""Two launches at the same moment on a fresh cache: shared caches are built by both, safely."""

import multiprocessing as mp
from pathlib import Path

import pytest

from trainables.common.atomic import build_once


def _build_tiny(target: str) -> str:
    from trainables.models import build_tiny_sd

    return str(build_tiny_sd(Path(target)))


def test_two_processes_building_the_tiny_model_at_once_both_succeed(tmp_path):
    target = tmp_path / "models" / "tiny-sd"
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build_tiny, [str(target)] * 2)
    assert results == [str(target)] * 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-sd"]  # no .partial left behind
    from trainables.models import load_pipeline

    assert load_pipeline(str(target)).unet.config.cross_attention_dim == 32


def test_a_stale_incomplete_cache_is_replaced_and_a_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "half.bin").write_bytes(b"x")  # an older crash left this

    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / "done").write_text("ok")

    build_once(target, write, lambda d: (d / "done").exists())
    assert sorted(p.name for p in target.iterdir()) == ["done"]

    def broken(folder: Path) -> None:
        folder.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(tmp_path / "other", broken, lambda d: (d / "done").exists())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_truncated_encoded_cache_is_named_and_rebuilt(tiny_sd, tmp_path, capsys):
    import torch
    from PIL import Image

    from trainables.data.images import encode_cached

    images = [Image.new("RGB", (64, 64), c) for c in ("white", "black", "red")]
    cache = tmp_path / "encoded" / "set.pt"
    first = encode_cached(tiny_sd, images, ["a", "b", "a"], 64, cache, progress=False)
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])  # a disk filled up mid-write, or a copy cut short
    again = encode_cached(tiny_sd, images, ["a", "b", "a"], 64, cache, progress=False)
    err = capsys.readouterr().err
    assert f"the encoded cache {cache} is damaged" in err and "encoding the data again" in err
    assert torch.equal(again.latent_mean, first.latent_mean) and cache.read_bytes() == data
    assert sorted(p.name for p in cache.parent.iterdir()) == ["set.pt"]  # no temporary files left


def _experiment(args) -> str:
    from sweeps.launch.parent_run import experiment_id

    return experiment_id(*args)


def test_two_launches_creating_a_fresh_sqlite_store_at_once_both_get_the_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with mp.get_context("spawn").Pool(3) as pool:
        ids = pool.map(_experiment, [("race", uri)] * 3)
    assert len(set(ids)) == 1
