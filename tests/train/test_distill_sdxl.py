"""MMD-only distillation of an SDXL-layout UNet (epsilon prediction, pooled text + time ids) with the
same trainer and config as every other model: the DDPM process builds the training pairs and the
MMD inputs, checked against diffusers' DDPMScheduler; 3 steps end to end."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from swd.models.unet import UNetAdapter
from swd.objectives import Critics, LossConfig, MMDOnly
from swd.processes import DDPMProcess, sdxl_process
from swd.schedules import ScaleSchedule
from swd.train.distill import make_scale_batch, train_distill

from tests.train.test_distill import SCHED, config
from tests.train.test_teacher import synthetic_data

TEXT = 384  # the synthetic data's (MiniLM-wide) token states and pooled vectors


def sdxl_layout_unet(seed=0) -> UNet2DConditionModel:
    """A pixel-space UNet with SDXL's conditioning: cross-attention to the tokens, the pooled vector
    and 6 time ids (width 8) through the added embedding."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), norm_num_groups=4, cross_attention_dim=TEXT, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=TEXT + 6 * 8,
    )


def test_training_pairs_use_the_ddpm_forward_process():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    data = synthetic_data(n=2)
    batch = make_scale_batch(images, data.train_condition(torch.tensor([0, 1])), ScaleSchedule(**SCHED), 1,
                             torch.Generator().manual_seed(0), "cpu", process=sdxl_process())
    eps = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    lower = F.interpolate(F.interpolate(images, size=(8, 8), mode="area"), size=(12, 12), mode="bicubic", align_corners=False)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    torch.testing.assert_close(batch.x_in, scheduler.add_noise(lower, eps, torch.tensor([800])), rtol=1e-5, atol=1e-5)


def test_the_objective_reads_the_feature_models_process():
    adapter = UNetAdapter(sdxl_layout_unet())
    assert adapter.prediction == "epsilon"  # SDXL layout: epsilon unless told otherwise
    critics = Critics(real=adapter, features=adapter, fake=None, uncond=synthetic_data().empty_condition(), feature_block=1)
    assert isinstance(MMDOnly(LossConfig(), critics).process, DDPMProcess)


def test_mmd_only_distillation_of_an_sdxl_layout_unet_runs_three_steps(tmp_path):
    from swd.eval.evaluate import load_model

    teacher = sdxl_layout_unet()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = config(tmp_path, "sdxl", "mmd-only", steps=3)
    result = train_distill(cfg, data=synthetic_data(), teacher=teacher)
    student, folder = load_model(result.export_dir)
    assert student.config.addition_embed_type == "text_time" and (folder / "schedule.yaml").is_file()
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "three generator steps must move the student's weights"
    log = [line for line in (tmp_path / "sdxl" / "log.jsonl").read_text().splitlines() if '"mmd"' in line]
    assert len(log) == 3
