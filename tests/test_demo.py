"""`polyfuse demo` end to end, on a small build so the suite stays fast."""
from polyfuse.cli.demo import run_demo


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


def test_pretrained_demo_compares_the_real_minilm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLYFUSE_CACHE", str(tmp_path / "cache"))
    metrics = run_demo(root=tmp_path / "data", out=tmp_path / "run", n=300, epochs=3, show_progress=False,
                       pretrained=True)
    printed = capsys.readouterr().out
    assert "MiniLM, pretrained" in printed and "n-gram bag, from scratch" in printed
    cache = metrics["pretrained"]["pretrained_cache"]["transcript"]
    assert cache["computed"] > 0 and cache["rows"] == metrics["pretrained"]["sizes"]["train"] + \
        metrics["pretrained"]["sizes"]["valid"] + metrics["pretrained"]["sizes"]["test"]
    # a real sentence encoder: the transcript alone is read far above chance (10 classes)
    assert metrics["pretrained"]["test"]["ablation"]["only"]["transcript"]["label"] > 0.3
    card = (tmp_path / "run-pretrained" / "MODEL_CARD.md").read_text()
    assert "zoo model `all-minilm-l6-v2`: sentence-transformers/all-MiniLM-L6-v2" in card
