"""Reward transformations Φ for CTRL (paper Sec. 3–4): the policy is trained on Φ(u) with u the calibrated
reward.

Transform specs are strings, the same in configs, CLIs and JSON, parsed by :func:`parse_transform`:

- ``identity``  Φ(u) = u — optimal for plain sampling (T = identity).
- ``log``       Φ = log((K·u + 1)/(K + 1)) = log((rank + 1)/(K + 1)) with rank = #{r_k < r} + ½#{r_k = r}, the
                floored empirical log-CDF of variational BoN (Amini et al. 2024): finite at u = 0
                (log(1/(K+1))), 0 at u = 1, → log u as K → ∞.
- ``exp:T``     Φ_t(u) = (e^{t·u} − 1)/(e^t − 1)
(:func:`infalign_jax.analytic.transforms.exponential_transform`);
                t > 0 targets best-of-N, t < 0 worst-of-N (Sec. 3, exponential transforms).
- ``table:PATH`` Φ*(u) tabulated by ``python -m infalign_jax.analytic --export-transform PATH`` (npz with
                increasing ``u`` in [0, 1] and ``phi``), linearly interpolated.
- ``lsc``       log σ(r − median_k r_k): log-sigmoid of the raw reward centred on the per-prompt reference
median
                (Wang et al. 2024, "Transforming and combining rewards"); uses the reference samples but not
                u.
- ``raw``       Φ = r, the reward model's score (no calibration): the standard-RLHF baseline.

All transforms map (u_ps, rewards_ps, ref_sorted_pk) → phi_ps and are pure and jittable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.analytic.procedures import parse_procedure
from infalign_jax.analytic.transforms import exponential_transform
from infalign_jax.ctrl.calibration import reference_median
from infalign_jax.errors import UsageError
from infalign_jax.io_utils import read_npz

KINDS = ("identity", "log", "exp", "table", "lsc", "raw")


@dataclass(frozen=True, eq=False)
class Transform:
    """A parsed transform spec. ``t`` for ``exp``; ``table_u``/``table_phi`` for ``table``."""

    spec: str
    kind: str
    t: float | None = None
    table_u: np.ndarray | None = field(default=None, repr=False)
    table_phi: np.ndarray | None = field(default=None, repr=False)

    @property
    def uses_u(self) -> bool:
        """True when Φ is a function of the calibrated reward u alone (the analytic theory applies)."""
        return self.kind in ("identity", "log", "exp", "table")

    def phi_of_u(self, u, k: int | None = None):
        """Φ(u) for u-based transforms; ``k`` (reference samples) is needed only by ``log``."""
        u = jnp.asarray(u, jnp.float32)
        if self.kind == "identity":
            return u
        if self.kind == "log":
            if k is None:
                raise UsageError("the log transform needs K (its floor is 1/(K+1))")
            return jnp.log((k * u + 1.0) / (k + 1.0))
        if self.kind == "exp":
            return exponential_transform(u, self.t)
        if self.kind == "table":
            return jnp.interp(
                u, jnp.asarray(self.table_u, jnp.float32), jnp.asarray(self.table_phi, jnp.float32)
            )
        raise UsageError(f"transform {self.spec!r} is not a function of the calibrated reward u")

    def __call__(self, u_ps: jax.Array, rewards_ps: jax.Array, ref_sorted_pk: jax.Array | None) -> jax.Array:
        if self.kind == "raw":
            return rewards_ps.astype(jnp.float32)
        if self.kind == "lsc":
            med_p = reference_median(ref_sorted_pk)
            return jax.nn.log_sigmoid(rewards_ps - med_p[:, None]).astype(jnp.float32)
        k = None if ref_sorted_pk is None else ref_sorted_pk.shape[1]
        return self.phi_of_u(u_ps, k)


def _load_table(path: str, spec: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.exists(path):
        raise UsageError(f"transform {spec!r}: file {path!r} does not exist")
    arrays = read_npz(path, ("u", "phi"), f"transform {spec!r}: table")
    try:
        u, phi = np.asarray(arrays["u"], np.float64), np.asarray(arrays["phi"], np.float64)
    except (TypeError, ValueError) as e:  # e.g. string arrays
        raise UsageError(f"transform {spec!r}: 'u' and 'phi' must be numeric arrays ({e})") from None
    if u.ndim != 1 or u.shape != phi.shape or u.size < 2:
        raise UsageError(f"transform {spec!r}: 'u' and 'phi' must be 1-D of equal length >= 2")
    if not (np.isfinite(u).all() and np.isfinite(phi).all()):
        raise UsageError(f"transform {spec!r}: table holds non-finite values")
    if np.any(np.diff(u) <= 0) or u[0] < 0 or u[-1] > 1:
        raise UsageError(f"transform {spec!r}: 'u' must be strictly increasing within [0, 1]")
    # The step interpolates in float32: points of a very fine grid (cells near u = 1 narrower than float32's
    # spacing, e.g. an export at --grid 65536) would collapse into duplicate u; keep the first of each.
    distinct = np.concatenate([[True], np.diff(u.astype(np.float32)) > 0])
    return u[distinct], phi[distinct]


def parse_transform(spec: str) -> Transform:
    """Parses a transform spec string (see the module docstring); unknown or malformed → UsageError."""
    if not isinstance(spec, str) or not spec:
        raise UsageError(f"transform spec must be a non-empty string, got {spec!r}")
    name, sep, arg = spec.partition(":")
    if name in ("identity", "log", "lsc", "raw"):
        if sep:
            raise UsageError(f"transform {name!r} takes no argument (got {spec!r})")
        return Transform(spec, name)
    if name == "exp":
        try:
            t = float(arg)
        except ValueError:
            raise UsageError(
                f"transform {spec!r}: expected exp:T with a number T (e.g. exp:8, exp:-5)"
            ) from None
        if not np.isfinite(t) or t == 0:
            raise UsageError(f"transform {spec!r}: T must be finite and non-zero (use 'identity' for T=0)")
        return Transform(spec, "exp", t=t)
    if name == "table":
        if not arg:
            raise UsageError("transform 'table' needs a path: table:PATH")
        u, phi = _load_table(arg, spec)
        return Transform(spec, "table", table_u=u, table_phi=phi)
    raise UsageError(
        f"unknown transform {spec!r}; expected one of identity, log, exp:T, table:PATH, lsc, raw"
    )


def check_transform_for_procedure(transform: Transform, procedure_spec: str) -> None:
    """Rejects exp:T whose sign contradicts the target procedure: BoN needs T > 0, WoN needs T < 0."""
    if transform.kind != "exp":
        return
    head = parse_procedure(procedure_spec).spec.partition(":")[0]  # normalized ('BoN:4' -> 'bon')
    if head == "bon" and transform.t < 0:
        raise UsageError(
            f"transform {transform.spec!r} has t < 0 but procedure {procedure_spec!r} is best-of-N "
            "(needs t > 0)"
        )
    if head == "won" and transform.t > 0:
        raise UsageError(
            f"transform {transform.spec!r} has t > 0 but procedure {procedure_spec!r} is worst-of-N "
            "(needs t < 0)"
        )
