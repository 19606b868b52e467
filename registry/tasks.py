"""Tasks: what an experiment runs. Each is `(config, workdir) -> summary dict`; this table maps
each name to its implementation in `ferjax.tasks` (imported when the task runs)."""
from ferjax.registry import TASKS


@TASKS.register("train_classifier")
def train_classifier(config, workdir):
    """Train a classifier, select on validation, report the test split, optionally export weights."""
    from ferjax.tasks.train_classifier import train_classifier as run

    return run(config, workdir)


@TASKS.register("evaluate")
def evaluate(config, workdir):
    """Evaluate a pretrained classifier under a protocol; prints its metrics."""
    from ferjax.tasks.evaluate import evaluate_pretrained

    return evaluate_pretrained(config, workdir)


@TASKS.register("cyclegan_train")
def cyclegan_train(config, workdir):
    """Train a CycleGAN between two FER2013 classes; sample grids per epoch; export the generator."""
    from ferjax.tasks.cyclegan import cyclegan_train as run

    return run(config, workdir)


@TASKS.register("balance")
def balance(config, workdir):
    """Translate one Training class into another with a generator and write a derived dataset."""
    from ferjax.tasks.balance import balance as run

    return run(config, workdir)


@TASKS.register("compare_balancing")
def compare_balancing(config, workdir):
    """Train one recipe as is, CycleGAN-balanced, oversampled and class-weighted, several seeds each."""
    from ferjax.tasks.studies.balancing import compare_balancing as run

    return run(config, workdir)


@TASKS.register("curate")
def curate(config, workdir):
    """Curate a dataset's Training split (removal signals, confident-learning relabels) into a derived dataset."""
    from ferjax.tasks.curate import curate as run

    return run(config, workdir)


@TASKS.register("compare_curation")
def compare_curation(config, workdir):
    """Train one recipe on original and curated Training data, several seeds each; score on PrivateTest."""
    from ferjax.tasks.studies.curation import compare_curation as run

    return run(config, workdir)


@TASKS.register("realtime")
def realtime(config, workdir):
    """Expression recognition on a webcam, video file, stream or image folder."""
    from ferjax.tasks.realtime import realtime as run

    return run(config, workdir)


@TASKS.register("realtime_bench")
def realtime_bench(config, workdir):
    """Table II-style FPS benchmark: every detector over the configured videos."""
    from ferjax.tasks.realtime import realtime_bench as run

    return run(config, workdir)


@TASKS.register("reproduce_paper")
def reproduce_paper(config, workdir):
    """The paper's pipeline end to end (curate, relabel, generate, 80/20 split, train), under three protocols."""
    from ferjax.tasks.studies.reproduce import reproduce_paper as run

    return run(config, workdir)
