"""Pretrained models side by side (`python -m ferjax.model_bench`) and the video default
(`ferjax.pretrained.VIDEO_DEFAULT`): classifier rows per model and backend from one interleaved run,
each model's card figures, issue 42's rule for the video model, and `ferjax analyze` giving videos
the video default while photos keep the photo default."""
from __future__ import annotations

import json

import cv2
import pytest

from conftest import MEDIA

from ferjax import command, model_bench, pretrained

SHORT = MEDIA / "one_face_short.mp4"
PAIR = f"{pretrained.DEFAULT},fer_mini_xception"


@pytest.mark.slow  # about 26 s on the 2-core VM: in the slow set (pytest -m slow), which CI runs too
def test_classifier_rows_for_two_models_with_their_cards(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert model_bench.main(["--models", PAIR, "--backends", "jax", "--videos", "", "--repeats", "3",
                             "--iters", "1", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["model"]: r for r in report["classifier"]}
    assert set(rows) == {pretrained.DEFAULT, "fer_mini_xception"} and report["pipeline"] == []
    for r in rows.values():
        assert r["backend"] == "jax" and 0 < r["ms_batch1"] and 0 < r["ms_batch8"] and 0 < r["ms_batch32"]
        assert r["ms_per_face_batch8"] == pytest.approx(r["ms_batch8"] / 8, abs=1e-3)
    cards = report["cards"]
    assert cards["fer_mini_xception"]["params"] < cards[pretrained.DEFAULT]["params"]
    for name in rows:  # the figures are the model cards' own
        _, _, card = pretrained.load(name)
        assert cards[name]["accuracy"] == card["accuracy"] and cards[name]["protocol"] == "original"
        assert cards[name]["disgust_recall"] == card["per_class_recall"]["disgust"]
    printed = capsys.readouterr().out
    assert f"| fer_mini_xception | jax | {cards['fer_mini_xception']['params']:,} |" in printed


def test_the_video_paths_default_to_the_video_model():
    from ferjax.cli import _models
    from ferjax.experiments import realtime

    assert realtime.get_config().pretrained == pretrained.VIDEO_DEFAULT  # the realtime experiment
    assert _models(None) == (pretrained.DEFAULT, pretrained.VIDEO_DEFAULT)  # ferjax analyze: photos, videos
    assert _models("fer2013_video") == ("fer2013_video", "fer2013_video")  # --model names both


def test_video_default_rule_needs_speed_accuracy_and_disgust_recall():
    cards = {"ref": {"accuracy": 0.68, "disgust_recall": 0.60},
             "fast_good": {"accuracy": 0.671, "disgust_recall": 0.61},
             "fast_less_accurate": {"accuracy": 0.669, "disgust_recall": 0.70},
             "fast_less_disgust": {"accuracy": 0.70, "disgust_recall": 0.59},
             "slow_good": {"accuracy": 0.70, "disgust_recall": 0.70}}
    rows = [{"model": m, "backend": "onnxruntime", "ms_per_face_batch8": 1.2 if m.startswith("slow") else 0.8}
            for m in cards]
    verdict = {m: model_bench.video_default_rule("ref", m, rows, cards, "onnxruntime")["met"]
               for m in cards if m != "ref"}
    assert verdict == {"fast_good": True, "fast_less_accurate": False, "fast_less_disgust": False, "slow_good": False}


def test_refusals_name_what_is_wrong(capsys):
    assert model_bench.main(["--models", "no_such_model"]) == 2
    assert "unknown pretrained model(s) no_such_model" in capsys.readouterr().err
    assert model_bench.main(["--models", PAIR, "--backends", "tensorrt", "--videos", ""]) == 2
    assert "unknown backend(s) tensorrt" in capsys.readouterr().err


@pytest.mark.slow  # about 40 s on the 2-core VM (two ONNX exports, two pipelines)
@pytest.mark.skipif(not SHORT.is_file(), reason=f"shared video not found at {SHORT}")
def test_pipeline_rows_and_the_rule_on_a_real_video(tmp_path):
    out = tmp_path / "models.json"
    assert model_bench.main(["--models", PAIR, "--videos", str(SHORT), "--max-frames", "12", "--rounds", "1",
                             "--repeats", "3", "--iters", "1", "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["pipeline"]
    assert row["frames"] == 12 and row[f"{pretrained.DEFAULT}_fps"] > 0 and row["fer_mini_xception_fps"] > 0
    (rule,) = report["video_default"]
    # mini-Xception's card: 0.654 PrivateTest accuracy against the default's 0.682: not within a point
    assert rule["candidate"] == "fer_mini_xception" and rule["accuracy_within"] is False and rule["met"] is False


@pytest.mark.skipif(not SHORT.is_file(), reason=f"shared video not found at {SHORT}")
def test_analyze_gives_videos_the_video_default_and_photos_the_default(tmp_path, monkeypatch, capsys):
    """With VIDEO_DEFAULT set to another model, the video's frames get exactly what `--model` of
    that model gives, while the photo in the same command keeps the photo default's result."""
    cap = cv2.VideoCapture(str(SHORT))
    ok, frame = cap.read()
    assert ok
    photo = tmp_path / "frame.png"
    cv2.imwrite(str(photo), frame)

    def run(*extra: str) -> dict:
        jsonl = tmp_path / "out.jsonl"
        assert command.dispatch(["analyze", str(photo), str(SHORT), "--max-frames", "2", "--backend", "jax",
                                 "--jsonl", str(jsonl), *extra]) == 0
        rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        return {"photo": [r["faces"] for r in rows if "frame" not in r],  # timings ("ms") left out
                "video": [r["faces"] for r in rows if "frame" in r]}

    monkeypatch.setattr(pretrained, "VIDEO_DEFAULT", "fer_mini_xception")
    defaults = run()
    explicit = run("--model", "fer_mini_xception")
    capsys.readouterr()
    assert len(defaults["video"]) == 2 and defaults["video"] == explicit["video"]
    assert len(defaults["photo"][0]) == 1 and len(explicit["photo"][0]) == 1
    assert defaults["photo"][0][0]["probs"] != explicit["photo"][0][0]["probs"]
