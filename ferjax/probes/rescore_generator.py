"""Re-score a trained CycleGAN generator with another experiment profile's quality settings.

    FER2013_PATH=data/fer2013 python -m ferjax.probes.rescore_generator --run=RUN_DIR \\
        [--experiment=cyclegan_neutral2disgust:cpu] [--out=RUN_DIR/quality_rescored.json] \\
        [--source_detail_sigma=S]

RUN_DIR is a `cyclegan_*` workdir (its `generator/` and `report.json`). The judge, feature layer
and sample sizes come from `--experiment`'s `quality` block, so generators trained under earlier
profiles are compared on one classifier; `--source_detail_sigma` scores the images that
`balance_fer2013 --config.source_detail_sigma=S` adds (G(x)'s coarse content, x's fine detail).
Prints the report as one JSON line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ferjax import config as cfg_lib
from ferjax.data.fer2013 import class_index
from ferjax.registry import DATASETS


def rescore(run: Path, experiment: str, source_detail_sigma: float = 0.0) -> dict:
    from ferjax import pretrained
    from ferjax.tasks.cyclegan import generator_quality
    from ferjax.train.generator_export import load_generator

    c = cfg_lib.build(experiment)
    g = load_generator(run / "generator")
    src, tgt = class_index(g.meta["source_class"]), class_index(g.meta["target_class"])
    report = json.loads((run / "report.json").read_text())
    splits = DATASETS.create(c.dataset, cfg=c.data, protocol="original")
    train = splits["train"]
    return generator_quality(c, g.variables, g.model, train["image"][train["label"] == src],
                             train["image"][train["label"] == tgt], splits.get("test"), tgt,
                             {k: report[k] for k in ("cycle_ssim", "identity_ssim")},
                             pretrained.load(c.quality.model)[:2], guide=None,
                             source_detail_sigma=source_detail_sigma)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ferjax.probes.rescore_generator",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a cyclegan_* workdir")
    p.add_argument("--experiment", default="cyclegan_neutral2disgust:cpu",
                   help="whose quality settings to use (default: %(default)s)")
    p.add_argument("--source_detail_sigma", type=float, default=0.0,
                   help="> 0: score G(x)'s blur at this sigma (px) + x's fine detail, as balance_fer2013 adds them")
    p.add_argument("--out", type=Path, help="report file (default: RUN/quality_rescored.json)")
    args = p.parse_args(argv)
    if not (args.run / "generator").is_dir() or not (args.run / "report.json").is_file():
        p.error(f"--run={args.run}: expected a cyclegan workdir with generator/ and report.json")
    if args.source_detail_sigma < 0:
        p.error(f"--source_detail_sigma={args.source_detail_sigma}: expected a blur in pixels >= 0 (0: off)")
    quality = rescore(args.run, args.experiment, args.source_detail_sigma)
    (args.out or args.run / "quality_rescored.json").write_text(json.dumps(quality, indent=2))
    print(json.dumps(quality))


if __name__ == "__main__":
    main()
