import json

import pytest

from swd.errors import SwdError
from swd.eval.report import BEGIN, END, build_report, metrics_table


def _metrics(folder, label, fd, ms, sched, flops=None):
    d = folder / label
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "schedule": sched, "teacher_steps": 28 if sched == "teacher" else None, "guidance": 4.5,
        "sampling_seconds_per_image": ms / 1000, "device": "cpu", "flops_per_image": flops,
        "metrics": {"fd": fd, "precision": 0.5, "recall": 0.25, "text_alignment": 0.1,
                    "text_alignment_real": 0.3, "lap_swd": 12.0},
    }))


def test_report_table_plots_and_markers(tmp_path):
    evals = tmp_path / "evals"
    _metrics(evals, "a-teacher", 10.0, 500.0, "teacher", flops=48.98e9)
    _metrics(evals, "b-swd", 12.5, 20.0, {"scales": [[32, 32], [64, 64]], "sigmas": [1.0, 0.6]})
    log = tmp_path / "log.jsonl"
    # An evaluation record first (step 0), as `swd distill` writes with train.eval_every.
    log.write_text("\n".join([json.dumps({"step": 0, "eval": {"fd": 80.0, "n_fake": 16}})]
                             + [json.dumps({"step": i, "mmd": 1 / i}) for i in range(1, 5)]
                             + [json.dumps({"step": 4, "eval": {"fd": 60.5, "n_fake": 16}})]))
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\nhand-written\n")
    build_report(evals, out, logs=[f"mmd-only={log}"], plots=tmp_path / "plots")
    text = out.read_text()
    assert text.startswith("# Results\nhand-written") and BEGIN in text and END in text
    assert "| a-teacher | 28 + CFG 4.5 | 48.98 | 500.0 (cpu) | 10.00 |" in text
    assert "| b-swd | 2 scale-wise (32->64) | - | 20.0 (cpu) | 12.50 |" in text
    assert "| run (FD at step) | 0 | 4 |" in text and "| mmd-only | 80.0 | 60.5 |" in text
    assert "16 held-out images" in text
    assert "samples side by side" not in text  # no strip.png in these evals
    from PIL import Image

    Image.new("RGB", (8 * 64, 64), "red").save(evals / "a-teacher" / "strip.png")
    build_report(evals, out, logs=[f"mmd-only={log}"], plots=tmp_path / "plots")
    assert "![samples side by side](plots/samples.png)" in out.read_text()
    for plot in ("quality_vs_latency", "training_curves", "fd_vs_step", "samples"):
        assert (tmp_path / "plots" / f"{plot}.png").stat().st_size > 1000
    # regenerating replaces the block instead of appending a second one
    build_report(evals, out, plots=tmp_path / "plots")
    assert out.read_text().count(BEGIN) == 1


def test_report_errors(tmp_path):
    with pytest.raises(SwdError, match="not a folder"):
        build_report(tmp_path / "missing", tmp_path / "r.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SwdError, match="no \\*/metrics.json"):
        build_report(tmp_path / "empty", tmp_path / "r.md")


def test_named_blocks_live_side_by_side(tmp_path):
    evals = tmp_path / "evals"
    _metrics(evals, "a-teacher", 10.0, 500.0, "teacher")
    out = tmp_path / "RESULTS.md"
    build_report(evals, out, plots=tmp_path / "plots")
    build_report(evals, out, plots=tmp_path / "plots", name="shapes")
    build_report(evals, out, plots=tmp_path / "plots", name="shapes")  # replaced, not appended
    text = out.read_text()
    assert text.count(BEGIN) == 1 and text.count("<!-- swd report shapes: begin -->") == 1
    assert (tmp_path / "plots" / "shapes_quality_vs_latency.png").is_file()
    with pytest.raises(SwdError, match="--name"):
        build_report(evals, out, name="a b")


def test_resumed_logs_keep_the_last_evaluation_of_a_step_and_skip_a_cut_line(tmp_path):
    from swd.eval.report import eval_curves

    log = tmp_path / "log.jsonl"
    records = [{"step": 0, "eval": {"fd": 80.0, "sampling_seconds": 1.0}},
               {"step": 13, "eval": {"fd": 70.0, "sampling_seconds": 1.1}},
               {"step": 13, "eval": {"fd": 71.0, "sampling_seconds": 1.2}}]  # repeated after a resume
    log.write_text("\n".join(json.dumps(r) for r in records) + '\n{"step": 14, "mm')  # killed mid-write
    assert eval_curves({"run": log}) == {"run": [(0, records[0]["eval"]), (13, records[2]["eval"])]}
    log.write_text('{"step": 1\n' + json.dumps(records[0]))
    with pytest.raises(SwdError, match="line 1 is not JSON"):
        eval_curves({"run": log})


def test_eval_curve_table_shows_shapes_accuracy_when_scored():
    from swd.eval.report import eval_curve_table

    table = eval_curve_table({"shapes-run": [(0, {"fd": 50.0, "shapes": 0.25}), (26, {"fd": 45.25, "shapes": 0.3})],
                              "emoji-run": [(0, {"fd": 70.0})]})
    assert "| run (FD (shapes accuracy) at step) | 0 | 26 |" in table
    assert "| shapes-run | 50.0 (0.25) | 45.2 (0.30) |" in table and "| emoji-run | 70.0 | - |" in table


def test_eval_curve_plot_with_only_shapes_and_with_nothing(tmp_path):
    from swd.eval.report import plot_eval_curves

    assert plot_eval_curves({"r": [(0, {"shapes": 0.1}), (5, {"shapes": 0.2})]}, tmp_path / "a.png").is_file()
    with pytest.raises(SwdError, match="none of"):
        plot_eval_curves({"r": [(0, {"n_fake": 8})]}, tmp_path / "b.png")
