"""The console's trial lines: k of N, the trial's settings, its score beside the baseline's, an early stop,
a failure's last line, and the time left."""

from types import SimpleNamespace

from sweeps.launch.progress import Progress


def _trial(trial_id, rank, result=None, error_file=None):
    return SimpleNamespace(trial_id=trial_id, config={"trial": {"lora_rank": rank}}, last_result=result or {},
                           error_file=error_file)  # fmt: skip


def test_trial_lines(capsys, tmp_path):
    progress = Progress(3, "eval/glyph_iou", 0.1015, 20, label=lambda config: f"rank={config['trial']['lora_rank']}")
    first, second, third = _trial("a", 1), _trial("b", 4), _trial("c", 8)
    for trial in (first, second):
        progress.on_trial_start(0, [], trial)
    progress.on_trial_start(0, [], first)  # a restarted trial is not counted twice
    first.last_result = {"eval/glyph_iou": 0.1013, "step": 20}
    progress.on_trial_complete(0, [], first)
    second.last_result = {"eval/glyph_iou": 0.1001, "step": 10}
    progress.on_trial_complete(0, [], second)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nTrialError: train/loss became nan at step 3\n")
    third.error_file = str(error)
    progress.on_trial_start(0, [], third)
    progress.on_trial_error(0, [], third)

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[sdsweep] trial 1 of 3 started: rank=1"
    assert lines[1] == "[sdsweep] trial 2 of 3 started: rank=4"
    assert lines[2].startswith("[sdsweep] trial 1 of 3 done: rank=1, glyph_iou 0.1013 (baseline 0.1015); about ")
    assert lines[3].startswith("[sdsweep] trial 2 of 3 done: rank=4, glyph_iou 0.1001 (baseline 0.1015), stopped "
                               "early by the scheduler at step 10; about ")  # fmt: skip
    assert lines[4] == "[sdsweep] trial 3 of 3 started: rank=8"
    assert lines[5] == "[sdsweep] trial 3 of 3 failed: rank=8: TrialError: train/loss became nan at step 3"
    assert len(lines) == 6


def test_the_closing_summary_is_sorted_like_the_report_and_shows_plain_scores(capsys):
    from types import SimpleNamespace

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch.parent_run import print_summary

    def result(rank, iou, error=None):
        metrics = {"eval/glyph_iou": iou, "eval/glyph_iou scale:0.5 cfg:3": iou / 2, "eval/glyph_iou best knob": iou}
        return SimpleNamespace(config={"trial": {"method": "lora", "lora_rank": rank}}, metrics=metrics,
                               error=error, path=f"/t/{rank}")  # fmt: skip

    baseline = {"eval/glyph_iou": 0.1, "eval/glyph_iou scale:0.5 cfg:3": 0.05, "eval/clip_t": 0.2}
    print_summary(SWEEP, [result(16, 0.3), result(2, 0.2), result(4, 0.0, RuntimeError("boom"))], baseline)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["trial", "glyph_iou", "clip_t"]  # no knob columns: they are the report's
    assert [line.split()[0] for line in lines[2:]] == ["baseline", "rank=2", "rank=4", "rank=16"]  # by rank
    assert "FAILED: boom" in lines[4]
