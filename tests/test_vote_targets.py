"""FER+ vote distributions as training targets: the distribution itself, and `ferplus_vgg:tiny`
training towards it under the `ferplus` protocol (refusals included)."""
import json

import numpy as np
import pytest

from ferjax.data.ferplus import ferplus_distribution, ferplus_majority

# FER2013 label -> its FER+ vote column (neutral, happiness, surprise, sadness, anger, disgust, fear)
FER_TO_FERPLUS_COLUMN = [4, 5, 6, 1, 3, 2, 0]


def test_ferplus_distribution_drops_contempt_unknown_and_not_a_face():
    votes = np.array([
        [0, 6, 2, 0, 0, 0, 0, 0, 0, 0],  # happiness 6, surprise 2
        [4, 0, 0, 0, 2, 0, 0, 2, 1, 1],  # contempt, unknown, NF dropped: neutral 4, anger 2
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # disgust only
    ], np.int16)
    dist = ferplus_distribution(votes)
    expected = np.zeros((3, 7), np.float32)
    expected[0, 3], expected[0, 5] = 0.75, 0.25
    expected[1, 6], expected[1, 0] = 4 / 6, 2 / 6
    expected[2, 1] = 1.0
    np.testing.assert_allclose(dist, expected, rtol=1e-6)
    # the majority label is the distribution's argmax wherever there is one
    major = ferplus_majority(votes)
    assert major.tolist() == [3, 6, 1] and (dist.argmax(1) == major).all()
    with pytest.raises(ValueError, match=r"1 rows have no FER\+ vote .* \(first at index 1\)"):
        ferplus_distribution(np.array([[1] + [0] * 9, [0] * 7 + [5, 3, 2]], np.int16))


def _votes_csv(path, rows, seed=0):
    """fer2013new.csv for `rows` (their Usage): 7 votes for the label's emotion, 3 for a random other one."""
    rng = np.random.default_rng(seed)
    lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    for i, (label, _, usage) in enumerate(rows):
        votes = [0] * 10
        votes[FER_TO_FERPLUS_COLUMN[label]] = 7
        other = int(rng.choice([c for c in range(7) if c != FER_TO_FERPLUS_COLUMN[label]]))
        votes[other] = 3
        lines.append(f"{usage},fer{i:07d}.png,{','.join(map(str, votes))}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
def test_ferplus_vgg_tiny_trains_towards_the_votes(tmp_path, tfds_dir):
    from conftest import run_cli, synthetic_rows, write_csv

    rows = synthetic_rows()
    write_csv(tmp_path / "src" / "fer2013.csv", rows)
    _votes_csv(tmp_path / "src" / "fer2013new.csv", rows)
    env = {"FER2013_PATH": str(tmp_path / "src"), "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    out = tmp_path / "ferplus.msgpack"
    proc = run_cli("--experiment=ferplus_vgg:tiny", f"--workdir={tmp_path / 'run'}", "--jax_cache_dir=",
                   f"--config.export_to={out}", "--config.export_name=ferplus_tiny",
                   "--config.train.init_from=fer2013_distilled", env_extra=env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["protocol"] == "ferplus" and summary["test_report"]["n"] == 64
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["protocol"] == "ferplus" and card["vote_targets_weight"] == 1.0
    assert "FER+ majority" in card["data"] and card["initialized_from"] == "fer2013_distilled"


def test_vote_targets_refuse_other_soft_targets_and_data_without_votes(tmp_path):
    import ml_collections

    from ferjax.experiments import ferplus_vgg
    from ferjax.tasks.train_classifier import train_classifier

    rng = np.random.default_rng(0)
    split = {"image": rng.integers(0, 256, (16, 48, 48, 1)).astype(np.uint8),
             "label": rng.integers(0, 7, 16).astype(np.int32)}
    data = {"train": dict(split), "validation": dict(split), "test": dict(split)}
    config = ferplus_vgg.get_config("tiny")
    with pytest.raises(ValueError, match="has no FER\\+ votes"):
        train_classifier(config, str(tmp_path / "novotes"), data=data)
    data["train"]["ferplus_votes"] = np.full((16, 10), 1, np.int16)
    config.distill = ml_collections.ConfigDict({"teachers": "fer2013_vgg_small", "teacher_weights": "",
                                                "temperature": 1.0, "tta": "none", "weight": 0.5})
    with pytest.raises(ValueError, match="both set"):
        train_classifier(config, str(tmp_path / "both"), data=data)
