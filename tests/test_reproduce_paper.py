"""reproduce_paper: the paper's pipeline end to end on synthetic FER2013 (`:tiny`), its stage cache
(a rerun redoes nothing; a changed stage redoes itself and what reads it), the three protocols,
PrivateTest kept out of every stage, the report, `evaluate --config.protocol=paper`, and the
`:cpu` and `:paper` profiles.

The runs train a one-convolution classifier that a plugin registers in the command's process (a
vgg_small step takes tens of seconds to compile on the 2-core VM, and the pipeline, not the
classifier, is under test here); the :tiny profile itself trains vgg_small."""
from __future__ import annotations

import json
import re
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import run_cli, synthetic_rows, write_csv
from ferjax import config as cfg_lib
from ferjax.data import paper_split
from ferjax.registry import GENERATORS, TASKS
from ferjax.train.generator_export import GeneratorCheckpointError, export_generator

FERPLUS_COLUMN = (4, 5, 6, 1, 3, 2, 0)  # FER2013 class -> its fer2013new.csv vote column
STAGES = ("pool", "curate", "relabel", "generate", "split a", "split b", "split c", "split d",
          "train a seed 0", "train b seed 0", "train c seed 0", "train d seed 0")


def _synthetic(folder):
    """A FER2013 CSV (140 Training, 56 PublicTest, 56 PrivateTest rows) with few disgust faces and
    some blank images, and FER+ votes beside it (8 for the row's class, 2 for neutral)."""
    rows = []
    for i, (label, image, usage) in enumerate(synthetic_rows((140, 56, 56), seed=3)):
        if label == 1 and i % 3:
            label = 6  # disgust rare, as in FER2013
        if usage != "PrivateTest" and i % 37 == 5:
            image = np.full_like(image, 128)  # blank: the `blank` signal removes it
        rows.append((label, image, usage))
    write_csv(folder / "fer2013.csv", rows)
    votes = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    for i, (label, _, usage) in enumerate(rows):
        v = [0] * 10
        v[FERPLUS_COLUMN[label]] += 8
        v[0] += 2
        votes.append(f"{usage},fer{i:07d}.png," + ",".join(map(str, v)))
    (folder / "fer2013new.csv").write_text("\n".join(votes) + "\n")
    return rows


PLUGIN = textwrap.dedent('''
    import flax.linen as nn
    import jax.numpy as jnp
    from ferjax.registry import CLASSIFIERS


    class OneConv(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), strides=(4, 4))((jnp.asarray(x, jnp.float32) - 128.0) / 64.0)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            return nn.Dense(7)(x.mean(axis=(1, 2)))


    @CLASSIFIERS.register("one_conv")
    def one_conv(dropout=0.0, width=1.0):
        """One strided convolution, batch norm and a dense layer (tests of pipelines)."""
        return OneConv()
''')
RECIPE = ("train.epochs=1", "train.batch_size=16", "train.schedule=constant", "train.warmup_epochs=0",
          "train.checkpoint_every_steps=1000", "classifier=one_conv")


def _random_generator() -> dict:
    """Random variables of a tiny `resnet` generator, from its shapes alone (initialising it op by op
    would compile every initializer: half a minute on the 2-core VM)."""
    model = GENERATORS.create("resnet", base=4, blocks=1)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False))
    rng = np.random.default_rng(0)

    def leaf(path, s):
        name = jax.tree_util.keystr(path[-1:])
        if "var" in name:
            return np.ones(s.shape, s.dtype)
        return np.zeros(s.shape, s.dtype) if "mean" in name or "bias" in name else \
            (0.2 * rng.standard_normal(s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tfds_dir):
    """reproduce_paper:tiny run once from the command line, with a tiny random generator."""
    root = tmp_path_factory.mktemp("reproduce")
    (root / "data").mkdir()
    rows = _synthetic(root / "data")
    plugin = root / "plugin"
    (plugin / "one_conv_plugin").mkdir(parents=True)
    (plugin / "one_conv_plugin" / "__init__.py").write_text(PLUGIN)
    (plugin / "one_conv_plugin-0.1.dist-info").mkdir()
    (plugin / "one_conv_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: one-conv-plugin\nVersion: 0.1\n")
    (plugin / "one_conv_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[ferjax.plugins]\none_conv = one_conv_plugin\n")
    generator = export_generator(root / "generator", "resnet", {"base": 4, "blocks": 1}, _random_generator(),
                                 "neutral", "disgust", step=1)
    wd = root / "run"
    args = ["--experiment=reproduce_paper:tiny", f"--workdir={wd}", f"--config.generator_checkpoint={generator}",
            f"--config.data.fer2013_path={root / 'data'}", f"--config.data.tfds_data_dir={tfds_dir}",
            f"--config.recipe_overrides={RECIPE!r}", f"--config.kfold.recipe_overrides={' '.join(RECIPE)}"]
    env = {"PYTHONPATH": str(plugin)}
    proc = run_cli(*args, env_extra=env)
    return {"args": args, "env": env, "wd": wd, "proc": proc, "rows": rows,
            "summary": json.loads(proc.stdout.strip().splitlines()[-1])}


def _stage_lines(stdout: str) -> dict[str, str]:
    """stage name -> its last status word (running, cached, training) in a run's output."""
    out = {}
    for m in re.finditer(r"^\[\d+/\d+\] (.+?): (running|cached|training)", stdout, re.M):
        out[m.group(1)] = m.group(2)
    return out


def _output(wd, stage: str) -> str:
    """The output digest the run's (only) folder of `stage` recorded."""
    (made,) = wd.glob(f"stages/{stage}/*/stage.json")
    return json.loads(made.read_text())["output_digest"]


def test_tiny_runs_every_stage_and_reports_three_protocols(tiny):
    wd, summary = tiny["wd"], tiny["summary"]
    status = _stage_lines(tiny["proc"].stdout)
    assert status == {**{s: "running" for s in STAGES if not s.startswith("train")},
                      **{s: "training" for s in STAGES if s.startswith("train")},
                      # where the relabels change no label, row c's data are row b's: so is its classifier
                      "train c seed 0": status["train c seed 0"]}
    assert (status["train c seed 0"] == "cached") == (_output(wd, "split_b") == _output(wd, "split_c"))
    assert [s["stage"] for s in summary["stages"]] == list(STAGES)
    assert all(s["seconds"] >= 0 and s["attempts"] == 1 for s in summary["stages"])
    assert set(summary["accuracy"]) == {"paper", "original", "ferplus"}
    assert all(set(v) == set("abcd") for v in summary["accuracy"].values())
    for name in ("decomposition.png", "confusion_paper.png", "confusion_original.png", "confusion_ferplus.png",
                 "generated_neutral_to_disgust.png"):
        assert (wd / name).stat().st_size > 1000, name
    md = (wd / "report.md").read_text()
    for heading in ("## Stages", "## Table I of the paper, with ferjax's rows", "### Protocol `paper`",
                    "### Protocol `original`", "### Protocol `ferplus`", "## What the paper's 20% holds",
                    "## Per-class gains", "## Conclusion"):
        assert heading in md, heading
    assert "| Our approach (the paper) | 91.76% |" in md and "not comparable" in md
    assert "| disgust | +71 |" in md
    total = sum(s["seconds"] for s in summary["stages"]) / 3600
    assert f"All stages: {total:.2f} h of wall time when made (interrupted attempts included)." in md
    report = json.loads((wd / "report.json").read_text())
    d = report["scores"]["paper"]["d"]
    comp = d["composition"]
    assert comp["test"] == d["n_test"] == report["sizes"]["d"]["test"] and comp["generated"] > 0
    assert d["subsets"]["generated"]["n"] == comp["generated"]
    assert "diff_ci95" in report["scores"]["original"]["b"]["accuracy"]
    assert "ci95" in report["scores"]["paper"]["a"]["accuracy"]
    conclusion = md.split("## Conclusion")[1]
    assert "Under the paper's own protocol (`paper`), row (d) scores" in conclusion
    # where 91.76% could come from: the CNNs' labels against the rows' own, the generated share
    gap = report["gap"]
    (oof,) = wd.glob("relabel/folds/*/oof.npz")
    with np.load(oof) as z:
        assert gap["label_source"]["images"] == len(z["row"])
        assert gap["label_source"]["disagree"] == int((z["probs"].argmax(1) != _given(tiny["rows"], z["row"])).sum())
    assert set(gap["label_source"]["rows"]) == set("abcd")
    real_test = ~paper_split.load(wd, "c")["test"]["generated"]
    assert gap["label_source"]["rows"]["c"]["n"] == real_test.sum()  # every real image of row c was a CNN's
    g = gap["generated"]
    assert g["row"] == "d" and g["share"] == comp["generated"] / comp["test"]
    assert g["generated_accuracy"] == d["subsets"]["generated"]["accuracy"]
    test_d = paper_split.load(wd, "d")["test"]
    real_disgust = (test_d["label"] == 1) & ~test_d["generated"]
    assert g["disgust"]["real"]["n"] == real_disgust.sum()
    assert g["disgust"]["generated"]["n"] == ((test_d["label"] == 1) & test_d["generated"]).sum()
    share = g["balanced_to_largest"]["share"]
    assert g["balanced_extrapolation"] == pytest.approx(share * g["generated_accuracy"] + (1 - share) * g["real_accuracy"])
    assert "(1 seed) | `paper`" in md or report["scores"]["paper"]["b"]["seeds"] > 1
    assert "## Where the paper's figure could come from" in md and "the CNNs' labels |" in md
    for row in "bcd":  # each row's jump over (a), in parts that sum to it, from (a)'s and the row's accuracies
        j = gap["jump"][row]
        assert j["accuracy"][0] == pytest.approx(report["scores"]["paper"]["a"]["accuracy"]["mean"])
        assert j["accuracy"][-1] == pytest.approx(report["scores"]["paper"][row]["accuracy"]["mean"])
        assert sum(j[k] for k in ("kept", "labels", "training", "generated")) == pytest.approx(j["jump"])
    assert gap["jump"]["b"]["labels"] == 0  # the removals change no label
    test_a = paper_split.load(wd, "a")["test"]
    assert gap["jump"]["d"]["shared"] == np.isin(test_d["row"][~test_d["generated"]], test_a["row"]).sum()
    assert "| (d) | " + f"{gap['jump']['d']['shared']:,} of {comp['test']:,} |" in md
    classes = md.split("Images per class in each row's modified set")[1].split("##")[0]
    (line_d,) = [line for line in classes.splitlines() if line.startswith("| (d) |")]
    members = sum(report["sizes"]["d"][p] for p in ("train", "selection", "test"))
    assert f"({_generated_in_row_d(wd)} generated)" in line_d and line_d.endswith(f" | {members:,} |")


def _generated_in_row_d(wd) -> str:
    """The generated images of row d's modified set, as the report writes the count."""
    parts = paper_split.load(wd, "d")
    return f"{sum(int(p['generated'].sum()) for p in parts.values()):,}"


def _given(rows, csv_rows):
    return np.array([rows[int(r)][0] for r in csv_rows])


def test_the_generated_share_that_would_reach_the_papers_figure():
    from ferjax.tasks.studies.reproduce_report import balanced_to_largest, generated_share_needed

    def subsets(g, r):
        return {"generated": {"n": 10, "accuracy": g}, "real": {"n": 90, "accuracy": r}}

    assert generated_share_needed(subsets(1.0, 0.7)) == pytest.approx((0.9176 - 0.7) / 0.3)
    assert generated_share_needed(subsets(0.9, 0.7)) is None  # g below the target: no share reaches it
    assert generated_share_needed(subsets(1.0, 0.95)) is None  # already above it
    big = balanced_to_largest(np.array([0] * 5 + [1] * 2 + [3] * 1))  # counts 5, 2, 0, 1, 0, 0, 0
    assert big == {"largest": 5, "generated": 3 + 5 + 4 + 5 + 5 + 5, "share": 27 / 35}


def test_a_rows_paper_jump_splits_into_parts_that_sum_to_it():
    """(a)'s classifier on the images (c) keeps, then with (c)'s labels, then (c)'s classifier, then (c)'s
    whole test part: row 12 relabelled 2 -> 5, row 14 outside (a)'s test part, one generated image."""
    from ferjax.tasks.studies.reproduce_report import jump_parts

    def part(rows, label, original, generated):
        return {"row": np.array(rows), "label": np.array(label), "original_label": np.array(original),
                "generated": np.array(generated)}

    tests = {"a": part([13, 10, 11, 12], [3, 0, 1, 2], [3, 0, 1, 2], [False] * 4),
             "c": part([11, 12, 14, -1], [1, 5, 2, 6], [1, 2, 2, 6], [False, False, False, True])}
    preds = {"a": np.array([[0, 0, 1, 5]]), "c": np.array([[1, 5, 0, 6]])}
    (c,) = jump_parts(preds, tests, {"a": "a", "c": "c"}, ["a", "c"]).values()
    assert c["shared"] == 2 and c["test"] == 4
    assert c["accuracy"] == pytest.approx([0.5, 0.5, 1.0, 1.0, 0.75])
    assert (c["kept"], c["labels"], c["training"], c["generated"]) == pytest.approx((0.0, 0.5, 0.0, -0.25))
    assert c["jump"] == pytest.approx(0.25)


def test_private_test_enters_no_stage(tiny):
    """PrivateTest rows are in no pool, relabel fold or split; row d's test part holds generated images."""
    wd = tiny["wd"]
    private = {i for i, (_, _, usage) in enumerate(tiny["rows"]) if usage == "PrivateTest"}
    (pool_file,) = wd.glob("stages/pool/*/pool.npz")
    with np.load(pool_file) as z:
        pool_rows = set(z["row"].tolist())
    assert pool_rows == set(range(len(tiny["rows"]))) - private
    for oof in wd.glob("relabel/folds/*/oof.npz"):
        with np.load(oof) as z:
            assert set(z["row"].tolist()) <= pool_rows
    for row in paper_split.ROWS:
        parts = paper_split.load(wd, row)
        seen = {int(r) for p in parts.values() for r in p["row"] if r >= 0}
        assert seen <= pool_rows and not seen & private
        assert sum(len(p["label"]) for p in parts.values()) > 0
    assert paper_split.load(wd, "d")["test"]["generated"].any()


@pytest.mark.slow  # 23 s on the 2-core VM: in the slow set (pytest -m slow), which CI runs too
def test_rerun_redoes_nothing_and_a_changed_stage_redoes_only_what_reads_it(tiny):
    again = run_cli(*tiny["args"], env_extra=tiny["env"]).stdout
    assert _stage_lines(again) == {s: "cached" for s in STAGES}, again
    (made,) = tiny["wd"].glob("stages/generate/*/stage.json")
    (pair,) = json.loads(made.read_text())["pairs"]
    changed = run_cli(*tiny["args"], f"--config.generate.target_count={pair['target_count'] + 2}",
                      env_extra=tiny["env"])
    status = _stage_lines(changed.stdout)
    assert {s: status[s] for s in ("generate", "split d", "train d seed 0")} == {
        "generate": "running", "split d": "running", "train d seed 0": "training"}
    assert all(status[s] == "cached" for s in STAGES if s not in ("generate", "split d", "train d seed 0"))


def test_evaluate_scores_a_shipped_model_on_a_runs_twenty_percent(tiny, tmp_path):
    from ferjax.tasks.evaluate import evaluate_pretrained

    config = cfg_lib.build("evaluate", ["protocol=paper", f"paper_run={tiny['wd']}", "paper_row=b",
                                        "model=fer2013_vgg_small"])
    report = evaluate_pretrained(config, str(tmp_path))
    assert report["protocol"] == "paper" and report["n"] == len(paper_split.load(tiny["wd"], "b")["test"]["label"])
    assert (tmp_path / "confusion_test.png").is_file()
    with pytest.raises(cfg_lib.ConfigError, match="config.paper_run is empty"):
        cfg_lib.build("evaluate", ["protocol=paper"])
    with pytest.raises(paper_split.PaperSplitError, match="holds no paper_splits.json"):
        evaluate_pretrained(cfg_lib.build("evaluate", ["protocol=paper", f"paper_run={tmp_path}"]), str(tmp_path))


def test_cpu_and_paper_profiles_build():
    cpu, paper = cfg_lib.build("reproduce_paper:cpu"), cfg_lib.build("reproduce_paper:paper")
    curate = cfg_lib.build("curate_fer2013:cpu")
    assert cpu.rows == "a,b,c,d" and paper.rows == "a,b,c,d,e"
    assert (cpu.seeds, cpu.seeds_b_c) == (3, 1)
    assert cpu.recipe == "fer2013_vgg:quick" and cpu.recipe_overrides == ("train.epochs=12", "train.warmup_epochs=0.5")
    assert paper.paper_recipe == "vggface_fer2013:paper"
    assert cpu.kfold.to_dict() == curate.kfold.to_dict() and cpu.relabel.to_dict() == curate.relabel.to_dict()
    for name in cpu.curation_signals.split(","):  # the paper's removals at curate_fer2013's thresholds
        assert cpu.curation_signal_args[name].to_dict() == curate.curation_signal_args[name].to_dict()
    assert "duplicates" not in cpu.curation_signals
    assert cfg_lib.build("reproduce_paper").name == "reproduce_paper:cpu"
    with pytest.raises(cfg_lib.ConfigError, match="config.rows='a,x'"):
        cfg_lib.build("reproduce_paper:cpu", ["rows=a,x"])


def test_paper_profile_and_missing_generator_are_refused_before_any_work(tmp_path, monkeypatch):
    """Row e without a GPU, and a generator name that is not registered, stop before data is read."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nowhere = [f"data.fer2013_path={tmp_path / 'absent'}"]
    with pytest.raises(ValueError, match="row e .* needs a GPU or TPU"):
        TASKS.get("reproduce_paper")(cfg_lib.build("reproduce_paper:paper", nowhere), str(tmp_path / "w"))
    with pytest.raises(GeneratorCheckpointError, match="generator_checkpoint='no_such_generator' is "
                                                       "neither a folder nor a registered pretrained generator"):
        config = cfg_lib.build("reproduce_paper:cpu", [*nowhere, "generator_checkpoint=no_such_generator"])
        TASKS.get("reproduce_paper")(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_random_parts_are_exact_and_nested():
    """The paper's split: exact fractions; a member keeps its part when others join the set."""
    keys = np.random.default_rng(0).random(1000)
    part = paper_split.random_parts(keys, 0.2, 0.05)
    assert [(part == c).sum() for c in range(3)] == [760, 40, 200]
    subset = np.arange(0, 1000, 2)
    sub = paper_split.random_parts(keys[subset], 0.2, 0.05)
    assert (sub == 2).sum() == 100
    # the smallest keys are test in both: every test member of the subset is test in the full set
    # up to the boundary, which moves with the set's size
    assert np.mean(part[subset][sub == 2] == 2) > 0.9
    members = {"source": np.zeros(3, np.int8), "index": np.arange(3), "label": np.arange(3),
               "original_label": np.arange(3), "relabeled": np.zeros(3, bool), "part": np.int8([0, 1, 2]),
               "twin": np.zeros(3, bool)}
    pool = {"image": np.zeros((3, 48, 48, 1), np.uint8), "row": np.array([10, 11, 12])}
    parts = paper_split.assemble(members, pool, None)
    assert [parts[p]["row"].tolist() for p in paper_split.PARTS] == [[10], [11], [12]]
    with pytest.raises(paper_split.PaperSplitError, match="generated-image file lacks"):
        paper_split.assemble({**members, "source": np.int8([0, 0, 1])}, pool, None)
    assert isinstance(cfg_lib.build("reproduce_paper:tiny").paper_split, ml_collections.ConfigDict)
