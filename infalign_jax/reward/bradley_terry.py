"""Bradley–Terry preference loss, pairwise accuracy and a bootstrap confidence interval.

The reward model r(x, y) is trained on preference pairs (x, y_chosen, y_rejected) by maximum likelihood under
the Bradley–Terry model P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r)): the standard RLHF reward model that
InfAlign (Sec. 5) calibrates and transforms.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def bt_loss(r_chosen_b: jax.Array, r_rejected_b: jax.Array) -> jax.Array:
    """Mean negative log-likelihood −log σ(r_c − r_r) = softplus(r_r − r_c), numerically stable."""
    return jnp.mean(jax.nn.softplus(r_rejected_b - r_chosen_b))


def pairwise_correct(r_chosen_b, r_rejected_b) -> np.ndarray:
    """Per pair: 1 if the chosen reply scores higher, ½ on a tie, 0 otherwise (float64 [B])."""
    rc, rr = np.asarray(r_chosen_b, np.float64), np.asarray(r_rejected_b, np.float64)
    return (rc > rr) + 0.5 * (rc == rr)


def bootstrap_ci(values_n, seed: int = 0, n_boot: int = 10_000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``values_n`` (resampling items with replacement).

    Deterministic given ``seed``; resamples in chunks so memory stays bounded for large ``n``.
    """
    x = np.asarray(values_n, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D array, got shape {x.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n = x.size
    chunk = max(1, min(n_boot, 4_000_000 // n))
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        means[start : start + m] = x[rng.integers(0, n, size=(m, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def evaluate_pairs(r_chosen_b, r_rejected_b, seed: int = 0, n_boot: int = 10_000) -> dict:
    """Pairwise accuracy with its bootstrap 95% CI: ``{"pairwise_accuracy", "ci95", "n"}``."""
    correct = pairwise_correct(r_chosen_b, r_rejected_b)
    lo, hi = bootstrap_ci(correct, seed=seed, n_boot=n_boot)
    return {"pairwise_accuracy": float(correct.mean()), "ci95": [lo, hi], "n": int(correct.size)}


# ------------------------------------------------------------------------------------------- training pieces


def standardization(features_nf: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (std floored at ``eps``) used to standardize the head's inputs."""
    f = np.asarray(features_nf, np.float64)
    return f.mean(0).astype(np.float32), np.maximum(f.std(0), eps).astype(np.float32)


def epoch_batches(n: int, batch_size: int, steps: int, seed: int):
    """Yields ``steps`` index batches [batch_size]: seeded permutations, one epoch after another.

    The last partial batch of an epoch is dropped when ``n >= batch_size`` (so every step has the same shape);
    with fewer items than ``batch_size`` the batch is drawn with replacement.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < steps:
        if n < batch_size:
            yield rng.integers(0, n, batch_size)
            done += 1
            continue
        perm = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            if done == steps:
                return
            yield perm[start : start + batch_size]
            done += 1


def make_train_step(graphdef, tx, apply_fn, penalty_fn=None):
    """A Bradley–Terry step over the trained state ``params`` (the rest of the state is passed through).

    ``apply_fn(module, batch) -> (r_chosen_b, r_rejected_b)`` scores a batch with the merged module;
    ``penalty_fn(params) -> scalar`` is added to the loss (e.g. an L2 penalty). Returns the pure function
    ``step(params, rest, opt_state, batch) -> (params, opt_state, metrics)`` with ``metrics = {"loss",
    "accuracy"}`` (BT loss without the penalty, on the batch before the update); jit or scan it.
    """

    def loss_fn(params, rest, batch):
        rc, rr = apply_fn(nnx.merge(graphdef, params, rest), batch)
        loss = bt_loss(rc, rr)
        total = loss if penalty_fn is None else loss + penalty_fn(params)
        return total, (loss, rc, rr)

    def step(params, rest, opt_state, batch):
        (_, (loss, rc, rr)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc = jnp.mean((rc > rr) + 0.5 * (rc == rr))
        return params, opt_state, {"loss": loss, "accuracy": acc}

    return step


def l2_penalty(l2: float):
    """``params -> ½·l2·Σ‖kernel‖²`` over the kernels (biases and statistics are not penalized)."""

    def penalty(params):
        leaves = jax.tree_util.tree_leaves_with_path(params)
        sq = [jnp.sum(jnp.square(v)) for path, v in leaves if "kernel" in jax.tree_util.keystr(path)]
        return 0.5 * l2 * sum(sq) if sq else jnp.zeros(())

    return penalty


def fit_head(
    head: nnx.Module,
    fc_nf,
    fr_nf,
    *,
    l2: float,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    subset=None,
):
    """Trains a scalar head on cached features: Adam (cosine-decayed rate) on BT loss + L2, one jitted
    ``lax.scan`` over the steps.

    ``head(f_bf) -> r_b``; only rows ``subset`` (default all) are used, without changing array shapes, so
    cross-validation folds share one compilation. Returns ``(trained_param_state, metrics)`` where ``metrics``
    holds per-step batch ``loss`` / ``accuracy`` arrays [steps]. Deterministic given ``seed``.
    """
    graphdef, params, rest = nnx.split(head, nnx.Param, ...)
    rows = np.arange(len(fc_nf)) if subset is None else np.asarray(subset)
    idx_sb = rows[np.stack(list(epoch_batches(len(rows), batch_size, steps, seed)))]
    return _scan_fit(
        graphdef,
        float(learning_rate),
        int(steps),
        params,
        rest,
        jnp.asarray(fc_nf),
        jnp.asarray(fr_nf),
        jnp.asarray(idx_sb),
        jnp.float32(l2),
    )


@partial(jax.jit, static_argnums=(0, 1, 2))
def _scan_fit(graphdef, learning_rate, steps, params, rest, fc, fr, idx_sb, l2):
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    step = make_train_step(graphdef, tx, lambda h, b: (h(b[0]), h(b[1])), l2_penalty(l2))

    def body(carry, idx_b):
        params, opt_state = carry
        params, opt_state, metrics = step(params, rest, opt_state, (fc[idx_b], fr[idx_b]))
        return (params, opt_state), metrics

    (params, _), metrics = jax.lax.scan(body, (params, tx.init(params)), idx_sb)
    return params, metrics


def select_l2_by_cv(head: nnx.Module, fc_nf, fr_nf, l2_grid, folds: int = 5, **fit_kw) -> tuple[float, dict]:
    """Picks the L2 strength with the lowest held-out BT loss in ``folds``-fold cross-validation on the
    TRAIN features (the eval split is never looked at). Returns ``(best_l2, {l2: mean held-out loss})``."""
    from infalign_jax.errors import UsageError

    n = len(fc_nf)
    folds = min(folds, n)  # never an empty held-out fold (its loss would be NaN)
    if folds < 2:
        raise UsageError(
            f"choosing the L2 strength by cross-validation needs >= 2 training pairs, got {n}; "
            "give a single L2 value instead"
        )
    perm = np.random.default_rng(fit_kw["seed"]).permutation(n)
    parts = np.array_split(perm, folds)
    graphdef = nnx.graphdef(head)
    scores = {}
    for l2 in l2_grid:
        losses = []
        for k in range(folds):
            tr = np.concatenate([parts[j] for j in range(folds) if j != k])
            te = parts[k]
            params, _ = fit_head(head, fc_nf, fr_nf, l2=float(l2), subset=tr, **fit_kw)
            trained = nnx.merge(graphdef, params, nnx.state(head, nnx.Not(nnx.Param)))
            losses.append(float(bt_loss(trained(jnp.asarray(fc_nf[te])), trained(jnp.asarray(fr_nf[te])))))
        scores[float(l2)] = float(np.mean(losses))
    if bad := [l2 for l2, s in scores.items() if not np.isfinite(s)]:
        raise UsageError(f"held-out Bradley-Terry loss is not finite for L2 {bad}: lower the learning rate")
    best = min(scores, key=scores.get)
    return best, scores
