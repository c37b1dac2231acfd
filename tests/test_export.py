"""Files other tools load, each loaded back through the public loader of diffusers and compared, number by
number, with the model that wrote it: kohya LoRA (alpha != rank, text-encoder part), A1111 embeddings, and
single-file checkpoints in the original SD layout."""

import json
import re

import pytest
import torch
from safetensors import safe_open

from trainables.common.lora import TEXT_ENCODER_LORA_TARGETS, add_lora, save_lora
from trainables.export import (
    CHECKPOINT_FILE,
    KOHYA_LORA_FILE,
    a1111_embedding_file,
    load_checkpoint_into,
    save_checkpoint,
    save_kohya_lora,
)
from trainables.models import load_pipeline

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "proj_in")


def _outputs(pipe):
    """The UNet's noise prediction on fixed inputs, conditioned on the text encoder's output for fixed ids."""
    gen = torch.Generator().manual_seed(0)
    size = pipe.unet.config.sample_size
    latents = torch.randn(2, pipe.unet.config.in_channels, size, size, generator=gen)
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 8), generator=gen)
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        return text, pipe.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=text).sample


def _trained_lora(tiny_sd, unet_rank=4, unet_alpha=1.0, te_rank=2, te_alpha=8.0):
    """A pipeline with a "trained" LoRA: random B matrices (peft starts them at zero), alpha != rank."""
    pipe = load_pipeline(tiny_sd)
    add_lora(pipe.unet, unet_rank, unet_alpha, UNET_TARGETS)
    add_lora(pipe.text_encoder, te_rank, te_alpha, TEXT_ENCODER_LORA_TARGETS)
    gen = torch.Generator().manual_seed(1)
    for model in (pipe.unet, pipe.text_encoder):
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data = 0.2 * torch.randn(p.shape, generator=gen)
    return pipe


def test_kohya_lora_keys_alpha_and_metadata(tiny_sd, tmp_path):
    pipe = _trained_lora(tiny_sd)
    path = save_kohya_lora(pipe.unet, tmp_path, pipe.text_encoder, base_model="tiny-sd", steps=20, resolution=64,
                           seed=3, trigger="sks", title="kanji r4")  # fmt: skip
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    assert all(
        re.fullmatch(r"lora_(unet|te)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)", k) for k in keys
    )
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in keys}
    for m in modules:  # every module: down, up and a scalar alpha
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= keys
        assert tensors[f"{m}.alpha"].ndim == 0
    # the names are the modules' paths with "_": what A1111's and ComfyUI's SD 1.x key maps generate
    plain = load_pipeline(tiny_sd)
    unet_names = {f"lora_unet_{n.replace('.', '_')}" for n, _ in plain.unet.named_modules()}
    te_names = {f"lora_te_text_model_{n.replace('.', '_')}" for n, _ in plain.text_encoder.named_modules()}
    assert {m for m in modules if m.startswith("lora_unet_")} <= unet_names
    assert {m for m in modules if m.startswith("lora_te_")} <= te_names
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in modules
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].ndim == 4  # conv LoRA kept as conv
    # the trained alpha, not the rank: 1.0 on the UNet (rank 4), 8.0 on the text encoder (rank 2)
    assert {float(tensors[f"{m}.alpha"]) for m in modules if m.startswith("lora_unet_")} == {1.0}
    assert {float(tensors[f"{m}.alpha"]) for m in modules if m.startswith("lora_te_")} == {8.0}
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8" and meta["ss_sd_model_name"] == "tiny-sd"
    assert meta["ss_max_train_steps"] == "20" and meta["ss_resolution"] == "(64, 64)" and meta["ss_seed"] == "3"
    assert json.loads(meta["ss_tag_frequency"]) == {"sdsweep": {"sks": 20}}


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_both_lora_files_reload_into_a_fresh_pipeline_with_the_trained_outputs(tiny_sd, tmp_path, fmt):
    pipe = _trained_lora(tiny_sd)  # UNet alpha 1 / rank 4, text encoder alpha 8 / rank 2
    text, noise = _outputs(pipe)
    if fmt == "kohya":
        path = save_kohya_lora(pipe.unet, tmp_path, pipe.text_encoder)
    else:
        path = save_lora(pipe.unet, tmp_path, pipe.text_encoder)

    fresh = load_pipeline(tiny_sd)
    base_text, base_noise = _outputs(fresh)
    fresh.load_lora_weights(str(tmp_path), weight_name=path.name)
    got_text, got_noise = _outputs(fresh)
    assert (text - base_text).abs().max() > 1e-3 and (noise - base_noise).abs().max() > 1e-3  # the LoRA acts
    torch.testing.assert_close(got_text, text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_noise, noise, rtol=1e-5, atol=1e-5)


def test_a_kohya_alpha_unlike_the_rank_loads_at_alpha_over_rank(tiny_sd, tmp_path):
    pipe = _trained_lora(tiny_sd, unet_rank=4, unet_alpha=1.0)
    save_kohya_lora(pipe.unet, tmp_path)
    with safe_open(str(tmp_path / KOHYA_LORA_FILE), "pt") as f:
        down = f.get_tensor("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight")
        up = f.get_tensor("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight")
    fresh = load_pipeline(tiny_sd)
    layer = fresh.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    base = layer.weight.detach().clone()
    fresh.load_lora_weights(str(tmp_path), weight_name=KOHYA_LORA_FILE)
    fresh.fuse_lora()
    torch.testing.assert_close(layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight,
                               base + (1.0 / 4) * up @ down, rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a1111_embedding_loads_with_its_token(tiny_sd, tmp_path):
    vectors = torch.randn(2, load_pipeline(tiny_sd).text_encoder.config.hidden_size)
    path = a1111_embedding_file(vectors, "<kanji-style>", tmp_path)
    assert path.name == "kanji-style.safetensors"
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["emb_params"]
    pipe = load_pipeline(tiny_sd)
    pipe.load_textual_inversion(str(path), token="<kanji-style>")
    ids = pipe.tokenizer.convert_tokens_to_ids(["<kanji-style>", "<kanji-style>_1"])
    table = pipe.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(table[ids], vectors)


def test_single_file_checkpoint_loads_in_diffusers_and_converts_back(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_sd)
    gen = torch.Generator().manual_seed(2)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):  # a "fine-tuned" model: every weight moved
        for p in model.parameters():
            p.data += 0.01 * torch.randn(p.shape, generator=gen)
    path = save_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, tmp_path, dtype=torch.float32)
    assert path.name == CHECKPOINT_FILE
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys and "model.diffusion_model.out.2.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys

    # diffusers' own single-file loader (its key map, not ours) rebuilds the same three models
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=tiny_sd, local_files_only=True)
    back = load_pipeline(tiny_sd)  # and our way back, into a fresh copy of the architecture
    load_checkpoint_into(path, back.unet, back.vae, back.text_encoder)
    for other in (loaded, back):
        for name in ("unet", "vae", "text_encoder"):
            want, got = getattr(pipe, name).state_dict(), getattr(other, name).state_dict()
            assert set(got) >= set(want)
            assert all(torch.equal(want[k], got[k].reshape(want[k].shape)) for k in want), name
        torch.testing.assert_close(_outputs(other)[1], _outputs(pipe)[1])

    (tmp_path / "half").mkdir()
    half = save_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, tmp_path / "half")
    with safe_open(str(half), "pt") as f:  # the default: fp16, half the size, as A1111 checkpoints ship
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
