"""Textual inversion: learn new token embeddings for a subject or a style, everything else frozen.

Set-up (placeholder tokens added to the tokenizer, their rows initialised from a real word, optimizer,
scorers), then one training loop on the sweep's cached latents with captions made from templates. Only the
placeholder rows of the text encoder's token embedding change; every other weight stays bit-identical to the
base model. Writes a diffusers-format ``learned_embeds.safetensors`` (one key, the placeholder token, holding
``[num_vectors, dim]``), loadable with ``pipe.load_textual_inversion(path)``; prompts then use the placeholder
token alone ("a <sks> toy"), which the pipeline expands to all of its vectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.scorers import load_scorers
from trainables.common.checkpoint import Trained
from trainables.common.config import TrialError, bad, check_lr, check_positive_ints
from trainables.common.distributed import shard
from trainables.common.loop import (
    BatchCursor,
    Stepper,
    TrialRecorder,
    check_finite,
    device_and_dtype,
    diffusion_loss,
    evaluate_pipeline,
    make_optimizer,
    noisy_latents,
    speed_settings,
    train_mode,
)
from trainables.common.tracking import TrialContext, log_params
from trainables.data.encoding import tokenize
from trainables.export import a1111_embedding_file, card_writer
from trainables.models import load_for_training

EMBEDDINGS_FILE = "learned_embeds.safetensors"  # the name diffusers' loader looks for in a folder
TEMPLATE_SETS = ("auto", "object", "style")
# the initializer for style (captioned) data: a word about the look of an image, whatever its medium
STYLE_INITIALIZER = "style"

# Captions the placeholder is trained in; "{}" is the placeholder string (all its vectors). Varied framing
# so the embedding learns the subject or the style, not one sentence.
OBJECT_TEMPLATES = (
    "a snapshot of {}",
    "{} photographed up close",
    "an image showing {}",
    "{} in soft daylight",
    "a picture with {} in the middle",
    "a sharp, well-lit shot of {}",
    "{} seen from a slight angle",
    "a phone photo of {} at home",
    "a small {} on a plain background",
    "a blurry picture of {}",
)
STYLE_TEMPLATES = (
    "an artwork made in {} style",
    "a picture done in the manner of {}",
    "a scene rendered as {}",
    "a landscape, {} style",
    "a portrait in the style of {}",
    "{}, a still life",
    "a street drawn like {}",
    "an illustration with the look of {}",
    "a city at night in {} style",
    "an animal painted as {}",
)


@dataclass(frozen=True)
class TextualInversionConfig:
    """The ``textual_inversion`` method's own settings (the shared ones are in ``TrainArgs``)."""

    placeholder_token: str = "<sks>"  # a new token; the brackets keep it from matching any real word
    # None: the data's class noun for subject data (its last word when the noun is two, e.g. "teddy bear" ->
    # "bear"), "style" for captioned data; must be one token of the tokenizer
    initializer_token: str | None = None
    num_vectors: int = 1  # embedding rows per concept; extra tokens are "<sks>_1", "<sks>_2", ...
    learning_rate: float = 5e-4  # diffusers' textual-inversion default (embeddings need more than LoRA's 1e-4)
    templates: str = "auto"  # caption templates: "object", "style", or "auto" (object for subject data)

    def __post_init__(self):
        token = self.placeholder_token
        if not isinstance(token, str) or not token or re.search(r"\s", token):
            bad("placeholder_token", token, "use one new word without spaces, e.g. '<sks>'")
        if token.isalnum():  # a plain word ("dog") would take over that word in every prompt
            bad("placeholder_token", token, "use a word no prompt contains by accident, e.g. '<sks>' with brackets")
        init = self.initializer_token
        if init is not None and (not isinstance(init, str) or not init or re.search(r"\s", init)):
            bad("initializer_token", init, "use one word (a single token of the tokenizer, e.g. 'toy'), or None")
        check_positive_ints(self, ("num_vectors",))
        check_lr("learning_rate", self.learning_rate)
        if self.templates not in TEMPLATE_SETS:
            bad("templates", self.templates, f"choose one of {TEMPLATE_SETS}")

    def tokens(self) -> list[str]:
        """The tokens added to the tokenizer, one per vector: ``<sks>``, ``<sks>_1``, ..."""
        return [self.placeholder_token] + [f"{self.placeholder_token}_{i}" for i in range(1, self.num_vectors)]


def run_name(cfg: TextualInversionConfig) -> str:
    return f"ti-v{cfg.num_vectors}"


def _initializer(cfg: TextualInversionConfig, data) -> str:
    """The word the placeholder rows start from (see ``TextualInversionConfig.initializer_token``)."""
    if cfg.initializer_token is not None:
        return cfg.initializer_token
    if data.kind != "subject":
        return STYLE_INITIALIZER
    if not data.class_noun:
        raise TrialError("the subject data has no class noun to start from: set initializer_token, e.g. 'toy'")
    return data.class_noun.split()[-1]  # the head noun of "teddy bear" or "rc car"


def _token_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise TrialError(
            f"initializer_token {word!r} is {len(ids)} tokens for this tokenizer: "
            "set initializer_token to a word that is one token (e.g. 'toy', 'dog', 'style')"
        )
    return ids[0]


def _add_placeholders(tokenizer, text_encoder, cfg: TextualInversionConfig, initializer: str) -> list[int]:
    """Add the placeholder tokens, grow the embedding matrix, start the new rows at the initializer's row."""
    init_id = _token_id(tokenizer, initializer)
    taken = [t for t in cfg.tokens() if t in tokenizer.get_vocab()]
    if taken:
        raise TrialError(
            f"placeholder_token {cfg.placeholder_token!r}: {taken} already in the tokenizer's vocabulary: "
            "choose a new placeholder_token, e.g. '<my-subject>'"
        )
    tokenizer.add_tokens(cfg.tokens())
    ids = tokenizer.convert_tokens_to_ids(cfg.tokens())
    # mean_resizing=False: the new rows are overwritten just below, so skip transformers' random init
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[init_id].clone()
    return ids


def _caption_ids(tokenizer, templates: tuple[str, ...], placeholder_string: str) -> torch.Tensor:
    """Token ids ``[len(templates), 77]`` of every template filled with the placeholder string, made once."""
    captions = [t.format(placeholder_string) for t in templates]
    longest = max(len(tokenizer(c).input_ids) for c in captions)
    if longest > tokenizer.model_max_length:
        raise TrialError(
            f"num_vectors: captions with the placeholder are {longest} tokens, more than the text encoder's "
            f"{tokenizer.model_max_length}: use fewer vectors"
        )
    return tokenize(tokenizer, captions)


def _save_embeddings(weight: torch.Tensor, ids: list[int], token: str, folder: Path) -> Path:
    """Write the placeholder rows as diffusers' loader reads them: one key, ``[num_vectors, dim]`` float32."""
    from safetensors.torch import save_file

    path = Path(folder) / EMBEDDINGS_FILE
    save_file({token: weight.detach()[ids].float().cpu().contiguous()}, str(path))
    return path


def train_textual_inversion(trial, ctx: TrialContext, out_dir: Path) -> None:
    """Learn the placeholder embedding(s) on the sweep's encoded images and evaluate them with the placeholder
    in the eval prompts; results go to Tune and MLflow, ``learned_embeds.safetensors`` to ``out_dir``."""
    from diffusers import DDPMScheduler

    cfg, args = trial.spec, trial.train
    device, weight_dtype = device_and_dtype(args)
    data = ctx.prepared()
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    # load the base model and add the placeholder tokens
    pipe = load_for_training(ctx.model, device, weight_dtype)
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    initializer = _initializer(cfg, data)
    ids = _add_placeholders(tokenizer, text_encoder, cfg, initializer)
    placeholder_string = " ".join(cfg.tokens())  # training captions spell out every vector
    template_set = cfg.templates if cfg.templates != "auto" else ("object" if data.kind == "subject" else "style")
    templates = OBJECT_TEMPLATES if template_set == "object" else STYLE_TEMPLATES
    caption_ids = _caption_ids(tokenizer, templates, placeholder_string)

    # eval prompts name the subject by its identifier; here the placeholder takes its place. The pipeline
    # expands the placeholder token to all its vectors itself, so it gets the token, not the spelled-out string
    eval_set = ctx.eval.with_word(data.identifier, cfg.placeholder_token)
    if not any(cfg.placeholder_token in p.text for p in eval_set.prompts):
        raise TrialError(
            f"no eval prompt holds the data's identifier {data.identifier!r}, so the evals would never use the "
            "learned embedding: give the data an identifier (trigger word) that its eval prompts contain"
        )

    # freeze everything but the token embedding matrix; it trains in float32 even when the rest is half
    unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    embedding = text_encoder.get_input_embeddings().to(torch.float32)
    weight = embedding.weight
    weight.requires_grad_(True)
    trains = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    trains[ids] = True
    frozen_rows = weight.detach()[~trains].clone()  # restored after every step: only placeholder rows move
    # gradients of the other rows (words of the templates) would only count against the clipping norm
    grad_mask = trains[:, None].to(weight.dtype)
    weight.register_hook(lambda grad: grad * grad_mask)
    log_params(
        {"trainable_params": len(ids) * weight.shape[1], "initializer": initializer, "template_set": template_set}
    )
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = make_optimizer([{"params": [weight], "lr": cfg.learning_rate}], args, device)
    stepper = Stepper(optimizer, [weight], args, device)
    scorers = load_scorers(ctx.scorers, device)
    autocast = args.mixed_precision != "no"

    def evaluate(combo=None):
        # autocast: the float32 embedding feeds half-precision layers when mixed precision is on
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            return evaluate_pipeline(pipe, eval_set, scorers, ctx.sampling, combo)

    recorder = TrialRecorder(
        args,
        evaluate=evaluate,
        save=lambda folder: [
            _save_embeddings(weight, ids, cfg.placeholder_token, folder),
            a1111_embedding_file(weight[ids], cfg.placeholder_token, folder),
        ],
        eval_set=eval_set,
        artifact_path="embeddings",
        card=card_writer(trial, ctx.model, placeholder=cfg.placeholder_token, run_name=run_name(cfg)),
        knobs=ctx.knobs,
        sampling=ctx.sampling,
    )
    cursor = BatchCursor(len(data.train), generator)
    # a restored trial continues from its checkpoint: weights, optimizer, schedule, RNGs, batch order
    speed_settings(args, unet)  # TF32, channels-last, torch.compile: switches of TrainArgs
    first_step = recorder.track(_placeholder_rows(weight, ids), stepper, {"batches": generator}, {"instance": cursor})

    for step in range(first_step, args.max_steps + 1):
        train_mode(unet)
        train_mode(text_encoder)
        # next batch of cached latents
        index = cursor.next(args.batch_size)
        latents = data.train.sample_latents(index, generator).to(device, weight_dtype)
        # add noise at random timesteps
        noisy, timesteps, target = noisy_latents(latents, noise_scheduler, generator)
        # a template caption per image
        choice = torch.randint(len(templates), (len(index),), generator=generator)
        # with N workers, each keeps its rows of the batch (the same batch and noise on every worker)
        noisy, timesteps, target, choice = (shard(t) for t in (noisy, timesteps, target, choice))

        # encode the captions (the placeholder rows get gradients) and predict the noise
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            text = text_encoder(caption_ids[choice].to(device))[0]
            prediction = unet(noisy, timesteps, text).sample
        loss, terms = diffusion_loss(prediction, target)
        check_finite(loss, step, f"lower learning_rate (now {cfg.learning_rate}) or use mixed_precision='bf16' or 'no'")

        # update the embeddings, put back every row that is not a placeholder (AdamW's weight decay moves them)
        stepper.step(loss)
        with torch.no_grad():
            weight[~trains] = frozen_rows
        # log, evaluate and checkpoint on schedule
        recorder.after_step(step, loss, terms, stepper.lr)

    recorder.finish(out_dir)


def _placeholder_rows(weight: torch.nn.Parameter, ids: list[int]) -> Trained:
    """What a checkpoint keeps of the embedding matrix: only the rows that train."""

    def load(saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            weight[ids] = saved["placeholder_rows"].to(weight.device, weight.dtype)

    return Trained(state=lambda: {"placeholder_rows": weight.detach()[ids]}, load=load)


__all__ = ["EMBEDDINGS_FILE", "TextualInversionConfig", "run_name", "train_textual_inversion"]
