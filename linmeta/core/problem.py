"""Ground truth of the multitask linear model (docs/theory.md#model).

A :class:`Truth` holds the shared matrix ``A*`` (d x d), the retraining tasks' low-rank factors
``U*_t`` (T x d x k) and the factors of unseen tasks ``U_new`` (m x d x k). Task ``t`` has parameter

    M*_t = A* + U*_t U*_t^T          (rank-k, symmetric PSD shift R*_t = U*_t U*_t^T)

and data ``x ~ N(0, I_d)``, ``y = M*_t x + eps``, ``eps ~ N(0, sigma^2 I_d)`` (see :mod:`linmeta.core.data`).

Samplers:
- :func:`sample_truth`: the paper's Gaussian problem, ``A*`` with i.i.d. N(0,1) entries symmetrised
  ``(A* + A*^T)/2``, ``U*_t`` and ``U_new`` with i.i.d. N(0,1) entries.
- :func:`orthogonal_truth`: the worked case of claim C2, all ``U*_t`` (and unseen factors) with
  mutually orthogonal columns and ``U*_t^T U*_t = s^2 I_k``; then ``E_SR(k) = k s^4 / T``.
- :class:`Truth` from user arrays (validated) and :func:`load_truth` from an ``.npz`` file.

A key names one problem in every dtype: both samplers draw in float64 and cast (also with x64 off),
so ``sample_truth(key, ..., dtype=float32)`` is ``sample_truth(key, ...)`` in float64 rounded to
float32.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .files import atomic_write_npz
from ._validate import check_array, check_int, check_scalar, float_dtype, is_concrete

__all__ = ["Truth", "sample_truth", "orthogonal_truth", "load_truth", "save_truth", "check_key"]


class _TruthFields(NamedTuple):
    A_star: jax.Array
    U_star: jax.Array
    U_new: jax.Array


def _is_arraylike(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


class Truth(_TruthFields):
    """Ground truth ``(A*, U*_1..U*_T, U_new)``; a pytree (NamedTuple), so it can be vmapped.

    Args:
      A_star: (d, d) shared matrix.
      U_star: (T, d, k) low-rank factors of the T retraining tasks.
      U_new: (m, d, k) factors of unseen tasks (default: none, m = 0).

    Construction from concrete arrays validates shapes (``1 <= k <= d``, ``T >= 1``) and finiteness
    and raises ``ValueError`` naming the argument.
    """

    __slots__ = ()

    def __new__(cls, A_star, U_star, U_new=None):
        leaves = (A_star, U_star) if U_new is None else (A_star, U_star, U_new)
        if all(_is_arraylike(x) or isinstance(x, (list, tuple)) for x in leaves) and all(
                is_concrete(x) for x in leaves):
            A_star = check_array("A_star", A_star)
            if A_star.ndim < 2 or A_star.shape[-1] != A_star.shape[-2] or A_star.shape[-1] < 1:
                raise ValueError(f"A_star must be square (d, d) with d >= 1, got shape "
                                 f"{tuple(A_star.shape)}")
            batch = A_star.shape[:-2]  # a stack of truths (e.g. for vmap) is allowed
            d = A_star.shape[-1]
            U_star = check_array("U_star", U_star)
            if U_star.ndim != len(batch) + 3 or U_star.shape[:len(batch)] != batch:
                raise ValueError(f"U_star must have shape (T, d={d}, k), got {tuple(U_star.shape)}")
            T, dU, k = U_star.shape[-3:]
            if dU != d:
                raise ValueError(f"U_star must have shape (T, d={d}, k), got {tuple(U_star.shape)}")
            check_int("T (U_star.shape[0])", T, 1)
            check_int("k (U_star.shape[2])", k, 1, d, hi_label="d")
            if U_new is None:
                U_new = jnp.zeros(batch + (0, d, k), U_star.dtype)
            else:
                U_new = check_array("U_new", U_new)
                if U_new.shape[:len(batch)] != batch or U_new.shape[len(batch):][1:] != (d, k) \
                        or U_new.ndim != len(batch) + 3:
                    raise ValueError(
                        f"U_new must have shape (m, d={d}, k={k}), got {tuple(U_new.shape)}")
            dt = jnp.result_type(A_star.dtype, U_star.dtype, U_new.dtype)
            if not jnp.issubdtype(dt, jnp.floating):
                dt = jnp.asarray(0.0).dtype
            A_star, U_star, U_new = (jnp.asarray(a, dt) for a in (A_star, U_star, U_new))
        elif U_new is None and _is_arraylike(U_star) and getattr(U_star, "ndim", 0) == 3:
            U_new = jnp.zeros((0,) + tuple(U_star.shape[1:]), U_star.dtype)
        return super().__new__(cls, A_star, U_star, U_new)

    # Sizes are static (shapes), so they are usable inside jit.
    @property
    def d(self) -> int:
        return self.A_star.shape[-1]

    @property
    def k(self) -> int:
        return self.U_star.shape[-1]

    @property
    def T(self) -> int:
        return self.U_star.shape[-3]

    @property
    def n_unseen(self) -> int:
        return self.U_new.shape[-3]

    @property
    def R_star(self) -> jax.Array:
        """(T, d, d) task shifts ``U*_t U*_t^T``."""
        return self.U_star @ jnp.swapaxes(self.U_star, -1, -2)

    @property
    def M_star(self) -> jax.Array:
        """(T, d, d) task parameters ``A* + U*_t U*_t^T``."""
        return self.A_star[..., None, :, :] + self.R_star

    @property
    def M_new(self) -> jax.Array:
        """(m, d, d) unseen-task parameters ``A* + U_new U_new^T``."""
        return self.A_star[..., None, :, :] + self.U_new @ jnp.swapaxes(self.U_new, -1, -2)


def _check_sizes(d, k, T, n_unseen):
    d = check_int("d", d, 1)
    k = check_int("k", k, 1, d, hi_label="d")
    T = check_int("T", T, 1)
    n_unseen = check_int("n_unseen", n_unseen, 0)
    return d, k, T, n_unseen


def check_key(name: str, key) -> None:
    """``key`` must be one JAX PRNG key: a typed key of shape () (``jax.random.key(seed)``) or a
    raw ``uint32`` key of shape (2,) (``jax.random.PRNGKey(seed)``); ValueError naming ``name``
    otherwise (an int seed, a batch of keys, a float array...)."""
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()) or ())
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype is not None and np.dtype(dtype) == np.uint32 and shape == (2,):
        return
    if dtype is None:
        got = f"{type(key).__name__} {key!r}" if isinstance(key, (int, float, str)) else \
            type(key).__name__
    else:
        got = f"an array of shape {shape} and dtype {dtype}"
    raise ValueError(f"{name} must be one JAX PRNG key (jax.random.key(seed), shape ()), "
                     f"got {got}")


# ----------------------------------------------------------------------------- one draw, any dtype
# A seed names one problem in every dtype: the Gaussian draws below are made in float64 and cast to
# the requested dtype. With x64 enabled that is plain JAX (jit- and vmap-able; float64 draws are
# unchanged). Without it, float64 exists only inside a ``jax.enable_x64(True)`` scope, which XLA
# cannot mix into a program traced without it, so the float64 draw runs as its own small program:
# directly for a concrete key, through ``jax.pure_callback`` inside a trace.

def _gaussian_arrays(key, dt, scale, d, k, T, n_unseen, symmetric):
    ka, ku, kn = jax.random.split(key, 3)
    A = scale * jax.random.normal(ka, (d, d), dt)
    if symmetric:
        A = (A + A.T) / 2
    U = jax.random.normal(ku, (T, d, k), dt)
    U_new = jax.random.normal(kn, (n_unseen, d, k), dt)
    return A, U, U_new


def _orthogonal_arrays(key, dt, scale, d, k, T, n_unseen):
    ka, kq = jax.random.split(key)
    A = jax.random.normal(ka, (d, d), dt)
    A = (A + A.T) / 2
    Q, _ = jnp.linalg.qr(jax.random.normal(kq, (d, (T + n_unseen) * k), dt))
    F = scale * Q.T.reshape(T + n_unseen, k, d).transpose(0, 2, 1)  # (T+m, d, k)
    return A, F[:T], F[T:]


_DRAWS = {"gaussian": _gaussian_arrays, "orthogonal": _orthogonal_arrays}


@functools.lru_cache(maxsize=None)
def _float64_program(kind: str, impl, sizes: tuple):
    draw = _DRAWS[kind]
    return jax.jit(lambda data, scale: draw(jax.random.wrap_key_data(data, impl=impl),
                                            jnp.float64, scale, *sizes))


def _host_draw(kind, impl, sizes, dt, scale, data):
    with jax.enable_x64(True):
        out = _float64_program(kind, impl, sizes)(jnp.asarray(np.asarray(data)),
                                                  jnp.asarray(np.asarray(scale, np.float64)))
        return tuple(np.asarray(x).astype(dt) for x in out)


def _draw_in_float64(kind: str, key, dt, scale, sizes: tuple, shapes) -> tuple:
    """``_DRAWS[kind](key, float64, scale, *sizes)``, cast to ``dt``. A traced ``scale`` without x64
    is applied after the draw (equal up to one rounding)."""
    if jax.config.jax_enable_x64:
        return tuple(x.astype(dt) for x in _DRAWS[kind](key, jnp.float64, scale, *sizes))
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    # a raw uint32 key is a key of the default implementation: one program for both kinds
    impl = str(jax.random.key_impl(key)) if typed else str(jax.config.jax_default_prng_impl)
    data = jax.random.key_data(key) if typed else key
    after = None
    if not is_concrete(scale):
        scale, after = 1.0, scale
    host = functools.partial(_host_draw, kind, impl, sizes, np.dtype(dt),
                             float(np.asarray(scale)))  # a Python float: exact in float64
    if is_concrete(data):
        out = tuple(jnp.asarray(x) for x in host(data))
    else:
        out = jax.pure_callback(host, tuple(jax.ShapeDtypeStruct(s, dt) for s in shapes), data,
                                vmap_method="sequential")
    if after is not None:
        out = (after * out[0], out[1], out[2]) if kind == "gaussian" else (
            out[0], after * out[1], after * out[2])
    return tuple(out)


def sample_truth(key, d, k, T, *, n_unseen: int = 1, symmetric: bool = True, a_scale=1.0,
                 dtype=None) -> Truth:
    """The paper's Gaussian ground truth (docs/theory.md#model).

    ``A*`` has i.i.d. N(0, a_scale^2) entries, symmetrised ``(A* + A*^T)/2`` when ``symmetric``;
    ``U*_t`` (T of them) and ``U_new`` (``n_unseen`` of them) have i.i.d. N(0, 1) entries.

    One key names one problem in every dtype: the entries are drawn in float64 and cast to
    ``dtype`` (default: JAX's default float dtype), also when x64 is off, so a float32 truth is
    the float64 truth of the same key rounded to float32.
    """
    check_key("key", key)
    d, k, T, n_unseen = _check_sizes(d, k, T, n_unseen)
    check_scalar("a_scale", a_scale)
    dt = float_dtype(dtype)
    A, U, U_new = _draw_in_float64("gaussian", key, dt, a_scale, (d, k, T, n_unseen,
                                                                  bool(symmetric)),
                                   ((d, d), (T, d, k), (n_unseen, d, k)))
    return Truth(A, U, U_new)


def orthogonal_truth(key, d, k, T, *, s=1.0, n_unseen: int = 1, dtype=None) -> Truth:
    """Worked case of claim C2: mutually orthogonal factors with ``U^T U = s^2 I_k``.

    All ``(T + n_unseen) k`` columns of ``U*_1..U*_T, U_new`` are orthogonal, each of norm ``s``
    (needs ``(T + n_unseen) k <= d``). ``A*`` is the symmetrised Gaussian of :func:`sample_truth`.
    Then the SR residual on an unseen task has eigenvalues ``s^2`` (k times) and ``-s^2/T``
    (Tk times) and its best rank-k error is ``k s^4 / T``. Drawn in float64 and cast to ``dtype``,
    as :func:`sample_truth`.
    """
    check_key("key", key)
    d, k, T, n_unseen = _check_sizes(d, k, T, n_unseen)
    check_scalar("s", s, 0.0, lo_open=True)
    cols = (T + n_unseen) * k
    if cols > d:
        raise ValueError(f"orthogonal_truth needs (T + n_unseen) * k <= d; got "
                         f"({T} + {n_unseen}) * {k} = {cols} > d={d}")
    dt = float_dtype(dtype)
    A, U, U_new = _draw_in_float64("orthogonal", key, dt, s, (d, k, T, n_unseen),
                                   ((d, d), (T, d, k), (n_unseen, d, k)))
    return Truth(A, U, U_new)


def load_truth(path) -> Truth:
    """Read a truth from ``.npz`` with arrays ``A_star`` (d,d), ``U_star`` (T,d,k), optional
    ``U_new`` (m,d,k). Raises ``ValueError`` naming the file and the bad or missing array."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"truth file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {n: np.array(z[n]) for n in z.files} if hasattr(z, "files") else None
    except Exception:  # not a zip, pickled data, a truncated file: not an npz we can use
        arrays = None
    if arrays is None:  # also a bare .npy array under an .npz name
        raise ValueError(f"truth file {path!r} is not a valid truth .npz: it must be a NumPy .npz "
                         f"archive (numpy.savez or linmeta.save_truth) holding arrays A_star "
                         f"(d,d), U_star (T,d,k) and optionally U_new (m,d,k)")
    missing = [n for n in ("A_star", "U_star") if n not in arrays]
    if missing:
        raise ValueError(f"truth file {path!r} is missing array(s) {', '.join(missing)}; "
                         "it needs A_star (d,d), U_star (T,d,k) and optionally U_new (m,d,k)")
    try:
        return Truth(arrays["A_star"], arrays["U_star"], arrays.get("U_new"))
    except ValueError as e:
        raise ValueError(f"truth file {path!r}: {e}") from None


def save_truth(path, truth: Truth) -> None:
    """Write ``truth`` to ``.npz`` atomically (:func:`linmeta.core.files.atomic_write_npz`: a
    temporary file, then a rename; the file gets the mode the umask gives)."""
    atomic_write_npz(path, {"A_star": np.asarray(truth.A_star), "U_star": np.asarray(truth.U_star),
                            "U_new": np.asarray(truth.U_new)})
