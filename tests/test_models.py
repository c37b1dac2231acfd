"""Model loading: the tiny model goes through the real from_pretrained path; bad models fail clearly."""

import pytest
import torch

from trainables.models import ModelLoadError, clip_tokenizer, load_pipeline


def test_offline_clip_tokenizer_matches_open_clip(tmp_path):
    import open_clip

    ours = clip_tokenizer(tmp_path)
    theirs = open_clip.get_tokenizer("ViT-L-14-quickgelu")
    for text in ['kanji meaning "seven"', "language model, multimedia!", "Ünïcode — 漢字"]:
        ids = ours(text).input_ids
        reference = theirs([text])[0].tolist()
        assert ids == reference[: len(ids)], text
        assert ids[0] == 49406 and ids[-1] == 49407
    assert ours.model_max_length == 77 and len(ours) == 49408


def test_tiny_model_round_trips_through_from_pretrained(tiny_sd):
    pipe = load_pipeline(tiny_sd)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.safety_checker is None
    out = pipe("kanji", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert out.shape == (1, 64, 64, 3)
    again = load_pipeline(tiny_sd)("kanji", num_inference_steps=2, height=64, width=64, output_type="np",
                                   generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert (out == again).all()  # same weights from disk, same seed, same image


def test_missing_local_model_is_one_clear_line(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "no Stable Diffusion folder there" in message and "\n" not in message


def test_unreachable_hub_model_never_falls_back_to_random_weights():
    with pytest.raises(
        ModelLoadError, match=r"cannot load Stable Diffusion model 'nobody/no-such-model' .*--model DIR"
    ):
        load_pipeline("nobody/no-such-model")


def test_missing_scorers_name_the_model_and_the_fix(tmp_path):
    from eval.scorers import ClipScorer, DinoScorer, ScorerLoadError

    with pytest.raises(ScorerLoadError, match=r"cannot load CLIP scorer local-dir:.*--clip-model local-dir:DIR"):
        ClipScorer(f"local-dir:{tmp_path}", None)
    with pytest.raises(ScorerLoadError, match=r"cannot load DINO scorer .*pass --dino-model DIR"):
        DinoScorer(str(tmp_path / "no-dino"))


def test_a_reused_process_gives_each_trial_its_own_copy_of_the_base_model(tiny_sd):
    """Tune runs later trials in the same process, which reads the weights once: what one trial adds to its
    copy (a LoRA, a new token) or trains must never reach the next trial's copy."""
    from trainables.common.lora import add_lora
    from trainables.models import load_for_training

    first = load_for_training(tiny_sd, "cpu", torch.float32)
    add_lora(first.unet, 4, 4.0, ("to_q",))
    first.tokenizer.add_tokens(["<sks>"])
    with torch.no_grad():
        first.vae.decoder.conv_out.weight.add_(1.0)
    second = load_for_training(tiny_sd, "cpu", torch.float32)
    assert not any("lora" in name for name, _ in second.unet.named_parameters())
    assert "<sks>" not in second.tokenizer.get_vocab()
    fresh = load_pipeline(tiny_sd)
    assert torch.equal(second.vae.decoder.conv_out.weight, fresh.vae.decoder.conv_out.weight)
    assert second.unet is not first.unet and second.unet.training == fresh.unet.training
