"""A DreamBooth subject: 3-20 photos of one thing, trained under a rare token ("a photo of sks dog").

Two layouts are read:

- any folder of photos (``--data-dir PATH --class-noun dog``), evaluated on this module's own prompt
  templates;
- DreamBench (github.com/google/dreambooth): ``--data-dir .../dataset --subject dog2`` reads the photos from
  ``dataset/dog2/`` and the class noun and the paper's eval prompts from ``dataset/prompts_and_classes.txt``
  (live subjects, the dogs and cats, get the live-subject prompts, the others the object prompts).

Eval follows the paper: each prompt template sampled with ``images_per_prompt`` fixed seeds, the prompt
with the identifier, CLIP-T scored on the prompt without it, CLIP-I/DINO against all the subject photos.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, replace
from pathlib import Path

from eval.evaluate import EvalPrompt, EvalSet
from eval.metrics import metrics_for
from trainables.data.base import DatasetError, PreparedData
from trainables.data.encoding import cache_key
from trainables.data.images import (
    center_crop_resize,
    encode_cached,
    file_digest,
    image_files,
    load_image_file,
    warn_if_upscaled,
)
from trainables.data.tiny_sets import SUBJECT_CLASS_NOUN, write_subject_set

DREAMBENCH_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = frozenset({"dog", "cat"})  # DreamBench's live subjects; every other class is an object
# bump when loading, cropping or captioning changes, so stale encoded caches are not reused
SUBJECT_VERSION = 1
GENERATED_SET = "subject-v1"  # the tiny preset's drawn toy, under <cache>/generated/

# eval prompts for folders without DreamBench's file: places, materials and renderings a subject
# should survive; each is "a {identifier} {class_noun} ..." so dropping the identifier reads naturally
DEFAULT_TEMPLATES = (
    "a {identifier} {class_noun} on a wooden kitchen table",
    "a {identifier} {class_noun} in a field of tall grass",
    "a {identifier} {class_noun} on a snowy mountain path",
    "a {identifier} {class_noun} on a sand dune in the desert",
    "a {identifier} {class_noun} next to a cup of coffee",
    "a {identifier} {class_noun} on a library shelf",
    "a {identifier} {class_noun} under a streetlight at night",
    "a {identifier} {class_noun} on a rainy window sill",
    "a {identifier} {class_noun} on the deck of a sailing boat",
    "a {identifier} {class_noun} in front of a brick wall",
    "a {identifier} {class_noun} on a stack of old books",
    "a {identifier} {class_noun} in a glass display case",
    "a {identifier} {class_noun} on a picnic blanket in a park",
    "a {identifier} {class_noun} beside a campfire",
    "a {identifier} {class_noun} on a marble countertop",
    "a {identifier} {class_noun} with a lighthouse behind it",
    "a {identifier} {class_noun} on a seat in a subway car",
    "a {identifier} {class_noun} in a basket of apples",
    "a {identifier} {class_noun} on a frozen lake",
    "a {identifier} {class_noun} on a desk beside a laptop",
    "a watercolor painting of a {identifier} {class_noun}",
    "a pencil sketch of a {identifier} {class_noun}",
    "a green {identifier} {class_noun}",
    "a {identifier} {class_noun} made of glass",
    "a tiny {identifier} {class_noun} held in a hand",
)


# ---------------------------------------------------------------- DreamBench's prompts_and_classes.txt


@dataclass(frozen=True)
class DreamBench:
    """What ``prompts_and_classes.txt`` holds: subject -> class noun, and the two lists of prompt templates
    (rewritten with ``{identifier}`` / ``{class_noun}`` fields)."""

    classes: dict[str, str]
    object_templates: tuple[str, ...]
    live_templates: tuple[str, ...]


_CLASS_LINE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*,\s*([^,]+?)\s*$")
# one list entry: a quoted string, then .format(arg, arg)
_PROMPT_LINE = re.compile(r"""^\s*(['"])(?P<text>.*?)\1\s*\.format\((?P<args>[^)]*)\)\s*,?\s*$""")


def read_dreambench(path: Path | str) -> DreamBench:
    """Parse DreamBench's ``prompts_and_classes.txt`` as text (its prompt lists are Python source, which is
    read, never run). Raises :class:`DatasetError` naming the line that does not fit."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({err.strerror or err}): check the DreamBench checkout") from None
    classes: dict[str, str] = {}
    templates: dict[str, list[str]] = {"object": [], "live": []}
    section = "classes"
    for number, line in enumerate(lines, start=1):
        heading = line.strip().lower()
        if heading == "prompts":
            section = "prompts"
        elif heading.startswith("object prompts"):
            section = "object"
        elif heading.startswith("live subject prompts"):
            section = "live"
        elif section == "classes" and (match := _CLASS_LINE.match(line)):
            name, noun = match.groups()
            if (name, noun) != ("subject_name", "class"):  # the header row
                classes[name] = noun
        elif section in templates and (match := _PROMPT_LINE.match(line)):
            templates[section].append(_template(match["text"], match["args"], path, number))
    if not classes:
        raise DatasetError(
            f"{path} lists no 'subject_name,class' lines: point --data-dir at DreamBench's dataset/ folder"
        )
    if not templates["object"] or not templates["live"]:
        missing = "object" if not templates["object"] else "live-subject"
        raise DatasetError(f"{path} has no {missing} prompts: use the file from github.com/google/dreambooth")
    return DreamBench(classes, tuple(templates["object"]), tuple(templates["live"]))


def _template(text: str, args: str, path: Path, number: int) -> str:
    """``'a {0} {1} in the snow'.format(unique_token, class_token)`` -> ``a {identifier} {class_noun} in the
    snow``: each positional field becomes the named one its argument stands for."""
    names = [a.strip() for a in args.split(",") if a.strip()]
    fields = []
    for name in names:
        if "unique" in name or "identifier" in name:
            fields.append("{identifier}")
        elif "class" in name:
            fields.append("{class_noun}")
        else:
            raise DatasetError(f"{path} line {number}: unknown format argument {name!r} (expected unique/class)")
    escaped = text.replace("{", "{{").replace("}", "}}")
    for i, field_ in enumerate(fields):
        escaped = escaped.replace(f"{{{{{i}}}}}", field_)
    try:
        escaped.format(identifier="x", class_noun="y")
    except (KeyError, IndexError, ValueError):
        raise DatasetError(f"{path} line {number}: cannot read the prompt {text!r}") from None
    if "{identifier}" not in escaped:
        raise DatasetError(f"{path} line {number}: the prompt {text!r} has no place for the identifier")
    return escaped


# ---------------------------------------------------------------- eval prompts


def subject_eval_prompts(
    templates: tuple[str, ...], identifier: str, class_noun: str, num_prompts: int, images_per_prompt: int
) -> list[EvalPrompt]:
    """The first ``num_prompts`` templates, each ``images_per_prompt`` times: prompt ``p`` image ``k`` has
    seed ``p * images_per_prompt + k``, name ``p03-in-the-jungle/1``, text "a sks dog in the jungle" and
    score text "a dog in the jungle"."""
    prompts = []
    for p, template in enumerate(templates[:num_prompts]):
        text = template.format(identifier=identifier, class_noun=class_noun)
        score_text = without_word(text, identifier)
        label = _label(template)
        for k in range(images_per_prompt):
            prompts.append(EvalPrompt(f"p{p:02d}-{label}/{k}", text, p * images_per_prompt + k, score_text=score_text))
    return prompts


def without_word(text: str, word: str) -> str:
    """``text`` with the whole word ``word`` removed and the spacing tidied."""
    removed = re.sub(rf"(?<![\w<>]){re.escape(word)}(?![\w<>])", " ", text)
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(removed.split()))


def _label(template: str) -> str:
    """A short ASCII label from what a template adds to the subject: "in-the-jungle", "red", "made-of-glass"."""
    words = re.findall(r"[a-z0-9]+", template.format(identifier=" ", class_noun=" ").lower())
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return "-".join(words[:4])[:32].strip("-") or "prompt"


# ---------------------------------------------------------------- the data kind


@dataclass(frozen=True)
class SubjectData:
    """A DreamBooth subject folder (or a DreamBench subject), encoded once and shared by the trials."""

    kind = "subject"  # a class attribute, not a field: the data kind every part keys on

    data_dir: str | None = None  # the photos; with `subject`, DreamBench's dataset/ folder
    subject: str | None = None  # a DreamBench subject name ("dog2"): photos and class noun from the benchmark
    identifier: str = "sks"  # the rare token the subject is bound to (the DreamBooth paper's choice)
    class_noun: str | None = None  # what the subject is ("dog"); None: DreamBench's file says, else required
    instance_template: str = "a photo of {identifier} {class_noun}"  # every training image's caption
    class_template: str = "a photo of {class_noun}"  # prior preservation's prompt
    num_eval_prompts: int = 25  # the paper's 25 prompts...
    images_per_prompt: int = 4  # ...times 4 seeds each
    min_images: int = 3  # DreamBooth needs a few views; fewer usable photos is an error, not a warning
    use_generated_set: bool = False  # without data_dir: the drawn toy of trainables.data.tiny_sets (CPU runs)

    # ------------------------------------------------------------ cheap, before anything starts

    def check(self) -> None:
        """Reject bad settings and missing files before any work starts (one-line :class:`DatasetError`)."""
        self._check_settings()
        folder = self._images_folder()
        if folder is not None and not image_files(folder):
            raise DatasetError(
                f"{folder} holds no .jpg/.jpeg/.png/.webp/.bmp files: put 3-20 photos of the subject there"
            )
        self._class_noun()
        self._templates()

    @property
    def class_prompt(self) -> str | None:
        """The class template filled with the class noun, or None when no class noun is known (cheap: at most
        reads DreamBench's small text file)."""
        try:
            noun = self._class_noun()
            return self.class_template.format(class_noun=noun)
        except (DatasetError, OSError, KeyError, IndexError, ValueError):
            return None

    def eval_prompt_list(self) -> list[EvalPrompt]:
        """The eval prompts (see :func:`subject_eval_prompts`), without reading any image."""
        self._check_settings()
        return subject_eval_prompts(
            self._templates(), self.identifier, self._class_noun(), self.num_eval_prompts, self.images_per_prompt
        )

    def instance_prompt(self, class_noun: str) -> str:
        return self.instance_template.format(identifier=self.identifier, class_noun=class_noun)

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data-dir", help="subject data: a folder of 3-20 photos, or DreamBench's dataset/ with --subject"
        )
        parser.add_argument("--subject", help="subject data: a DreamBench subject name, e.g. dog2 (needs --data-dir)")
        parser.add_argument("--class-noun", help="subject data: what the subject is, e.g. dog (DreamBench: its file)")

    def with_cli_args(self, args: argparse.Namespace) -> SubjectData:
        changes = {
            name: getattr(args, name, None)
            for name in ("data_dir", "subject", "class_noun")
            if getattr(args, name, None) is not None
        }
        return replace(self, **changes) if changes else self

    # ------------------------------------------------------------ once per sweep

    def prepare(self, model: str, resolution: int, cache_dir: Path, progress: bool = True) -> PreparedData:
        """Load the photos (skipping unreadable ones with a warning), crop them square, encode them with
        ``model``'s frozen VAE and text encoder (or reuse the cached encoding), make the eval prompts."""
        self.check()
        cache_dir = Path(cache_dir)
        folder = self._images_folder() or write_subject_set(cache_dir / "generated" / GENERATED_SET)
        class_noun = self._class_noun()

        paths = image_files(folder)
        loaded = [(path, image) for path in paths if (image := load_image_file(path)) is not None]
        if len(loaded) < self.min_images:
            raise DatasetError(
                f"{folder}: {len(loaded)} usable photos of {len(paths)} image files, and subject data needs at "
                f"least {self.min_images} (min_images): add photos of the subject or replace the unreadable ones"
            )
        warn_if_upscaled([p for p, _ in loaded], [img for _, img in loaded], resolution, folder)
        images = [center_crop_resize(image, resolution) for _, image in loaded]
        captions = [self.instance_prompt(class_noun)] * len(images)

        ids = [f"subject-v{SUBJECT_VERSION}:{file_digest(path)}" for path, _ in loaded]
        cache_file = cache_dir / "encoded" / f"subject-{cache_key(model, resolution, ids, captions)}.pt"
        encoded = encode_cached(model, images, captions, resolution, cache_file, progress)
        prompts = self.eval_prompt_list()
        return PreparedData(
            kind=self.kind,
            train=encoded,
            eval=EvalSet(tuple(prompts), references=tuple(images), metrics=metrics_for(self.kind)),
            identifier=self.identifier,
            class_noun=class_noun,
            class_prompt=self.class_template.format(class_noun=class_noun),
            train_images=list(images),
        )

    # ------------------------------------------------------------ where things come from

    def _check_settings(self) -> None:
        if self.data_dir is None and self.subject is not None:
            raise DatasetError(
                f"--subject {self.subject} needs --data-dir pointing at DreamBench's dataset/ folder "
                "(git clone https://github.com/google/dreambooth)"
            )
        if self.data_dir is None and not self.use_generated_set:
            raise DatasetError(
                "subject data needs photos: pass --data-dir PATH (a folder of 3-20 photos of one subject, "
                "or DreamBench's dataset/ with --subject NAME)"
            )
        if not self.identifier or self.identifier.split() != [self.identifier]:
            raise DatasetError(f"identifier={self.identifier!r} is not valid: use one rare word such as 'sks'")
        if self.class_noun is not None and not self.class_noun.strip():
            raise DatasetError("class_noun='' is not valid: name what the subject is (--class-noun dog)")
        for name, value in (("num_eval_prompts", self.num_eval_prompts), ("images_per_prompt", self.images_per_prompt),
                            ("min_images", self.min_images)):  # fmt: skip
            if value < 1:
                raise DatasetError(f"{name}={value} is not valid: use 1 or more")
        _check_template("instance_template", self.instance_template, ("identifier", "class_noun"), "identifier")
        _check_template("class_template", self.class_template, ("class_noun",), "class_noun")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise DatasetError(f"--data-dir {self.data_dir}: no such folder")

    def _dreambench_file(self) -> Path | None:
        if self.data_dir is None or self.subject is None:
            return None
        path = Path(self.data_dir).expanduser() / DREAMBENCH_FILE
        if not path.is_file():
            raise DatasetError(
                f"{self.data_dir} has no {DREAMBENCH_FILE}: with --subject, --data-dir is DreamBench's dataset/ "
                "folder (git clone https://github.com/google/dreambooth)"
            )
        return path

    def _dreambench(self) -> DreamBench | None:
        path = self._dreambench_file()
        if path is None:
            return None
        bench = read_dreambench(path)
        if self.subject not in bench.classes:
            names = sorted(bench.classes)
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            raise DatasetError(f"--subject {self.subject} is not in {path}: use one of {shown}")
        return bench

    def _images_folder(self) -> Path | None:
        """Where the photos are; None for the generated set (written into the cache by prepare)."""
        if self.data_dir is None:
            return None
        root = Path(self.data_dir).expanduser()
        if self.subject is None:
            if (root / DREAMBENCH_FILE).is_file():
                raise DatasetError(
                    f"--data-dir {self.data_dir} is DreamBench's dataset/ folder: pass --subject NAME (e.g. dog2)"
                )
            return root
        self._dreambench()  # an unknown subject is named as such, not as a missing folder
        folder = root / self.subject
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder, though {DREAMBENCH_FILE} lists {self.subject}")
        return folder

    def _class_noun(self) -> str:
        if self.class_noun:
            return self.class_noun
        bench = self._dreambench()
        if bench is not None:
            return bench.classes[self.subject]
        if self.data_dir is None and self.use_generated_set:
            return SUBJECT_CLASS_NOUN
        hint = ""
        parent = Path(self.data_dir).expanduser().resolve().parent
        if (parent / DREAMBENCH_FILE).is_file():
            hint = f", or use DreamBench's class: --data-dir {parent} --subject {Path(self.data_dir).name}"
        raise DatasetError(
            f"subject data needs a class noun: pass --class-noun NOUN (what the subject is, e.g. dog) "
            f"or set class_noun{hint}"
        )

    def _templates(self) -> tuple[str, ...]:
        bench = self._dreambench()
        if bench is not None:
            live = bench.classes[self.subject] in LIVE_CLASSES  # the benchmark's class decides, not an override
            templates = bench.live_templates if live else bench.object_templates
            source = f"{DREAMBENCH_FILE} ({'live-subject' if live else 'object'} prompts)"
        else:
            templates, source = DEFAULT_TEMPLATES, "the default prompt list"
        if self.num_eval_prompts > len(templates):
            raise DatasetError(
                f"num_eval_prompts={self.num_eval_prompts} but {source} has {len(templates)}: "
                f"use {len(templates)} or fewer"
            )
        return templates


def _check_template(name: str, template: str, fields: tuple[str, ...], required: str) -> None:
    try:
        template.format(**{f: "x" for f in fields})
    except (KeyError, IndexError, ValueError):
        allowed = " and ".join(f"{{{f}}}" for f in fields)
        raise DatasetError(f"{name}={template!r} is not valid: use only the fields {allowed}") from None
    if f"{{{required}}}" not in template:
        raise DatasetError(f"{name}={template!r} lacks {{{required}}}: include it")
