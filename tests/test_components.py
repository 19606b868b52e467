"""Component details that tests/test_all_components.py (every registered component's contract) does not cover."""
import jax
import jax.numpy as jnp

from ferjax.registry import CLASSIFIERS


def test_vggface_fer_small_input_shape():
    model = CLASSIFIERS.create("vggface_fer", image_size=64)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False))
    assert set(v["params"]) == {"vggface", "fc_hidden", "fc_out"} and len(v["params"]["vggface"]) == 13
    assert v["params"]["vggface"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    assert v["params"]["fc_hidden"]["kernel"].shape == (2 * 2 * 512, 128)
