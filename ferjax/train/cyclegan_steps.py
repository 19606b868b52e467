"""CycleGAN state and one jit-compiled, donated step that updates both generators and both
discriminators (Zhu et al. 2017, with the paper's cycle loss and label flipping).

Domain A is the source class (e.g. neutral), B the target (e.g. disgust); G: A -> B, F: B -> A.
Images are [N,48,48,1] in [-1, 1]. The step runs over a `data` mesh (state replicated, batch
split); with one device it is the plain single-device step.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import dm_pix as pix
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ferjax.nn import init_variables
from ferjax.train import sharding

NETS = ("g", "f", "d_a", "d_b")  # G: A->B, F: B->A, D_A judges A, D_B judges B


@flax.struct.dataclass
class CycleGANState:
    step: jax.Array
    variables: dict  # NETS -> {"params": ..., "batch_stats": ...}
    g_opt: Any  # one optimizer over both generators
    d_opt: Any  # one optimizer over both discriminators
    pool_a: jax.Array  # past fakes of domain A for D_A (Shrivastava et al.'s image pool)
    pool_b: jax.Array
    pool_filled: jax.Array  # how many pool slots hold an image


def to_unit(images: jax.Array) -> jax.Array:
    """uint8-range grey levels 0..255 -> [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def unit_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image SSIM (dm-pix) of [N,H,W,C] images in [-1, 1]: the cycle and identity SSIM that
    runs report and that `gan.class_guide_min_cycle_ssim` gates on."""
    return pix.ssim(x, y, max_val=2.0)


def create_state(generator: nn.Module, discriminator: nn.Module, g_tx: optax.GradientTransformation,
                 d_tx: optax.GradientTransformation, seed: int, pool_size: int,
                 image_shape=(48, 48, 1)) -> CycleGANState:
    keys = jax.random.split(jax.random.key(seed), 4)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = {}
    for name, key in zip(NETS, keys):
        net = generator if name in ("g", "f") else discriminator
        v = init_variables(net, {"params": key, "dropout": key}, x)
        variables[name] = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
    params = _params(variables)
    pool_shape = (max(1, pool_size), *image_shape)
    return CycleGANState(step=jnp.zeros((), jnp.int32), variables=variables,
                         g_opt=g_tx.init({k: params[k] for k in ("g", "f")}),
                         d_opt=d_tx.init({k: params[k] for k in ("d_a", "d_b")}),
                         pool_a=jnp.zeros(pool_shape, jnp.float32), pool_b=jnp.zeros(pool_shape, jnp.float32),
                         pool_filled=jnp.zeros((), jnp.int32))


def _params(variables: dict) -> dict:
    return {k: v["params"] for k, v in variables.items()}


def query_pool(key: jax.Array, pool: jax.Array, filled: jax.Array, fakes: jax.Array,
               pool_size: int) -> tuple[jax.Array, jax.Array]:
    """(images for the discriminator, new pool): while the pool fills, fakes go in and are used;
    then each fake is, with probability 1/2, swapped for a random stored one (which it replaces)."""
    if pool_size == 0:
        return fakes, pool

    def one(carry, inputs):
        pool, filled = carry
        k, fake = inputs
        k_coin, k_idx = jax.random.split(k)
        idx = jax.random.randint(k_idx, (), 0, pool_size)
        filling = filled < pool_size
        swap = jax.random.uniform(k_coin) < 0.5
        slot = jnp.where(filling, filled, idx)
        out = jnp.where(~filling & swap, pool[idx], fake)
        pool = jnp.where(filling | swap, pool.at[slot].set(fake), pool)
        return (pool, jnp.minimum(filled + 1, pool_size)), out

    keys = jax.random.split(key, fakes.shape[0])
    (pool, _), out = jax.lax.scan(one, (pool, filled), (keys, fakes))
    return out, pool


AUGMENTS = ("brightness", "contrast", "translation", "cutout")


def parse_augment_policy(policy: str) -> tuple[str, ...]:
    """"translation,cutout" -> ("translation", "cutout"); unknown names are refused."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise ValueError(f"gan.diff_augment={policy!r}: unknown {unknown}; choose from {', '.join(AUGMENTS)}")
    return names


def diff_augment(x: jax.Array, key: jax.Array, policy: tuple[str, ...]) -> jax.Array:
    """Differentiable augmentation of discriminator inputs (Zhao et al. 2020, "DiffAugment"), the
    same random family for real and generated images, so a discriminator trained on a few hundred
    real images cannot simply memorise them. Images in [-1, 1], one draw per image: brightness
    +-0.5, contrast x0.5..1.5 about the image mean, translation by up to 1/8 of the size (zero
    padded), a cutout square of half the size set to 0."""
    n, h, w, c = x.shape
    k_bright, k_contrast, k_shift, k_cut = jax.random.split(key, 4)
    if "brightness" in policy:
        x = x + jax.random.uniform(k_bright, (n, 1, 1, 1), x.dtype, -0.5, 0.5)
    if "contrast" in policy:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * jax.random.uniform(k_contrast, (n, 1, 1, 1), x.dtype, 0.5, 1.5) + mean
    if "translation" in policy:
        pad_h, pad_w = h // 8, w // 8
        padded = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
        starts = jax.random.randint(k_shift, (n, 2), 0, jnp.array([2 * pad_h + 1, 2 * pad_w + 1]))
        x = jax.vmap(lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (h, w, c)))(padded, starts)
    if "cutout" in policy:
        centre = jax.random.randint(k_cut, (n, 2), 0, jnp.array([h, w]))
        rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
        inside = (jnp.abs(rows - centre[:, 0, None, None]) < h // 4) & \
                 (jnp.abs(cols - centre[:, 1, None, None]) < w // 4)
        x = jnp.where(inside[..., None], 0.0, x)
    return x


def make_step(generator: nn.Module, discriminator: nn.Module, g_tx: optax.GradientTransformation,
              d_tx: optax.GradientTransformation, cycle_loss: Callable, identity_loss: Callable,
              adversarial_loss: Callable, cfg: ml_collections.ConfigDict, seed: int, mesh: Mesh,
              class_guide: Callable | None = None, target_class: int = -1, steps_per_epoch: int = 1):
    """The jitted train step `(state, {"a": uint8, "b": uint8}) -> (state, metrics)`.

    cfg: lambda_cycle, lambda_identity, flip_labels (discriminator target 1 for generated and 0 for
    real images; the generators are trained against that convention), pool_size, and optionally
    diff_augment (a `parse_augment_policy` string; every discriminator input is augmented) and
    lambda_class: with `class_guide` (a frozen classifier, images in [-1, 1] -> logits), G(A) is
    also pushed towards `target_class` by that classifier's cross-entropy, on G(A) augmented with
    the same policy so that pixel noise which fools one view of the classifier does not pay. The
    pull stops once the guide gives the target class probability class_guide_margin (hinge on the
    cross-entropy at -log(margin); 0: plain cross-entropy) and its weight ramps up linearly over
    class_guide_warmup_epochs, so the generator first learns to keep faces (a full-weight guide
    from step 0 turned G(A) into textures the guide called disgust and nothing else did).
    class_guide_min_cycle_ssim > 0 gates the pull per image: it acts on G(a) only while
    SSIM(F(G(a)), a) is at least that value, so the guide cannot trade away the face (a strong
    guide otherwise collapsed every G(a) into one pattern with cycle SSIM 0.1).
    """
    base_key = jax.random.key(seed)
    policy = parse_augment_policy(cfg.diff_augment)
    augment_key = jax.random.fold_in(base_key, 0xD1FF)
    guide_key = jax.random.fold_in(base_key, 0x6D1DE)
    lambda_class = float(cfg.lambda_class)
    if lambda_class > 0 and (class_guide is None or target_class < 0):
        raise ValueError("gan.lambda_class > 0 needs a class guide and the target class index")
    margin = float(cfg.class_guide_margin)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"gan.class_guide_margin={margin}: expected a probability in [0, 1)")
    ce_floor = -float(jnp.log(margin)) if margin > 0 else 0.0
    warmup_steps = float(cfg.class_guide_warmup_epochs) * steps_per_epoch
    min_cycle_ssim = float(cfg.class_guide_min_cycle_ssim)
    if not 0.0 <= min_cycle_ssim < 1.0:
        raise ValueError(f"gan.class_guide_min_cycle_ssim={min_cycle_ssim}: expected an SSIM in [0, 1)")

    def judge(vd, x, key):
        """Discriminator output on (augmented) `x` in training mode, with its batch statistics."""
        x = diff_augment(x, key, policy) if policy else x
        out, upd = discriminator.apply(vd, x, train=True, mutable=["batch_stats"])
        return out, upd.get("batch_stats", {})
    real_t, fake_t = (0.0, 1.0) if cfg.flip_labels else (1.0, 0.0)

    def apply(net, variables, x, key):
        out, upd = net.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        return out, {"params": variables["params"], "batch_stats": upd.get("batch_stats", {})}

    def step(state: CycleGANState, batch: dict):
        keys = jax.random.split(jax.random.fold_in(base_key, state.step), 8)
        aug = jax.random.split(jax.random.fold_in(augment_key, state.step), 6)  # its own stream
        a, b = to_unit(batch["a"]), to_unit(batch["b"])
        v = state.variables

        def g_objective(gp):
            vg = {**v["g"], "params": gp["g"]}
            vf = {**v["f"], "params": gp["f"]}
            fake_b, vg = apply(generator, vg, a, keys[0])
            fake_a, vf = apply(generator, vf, b, keys[1])
            rec_a, vf = apply(generator, vf, fake_b, keys[2])
            rec_b, vg = apply(generator, vg, fake_a, keys[3])
            same_b, vg = apply(generator, vg, b, keys[4])
            same_a, vf = apply(generator, vf, a, keys[5])
            # The discriminators judge in training mode; their statistics are not updated here.
            d_fake_b = judge(v["d_b"], fake_b, aug[0])[0]
            d_fake_a = judge(v["d_a"], fake_a, aug[1])[0]
            adv = adversarial_loss(d_fake_b, real_t) + adversarial_loss(d_fake_a, real_t)
            cyc = cycle_loss(rec_a, a) + cycle_loss(rec_b, b)
            idt = identity_loss(same_a, a) + identity_loss(same_b, b)
            total = adv + cfg.lambda_cycle * cyc + cfg.lambda_identity * idt
            metrics = {"g_adv": adv, "cycle": cyc, "identity": idt}
            if lambda_class > 0:
                k = jax.random.fold_in(guide_key, state.step)
                logits = class_guide(diff_augment(fake_b, k, policy) if policy else fake_b)
                labels = jnp.full(logits.shape[:1], target_class)
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                ramp = jnp.minimum(1.0, state.step / warmup_steps) if warmup_steps > 0 else 1.0
                pull = jax.nn.relu(ce - ce_floor)
                if min_cycle_ssim > 0:
                    kept = unit_ssim(jax.lax.stop_gradient(rec_a), a) >= min_cycle_ssim
                    pull = jnp.where(kept, pull, 0.0)
                    metrics["guide_open"] = kept.mean()
                total = total + lambda_class * ramp * jnp.mean(pull)
                metrics.update(guide_ce=ce.mean(), guide_weight=lambda_class * ramp,
                               guide_target_rate=jnp.mean(logits.argmax(-1) == target_class))
            aux = {"fake_a": fake_a, "fake_b": fake_b, "g": vg, "f": vf, "metrics": metrics}
            return total, aux

        gp = {k: v[k]["params"] for k in ("g", "f")}
        (g_loss, aux), g_grads = jax.value_and_grad(g_objective, has_aux=True)(gp)
        g_updates, g_opt = g_tx.update(g_grads, state.g_opt, gp)
        gp = optax.apply_updates(gp, g_updates)

        fake_a, pool_a = query_pool(keys[6], state.pool_a, state.pool_filled,
                                    jax.lax.stop_gradient(aux["fake_a"]), cfg.pool_size)
        fake_b, pool_b = query_pool(keys[7], state.pool_b, state.pool_filled,
                                    jax.lax.stop_gradient(aux["fake_b"]), cfg.pool_size)

        def d_objective(dp):
            losses, new = {}, {}
            for name, real, fake, k in (("d_a", a, fake_a, 2), ("d_b", b, fake_b, 4)):
                vd = {**v[name], "params": dp[name]}
                d_real, stats = judge(vd, real, aug[k])
                d_fake, stats = judge({**vd, "batch_stats": stats}, fake, aug[k + 1])
                new[name] = {"params": dp[name], "batch_stats": stats}
                losses[name] = 0.5 * (adversarial_loss(d_real, real_t) + adversarial_loss(d_fake, fake_t))
            return losses["d_a"] + losses["d_b"], (new, losses)

        dp = {k: v[k]["params"] for k in ("d_a", "d_b")}
        (d_loss, (new_d, d_losses)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(dp)
        d_updates, d_opt = d_tx.update(d_grads, state.d_opt, dp)
        dp = optax.apply_updates(dp, d_updates)

        variables = {"g": {**aux["g"], "params": gp["g"]}, "f": {**aux["f"], "params": gp["f"]},
                     "d_a": {**new_d["d_a"], "params": dp["d_a"]},
                     "d_b": {**new_d["d_b"], "params": dp["d_b"]}}
        new_state = state.replace(
            step=state.step + 1, variables=variables, g_opt=g_opt, d_opt=d_opt, pool_a=pool_a,
            pool_b=pool_b, pool_filled=jnp.minimum(state.pool_filled + a.shape[0], max(1, cfg.pool_size)))
        metrics = {"loss": g_loss + d_loss, "g_loss": g_loss, "d_loss": d_loss, **aux["metrics"],
                   "d_a": d_losses["d_a"], "d_b": d_losses["d_b"],
                   "grad_norm": optax.tree.norm((g_grads, d_grads))}
        return new_state, metrics

    rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def translate(generator: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    """Generator output for uint8-range images, in [-1, 1] (inference mode: running statistics)."""
    return generator.apply(variables, to_unit(images), train=False)
