"""The demo end to end at toy size: every stage runs and the report's numbers are the JSON's."""

import re

from fornet_deploy.demo import DemoConfig, load_results, run_demo


def test_demo_report_matches_its_json(tmp_path, tiny_checkpoint):
    cfg = DemoConfig(out=tmp_path / "demo", weights=tiny_checkpoint, synth_train=6, synth_val=2, height=64, width=128,
                     calib_images=2, bench_iters=2, accuracy_images=1)
    result = run_demo(cfg, log=lambda line: None)
    report = (tmp_path / "demo" / "report.md").read_text()
    results = load_results(tmp_path / "demo")
    for runtime, precision in [("torch", "fp32"), ("ort", "fp32"), ("ort", "fp16"), ("ort", "int8")]:
        e = results[f"results/eval_{runtime}_{precision}.json"]
        backend = e["runner"]["backend"]
        row = f"| {backend} | {precision} | `{e['runner']['artifact'].split('/')[-1]}` | {100 * e['miou']:.2f} | {100 * e['boundary_iou']:.2f} |"
        assert row in report, row
    for precision in ("fp32", "fp16", "int8"):
        s = results[f"results/parity_ort_{precision}/parity.json"]["summary"]
        assert f"| {100 * s['argmax_agreement']:.2f} | {100 * s['mask_agreement']:.2f} |" in report
        assert s == result["parity"][precision]
    for row in results["results/bench_matrix.json"]["rows"]:
        if row.get("status") != "skipped":
            assert f"`{row['artifact']}`" in report
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert pictures and all((tmp_path / "demo" / p).is_file() for p in pictures)
    assert result["lint"]["model.int8.qdq.onnx"]["passed"]
