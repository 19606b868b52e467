"""Registry behaviour and third-party plugins loaded through entry points."""
import json
import textwrap

import pytest

from ferjax import registry
from ferjax.registry import Registry, RegistryError
from conftest import run_cli


def test_register_get_create():
    reg = Registry("widget")

    @reg.register("square")
    def square(x=2):
        """Squares x."""
        return x * x

    assert reg.get("square") is square
    assert reg.create("square", x=3) == 9
    assert reg.describe("square") == "Squares x."
    assert "square" in reg and reg.names() == ["square"]


def test_duplicate_name_raises():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_unknown_name_lists_close_matches():
    with pytest.raises(RegistryError) as e:
        registry.CLASSIFIERS.get("vgg_smal")
    assert "Did you mean: vgg_small" in str(e.value)
    assert "vggface_fer" in str(e.value)  # the full list of registered names follows


def test_builtin_kinds_are_populated():
    assert {"vgg_small", "vgg13", "vggface", "vggface_fer", "mini_xception"} <= set(registry.CLASSIFIERS.names())
    assert {"cross_entropy", "cycle_l1_l2_ssim", "ssim", "lsgan"} <= set(registry.LOSSES.names())
    assert "fer2013" in registry.DATASETS
    assert {"train_classifier", "evaluate"} <= set(registry.TASKS.names())
    for kind in ("classifier", "generator", "discriminator", "loss", "detector", "dataset"):
        assert kind in registry.ALL


def test_list_command_shows_everything():
    out = run_cli("--list").stdout
    for name in ("fer2013_vgg", "evaluate", "vgg_small", "cross_entropy", "fer2013"):
        assert f"`{name}`" in out


def _write_plugin(root):
    """A plugin distribution on a path: a classifier, and an experiment that trains it."""
    pkg = root / "fer_plugin_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import flax.linen as nn
        import jax.numpy as jnp
        from ferjax.registry import CLASSIFIERS

        class Linear(nn.Module):
            num_classes: int = 7
            @nn.compact
            def __call__(self, x, train=False):
                x = x.reshape(x.shape[0], -1) / 255.0
                return nn.Dense(self.num_classes)(x)

        @CLASSIFIERS.register("plugin_linear")
        def plugin_linear(num_classes=7):
            """A linear classifier from a third-party plugin."""
            return Linear(num_classes)
    '''))
    (pkg / "experiment.py").write_text(textwrap.dedent('''
        """Plugin experiment training the plugin's classifier."""
        from ferjax.experiments import fer2013_vgg

        def get_config(variant=None):
            c = fer2013_vgg.get_config("tiny")
            c.name = "plugin_exp"
            c.classifier = "plugin_linear"  # takes num_classes only; classifier_kwargs has dropout
            c.train.epochs = 1
            return c
    '''))
    dist = root / "fer_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fer-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[ferjax.plugins]\ndemo = fer_plugin_demo\n\n"
        "[ferjax.experiments]\nplugin_exp = fer_plugin_demo.experiment\n")


def test_entry_point_plugin_trains_in_experiment(tmp_path, synthetic_csv, tfds_dir):
    _write_plugin(tmp_path)
    env = {"PYTHONPATH": str(tmp_path), "FER2013_PATH": str(synthetic_csv),
           "TFDS_DATA_DIR": str(tfds_dir)}
    listed = run_cli("--list", env_extra=env).stdout
    assert "`plugin_linear`" in listed and "`plugin_exp`" in listed
    proc = run_cli("--experiment=plugin_exp", f"--workdir={tmp_path / 'run'}", env_extra=env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["classifier"] == "plugin_linear"
    assert summary["test_report"]["n"] == 64


def test_docs_show_current_listing():
    """docs/experiments.md's tables are the output of `--list` (regenerate them when components change)."""
    from conftest import REPO

    listing = run_cli("--list").stdout.strip()
    assert listing in (REPO / "docs" / "experiments.md").read_text(), \
        "docs/experiments.md is stale: paste the output of `ferjax list` into it"


def test_failing_builtin_import_fails_every_lookup(monkeypatch):
    """All or nothing: after one failing import, every lookup names the module and the error."""
    monkeypatch.setattr(registry, "_state", "unloaded")
    monkeypatch.setattr(registry, "_load_error", None)
    monkeypatch.setattr(registry, "BUILTIN_MODULES",
                        registry.BUILTIN_MODULES + ("ferjax.components.no_such_module",))
    for _ in range(2):
        with pytest.raises(registry.ComponentLoadError,
                           match=r"built-in module 'ferjax.components.no_such_module' failed with "
                                 r"ModuleNotFoundError: No module named 'ferjax.components.no_such"):
            registry.CLASSIFIERS.get("vgg_small")
    with pytest.raises(registry.ComponentLoadError, match="no_such_module"):
        registry.LOSSES.names()


def test_failing_plugin_fails_every_lookup(tmp_path):
    """A plugin whose import raises: the CLI and every later lookup name the plugin and its error."""
    (tmp_path / "broken_plugin.py").write_text(
        "from ferjax.registry import CLASSIFIERS\n"
        "CLASSIFIERS.register('half_registered')(lambda: None)\n"
        "raise RuntimeError('boom in plugin')\n")
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ferjax.plugins]\nbroken = broken_plugin\n")
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cli("--experiment=fer2013_vgg", "--print_config", env_extra=env, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("plugin 'broken' (module 'broken_plugin') failed with RuntimeError: boom in plugin"
            in proc.stderr)
    code = ("from ferjax import registry\n"
            "for kind in ('classifier', 'classifier', 'loss'):\n"
            "    try:\n"
            "        registry.ALL[kind].names()\n"
            "    except registry.ComponentLoadError as e:\n"
            "        print('ERR', e)\n"
            "    else:\n"
            "        print('OK')\n")
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120).stdout.splitlines()
    assert len(out) == 3 and all(line.startswith("ERR") and "boom in plugin" in line for line in out), out


def test_create_accepting_passes_only_accepted_kwargs():
    reg = Registry("widget")

    @reg.register("minimal")
    def minimal(num_classes=7):
        return num_classes

    @reg.register("open")
    def open_(**kw):
        return kw

    assert reg.accepted("minimal") == {"num_classes"}
    assert reg.create_accepting("minimal", {"num_classes": 3, "dropout": 0.4}) == 3
    assert reg.accepted("open") is None
    assert reg.create_accepting("open", {"dropout": 0.4}) == {"dropout": 0.4}
