"""Model files found in the user's directories ($FERJAX_MODELS_DIR, ~/.cache/ferjax/models, the
config's `models_dir`) are checked against their pinned sha256 like the shipped ones: a file with a
pinned name and other bytes took precedence over the shipped YuNet unchecked."""
from __future__ import annotations

import os

import pytest

from ferjax import atomic
from ferjax.atomic import file_sha256
from ferjax.realtime import models


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty user directories: $FERJAX_MODELS_DIR, the default cache and a config `models_dir`."""
    env, cache, config = tmp_path / "env", tmp_path / "cache", tmp_path / "config"
    for d in (env, cache, config):
        d.mkdir()
    monkeypatch.setenv(models.ENV_VAR, str(env))
    monkeypatch.setattr(models, "DEFAULT_DIR", cache)
    return {"env": env, "cache": cache, "config": config}


def _shipped() -> bytes:
    return (models.PACKAGED_DIR / models.YUNET.name).read_bytes()


@pytest.mark.parametrize("where, name", [
    ("env", models.YUNET.name), ("cache", models.YUNET.name), ("config", models.YUNET.name),
    ("env", f"detectors/{models.YUNET.name}"), ("cache", models.YUNET.aliases[0]),
])
def test_a_pinned_name_with_other_bytes_is_refused_naming_both_hashes(dirs, where, name):
    path = dirs[where] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not yunet" * 100)
    wrong = file_sha256(path)
    with pytest.raises(OSError) as e:  # before: the wrong file was returned
        models.find(models.YUNET, dirs["config"])
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and wrong in msg and models.YUNET.sha256 in msg
    assert isinstance(e.value, models.ModelFileError) and isinstance(e.value, ValueError)  # one-line in the CLIs
    with pytest.raises(OSError, match=wrong):
        models.locate(models.YUNET, dirs["config"])


def test_a_pinned_file_with_its_bytes_takes_precedence(dirs):
    (dirs["env"] / models.YUNET.name).write_bytes(_shipped())
    assert models.find(models.YUNET) == dirs["env"] / models.YUNET.name
    assert models.find(models.SSD_CAFFE_PROTO) is None  # nothing there, nothing shipped
    (dirs["cache"] / models.SSD_CAFFE_PROTO.name).write_text("any text")  # no sha256 pinned: accepted
    assert models.find(models.SSD_CAFFE_PROTO) == dirs["cache"] / models.SSD_CAFFE_PROTO.name


def test_verification_is_cached_per_path_size_and_mtime(dirs):
    path = dirs["env"] / models.YUNET.name
    path.write_bytes(_shipped())
    for _ in range(50):
        models.find(models.YUNET)
    keys = [k for k in atomic._digests if k[0] == str(path.resolve())]
    assert len(keys) == 1  # hashed once for 50 lookups
    data = bytearray(_shipped())
    data[100] ^= 1  # same size, new bytes, a later mtime: hashed again and refused
    path.write_bytes(bytes(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(OSError, match=models.YUNET.sha256):
        models.find(models.YUNET)


def test_detector_refuses_a_wrong_yunet_in_the_models_dir(dirs):
    from ferjax.registry import DETECTORS

    (dirs["config"] / models.YUNET.name).write_bytes(_shipped()[:-1])
    with pytest.raises(OSError, match=f"is pinned to {models.YUNET.sha256}"):
        DETECTORS.create("yunet", models_dir=str(dirs["config"]))
