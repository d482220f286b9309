"""`swd app`: a local web page comparing the teacher and the SwD student on one prompt.

For one prompt and seed, three rows of images, each with its wall time and transformer FLOPs:

1. the teacher, with its usual sampler (28 Euler steps + classifier-free guidance);
2. the same teacher in the student's few scale-wise steps, without distillation (no CFG, so it
   costs exactly what the student costs);
3. the SwD student, plus its per-step predictions x0 at each scale (the growing resolution is the
   point of the method).

`compare` does the work and returns plain data (PIL images, seconds, FLOPs): it is tested without
a browser. `build_app` wraps it in a Gradio page (optional extra: pip install 'swd-diffusion[app]').
Models load once, on first use; a missing or broken model folder, or a prompt the text encoder
cannot take, becomes one line in the page.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from swd.errors import SwdError

MAX_IMAGES = 8
MAX_PROMPT_CHARS = 300
ROW_KEYS = ("teacher", "teacher-scalewise", "student")

# progress(fraction in [0, 1], description)
Progress = Callable[[float, str], None]


@dataclass
class Models:
    """The teacher, the student and its schedule, as the app compares them."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    schedule: object  # swd.schedules.ScaleSchedule
    text_tokens: int
    teacher_dir: Path
    student_dir: Path
    tokenizer: object = None
    _flops: dict = field(default_factory=dict)

    def flops(self, key: str, guidance: float, teacher_steps: int) -> int:
        """Transformer FLOPs of one image of row `key` (counted on the meta device, cached)."""
        from swd.eval.flops import model_sampling_flops

        cache_key = (key, guidance != 1.0, teacher_steps)
        if cache_key not in self._flops:
            if key == "teacher":
                value = model_sampling_flops(self.teacher, None, self.text_tokens, teacher_steps, guidance)
            else:
                model = self.teacher if key == "teacher-scalewise" else self.student
                value = model_sampling_flops(model, self.schedule, self.text_tokens)
            self._flops[cache_key] = value
        return self._flops[cache_key]


@dataclass
class Row:
    key: str  # one of ROW_KEYS
    title: str
    images: list  # PIL images at the model's output size
    seconds: float  # wall time of sampling all images of the row
    flops_per_image: int
    captions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    prompt: str
    seed: int
    rows: list[Row]
    intermediates: list  # (PIL image, caption): the student's x0 after each step, image by image
    note: str = ""  # e.g. that the prompt was cut to the encoder's length

    def summary(self) -> str:
        """A Markdown table of the rows' times and FLOPs."""
        n = len(self.rows[0].images)
        lines = ["| row | wall time | per image | GFLOPs per image |", "|---|---:|---:|---:|"]
        for row in self.rows:
            lines.append(f"| {row.title} | {row.seconds:.2f} s | {row.seconds / n * 1000:.0f} ms | "
                         f"{row.flops_per_image / 1e9:.2f} |")
        teacher, student = self.rows[0], self.rows[-1]
        lines.append("")
        lines.append(f"Student vs teacher: {teacher.seconds / max(student.seconds, 1e-9):.1f}x faster, "
                     f"{teacher.flops_per_image / student.flops_per_image:.1f}x fewer FLOPs "
                     f"({n} image{'s' if n > 1 else ''}, seed {self.seed}).")
        if self.note:
            lines.append("")
            lines.append(self.note)
        return "\n".join(lines)


def default_model_dirs() -> tuple[Path, Path]:
    from swd.demo import DEFAULT_STUDENT, DEFAULT_TEACHER

    return DEFAULT_TEACHER, DEFAULT_STUDENT


def distill_config(student_dir: Path) -> dict:
    """The run config shipped in a student folder (distill-config.yaml), or {} if absent or unreadable."""
    import yaml

    try:
        config = yaml.safe_load((student_dir / "distill-config.yaml").read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def teacher_of(student_dir: Path) -> Path | None:
    """The teacher folder a student's distill-config.yaml names, if it exists (as written, or
    relative to the repository that ships the weights)."""
    teacher = distill_config(student_dir).get("teacher")
    if not isinstance(teacher, str) or not teacher:
        return None
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (Path(teacher), student_dir / teacher, package_root / teacher):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def load_models(student: str | Path | None = None, teacher: str | Path | None = None) -> Models:
    """The student folder (config.json + schedule.yaml) and its teacher: `teacher`, else the one its
    distill-config.yaml names, else the shipped testbed teacher."""
    from swd.demo import load_with_schedule

    from swd.hub import model_folder

    default_teacher, default_student = default_model_dirs()
    # Local folders, or Hub ids fetched through huggingface_hub's cache (swd.hub).
    student_dir = model_folder(student, "--model") if student is not None else default_student
    if not student_dir.exists():
        raise SwdError(f"--model: {student_dir} does not exist")
    if teacher is not None:
        teacher_dir = model_folder(teacher, "--teacher")
    else:
        teacher_dir = teacher_of(student_dir) or default_teacher
    if not teacher_dir.exists():
        raise SwdError(f"--teacher: {teacher_dir} does not exist")
    student_model, schedule = load_with_schedule(student_dir, "--model")
    if schedule is None:
        raise SwdError(f"--model: {student_dir} has no schedule.yaml (a distilled SwD student folder has one)")
    teacher_model, _ = load_with_schedule(teacher_dir, "--teacher")
    from swd.models import adapter_for

    for name, model in (("--teacher", teacher_model), ("--model", student_model)):
        adapter = adapter_for(model)
        schedule.check_model(adapter.patch_size, adapter.max_latent_size, what=f"{name} model")
    if teacher_model.config.sample_size != schedule.final_size[0]:
        raise SwdError(f"--teacher: {teacher_dir} makes {teacher_model.config.sample_size} px images but the "
                       f"student's schedule ends at {schedule.final_size[0]} px")
    from transformers import AutoTokenizer

    from swd.data.text import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    from swd.eval.evaluate import text_tokens_of

    return Models(teacher_model, student_model, schedule, text_tokens_of(student_dir), teacher_dir, student_dir,
                  tokenizer)


def check_prompt(prompt, tokenizer=None, max_tokens: int = 16) -> tuple[str, str]:
    """(the prompt, stripped; a note or ""), or SwdError for a prompt the text encoder cannot take."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise SwdError("prompt: type a prompt first (e.g. 'a red circle above a blue square')")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SwdError(f"prompt: {len(prompt)} characters is too long; the text encoder reads at most "
                       f"{max_tokens} tokens (keep it under {MAX_PROMPT_CHARS} characters)")
    if tokenizer is None:
        return prompt, ""
    ids = tokenizer(prompt)["input_ids"]
    words = [i for i in ids if i not in (tokenizer.cls_token_id, tokenizer.sep_token_id)]
    if words and all(i == tokenizer.unk_token_id for i in words):
        raise SwdError("prompt: the text encoder knows none of its words (emoji and rare symbols are unknown "
                       "tokens); describe the picture in words, e.g. 'a red circle'")
    if len(ids) > max_tokens:
        kept = tokenizer.decode(ids[1:max_tokens - 1])
        return prompt, f"The text encoder reads {max_tokens} tokens: the models saw only \u201c{kept}\u201d."
    return prompt, ""


def _check_settings(seed, n, guidance, teacher_steps) -> tuple[int, int, float, int]:
    def as_int(value, where, lo, hi):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SwdError(f"{where}: must be a whole number from {lo} to {hi}, got {value!r}")
        return value

    seed = as_int(seed, "seed", 0, 2**63 - 1)
    n = as_int(n, "images", 1, MAX_IMAGES)
    teacher_steps = as_int(teacher_steps, "teacher steps", 1, 200)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or not 0 <= guidance <= 30:
        raise SwdError(f"guidance: must be a number from 0 to 30, got {guidance!r}")
    return seed, n, float(guidance), teacher_steps


def _to_pil(x: torch.Tensor) -> list:
    from PIL import Image

    from swd.images import to_uint8

    return [Image.fromarray(a) for a in to_uint8(x)]


@torch.no_grad()
def compare(models: Models, prompt: str, seed: int = 0, n: int = 2, guidance: float = 4.5,
            teacher_steps: int = 28, progress: Optional[Progress] = None) -> Comparison:
    """Sample the three rows for one prompt and seed (all rows draw their noise from `seed`)."""
    from swd.demo import encode_prompts
    from swd.models import TextCondition, adapter_for
    from swd.sampling import TeacherSampler, make_generator, sample

    prompt, note = check_prompt(prompt, models.tokenizer, models.text_tokens)
    seed, n, guidance, teacher_steps = _check_settings(seed, n, guidance, teacher_steps)
    report = progress or (lambda fraction, desc: None)
    schedule = models.schedule
    cond, uncond = encode_prompts([prompt] * n, max_length=models.text_tokens)
    teacher, student = adapter_for(models.teacher), adapter_for(models.student)
    size = int(models.teacher.config.sample_size)
    total = teacher_steps + 2 * schedule.steps  # sampler steps of all three rows, for the bar
    done = [0]

    def tick(desc):
        def callback(step, **_):
            done[0] += 1
            report(done[0] / total, desc)
        return callback

    scales = "\u2192".join(str(h) for h, _ in schedule.scales)
    rows = []
    report(0.0, "teacher")
    start = time.perf_counter()
    x = sample(teacher, TeacherSampler(teacher_steps, guidance), cond, uncond, make_generator(seed), size=(size, size),
               callback=tick("teacher"))
    seconds = time.perf_counter() - start
    cfg = f" + CFG {guidance:g}" if guidance != 1.0 else ""
    rows.append(Row("teacher", f"Teacher, {teacher_steps} steps{cfg}", _to_pil(x.clamp(-1, 1)), seconds,
                    models.flops("teacher", guidance, teacher_steps)))

    start = time.perf_counter()
    x = sample(teacher, schedule, cond, generator=make_generator(seed), callback=tick("teacher, scale-wise"))
    seconds = time.perf_counter() - start
    rows.append(Row("teacher-scalewise", f"Teacher in the student's {schedule.steps} scale-wise steps "
                    f"({scales} px), not distilled", _to_pil(x.clamp(-1, 1)), seconds,
                    models.flops("teacher-scalewise", 1.0, teacher_steps)))

    steps = []

    def keep(step, x0, sigma, **_):
        steps.append((step, float(sigma), x0.clamp(-1, 1).clone()))
        tick("student")(step)

    start = time.perf_counter()
    x = sample(student, schedule, cond, generator=make_generator(seed), callback=keep)
    seconds = time.perf_counter() - start  # includes the copies of x0 kept for the page (tiny)
    rows.append(Row("student", f"SwD student, {schedule.steps} steps ({scales} px)", _to_pil(x.clamp(-1, 1)),
                    seconds, models.flops("student", 1.0, teacher_steps)))
    for row in rows:
        row.captions = [f"seed {seed}, image {i + 1}" for i in range(n)]

    intermediates = []
    for i in range(n):
        for step, sigma, x0 in steps:
            h, w = x0.shape[-2:]
            intermediates.append((_to_pil(x0[i:i + 1])[0], f"#{i + 1} step {step + 1}: {h} px, \u03c3 {sigma:.2f}"))
    report(1.0, "done")
    return Comparison(prompt, seed, rows, intermediates, note)


def _data_name(student_dir: Path | None) -> str:
    """The training data of a student (its distill-config.yaml data.name), else "shapes"."""
    data = distill_config(student_dir or default_model_dirs()[1]).get("data")
    name = data.get("name") if isinstance(data, dict) else None
    return name if name in ("shapes", "emoji") else "shapes"


def example_prompts(student_dir: Path | None = None, k: int = 4) -> list[str]:
    """k held-out prompts (never trained on) then k held-in ones, from the student's data set when
    it is built, else the demo's held-out list."""
    import numpy as np

    from swd.demo import DEMO_PROMPTS
    from swd.eval.evaluate import load_prompts

    data = _data_name(student_dir)
    try:
        heldout = list(dict.fromkeys(load_prompts("shapes" if data == "shapes" else "emoji-heldout", 4 * k).captions))
    except (SwdError, OSError, ValueError, KeyError):
        heldout = list(DEMO_PROMPTS)
    try:
        if data == "shapes":
            from swd.data.shapes import load_shapes

            train = load_shapes(split="train", progress=False)[0].captions
        else:
            from swd.data.emoji import load_emoji

            train = load_emoji(split="train").captions
        heldin = list(dict.fromkeys(train[i] for i in np.random.default_rng(0).permutation(len(train))[:4 * k]))
    except (SwdError, OSError, ValueError, KeyError):
        heldin = []
    return heldout[:k] + heldin[:k]


class ModelCache:
    """Loads the models once (thread-safe); a failure is kept and shown as its message."""

    def __init__(self, student=None, teacher=None, loader=load_models):
        self.student, self.teacher, self.loader = student, teacher, loader
        self._lock = threading.Lock()
        self._models: Models | None = None
        self.error: str | None = None

    def peek(self) -> Models | None:
        """The models if already loaded, else None (loads nothing)."""
        return self._models

    def get(self) -> Models:
        with self._lock:
            if self._models is None:
                try:
                    self._models = self.loader(self.student, self.teacher)
                    self.error = None
                except SwdError as err:
                    self.error = str(err)
                    raise
                except Exception as err:  # a user-caused failure (I/O, a corrupt file) is one line too
                    from swd.errors import expected_failure

                    message = expected_failure(err)
                    if message is None:
                        raise
                    self.error = message
                    raise SwdError(message) from None
            return self._models


def one_line(message: str) -> str:
    return " ".join(str(message).split())


CSS = """
.swd-row .thumbnail-item img, .swd-row img { image-rendering: pixelated; }
#intermediates img { image-rendering: pixelated; }
#status { min-height: 1.5em; }
#status.swd-error, .swd-error { color: #b00020; }
"""


def build_app(cache: ModelCache, examples: list[str] | None = None):
    """The Gradio page around `compare` (import gradio only here: it is an optional extra)."""
    import inspect

    import gradio as gr

    examples = example_prompts(cache.student) if examples is None else examples

    def generate(prompt, seed, n, guidance, progress=gr.Progress()):
        empty = ([], [], [], [])
        try:
            models = cache.get()
            result = compare(models, prompt, seed=seed, n=n, guidance=guidance,
                             progress=lambda f, desc: progress(f, desc=desc))
        except SwdError as err:
            return (f"<span class='swd-error'>\u26a0 {one_line(err)}</span>", "", *empty)
        except Exception as err:
            from swd.errors import expected_failure

            message = expected_failure(err)
            if message is None:
                raise
            return (f"<span class='swd-error'>\u26a0 {one_line(message)}</span>", "", *empty)
        galleries = [[(img, cap) for img, cap in zip(row.images, row.captions)] for row in result.rows]
        status = f"Done: \u201c{result.prompt}\u201d, {len(result.rows[0].images)} image(s), seed {result.seed}."
        return (status, result.summary(), *galleries, result.intermediates)

    def gallery(**kwargs):
        # Fixed-width tiles (gradio >= 6 otherwise stretches 2 images over the whole page).
        extra = {"fit_columns": False} if "fit_columns" in inspect.signature(gr.Gallery.__init__).parameters else {}
        return gr.Gallery(object_fit="contain", allow_preview=False, **extra, **kwargs)

    with gr.Blocks(title="SwD: teacher vs scale-wise student") as page:
        gr.Markdown("# Scale-wise distillation: teacher vs student\n"
                    "One prompt, the same seeds, three samplers. Times are wall-clock on this machine; FLOPs "
                    "count the transformer's matmuls, convolutions and attention per image.")
        start_error = f"<span class='swd-error'>\u26a0 {one_line(cache.error)}</span>" if cache.error else ""
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", value=examples[0] if examples else "", elem_id="prompt",
                                    max_lines=1)
            with gr.Column(scale=1, min_width=120):
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
            with gr.Column(scale=1, min_width=160):
                n = gr.Slider(1, MAX_IMAGES, value=2, step=1, label="Images", elem_id="n")
            with gr.Column(scale=1, min_width=160):
                guidance = gr.Slider(1.0, 10.0, value=4.5, step=0.5, label="Teacher CFG", elem_id="guidance")
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[prompt], label="Example prompts "
                        "(first held-out concepts, then training ones)")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(start_error, elem_id="status")
        timings = gr.Markdown("", elem_id="timings")
        galleries = []
        for key, label in zip(ROW_KEYS, ("Teacher (28 steps + CFG)", "Teacher in the student's scale-wise steps "
                                         "(not distilled)", "SwD student")):
            galleries.append(gallery(label=label, columns=MAX_IMAGES, height=190, elem_id=f"row-{key}",
                                     elem_classes=["swd-row"]))
        steps = gallery(label="Student, step by step: its prediction x0 at each scale (each image's steps in turn)",
                        columns=MAX_IMAGES, height=330, elem_id="intermediates")
        button.click(generate, inputs=[prompt, seed, n, guidance], outputs=[status, timings, *galleries, steps])
        prompt.submit(generate, inputs=[prompt, seed, n, guidance], outputs=[status, timings, *galleries, steps])
    return page


def launch(page, host: str, port: int, quiet: bool = False):
    import inspect

    kwargs = {}
    if "css" in inspect.signature(page.launch).parameters:  # gradio >= 6 takes css at launch
        kwargs["css"] = CSS
    return page.launch(server_name=host, server_port=port, share=False, show_error=False, quiet=quiet,
                       inbrowser=False, **kwargs)
