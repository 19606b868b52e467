"""Every registered network builds, runs, and trains one step; losses behave as defined."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ferjax.registry import CLASSIFIERS, DISCRIMINATORS, GENERATORS, LOSSES


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS.names() if not n.startswith("vggface")])
def test_classifier_shapes_and_one_step(name):
    model = CLASSIFIERS.create(name)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 48, 48, 1)), jnp.float32)
    v = model.init(jax.random.key(0), x, train=False)
    assert model.apply(v, x, train=False).shape == (4, 7)
    loss = LOSSES.create("cross_entropy", num_classes=7)

    def f(p):
        out, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(1)})
        return loss(out, jnp.arange(4) % 7)

    l0, g = jax.value_and_grad(f)(v["params"])
    p = optax.apply_updates(v["params"], jax.tree.map(lambda a: -0.01 * a, g))
    assert float(f(p)) < float(l0)


def test_vggface_fer_small_input_shape():
    model = CLASSIFIERS.create("vggface_fer", image_size=64)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False))
    assert set(v["params"]) == {"vggface", "fc_hidden", "fc_out"} and len(v["params"]["vggface"]) == 13
    assert v["params"]["vggface"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    assert v["params"]["fc_hidden"]["kernel"].shape == (2 * 2 * 512, 128)


def test_generator_and_discriminator():
    g = GENERATORS.create("resnet", base=8, blocks=2)
    d = DISCRIMINATORS.create("patchgan", base=8)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 48, 48, 1)), jnp.float32)
    gv = g.init(jax.random.key(0), x)
    y = g.apply(gv, x)
    assert y.shape == x.shape and float(jnp.abs(y).max()) <= 1.0
    dv = d.init(jax.random.key(0), x)
    assert d.apply(dv, y).shape == (2, 6, 6, 1)


def test_cycle_loss_is_mean_of_l1_l2_dssim():
    a = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 48, 48, 1)), jnp.float32)
    b = jnp.clip(a + 0.1, -1, 1)
    cyc = LOSSES.create("cycle_l1_l2_ssim")(a, b)
    l1 = jnp.mean(jnp.abs(a - b))
    l2 = jnp.mean((a - b) ** 2)
    dssim = LOSSES.create("ssim")(a, b)
    assert abs(float(cyc) - float((l1 + l2 + dssim) / 3)) < 1e-6
    assert float(LOSSES.create("cycle_l1_l2_ssim")(a, a)) < 1e-6
    assert 0 < float(dssim) < 1
    assert float(LOSSES.create("lsgan")(jnp.ones(3), 1.0)) == 0.0
