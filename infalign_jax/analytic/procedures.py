"""Inference-time procedures T as maps of CDFs (paper Sec. 3, "inference-time procedures"; App. for BoN/WoN).

The calibrated reward u of a policy sample has CDF F on [0, 1] (F(u) = u under π_ref). A procedure draws
samples from the policy and selects one; the selected output's calibrated reward has CDF G = T(F). Every map
here acts pointwise on F evaluated at increasing grid points ``u_m`` (u_0 = 0, u_last = 1), is pure and
jittable, and is exact for continuous F at the grid points (and for discrete distributions whose atoms are
the grid cells).

Order statistics count from the LOWEST: ``kth_of_n(1, n)`` is worst-of-n, ``kth_of_n(n, n)`` is best-of-n.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.errors import UsageError

MAX_N = 1000  # the largest number of draws a spec may ask for (the k-th order statistic sums n+1 terms)


@dataclasses.dataclass(frozen=True)
class Procedure:
    """An inference-time procedure: ``cdf_map(F_m, u_m) -> G_m``.

    ``fn(F_m, u_m, *params)`` is a module-level function (or the user's, for :func:`custom`), so two
    procedures built from the same spec compare and hash equal — a Procedure can be a static argument of
    ``jax.jit``.
    """

    spec: str
    fn: Callable = dataclasses.field(repr=False)
    params: tuple = ()

    def cdf_map(self, F_m, u_m):
        """Maps the CDF ``F_m`` of u (at increasing points ``u_m``) to the CDF ``G_m`` of the output."""
        return self.fn(F_m, u_m, *self.params)


def _identity_map(F_m, u_m):
    del u_m
    return F_m


def _extreme_of_n_map(F_m, u_m, n, worst):
    # best-of-n (worst = 0): G = F^n; worst-of-n (worst = 1): G = 1 − (1 − F)^n. n and the flag are static
    # Python ints: XLA then raises F to the power by a few multiplies (lax.integer_pow), where a traced n
    # needed a generic product chain (~2.5x slower per solver step; see docs/analytic.md).
    del u_m
    return 1.0 - (1.0 - F_m) ** n if worst else F_m**n


def _kth_of_n_map(F_m, u_m, k, n):
    # P(k-th lowest of n draws ≤ v) = P(at least k draws ≤ v) = Σ_{j=k}^{n} C(n, j) F^j (1 − F)^{n−j}: the
    # Beta(k, n − k + 1) CDF at F. Its value is summed in log space (k, n static; F clipped into (0, 1) at the
    # precision of its dtype, so no log(0) and no 0·log 0), its derivative is the Beta density
    # n C(n−1, k−1) F^{k−1} (1 − F)^{n−k}, given exactly by a custom JVP, also in log space (n C(n−1, k−1)
    # exceeds int64 from n ≈ 64 and float32 from n ≈ 130) — through the clip, F = 0 or 1 (cells whose masses
    # underflowed) would get a zero gradient where the true one is not (k = 1 at F = 0: n; k = n at F = 1: n),
    # and the solver would stall there.
    del u_m
    j = np.arange(k, n + 1)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in j])
    log_scale = math.log(n) + math.lgamma(n) - math.lgamma(k) - math.lgamma(n - k + 1)

    @jax.custom_jvp
    def tail(F):
        finfo = jnp.finfo(F.dtype)
        Fc = jnp.clip(F, finfo.tiny, 1.0 - finfo.epsneg)[..., None]
        G = jnp.sum(jnp.exp(log_comb + j * jnp.log(Fc) + (n - j) * jnp.log1p(-Fc)), axis=-1)
        return jnp.where(F >= 1.0, 1.0, G).astype(F.dtype)  # G(1) = 1 exactly, whatever the rounding

    @tail.defjvp
    def _(primals, tangents):
        (F,), (dF,) = primals, tangents
        F_in = jnp.clip(F, 0.0, 1.0)
        log_density = jnp.asarray(log_scale, F.dtype)  # the powers only where non-zero: exact at F = 0, 1
        if k > 1:
            log_density = log_density + (k - 1) * jnp.log(F_in)
        if n > k:
            log_density = log_density + (n - k) * jnp.log1p(-F_in)
        return tail(F), jnp.exp(log_density) * dF

    return tail(F_m)


def _rejection_map(F_m, u_m, q, n):
    # Draw up to n; return the first draw with u ≥ q, else the n-th draw. With a = F(q) (grid-interpolated):
    #   v <  q: G(v) = a^{n−1} F(v)                      (all n draws fail and the last one is ≤ v)
    #   v >= q: G(v) = a^n + (F(v) − a) Σ_{k<n} a^k      (all fail, or the first success is ≤ v)
    # which is continuous at q (both a^n) and G(1) = 1. Σ_{k<n} a^k = −expm1(n log a)/(1 − a) (n may be
    # traced).
    a = jnp.interp(q, u_m, F_m)
    inside = (a > 0.0) & (a < 1.0)
    a_in = jnp.where(inside, a, 0.5)
    geometric = jnp.where(inside, -jnp.expm1(n * jnp.log(a_in)) / (1.0 - a_in), jnp.where(a >= 1.0, n, 1.0))
    # a^{n−1} with n traced: at a = 0 its derivative (n−1)·0^{n−2} is 0·inf = NaN for n = 1, and jnp.where
    # does not stop a NaN gradient, so a = 0 takes the constant branch (exact there: a = F(q) = 0 means F = 0
    # at every point below q, where a^{n−1} multiplies F).
    a_pos = jnp.where(a > 0.0, a, 1.0)
    all_fail = jnp.where(a > 0.0, a_pos ** (n - 1), jnp.where(n == 1, 1.0, 0.0))
    return jnp.where(u_m < q, all_fail * F_m, a**n + (F_m - a) * geometric)


def _custom_map(F_m, u_m, user_fn, takes_u):
    return user_fn(F_m, u_m) if takes_u else user_fn(F_m)


# Maps whose numeric params may be traced arrays (the solver passes them as jit arguments, so rejection:0.5,4
# and rejection:0.7,8 share one compilation); the others get their params as static Python values.
TRACEABLE_MAPS = frozenset({_rejection_map})


def identity() -> Procedure:
    """Plain sampling: G = F."""
    return Procedure("identity", _identity_map)


def best_of_n(n: int) -> Procedure:
    """Best-of-n (keep the highest of n draws): G = F^n (paper Sec. 3; App. on BoN)."""
    n = _check_n(n)
    return Procedure(f"bon:{n}", _extreme_of_n_map, (n, 0))


def worst_of_n(n: int) -> Procedure:
    """Worst-of-n (keep the lowest of n draws, e.g. a jailbreak red-team model): G = 1 − (1 − F)^n."""
    n = _check_n(n)
    return Procedure(f"won:{n}", _extreme_of_n_map, (n, 1))


def kth_of_n(k: int, n: int) -> Procedure:
    """The k-th order statistic of n draws, counted from the LOWEST (k = 1: worst-of-n; k = n: best-of-n)."""
    n = _check_n(n)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise UsageError(f"kth_of_n: k must be an integer in [1, n={n}] (counted from the lowest), got {k!r}")
    return Procedure(f"kth:{int(k)},{n}", _kth_of_n_map, (int(k), n))


def rejection(q: float, n: int) -> Procedure:
    """Rejection sampling: draw up to n, return the first draw with u ≥ q, else the last draw.

    G(v) = F(q)^{n−1}·F(v) for v < q and F(q)^n + (F(v) − F(q))·Σ_{k<n} F(q)^k for v ≥ q; F(q) is linearly
    interpolated on the grid, so G depends on F at q as well as at v.
    """
    n = _check_n(n)
    try:
        q = float(q)
    except (TypeError, ValueError):
        raise UsageError(f"rejection: threshold q must be a number in [0, 1], got {q!r}") from None
    if not 0.0 <= q <= 1.0:
        raise UsageError(f"rejection: threshold q must be in [0, 1], got {q!r}")
    return Procedure(f"rejection:{q!r},{n}", _rejection_map, (q, n))  # repr: parses back to the same q


def custom(fn: Callable, name: str = "custom") -> Procedure:
    """A user procedure ``fn(F_m) -> G_m`` (or ``fn(F_m, u_m) -> G_m`` if it takes two arguments).

    ``fn`` must be written with ``jax.numpy`` (it is traced under ``jit``) and map every CDF to a CDF. It is
    checked once, here, on a few probe CDFs (uniform, skewed both ways, and a discrete one with flat steps):
    the output must have the input's shape, be finite and non-decreasing, with G(0) = 0 and G(1) = 1 (to
    1e-9). Anything else raises one :class:`UsageError` naming the problem.
    """
    if not callable(fn):
        raise UsageError(
            f"custom procedure {name!r}: expected a callable F_m -> G_m, got {type(fn).__name__}"
        )
    proc = Procedure(f"custom:{name}", _custom_map, (fn, _takes_u(fn)))
    _validate(proc)
    return proc


def parse_procedure(spec: str) -> Procedure:
    """Parses 'identity', 'bon:N', 'won:N', 'kth:K,N' (K from the lowest) or 'rejection:Q,N'."""
    if not isinstance(spec, str):
        raise UsageError(f"procedure spec must be a string, got {type(spec).__name__}")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    args = [a.strip() for a in arg.split(",")] if arg.strip() else []
    expected = {"identity": 0, "bon": 1, "won": 1, "kth": 2, "rejection": 2}
    usage = "expected one of identity, bon:N, won:N, kth:K,N, rejection:Q,N"
    if kind not in expected:
        raise UsageError(f"unknown procedure {spec!r}; {usage}")
    if len(args) != expected[kind]:
        raise UsageError(f"procedure {spec!r} needs {expected[kind]} argument(s); {usage}")
    if kind == "identity":
        return identity()
    if kind == "rejection":
        return rejection(_parse_number(args[0], spec), _parse_int(args[1], spec))
    ints = [_parse_int(a, spec) for a in args]
    return {"bon": best_of_n, "won": worst_of_n, "kth": kth_of_n}[kind](*ints)


def _parse_int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"procedure {spec!r}: {text!r} is not an integer") from None


def _parse_number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"procedure {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"procedure {spec!r}: {text!r} is not a finite number")
    return value


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= MAX_N:
        raise UsageError(f"the number of draws n must be an integer in [1, {MAX_N}], got {n!r}")
    return int(n)


def _takes_u(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len([p for p in positional if p.default is p.empty]) >= 2


def _probe_cdfs() -> tuple[np.ndarray, list[np.ndarray]]:
    u_m = np.linspace(0.0, 1.0, 65)
    steps = np.repeat(np.array([0.0, 0.1, 0.1, 0.55, 0.55, 0.9, 1.0, 1.0]), 8)
    steps = np.concatenate([[0.0], steps])
    return u_m, [u_m, u_m**3, 1.0 - (1.0 - u_m) ** 3, steps]


def _validate_gradient(proc: Procedure, where: str) -> None:
    """The solver differentiates the win rate with respect to the cell masses (δW/δp): it must be finite on
    probe policies (sqrt(F) passed the value checks, then gave a NaN Φ* with finite W and KL). Checked on
    what the solver computes, not on dG/dF at F = 0: exp(4·log F) is F⁴ and works although its dG/dF is NaN
    there (the first grid point of a CDF is a constant)."""
    from infalign_jax.analytic.objectives import cosine_grid, inference_win_rate

    u_m = cosine_grid(64, dtype=jnp.float64)
    h_c = jnp.diff(u_m)
    for w_c in (h_c, h_c * (1.0 + 3.0 * u_m[1:] ** 2), h_c * jnp.exp(-8.0 * u_m[1:])):
        try:
            grad = np.asarray(jax.grad(lambda w: inference_win_rate(proc, w, u_m))(w_c / jnp.sum(w_c)))
        except Exception as e:  # noqa: BLE001 — e.g. a lax.while_loop, which reverse mode cannot differentiate
            raise UsageError(
                f"{where} cannot be differentiated (the solver needs δW/δp): {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        if not np.all(np.isfinite(grad)):
            raise UsageError(
                f"{where} gives a non-finite gradient of the win rate (δW/δp), e.g. an infinitely steep "
                "map like sqrt(F) at F = 0: the solver needs finite slopes"
            )


def _validate(proc: Procedure) -> None:
    u_m, probes = _probe_cdfs()
    where = f"custom procedure {proc.spec.removeprefix('custom:')!r}"
    with jax.enable_x64(True):
        mapped = jax.jit(proc.cdf_map)
        for F_m in probes:
            try:
                out = mapped(jnp.asarray(F_m), jnp.asarray(u_m))
            except Exception as e:  # noqa: BLE001 — any failure of the user's code is a usage error
                raise UsageError(
                    f"{where} failed on a probe CDF (it must be a jittable jax.numpy F -> G map): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                ) from None
            if getattr(out, "dtype", None) != jnp.float64:  # float32 made a contradictory "not reachable"
                raise UsageError(f"{where} must return float64 for float64 F (the solver's precision)")
            G_m = np.asarray(out, dtype=np.float64)
            if G_m.shape != F_m.shape:
                raise UsageError(f"{where} must return G with the shape of F {F_m.shape}, got {G_m.shape}")
            if not np.all(np.isfinite(G_m)):
                raise UsageError(f"{where} returned non-finite values")
            if abs(G_m[0]) > 1e-9 or abs(G_m[-1] - 1.0) > 1e-9:
                raise UsageError(
                    f"{where} must map a CDF to a CDF: G(0) = {G_m[0]:.6g}, G(1) = {G_m[-1]:.6g} "
                    "(need 0 and 1)"
                )
            if np.any(np.diff(G_m) < -1e-12):
                raise UsageError(
                    f"{where} must be monotone: G decreases at u = {u_m[np.argmin(np.diff(G_m))]:.4g}"
                )
        _validate_gradient(proc, where)
