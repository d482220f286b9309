"""Parameter counts and a per-GPU memory estimate of a distillation run, from meta-device models.

`swd distill --dry-run` builds the teacher, generator and fake-score model of a real-size arch
on the meta device with the trainer's own `build_models` (same LoRA targets, same weight
sharing, same dtypes as on a GPU in bf16), so the counts are what training would allocate.

Memory per GPU, in bytes:
  weights      every distinct parameter at its dtype: frozen base in bf16 (shared by teacher,
               LoRA generator and LoRA fake), trainable parameters in fp32 (the optimizer's masters);
  gradients    4 per trainable parameter (fp32);
  AdamW        8 per trainable parameter (two fp32 moments);
  activations  an ESTIMATE for batch B at the largest scale, S = image + text tokens, width h:
               one block keeps A = 34 * S * B * h bytes without recomputation (Korthikanti et al.
               2022, a bf16 transformer layer with flash attention); with gradient checkpointing it
               keeps only its inputs, C = 2 * S * B * h, plus one block's A while it is recomputed.
               The larger of the two phases of a step is counted:
                 generator update: all generator blocks + the feature model's blocks 0..k (MMD/GAN
                                   features are differentiated w.r.t. the sample);
                 fake update:      all fake-model blocks + 2 x blocks 0..k (discriminator on fake and real).
Not counted: the CUDA context and allocator slack (~1-3 GB), the VAE (84M parameters, frozen)
and its transient encode memory, and no-grad passes (teacher CFG at 2B), which hold no activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swd.models import adapter_for
from swd.objectives import objective_class
from swd.train.distill import DistillConfig, arch_spec, build_models, resolve_config, training_schedule

GIB = 1024 ** 3
BLOCK_ACTIVATION_BYTES = 34  # per token and channel, one block, no recomputation (bf16)
BLOCK_INPUT_BYTES = 2  # per token and channel: a block's bf16 input, what checkpointing keeps


@dataclass
class ParamReport:
    teacher: int  # the teacher transformer
    generator_trainable: int
    fake_trainable: int  # fake-score model's trainable weights, GAN head included
    gan_head: int
    allocated: int  # distinct parameters of teacher + generator + fake (shared weights once)
    frozen_bytes: int
    trainable_bytes: int


@dataclass
class MemoryEstimate:
    weights: int  # bytes
    gradients: int
    adamw: int
    activations: int
    tokens: int  # S: image + text tokens at the largest scale
    width: int  # h
    batch: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.adamw + self.activations


def count_params(models) -> ParamReport:
    seen, frozen, trainable_bytes, allocated = set(), 0, 0, 0
    modules = [models.teacher, models.generator] + ([models.fake] if models.fake is not None else [])
    for module in modules:
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            allocated += p.numel()
            size = p.numel() * p.element_size()
            if p.requires_grad:
                trainable_bytes += size
            else:
                frozen += size
    count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    fake = models.fake
    return ParamReport(
        teacher=count(models.teacher.parameters()),
        generator_trainable=count(p for p in models.generator.parameters() if p.requires_grad),
        fake_trainable=count(p for p in fake.parameters() if p.requires_grad) if fake is not None else 0,
        gan_head=count(fake.head.parameters()) if fake is not None else 0,
        allocated=allocated, frozen_bytes=frozen, trainable_bytes=trainable_bytes,
    )


def estimate_memory(cfg: DistillConfig, models, params: ParamReport, text_tokens: int) -> MemoryEstimate:
    """Per-GPU bytes of one training step (cfg resolved; formulas in the module docstring)."""
    weights = objective_class(cfg.objective).loss_weights(cfg.losses)
    schedule = training_schedule(cfg)
    adapter = adapter_for(models.teacher)
    # Image (or video) tokens at the largest scale: (h / p)(w / p), video (f / p_t)(h / p)(w / p).
    tokens = schedule.image_tokens(adapter.patch_size)[-1] + text_tokens
    width = models.teacher.config.num_attention_heads * models.teacher.config.attention_head_dim
    batch = cfg.train.batch_size
    full = BLOCK_ACTIVATION_BYTES * tokens * batch * width
    per_block = BLOCK_INPUT_BYTES * tokens * batch * width if cfg.train.gradient_checkpointing else full
    recompute = full if cfg.train.gradient_checkpointing else 0
    n_blocks, k = adapter.num_blocks, cfg.losses.feature_block % adapter.num_blocks
    features = weights["mmd"] > 0 or weights["gan"] > 0
    generator_phase = n_blocks * per_block + (k + 1) * per_block * features
    fake_phase = 0
    if models.fake is not None:
        fake_phase = n_blocks * per_block + 2 * (k + 1) * per_block * (weights["gan"] > 0)
    trainable = params.generator_trainable + params.fake_trainable
    return MemoryEstimate(
        weights=params.frozen_bytes + params.trainable_bytes,
        gradients=4 * trainable, adamw=8 * trainable,
        activations=max(generator_phase, fake_phase) + recompute,
        tokens=tokens, width=width, batch=batch,
    )


def dry_run_models(cfg: DistillConfig):
    """(resolved cfg, models, text tokens) of a real-size arch, built on the meta device."""
    spec = arch_spec(cfg)
    if spec is None:
        return None
    teacher = spec.build("meta")
    cfg = resolve_config(cfg, adapter_for(teacher).num_blocks)
    frozen = torch.bfloat16 if cfg.train.precision == "bf16" else None
    with torch.device("meta"):
        models = build_models(cfg, teacher, frozen)
    return cfg, models, spec.text_tokens


def dry_run_report(cfg: DistillConfig) -> tuple[str, ParamReport, MemoryEstimate] | None:
    """Printable parameter counts and memory estimate; None for the testbed (needs its weights)."""
    built = dry_run_models(cfg)
    if built is None:
        return None
    cfg, models, text_tokens = built
    params = count_params(models)
    mem = estimate_memory(cfg, models, params, text_tokens)
    adapter = adapter_for(models.teacher)
    schedule = training_schedule(cfg)
    schedule.check_model(adapter.patch_size, adapter.max_latent_size, "teacher")
    ckpt = cfg.train.gradient_checkpointing
    lora = lambda mc: f"LoRA rank {mc.lora_rank}" if mc.lora_rank > 0 else "full weights"  # noqa: E731
    shared = cfg.generator.lora_rank > 0 or cfg.fake.lora_rank > 0
    gb = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    lines = [
        f"# dry run: {cfg.model.arch} ({models.family}) built on the meta device, nothing loaded",
        f"# feature block {cfg.losses.feature_block} of {adapter.num_blocks}; teacher CFG {cfg.losses.teacher_cfg}; "
        f"schedule {schedule.name} (latent {[s[0] for s in schedule.scales]})",
        "# parameters:",
        f"#   teacher transformer       {params.teacher / 1e9:8.3f} B  (frozen"
        + ("; LoRA models share these weights)" if shared else ")"),
        f"#   generator trainable       {params.generator_trainable / 1e6:8.2f} M  ({lora(cfg.generator)})",
    ]
    if models.fake is not None:
        lines.append(f"#   fake trainable + GAN head {params.fake_trainable / 1e6:8.2f} M  ({lora(cfg.fake)}; "
                     f"head {params.gan_head / 1e6:.2f} M)")
    lines += [
        f"#   allocated in total        {params.allocated / 1e9:8.3f} B  (teacher + generator + fake, shared once)",
        f"# memory per GPU (estimate): batch {mem.batch} per GPU at latent {'x'.join(map(str, schedule.final_size))}"
        f" (S = {mem.tokens} tokens incl. {text_tokens} text, h = {mem.width}), "
        f"{cfg.train.precision}, gradient checkpointing {'on' if ckpt else 'off'}",
        f"#   weights (bf16 frozen, fp32 trainable) {gb(mem.weights)}",
        f"#   gradients (fp32)                      {gb(mem.gradients)}",
        f"#   AdamW states (2 x fp32)               {gb(mem.adamw)}",
        f"#   activations (estimate)                {gb(mem.activations)}",
        f"#   total (estimate)                      {gb(mem.total)}",
        "#   activations: per block " + ("2*S*B*h bytes (inputs kept) + one block's 34*S*B*h while recomputed"
                                         if ckpt else "34*S*B*h bytes") +
        "; max(generator: all blocks + feature blocks 0..k, fake: all blocks + 2 x 0..k); "
        "not counted: CUDA context/allocator slack (~1-3 GiB), VAE",
    ]
    return "\n".join(lines), params, mem
