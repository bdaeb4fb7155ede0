"""`polyfuse demo` end to end, on a small build so the suite stays fast."""
from polyfuse.demo import run_demo


def test_demo_trains_and_fusion_wins(tmp_path, capsys):
    metrics = run_demo(root=tmp_path / "data", out=tmp_path / "run", n=600, epochs=12, show_progress=False)
    printed = capsys.readouterr().out
    ablation = metrics["test"]["ablation"]
    fused = ablation["all"]["label"]
    singles = {k: v["label"] for k, v in ablation["only"].items()}
    assert set(singles) == {"image", "audio", "transcript"}
    assert fused > max(singles.values()) + 0.03, (fused, singles)
    assert "only transcript" in printed and "fusion" in printed
    assert (tmp_path / "run" / "MODEL_CARD.md").exists()
