"""Bad inputs to every command: each is one `swd: error:` line naming the field or file, exit 2.

The cases run the CLI in-process (`swd.cli.main`), a few as real subprocesses. Training cases also
check that nothing was written: every check runs before any folder is made.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swd.cli import main
from swd.models.testbed import MMDiTConfig, build_testbed_transformer
from swd.schedules import ScaleSchedule

REPO = Path(__file__).resolve().parents[1]
TINY = {"sample_size": 16, "patch_size": 2, "width": 32, "head_dim": 16, "depth": 2}


def _yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def _tiny_teacher_run(run_dir: Path) -> None:
    """A 2-step teacher run on synthetic data: one checkpoint at step 2."""
    from swd.config import from_dict
    from swd.train.teacher import TeacherConfig, train_teacher
    from tests.train.test_teacher import synthetic_data

    cfg = from_dict(TeacherConfig, {
        "run_dir": str(run_dir), "model": TINY,
        "train": {"steps": 2, "batch_size": 2, "scales": [8, 16], "device": "cpu", "precision": "fp32",
                  "log_every": 1, "sample_every": 1000, "checkpoint_every": 2, "warmup_steps": 1},
        "sample": {"steps": 1, "num_prompts": 1},
    })
    train_teacher(cfg, data=synthetic_data(n=4))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Every file and folder the cases name, built once."""
    root = tmp_path_factory.mktemp("bad")
    p = {"tmp": str(root)}
    torch.manual_seed(0)
    model = build_testbed_transformer(MMDiTConfig(**TINY))
    student = root / "model"
    model.save_pretrained(student)
    ScaleSchedule(scales=[8, 12, 16], sigmas=[1.0, 0.8, 0.6], name="tiny").save(student / "schedule.yaml")
    p["model"] = str(student)
    model.save_pretrained(root / "no_schedule")
    p["no_schedule"] = str(root / "no_schedule")
    model.save_pretrained(root / "binonly", safe_serialization=False)  # pickled .bin only
    p["binonly"] = str(root / "binonly")
    shutil.copytree(student, root / "trunc")
    weights = root / "trunc" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    p["trunc"] = str(root / "trunc")
    shutil.copytree(student, root / "badjson")
    (root / "badjson" / "config.json").write_text("{not json")
    p["badjson"] = str(root / "badjson")
    shutil.copytree(student, root / "listjson")
    (root / "listjson" / "config.json").write_text("[1, 2]")
    p["listjson"] = str(root / "listjson")
    from swd.models.configs import ARCHS

    ARCHS["tiny-sd3"].build().save_pretrained(root / "latent")  # 16 latent channels, not pixels
    ARCHS["tiny-flux"].build().save_pretrained(root / "flux")
    p["latent"], p["flux"] = str(root / "latent"), str(root / "flux")

    sched = root / "sched.yaml"
    ScaleSchedule(scales=[8, 12, 16], sigmas=[1.0, 0.8, 0.6], name="tiny").save(sched)
    train = {"steps": 2, "batch_size": 2, "device": "cpu", "precision": "fp32"}
    p["teacher_yaml"] = str(_yaml(root / "teacher.yaml", {
        "run_dir": str(root / "runs" / "t"), "model": TINY,
        "train": {**train, "scales": [8, 16]}}))
    p["distill_yaml"] = str(_yaml(root / "distill.yaml", {
        "run_dir": str(root / "runs" / "d"), "teacher": str(student), "schedule": str(sched),
        "losses": {"feature_block": 0}, "train": {**train, "fake_updates": 1}}))
    (root / "latin1.yaml").write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    p["latin1"] = str(root / "latin1.yaml")
    (root / "broken.yaml").write_text("train: [unclosed\n")
    p["broken_yaml"] = str(root / "broken.yaml")
    (root / "list.yaml").write_text("- a\n- b\n")
    p["list_yaml"] = str(root / "list.yaml")
    (root / "cfgdir").mkdir()
    p["cfgdir"] = str(root / "cfgdir")
    (root / "afile").write_text("I am a file\n")
    p["afile"] = str(root / "afile")
    if os.geteuid() == 0:  # root writes anywhere but /sys
        p["unwritable"] = "/sys/swd-bad-input"
    else:
        locked = root / "locked"
        locked.mkdir(mode=0o500)
        p["unwritable"] = str(locked / "out")

    # Teacher checkpoints: one intact run, and copies broken in one way each.
    run = root / "teacher_run"
    _tiny_teacher_run(run)
    ckpt = run / "checkpoints" / "step_00000002"
    p["ckpt_run"] = str(run)

    def broken_copy(name, edit):
        dest = root / name
        shutil.copytree(ckpt, dest)
        edit(dest)
        p[name] = str(dest)

    broken_copy("ckpt_badmeta", lambda d: (d / "meta.json").write_text("{oops"))
    broken_copy("ckpt_nocfg", lambda d: (d / "meta.json").write_text(json.dumps({"step": 2})))

    def truncate_ema(d):
        f = d / "ema.safetensors"
        f.write_bytes(f.read_bytes()[:100])

    broken_copy("ckpt_trunc", truncate_ema)

    def flip_ema_byte(d):
        f = d / "ema.safetensors"
        raw = bytearray(f.read_bytes())
        raw[-1] ^= 0xFF  # same size, and still a readable safetensors file: only the sha256 tells
        f.write_bytes(bytes(raw))

    broken_copy("ckpt_flipped", flip_ema_byte)

    def other_model(d):
        meta = json.loads((d / "meta.json").read_text())
        meta["config"]["model"]["width"] = 64
        meta["config"]["model"]["head_dim"] = 32
        (d / "meta.json").write_text(json.dumps(meta))

    broken_copy("ckpt_mismatch", other_model)

    def distill_meta(d):
        meta = json.loads((d / "meta.json").read_text())
        meta["config"] = {"objective": "swd", "teacher": "x"}
        (d / "meta.json").write_text(json.dumps(meta))

    broken_copy("ckpt_distill", distill_meta)
    torn = root / "torn_run" / "checkpoints"
    shutil.copytree(ckpt, torn / ckpt.name)
    truncate_ema(torn / ckpt.name)
    p["torn_run"] = str(root / "torn_run")

    # metrics.json files for `swd report`, one broken way each.
    good = {"metrics": {"fd": 1.0}, "sampling_seconds_per_image": 0.1, "schedule": "teacher", "teacher_steps": 28}
    evals = {
        "evals_badjson": "{",
        "evals_list": "[]",
        "evals_nokey": json.dumps({k: v for k, v in good.items() if k != "metrics"}),
        "evals_noseconds": json.dumps({k: v for k, v in good.items() if k != "sampling_seconds_per_image"}),
        "evals_badschedule": json.dumps({**good, "schedule": 5, "teacher_steps": None}),
        "evals_badfd": json.dumps({**good, "metrics": {"fd": "low"}}),
        "evals_latin1": b"\xff\xfe{",
    }
    for name, text in evals.items():
        (root / name / "run").mkdir(parents=True)
        f = root / name / "run" / "metrics.json"
        f.write_bytes(text) if isinstance(text, bytes) else f.write_text(text)
        p[name] = str(root / name)

    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    p["corrupt_npz"] = str(root / "corrupt.npz")
    (root / "dir.npz").mkdir()
    p["npz_dir"] = str(root / "dir.npz")
    (root / "evaluator").mkdir()
    (root / "evaluator" / "config.json").write_text("{nope")
    p["evaluator_badjson"] = str(root / "evaluator")
    return p


T, D = ["train-teacher", "--config", "{teacher_yaml}"], ["distill", "--config", "{distill_yaml}"]
SAMPLE = ["sample", "--model", "{model}", "--prompt", "x", "--out", "{tmp}/s.png"]
EVAL = ["eval", "run", "--model", "{model}", "--n", "4", "--no-progress"]
LAT = ["bench", "latency", "--model", "{model}", "--teacher-steps", "0"]
EXPORT = ["export", "--checkpoint"]

# (id, argv, a substring the one error line must hold)
CASES = [
    # config files, for both training commands
    *[(f"{c[0]}-{name}", [c[0], "--config", path, *extra], want) for c in (T, D) for name, path, extra, want in [
        ("non-utf8", "{latin1}", [], "not UTF-8"),
        ("config-is-dir", "{cfgdir}", [], "is a folder"),
        ("config-missing", "{tmp}/none.yaml", [], "does not exist"),
        ("config-not-yaml", "{broken_yaml}", [], "not valid YAML"),
        ("config-a-list", "{list_yaml}", [], "mapping"),
    ]],
    ("teacher-unknown-key", [*T, "--set", "train.stepz=3"], "train.stepz"),
    ("teacher-wrong-type", [*T, "--set", "train.steps=abc"], "train.steps"),
    ("teacher-set-no-equals", [*T, "--set", "train.steps"], "KEY=VALUE"),
    ("teacher-set-bad-yaml", [*T, "--set", "train.scales=[8"], "not valid YAML"),
    ("teacher-set-not-section", [*T, "--set", "train=5", "--set", "train.steps=1"], "not a section"),
    ("teacher-lr-negative", [*T, "--set", "train.lr=-1"], "train.lr"),
    ("teacher-lr-inf", [*T, "--set", "train.lr=.inf"], "train.lr"),
    ("teacher-lr-nan", [*T, "--set", "train.lr=.nan"], "train.lr"),
    ("teacher-batch-0", [*T, "--set", "train.batch_size=0"], "train.batch_size"),
    ("teacher-steps-0", [*T, "--set", "train.steps=0"], "train.steps"),
    ("teacher-steps-negative", [*T, "--set", "train.steps=-5"], "train.steps"),
    ("teacher-scales-empty", [*T, "--set", "train.scales=[]"], "train.scales"),
    ("teacher-scales-odd", [*T, "--set", "train.scales=[9]"], "train.scales"),
    ("teacher-scales-too-big", [*T, "--set", "train.scales=[32]"], "train.scales"),
    ("teacher-log-every-0", [*T, "--set", "train.log_every=0"], "train.log_every"),
    ("teacher-checkpoint-every-0", [*T, "--set", "train.checkpoint_every=0"], "train.checkpoint_every"),
    ("teacher-device-banana", [*T, "--set", "train.device=banana"], "train.device"),
    ("teacher-device-cuda7", [*T, "--set", "train.device=cuda:7"], "train.device"),
    ("teacher-seed-huge", [*T, "--set", "train.seed=99999999999999999999999"], "train.seed"),
    ("teacher-betas", [*T, "--set", "train.betas=[0.9, 1.5]"], "train.betas[1]"),
    ("teacher-ema-decay", [*T, "--set", "train.ema_decay=2"], "train.ema_decay"),
    ("teacher-caption-dropout", [*T, "--set", "train.caption_dropout=-0.1"], "train.caption_dropout"),
    ("teacher-grad-clip-0", [*T, "--set", "train.grad_clip=0"], "train.grad_clip"),
    ("teacher-precision", [*T, "--set", "train.precision=fp8"], "train.precision"),
    ("teacher-width-head-dim", [*T, "--set", "model.width=30"], "model.width"),
    ("teacher-depth-0", [*T, "--set", "model.depth=0"], "model.depth"),
    ("teacher-data-name", [*T, "--set", "data.name=cats"], "data.name"),
    # ({{ }}: argv strings are formatted with the paths) a 3-level UNet halves sides twice: 6 px (fine for the MMDiT's patch 2) is refused
    ("teacher-unet-scale", [*T, "--set", "model={{arch: unet, sample_size: 16, block_out_channels: [32, 32, 32], "
                            "cross_attention: [false, false, false]}}", "--set", "train.scales=[6]"],
     "patch size 4"),
    ("teacher-unet-groups", [*T, "--set", "model={{arch: unet, sample_size: 16, block_out_channels: [24, 32], "
                             "cross_attention: [false, true]}}"], "model.block_out_channels"),
    ("teacher-guidance-nan", [*T, "--set", "sample.guidance=.nan"], "sample.guidance"),
    ("teacher-run-dir-file", [*T, "--set", "run_dir={afile}"], "run_dir"),
    ("teacher-run-dir-parent-file", [*T, "--set", "run_dir={afile}/run"], "run_dir"),
    ("teacher-run-dir-unwritable", [*T, "--set", "run_dir={unwritable}"], "run_dir"),
    ("teacher-run-has-checkpoints", [*T, "--set", "run_dir={ckpt_run}"], "--resume"),
    ("teacher-resume-nothing", [*T, "--resume"], "no checkpoint"),
    ("teacher-dry-run-lr", [*T, "--dry-run", "--set", "train.lr=-1"], "train.lr"),
    ("teacher-dry-run-batch", [*T, "--dry-run", "--set", "train.batch_size=0"], "train.batch_size"),
    ("teacher-dry-run-steps", [*T, "--dry-run", "--set", "train.steps=-5"], "train.steps"),
    ("distill-batch-0", [*D, "--set", "train.batch_size=0"], "train.batch_size"),
    ("distill-fake-updates-0", [*D, "--set", "train.fake_updates=0"], "train.fake_updates"),
    ("distill-dmd-idx-out", [*D, "--set", "losses.dmd_sigma_idx=[20, 40]"], "losses.dmd_sigma_idx"),
    ("distill-mmd-idx-reversed", [*D, "--set", "losses.mmd_sigma_idx=[10, 5]"], "losses.mmd_sigma_idx"),
    ("distill-fake-idx-negative", [*D, "--set", "losses.fake_sigma_idx=[-1, 27]"], "losses.fake_sigma_idx"),
    ("distill-generator-lr-inf", [*D, "--set", "generator.lr=.inf"], "generator.lr"),
    ("distill-fake-lr-negative", [*D, "--set", "fake.lr=-1"], "fake.lr"),
    ("distill-betas", [*D, "--set", "generator.betas=[1.0, 0.9]"], "generator.betas[0]"),
    ("distill-lora-rank", [*D, "--set", "generator.lora_rank=-4"], "generator.lora_rank"),
    ("distill-objective", [*D, "--set", "objective=gan"], "objective"),
    ("distill-arch", [*D, "--set", "model.arch=sd4"], "model.arch"),
    ("distill-scale-order", [*D, "--set", "train.scale_order=zigzag"], "train.scale_order"),
    ("distill-ema-decay", [*D, "--set", "train.ema_decay=1"], "train.ema_decay"),
    ("distill-feature-source", [*D, "--set", "objective=mmd-only", "--set", "losses.feature_source=fake"],
     "losses.feature_source"),
    ("distill-teacher-cfg-nan", [*D, "--set", "losses.teacher_cfg=.nan"], "losses.teacher_cfg"),
    ("distill-eval-n", [*D, "--set", "train.eval_n=2"], "train.eval_n"),
    ("distill-fake-weighting", [*D, "--set", "losses.fake_weighting=eps"], "losses.fake_weighting"),
    ("distill-mmd-bandwidth", [*D, "--set", "losses.mmd_kernel=rbf", "--set", "losses.mmd_bandwidth=0"],
     "losses.mmd_bandwidth"),
    ("distill-steps-0", [*D, "--set", "train.steps=0"], "train.steps"),
    ("distill-schedule", [*D, "--set", "schedule=no-such-preset"], "schedule"),
    ("distill-device", [*D, "--set", "train.device=banana"], "train.device"),
    ("distill-data-name", [*D, "--set", "data.name=cats"], "data.name"),
    ("distill-run-dir-file", [*D, "--set", "run_dir={afile}"], "run_dir"),
    ("distill-resume-nothing", [*D, "--resume"], "no checkpoint"),
    ("distill-dry-run-lr", [*D, "--dry-run", "--set", "generator.lr=-1"], "generator.lr"),
    ("distill-teacher-empty", [*D, "--set", "teacher="], "teacher"),
    ("distill-teacher-bin-only", [*D, "--set", "teacher={binonly}"], "pickled"),
    ("distill-teacher-flux", [*D, "--set", "teacher={flux}"], "FluxTransformer2DModel"),
    ("distill-teacher-latent", [*D, "--set", "teacher={latent}"], "in_channels"),
    ("distill-teacher-bad-json", [*D, "--set", "teacher={badjson}"], "config.json"),
    # export
    ("export-out-existing-file", [*EXPORT, "{ckpt_run}", "--out", "{afile}"], "--out"),
    ("export-out-parent-file", [*EXPORT, "{ckpt_run}", "--out", "{afile}/x"], "--out"),
    ("export-out-unwritable", [*EXPORT, "{ckpt_run}", "--out", "{unwritable}"], "--out"),
    ("export-corrupt-meta", [*EXPORT, "{ckpt_badmeta}", "--out", "{tmp}/e1"], "meta.json"),
    ("export-meta-without-config", [*EXPORT, "{ckpt_nocfg}", "--out", "{tmp}/e2"], "meta.json"),
    ("export-truncated-weights", [*EXPORT, "{ckpt_trunc}", "--out", "{tmp}/e3"], "ema.safetensors"),
    ("export-flipped-weights", [*EXPORT, "{ckpt_flipped}", "--out", "{tmp}/e8"], "ema.safetensors does not match its sha256"),
    ("export-other-model", [*EXPORT, "{ckpt_mismatch}", "--out", "{tmp}/e4"], "does not fit"),
    ("export-distill-checkpoint", [*EXPORT, "{ckpt_distill}", "--out", "{tmp}/e5"], "distillation checkpoint"),
    ("export-only-torn-checkpoint", [*EXPORT, "{torn_run}", "--out", "{tmp}/e6"], "no intact checkpoint"),
    ("export-nowhere", [*EXPORT, "{tmp}/nowhere", "--out", "{tmp}/e7"], "--checkpoint"),
    # sample
    ("sample-guidance-nan", [*SAMPLE, "--guidance", "nan"], "--guidance"),
    ("sample-guidance-inf", [*SAMPLE, "--guidance", "inf"], "--guidance"),
    ("sample-guidance-negative", [*SAMPLE, "--guidance", "-1"], "--guidance"),
    ("sample-seed-huge", [*SAMPLE, "--seed", "99999999999999999999999"], "--seed"),
    ("sample-seed-text", [*SAMPLE, "--seed", "abc"], "--seed"),
    ("sample-n-0", [*SAMPLE, "--n", "0"], "--n"),
    ("sample-n-huge", [*SAMPLE, "--n", "100000000"], "--n"),
    ("sample-steps-0", [*SAMPLE, "--schedule", "teacher", "--steps", "0"], "--steps"),
    ("sample-out-dir", ["sample", "--model", "{model}", "--prompt", "x", "--out", "{tmp}"], "--out"),
    ("sample-out-txt", ["sample", "--model", "{model}", "--prompt", "x", "--out", "{tmp}/x.txt"], "--out"),
    ("sample-out-unwritable", ["sample", "--model", "{model}", "--prompt", "x", "--out", "{unwritable}.png"],
     "--out"),
    ("sample-out-parent-file", ["sample", "--model", "{model}", "--prompt", "x", "--out", "{afile}/x.png"],
     "--out"),
    *[(f"sample-model-{name}", ["sample", "--model", "{" + name + "}", "--prompt", "x", "--out", "{tmp}/s.png"], want)
      for name, want in [("trunc", "cannot load"), ("badjson", "not valid JSON"), ("listjson", "JSON object"),
                         ("latent", "in_channels"), ("flux", "FluxTransformer2DModel"), ("binonly", "pickled")]],
    ("sample-model-missing", ["sample", "--model", "{tmp}/nope", "--prompt", "x"], "--model"),
    # demo
    ("demo-student-without-schedule", ["demo", "--teacher", "{model}", "--student", "{no_schedule}",
                                       "--out", "{tmp}/d.png"], "schedule.yaml"),
    ("demo-guidance-inf", ["demo", "--teacher", "{model}", "--student", "{model}", "--guidance", "inf"], "--guidance"),
    ("demo-out-txt", ["demo", "--teacher", "{model}", "--student", "{model}", "--out", "{tmp}/d.txt"], "--out"),
    ("demo-teacher-bin-only", ["demo", "--teacher", "{binonly}", "--student", "{model}", "--out", "{tmp}/d.png"],
     "--teacher"),
    ("demo-n-0", ["demo", "--teacher", "{model}", "--student", "{model}", "--n", "0"], "--n"),
    ("demo-pair-with-teacher", ["demo", "--pair", "emoji", "--teacher", "{model}", "--student", "{model}"], "--pair"),
    ("demo-teacher-only", ["demo", "--teacher", "{model}", "--out", "{tmp}/d.png"], "give both"),
    ("demo-pair-n-9", ["demo", "--pair", "emoji", "--n", "9", "--out", "{tmp}/d.png"], "--n"),
    # eval
    ("eval-n-0", ["eval", "run", "--model", "{model}", "--n", "0"], "--n"),
    ("eval-n-huge", ["eval", "run", "--model", "{model}", "--n", "100000000000"], "--n"),
    ("eval-device", [*EVAL, "--device", "banana"], "--device"),
    ("eval-model-bin-only", ["eval", "run", "--model", "{binonly}"], "pickled"),
    ("eval-model-latent", ["eval", "run", "--model", "{latent}"], "in_channels"),
    ("eval-model-truncated-json", ["eval", "run", "--model", "{badjson}"], "not valid JSON"),
    ("eval-out-file", [*EVAL, "--out", "{afile}"], "--out"),
    ("eval-guidance-nan", [*EVAL, "--guidance", "nan"], "--guidance"),
    ("eval-batch-0", [*EVAL, "--batch-size", "0"], "--batch-size"),
    ("eval-seed-huge", [*EVAL, "--seed", "99999999999999999999999"], "--seed"),
    ("eval-text-tokens-0", [*EVAL, "--text-tokens", "0"], "--text-tokens"),
    ("eval-threads-negative", [*EVAL, "--threads", "-1"], "--threads"),
    ("eval-data-path-dir", [*EVAL, "--data-path", "{cfgdir}"], "--data-path"),
    ("eval-evaluator-bad-json", [*EVAL, "--evaluator", "{evaluator_badjson}"], "config.json"),
    ("evaluator-lr-nan", ["eval", "train-evaluator", "--lr", "nan"], "--lr"),
    ("evaluator-steps-0", ["eval", "train-evaluator", "--steps", "0"], "--steps"),
    ("evaluator-out-file", ["eval", "train-evaluator", "--out", "{afile}"], "--out"),
    ("evaluator-seed-negative", ["eval", "train-evaluator", "--seed", "-1"], "--seed"),
    # bench latency
    ("latency-device", [*LAT, "--device", "banana"], "--device"),
    ("latency-batch-0", [*LAT, "--batch", "0"], "--batch"),
    ("latency-repeats-0", [*LAT, "--repeats", "0"], "--repeats"),
    ("latency-teacher-cfg-inf", [*LAT, "--teacher-cfg", "inf"], "--teacher-cfg"),
    ("latency-model-bin-only", ["bench", "latency", "--model", "{binonly}"], "pickled"),
    # report
    *[(f"report-{name}", ["report", "--evals", "{" + name + "}", "--out", "{tmp}/r.md"], want)
      for name, want in [("evals_badjson", "not valid JSON"), ("evals_list", "JSON object"),
                         ("evals_nokey", "'metrics'"), ("evals_noseconds", "sampling_seconds_per_image"),
                         ("evals_badschedule", "'schedule'"), ("evals_badfd", "metrics.fd"),
                         ("evals_latin1", "UTF-8")]],
    ("report-evals-file", ["report", "--evals", "{afile}", "--out", "{tmp}/r.md"], "--evals"),
    # data
    ("data-info-corrupt-npz", ["data", "info", "{corrupt_npz}"], "corrupt.npz"),
    ("data-info-npz-dir", ["data", "info", "{npz_dir}"], "folder"),
    ("data-build-out-file", ["data", "build", "shapes", "--n", "4", "--out", "{afile}"], "--out"),
    ("data-build-out-unwritable", ["data", "build", "shapes", "--n", "4", "--out", "{unwritable}"], "--out"),
    ("data-build-seed-huge", ["data", "build", "shapes", "--n", "4", "--seed", "99999999999"], "--seed"),
    ("data-build-emoji-n-0", ["data", "build", "emoji", "--n", "0"], "--n"),
]


def run_main(argv):
    """main's exit status; argparse's own errors leave through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()  # a command may set them (--threads)
    yield
    torch.set_num_threads(threads)


def _check_one_error_line(code, err, want):
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "swd: error:" in line]
    assert len(lines) == 1 and lines[0].startswith("swd: error:"), err
    assert want in lines[0], lines[0]


def test_enough_cases():
    assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(paths, capsys, argv, want):
    argv = [a.format(**paths) for a in argv]
    code = run_main(argv)
    _check_one_error_line(code, capsys.readouterr().err, want)
    # checks come before any write: no run folder was made
    assert not (Path(paths["tmp"]) / "runs").exists()


@pytest.mark.parametrize("argv, want", [
    (["train-teacher", "--config", "{latin1}"], "not UTF-8"),
    (["sample", "--model", "{model}", "--prompt", "x", "--seed", "99999999999999999999999"], "--seed"),
    (["sample", "--model", "{trunc}", "--prompt", "x", "--out", "{tmp}/s.png"], "cannot load"),
], ids=["non-utf8-config", "seed-too-large", "truncated-model"])
def test_bad_input_in_a_real_process(paths, argv, want):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "swd.cli", *[a.format(**paths) for a in argv]], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    _check_one_error_line(proc.returncode, proc.stderr, want)
    assert proc.stdout == ""
