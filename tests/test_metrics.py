"""Each metric on inputs with known answers."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval.evaluate import EvalPrompt, score_images
from eval.metrics import clip_score, clip_t_score, glyph_iou, glyph_purity, mean_pairwise_cosine


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_clip_t_and_clip_score_on_known_cosines():
    images = _unit([1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    texts = _unit([1.0, 0.0], [0.0, 1.0], [0.0, -1.0])  # cosines 1, 0, -1
    assert clip_t_score(images, texts) == pytest.approx(0.0)
    assert clip_score(images, texts) == pytest.approx(2.5 * (1 + 0 + 0) / 3)  # negatives clipped to 0


def test_pairwise_cosine_identical_is_one_and_orthogonal_is_zero():
    a = _unit([3.0, 4.0])
    assert mean_pairwise_cosine(a, a) == pytest.approx(1.0)
    assert mean_pairwise_cosine(_unit([1.0, 0.0]), _unit([0.0, 1.0])) == pytest.approx(0.0)
    # all pairs, as DreamBooth: mean of cos(g_i, r_j)
    assert mean_pairwise_cosine(_unit([1.0, 0.0], [0.0, 1.0]), _unit([1.0, 0.0])) == pytest.approx(0.5)


def _glyph(size=64):
    img = Image.new("RGB", (size, size), "white")
    from PIL import ImageDraw

    k = size // 64
    ImageDraw.Draw(img).rectangle([16 * k, 28 * k, 48 * k - 1, 36 * k - 1], fill="black")
    return img


def test_purity_black_on_white_is_one():
    assert glyph_purity(_glyph()) == 1.0


def test_purity_mid_grey_noise_is_near_zero():
    rng = np.random.default_rng(0)
    noise = rng.integers(90, 166, size=(64, 64, 3), dtype=np.uint8)  # grey +- 0.15
    assert glyph_purity(Image.fromarray(noise)) < 0.01


def test_purity_counts_colour_as_impure():
    red = Image.new("RGB", (8, 8), (255, 0, 0))  # bright but not paper, dark channels but not ink
    assert glyph_purity(red) == 0.0


def test_iou_all_white_is_zero_and_identical_is_one():
    assert glyph_iou(Image.new("RGB", (64, 64), "white"), _glyph()) == 0.0
    assert glyph_iou(_glyph(), _glyph()) == 1.0
    # resized to the reference's size before comparing
    assert glyph_iou(_glyph(128), _glyph(64)) == pytest.approx(1.0, abs=0.05)


def test_scores_of_images_equal_to_their_references(tiny_scorers, kanji_dir):
    from trainables.data.kanji import load_image, load_records

    records = load_records(kanji_dir)[:3]
    glyphs = [load_image(kanji_dir, r) for r in records]
    prompts = [EvalPrompt(r.character, r.caption, i, g) for i, (r, g) in enumerate(zip(records, glyphs, strict=True))]
    prompts.append(EvalPrompt("novel/internet", 'kanji meaning "internet"', 3))
    images = glyphs + [Image.new("RGB", (64, 64), "white")]
    metrics = score_images(images, prompts, tiny_scorers)
    assert metrics["eval/clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["eval/dino"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["eval/glyph_iou"] == 1.0
    assert metrics["eval/glyph_purity"] > 0.9  # antialiased stroke edges are neither black nor white
    assert all(math.isfinite(v) for v in metrics.values())
    # clip_t is the mean of per-pair cosines computed by the same scorer
    img_e, txt_e = (
        tiny_scorers.clip.embed_images(images),
        tiny_scorers.clip.embed_texts([p.text for p in prompts]),
    )
    assert metrics["eval/clip_t"] == pytest.approx(float((img_e * txt_e).sum(-1).mean()), abs=1e-6)


def test_per_prompt_items_average_to_each_metric(tiny_scorers, kanji_dir):
    """The items the verdict pairs are the metric's own terms: their mean is the metric, for references per
    prompt (kanji) and for a set of subject photos (DreamBooth's all-pairs scores), and None where a metric
    does not apply to a prompt."""
    from trainables.data.kanji import load_image, load_records

    records = load_records(kanji_dir)[:3]
    glyphs = [load_image(kanji_dir, r) for r in records]
    prompts = [EvalPrompt(r.character, r.caption, i, g) for i, (r, g) in enumerate(zip(records, glyphs, strict=True))]
    prompts.append(EvalPrompt("novel/internet", 'kanji meaning "internet"', 3))
    images = [glyphs[1], glyphs[0], Image.new("RGB", (64, 64), "grey"), glyphs[2]]
    subject = [EvalPrompt("a", "a sks toy", 0, score_text="a toy"), EvalPrompt("b", "a sks toy", 1),
               EvalPrompt("p", "a toy", 2, group="plain")]  # fmt: skip
    cases = [(images, prompts, ()), (images[:3], subject, tuple(glyphs))]
    for imgs, prs, refs in cases:
        items = {}
        metrics = score_images(imgs, prs, tiny_scorers, references=refs, items=items)
        assert set(items) == set(metrics)
        for name, value in metrics.items():
            values = [v for v in items[name] if v is not None]
            assert len(items[name]) == len(prs) and values, name
            assert sum(values) / len(values) == pytest.approx(value, abs=1e-6), name
    assert items["eval/clip_i"][2] is None  # the plain prompt is not scored against the subject photos
