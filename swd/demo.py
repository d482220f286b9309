"""Text-to-image on the testbed models: load a saved folder, encode prompts, sample teacher or student.

The testbed models are pixel-space SD3 transformers or UNets conditioned on MiniLM; the shipped ones live
in `swd/weights/` (see docs/RESULTS.md for the commands that made them). The commands that use this
(`swd sample`, `swd demo`) are in `swd.commands.sample`; the app and `swd bench latency` use it too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from swd.errors import SwdError

WEIGHTS = Path(__file__).resolve().parent / "weights"
# The shapes UNet pair: the CPU-trained testbed whose teacher draws recognisable shapes
# (docs/RESULTS.md, "Shapes UNet"); the emoji UNet pair beside it (`swd demo` draws both). The older
# emoji MMDiT pair is swd/weights/emoji-{teacher,student}.
DEFAULT_TEACHER = WEIGHTS / "shapes-unet-teacher"
DEFAULT_STUDENT = WEIGHTS / "shapes-unet-student"
EMOJI_TEACHER = WEIGHTS / "emoji-unet-teacher"
EMOJI_STUDENT = WEIGHTS / "emoji-unet-student"

# Held-out shapes captions (swd.eval.evaluate.load_prompts("shapes"): categories in turn).
DEMO_PROMPTS = [
    "a cross",
    "a circle above a square",
    "a green triangle and a yellow cross",
    "a black circle",
    "two circles",
    "a triangle below a circle",
    "a green cross and an orange triangle",
    "a cross below a triangle",
]
# Held-in emoji captions (training prompts): a 4.6M-parameter teacher draws the emoji it was taught, and
# unseen names say little about distillation (issue 11). Picked from scripts/emoji_fidelity.py's
# held-in set, one or two per style.
EMOJI_DEMO_PROMPTS = [
    "fluent style: person: dark skin tone",
    "noto style: one o\u2019clock",
    "noto style: flushed face",
    "twitter style: foot: medium-dark skin tone",
    "fluent style: woman judge: medium-light skin tone",
    "noto style: woman superhero: light skin tone",
    "fluent style: guard: light skin tone",
    "noto style: flag: El Salvador",
]
# `swd demo`'s default pairs: name -> (teacher, student, prompts).
DEMO_PAIRS = {"shapes": (DEFAULT_TEACHER, DEFAULT_STUDENT, DEMO_PROMPTS),
              "emoji": (EMOJI_TEACHER, EMOJI_STUDENT, EMOJI_DEMO_PROMPTS)}


def load_with_schedule(path: str | Path, where: str = "--model"):
    """A saved testbed model in eval mode (`swd.eval.evaluate.load_model`, the one loader) and the
    schedule saved beside it, if any."""
    from swd.eval.evaluate import load_model, saved_schedule

    # A pixel-space testbed folder with safetensors is checked before diffusers sees it.
    model, folder = load_model(path, where, what="saved diffusers model folder")
    return model.eval(), saved_schedule(folder)


def encode_prompts(prompts: list[str], max_length: int = 16):
    from swd.data.text import empty_prompt, encode_captions
    from swd.models import TextCondition

    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise SwdError("prompt: give at least one text prompt")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # MiniLM's weight-loading bar is noise on the command line
    emb = encode_captions(prompts, max_length=max_length)
    empty = empty_prompt(max_length=max_length)
    return TextCondition(emb.states, emb.pooled), TextCondition(empty.states, empty.pooled)


@torch.no_grad()
def generate(model, schedule_name: str, cond, uncond, seed: int, guidance: float = 4.5, teacher_steps: int = 28,
             saved_schedule=None, adapter=None) -> torch.Tensor:
    """Images in [-1, 1]: `teacher` = Euler + CFG on the shift-3 grid, else a scale-wise schedule.

    adapter: what runs the model (e.g. a `CompiledAdapter` kept across calls); default its adapter."""
    from swd.models import adapter_for
    from swd.sampling import TeacherSampler, make_generator, sample
    from swd.schedules import resolve_schedule

    adapter = adapter if adapter is not None else adapter_for(model)
    size = model.config.sample_size
    if schedule_name == "teacher":
        spec = TeacherSampler(teacher_steps, guidance)
    else:
        spec = saved_schedule if schedule_name == "saved" else resolve_schedule(schedule_name)
        if spec is None:
            raise SwdError("schedule: the model folder has no schedule.yaml; name a preset with --schedule")
        spec.check_model(adapter.patch_size, adapter.max_latent_size)
    return sample(adapter, spec, cond, uncond, make_generator(seed), size=(size, size)).clamp(-1, 1)
