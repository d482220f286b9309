"""Interleaved training-step probe: eager vs compiled vs bf16-autocast copies of the shipped UNet teacher recipe."""
import time, torch, copy, sys, contextlib, json, os
import torch.nn.functional as F
from swd.config import load_config
from swd.train.teacher import TeacherConfig, sample_logit_normal
from swd.models.testbed import build_testbed_model
from swd.models import adapter_for
from swd.train.common import load_testbed_data, resize_area
from swd.sampling import add_noise
torch.set_num_threads(1)
cfg = load_config(TeacherConfig, "configs/testbed/teacher-shapes-unet-cpu.yaml")
data = load_testbed_data("shapes", None, 16)
images = data.train_images
torch.manual_seed(0)
base = build_testbed_model(cfg.model)
variants = {}
for name in sys.argv[1].split(","):
    m = copy.deepcopy(base)
    if name == "compiled": m.compile(dynamic=False)
    if name == "channels_last": m = m.to(memory_format=torch.channels_last)
    ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if name == "bf16" else contextlib.nullcontext
    variants[name] = (m, adapter_for(m), torch.optim.AdamW(m.parameters(), lr=1e-3), ac)
scales = [int(s) for s in sys.argv[2].split(",")]
rounds = int(sys.argv[3])
times = {n: [] for n in variants}
for r in range(rounds + 1):
    for size in scales:
        g = torch.Generator().manual_seed(r * 100 + size)
        idx = torch.randint(len(images), (64,), generator=g)
        x0 = resize_area(images[idx], size); cond = data.train_condition(idx)
        sigma = torch.sigmoid(torch.randn(64, generator=g)); eps = torch.randn(x0.shape, generator=g)
        x = add_noise(x0, sigma, eps)
        for n, (m, ad, opt, ac) in variants.items():
            t0 = time.perf_counter()
            with ac(): v = ad(x, sigma, cond)
            loss = F.mse_loss(v.float(), eps - x0); opt.zero_grad(); loss.backward(); opt.step()
            dt = time.perf_counter() - t0
            if r > 0: times[n].append(dt)
            else: print(n, size, "first step (compile)", round(dt, 1), flush=True)
    print("round", r, os.getloadavg()[0], {n: round(sum(t[-len(scales):]), 2) for n, t in times.items() if t}, flush=True)
tot = {n: sum(t) for n, t in times.items()}
print(json.dumps({"scales": scales, "rounds": rounds, "seconds": tot, "img_per_s": {n: 64 * len(t) / tot[n] for n, t in times.items()},
                  "ratio_to_eager": {n: tot["eager"] / tot[n] for n in tot}}))
