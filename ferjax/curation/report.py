"""The curation report: Markdown with the counts and FER+ figures, and PNG grids of examples."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# FER+ vote columns (fer2013new.csv order), abbreviated under each image
VOTE_NAMES = ("neu", "hap", "sur", "sad", "ang", "dis", "fea", "con", "unk", "NF")


def votes_text(votes: np.ndarray | None) -> str:
    """'FER+ sad 6, neu 3, NF 1' (non-zero columns, most votes first), or '' without votes."""
    if votes is None or np.asarray(votes).min() < 0:
        return ""
    order = np.argsort(-np.asarray(votes), kind="stable")
    return "FER+ " + ", ".join(f"{VOTE_NAMES[i]} {int(votes[i])}" for i in order if votes[i] > 0)


def example_grid(images: np.ndarray, captions: Sequence[str], path: str | Path, title: str,
                 columns: int = 8) -> Path | None:
    """A PNG of up to len(images) 48x48 grey images, each with its (multi-line) caption; None
    when there is nothing to show."""
    if len(images) == 0:
        return None
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 2.0), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(np.asarray(image)[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def markdown(summary: dict, grids: dict[str, str], command: str) -> str:
    """The report's Markdown from the task's summary (see ferjax.tasks.curate)."""
    lines = [f"# FER2013 curation: {summary['experiment']}", "", f"Command: `{command}`", "",
             f"Base: {summary['base']}; training data written: `data=curated` at `{summary['output']}`. "
             "Only Training rows are removed or relabeled; PublicTest and PrivateTest are untouched.", "",
             "## Actions", "", "| action | rows |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in summary["actions"].items()]
    lines += ["", "## Signals (Training rows flagged)", "", "| signal | group | flagged |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {s['group']} | {s['flagged']} |" for name, s in summary["signals"].items()]
    dup = summary["signals"].get("duplicates", {}).get("info")
    if dup:
        lines += ["", "Duplicates (all splits): " + ", ".join(f"{k} {v}" for k, v in dup.items())]
    rel = summary.get("relabeling")
    if rel:
        lines += ["", "## Relabeling (confident learning on out-of-fold probabilities)", "",
                  f"Folds: {rel['folds']}, recipe `{rel['recipe']}`, out-of-fold accuracy against the "
                  f"original labels {_pct(rel.get('oof_accuracy'))}; label issues {rel['issues']}: "
                  f"relabeled {rel['relabeled']}, removed (no confident class) {rel['removed']}, "
                  f"kept (no confident class) {rel.get('kept', 0)}. A class is confident when its "
                  f"probability reaches its per-class threshold and the floor "
                  f"`relabel.min_prob` = {rel.get('min_prob', 0.0)}; issues without one: "
                  f"`relabel.unconfident` = {rel.get('unconfident', 'remove')}."]
    sc = summary.get("ferplus", {})
    lines += ["", "## Scored against FER+ (never read by curation)", ""]
    if sc.get("skipped", True):
        lines.append(f"Skipped: {sc.get('reason', 'not run')}.")
    else:
        lines += [f"Human not-a-face set: {sc['ferplus_not_a_face']} Training rows (NF majority).", "",
                  "| removal | flagged | true positives | precision | recall |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['flagged']} | {v['true_positives']} | {_pct(v['precision'])} | "
                  f"{_pct(v['recall'])} |" for k, v in sc["removal"].items()]
        r = sc["relabel"]
        lines += ["", f"Agreement with the FER+ majority on the fixed set of {r['fixed_rows']} Training rows "
                  f"(removed rows keep their original label): original {_pct(r['original_agreement'])}, "
                  f"curated {_pct(r['curated_agreement'])}" + "".join(
                      f"; {k} CSV rows ({v['fixed_rows']}): {_pct(v['original_agreement'])} -> "
                      f"{_pct(v['curated_agreement'])}" for k, v in r.get("by_row_parity", {}).items()) + ".",
                  f"On the {r['relabeled_rows_with_majority']} relabeled rows with a FER+ majority: old label "
                  f"{_pct(r['relabeled_old_agreement'])}, new label {_pct(r['relabeled_new_agreement'])}.", "",
                  "Old label (rows) -> new label (columns), relabeled Training rows:", ""]
        classes = sc["old_to_new"]["classes"]
        lines += ["| old \\ new | " + " | ".join(classes) + " |", "| --- " * (len(classes) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                  for c, row in zip(classes, sc["old_to_new"]["counts"])]
    if grids:
        lines += ["", "## Examples", ""]
        lines += [f"![{name}]({Path(p).name})" for name, p in grids.items()]
    lines += ["", "## Summary (JSON)", "", "```json", json.dumps(summary, indent=1, default=str), "```", ""]
    return "\n".join(lines)
