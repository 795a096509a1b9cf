"""Verdict rows: one measured quantity of a claim beside its prediction, and tolerances as data.

A check is only as strict as its tolerance, so a tolerance is not a bare number: a
:class:`Tolerance` records the rule it was derived by and the inputs of that rule, and its value
is recomputed from them. The rules (:data:`RULES`):

- ``"rounding"``: ``factor * eps * cond`` -- floating-point rounding of a computation whose error
  grows with the condition number ``cond`` (``eps``: machine epsilon of the working dtype, ``factor``:
  the number of rounding steps that accumulate, e.g. ``10 d``).
- ``"rounding_sq"``: ``(factor * eps * cond)^2`` -- the same for a sum of squares of rounding
  errors (an objective or a squared distance that is zero in exact arithmetic).
- ``"asymptotic"``: ``factor * scale`` -- the size ``scale`` of the first neglected term of an
  expansion (e.g. ``d / n``) times a stated constant ``factor`` (at most ``ASYMPTOTIC_CAP``).
- ``"seeds"``: ``t_{1-p/2}(n - 1) * se + bias`` -- a two-sided Student-t confidence band of level
  ``1 - p`` from the standard error ``se`` over ``n`` independent seeds, plus a stated bound ``bias``
  on the systematic error of the asymptotic prediction (e.g. the O(d/N) correction at the smallest N).
- ``"chi2"``: the two-sided band ``[q_{p/2}, q_{1-p/2}] / dof`` of a variance ratio
  ``s^2 / sigma^2`` with ``dof`` degrees of freedom (``q``: chi-square quantiles); ``value`` is the
  upper half-width, ``lower`` the lower one.
- ``"contraction"``: ``scale * rate^steps + floor`` -- an iteration contracting by ``rate`` per step,
  plus the rounding floor it settles at.
- ``"richardson"``: ``max_i (2 q_i + r_i) / p_i`` -- how far a smooth iteration started at
  ``x* + delta`` may end from its linearised prediction (norm ``p_i``): ``q_i`` is the second-order
  term measured by Richardson extrapolation (runs from ``x* + delta`` and ``x* + 2 delta``:
  ``q = ||e(2 delta) - 2 e(delta)|| / 2``; the factor 2 covers the third-order term while it is
  smaller) and ``r_i`` a rounding bound (C3's alternating protocol).
- ``"exact"``: ``0`` -- integer counts or labels that must match exactly.
- ``"stated"``: a threshold that is part of a definition or of an independent solver's stopping
  rule (C3's recovery threshold, BFGS's gradient tolerance); it must say ``why``.

:func:`audit` checks a row's tolerance against its derivation: the value equals the rule applied
to the inputs, and no tolerance is looser than its rule allows (a float64 rounding tolerance above
``ROUNDING_CAP`` needs a stated reason; Student-t and chi-square bands need ``p >= P_MIN``).
``linmeta verify`` fails a row whose tolerance does not pass the audit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["Verdict", "Tolerance", "RULES", "audit", "audited", "fmt", "ROUNDING_CAP", "FACTOR_CAP", "P_MIN",
           "ASYMPTOTIC_CAP"]

ROUNDING_CAP = 1e-8   # largest float64 rounding tolerance without a stated reason
FACTOR_CAP = 1e4      # largest accumulation factor of a rounding tolerance
P_MIN = 1e-6          # smallest two-sided level p of a statistical band (about 5 sigma)
ASYMPTOTIC_CAP = 10   # largest constant in front of a neglected term


def _t_quantile(q, dof):
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def _chi2_band(dof, p):
    from scipy import stats

    lo = float(stats.chi2.ppf(p / 2, dof)) / dof
    hi = float(stats.chi2.ppf(1 - p / 2, dof)) / dof
    return lo, hi


def _rounding(factor, eps, cond=1.0, why=""):
    return float(factor) * float(eps) * float(cond)


def _rounding_sq(factor, eps, cond=1.0, why=""):
    return _rounding(factor, eps, cond) ** 2


def _asymptotic(factor, scale, why=""):
    return float(factor) * float(scale)


def _seeds(p, n_seeds, se, bias=0.0, why=""):
    return _t_quantile(1 - p / 2, n_seeds - 1) * float(se) + float(bias)


def _chi2(dof, p):
    lo, hi = _chi2_band(dof, p)
    return hi - 1.0


def _contraction(rate, steps, scale=1.0, floor=0.0):
    return float(scale) * float(rate) ** float(steps) + float(floor)


def _richardson(quadratic, rounding, prediction):
    return max((2 * q + r) / p for q, r, p in zip(quadratic, rounding, prediction))


def _exact():
    return 0.0


def _stated(value, why):
    return float(value)


RULES = {"rounding": _rounding, "rounding_sq": _rounding_sq, "asymptotic": _asymptotic,
         "seeds": _seeds, "chi2": _chi2, "contraction": _contraction,
         "richardson": _richardson, "exact": _exact, "stated": _stated}


def _eps():
    import jax.numpy as jnp

    return float(jnp.finfo(jnp.asarray(0.0).dtype).eps)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A tolerance with its derivation: ``value = RULES[rule](**inputs)``.

    ``lower`` is the lower half-width of an asymmetric band (chi-square); ``text`` says in words
    what the tolerance is and where it comes from. Build one with the class methods."""

    value: float
    rule: str
    inputs: dict
    text: str
    lower: float | None = None

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def rounding(cls, factor, cond=1.0, *, what="", why="", eps=None):
        """``factor * eps * cond`` (eps of the working dtype unless given)."""
        eps = _eps() if eps is None else float(eps)
        inputs = dict(factor=float(factor), eps=eps, cond=float(cond))
        if why:
            inputs["why"] = why
        v = _rounding(**inputs)
        c = "" if float(cond) == 1.0 else f" x cond {float(cond):.3g}"
        text = f"{v:.2g} = {float(factor):g} eps{c} (rounding{', ' + what if what else ''})"
        return cls(v, "rounding", inputs, text + (f"; {why}" if why else ""))

    @classmethod
    def rounding_sq(cls, factor, cond=1.0, *, what="", why="", eps=None):
        """``(factor * eps * cond)^2``: a sum of squares of rounding errors."""
        eps = _eps() if eps is None else float(eps)
        inputs = dict(factor=float(factor), eps=eps, cond=float(cond))
        if why:
            inputs["why"] = why
        v = _rounding_sq(**inputs)
        c = "" if float(cond) == 1.0 else f" x {float(cond):.3g}"
        text = (f"{v:.2g} = ({float(factor):g} eps{c})^2 (squared rounding"
                f"{', ' + what if what else ''})")
        return cls(v, "rounding_sq", inputs, text + (f"; {why}" if why else ""))

    @classmethod
    def asymptotic(cls, factor, scale, why):
        """``factor * scale``: the first neglected term ``scale`` of an expansion, ``why`` says
        which."""
        if not why:
            raise ValueError("an asymptotic tolerance needs its derivation (why)")
        inputs = dict(factor=float(factor), scale=float(scale), why=why)
        v = _asymptotic(**inputs)
        return cls(v, "asymptotic", inputs, f"{v:.3g} = {float(factor):g} x {float(scale):.3g} "
                                             f"({why})")

    @classmethod
    def seeds(cls, se, n_seeds, *, bias=0.0, bias_why="", p=0.01):
        """Student-t band ``t_{1-p/2}(n_seeds - 1) se + bias``."""
        inputs = dict(p=float(p), n_seeds=int(n_seeds), se=float(se), bias=float(bias))
        if bias_why:
            inputs["why"] = bias_why
        v = _seeds(**inputs)
        t = _t_quantile(1 - p / 2, n_seeds - 1)
        text = (f"{v:.3g} = t_{{{1 - p / 2:g}}}({n_seeds - 1}) {t:.2f} x SE {float(se):.3g} over "
                f"{n_seeds} seeds" + (f" + {float(bias):.3g} ({bias_why})" if bias else ""))
        return cls(v, "seeds", inputs, text)

    @classmethod
    def chi2(cls, dof, *, p=1e-6):
        """Two-sided chi-square band of ``s^2 / sigma^2`` with ``dof`` degrees of freedom."""
        inputs = dict(dof=float(dof), p=float(p))
        lo, hi = _chi2_band(dof, p)
        text = (f"[{lo:.5f}, {hi:.5f}]: two-sided chi-square band, {int(dof)} degrees of freedom, "
                f"p = {p:g}")
        return cls(hi - 1.0, "chi2", inputs, text, lower=1.0 - lo)

    @classmethod
    def contraction(cls, rate, steps, *, scale=1.0, floor=0.0, floor_why=""):
        """``scale * rate^steps + floor``."""
        inputs = dict(rate=float(rate), steps=float(steps), scale=float(scale), floor=float(floor))
        v = _contraction(**inputs)
        text = (f"{v:.2g} = {float(scale):.3g} x {float(rate):g}^{int(steps)} + {float(floor):.2g}"
                f" (contraction{'; floor: ' + floor_why if floor_why else ''})")
        return cls(v, "contraction", inputs, text)

    @classmethod
    def richardson(cls, quadratic, rounding, prediction):
        """``max_i (2 q_i + r_i) / p_i``: distance of a run from its linearised prediction allowed
        by its measured second-order term ``q_i`` and a rounding bound ``r_i`` (see module)."""
        inputs = dict(quadratic=[float(q) for q in quadratic],
                      rounding=[float(r) for r in rounding],
                      prediction=[float(p) for p in prediction])
        v = _richardson(**inputs)
        text = (f"per run (2 q + r) / ||J^n delta||, q = ||e(2 delta) - 2 e(delta)||/2 (second order,"
                f" Richardson), r = rounding; worst {v:.2g}")
        return cls(v, "richardson", inputs, text)

    @classmethod
    def exact(cls, what="exact counts"):
        return cls(0.0, "exact", {}, what)

    @classmethod
    def stated(cls, value, why):
        """A threshold that is part of a definition or of an independent solver (say ``why``)."""
        if not why:
            raise ValueError("a stated tolerance needs its reason (why)")
        return cls(float(value), "stated", dict(value=float(value), why=why),
                   f"{float(value):g} ({why})")

    # -- comparisons --------------------------------------------------------------------------
    def admits(self, deviation) -> bool:
        """Every ``|deviation| <= value`` (NaN fails)."""
        import numpy as np

        dev = np.abs(np.asarray(deviation, float))
        return bool(dev.size == 0 or (np.all(np.isfinite(dev)) and np.all(dev <= self.value)))

    def below(self, values) -> bool:
        """Every value ``< self.value`` (NaN fails)."""
        import numpy as np

        v = np.asarray(values, float)
        return bool(v.size == 0 or (np.all(np.isfinite(v)) and np.all(v < self.value)))

    def contains_ratio(self, ratio) -> bool:
        """``1 - lower <= ratio <= 1 + value`` (a band around 1)."""
        lo = self.value if self.lower is None else self.lower
        r = float(ratio)
        return bool(math.isfinite(r) and 1.0 - lo <= r <= 1.0 + self.value)

    def as_dict(self) -> dict:
        d = dict(value=self.value, rule=self.rule, inputs=dict(self.inputs))
        if self.lower is not None:
            d["lower"] = self.lower
        return d


def audit(tol: Tolerance, float64: bool = True) -> str:
    """Why ``tol`` is looser than its derivation allows ('' when it is not).

    - the value must equal ``RULES[rule](**inputs)`` (relative 1e-9);
    - rounding: ``factor <= FACTOR_CAP``, ``cond >= 1``, and in float64 ``value <= ROUNDING_CAP``
      (``ROUNDING_CAP^2`` for rounding_sq) unless the inputs say ``why``;
    - asymptotic: ``0 < factor <= ASYMPTOTIC_CAP`` and a ``why``;
    - seeds / chi2: ``p >= P_MIN``; seeds need at least 2 seeds and a finite standard error;
    - contraction: ``0 <= rate < 1``; in float64 ``value <= ROUNDING_CAP`` unless ``floor`` is
      stated (``floor_why`` goes in the text);
    - stated: a reason.
    """
    if not isinstance(tol, Tolerance):
        return "no structured tolerance"
    if tol.rule not in RULES:
        return f"unknown rule {tol.rule!r}"
    try:
        want = RULES[tol.rule](**tol.inputs)
    except Exception as e:  # noqa: BLE001 - a malformed derivation is an audit failure
        return f"inputs do not fit rule {tol.rule!r}: {type(e).__name__}: {e}"
    if not (math.isfinite(tol.value) and math.isfinite(want)):
        return f"tolerance not finite ({tol.value}, derivation gives {want})"
    if abs(tol.value - want) > 1e-9 * max(abs(want), 1e-300):
        return f"value {tol.value:.3g} differs from its derivation {want:.3g}"
    i = tol.inputs
    if tol.rule in ("rounding", "rounding_sq"):
        if i["factor"] > FACTOR_CAP:
            return f"rounding factor {i['factor']:g} > {FACTOR_CAP:g}"
        if i["cond"] < 1:
            return f"condition number {i['cond']:g} < 1"
        cap = ROUNDING_CAP if tol.rule == "rounding" else ROUNDING_CAP ** 2
        if float64 and tol.value > cap and not i.get("why"):
            return f"float64 {tol.rule} tolerance {tol.value:.2g} > {cap:g} without a reason"
    elif tol.rule == "asymptotic":
        if not 0 < i["factor"] <= ASYMPTOTIC_CAP:
            return f"asymptotic factor {i['factor']:g} not in (0, {ASYMPTOTIC_CAP:g}]"
        if not i.get("why"):
            return "an asymptotic tolerance needs its derivation (why)"
    elif tol.rule in ("seeds", "chi2"):
        if i["p"] < P_MIN:
            return f"band level p = {i['p']:g} < {P_MIN:g}"
        if tol.rule == "seeds" and (i["n_seeds"] < 2 or not math.isfinite(i["se"])):
            return "a seed band needs >= 2 seeds and a finite standard error"
        if tol.rule == "seeds" and i["bias"] > 0 and not i.get("why"):
            return "a bias term needs its derivation (why)"
    elif tol.rule == "contraction":
        if not 0 <= i["rate"] < 1:
            return f"contraction rate {i['rate']:g} not in [0, 1)"
    elif tol.rule == "richardson":
        if min(i["prediction"], default=1.0) <= 0:
            return "a linearised prediction of norm 0"
    elif tol.rule == "stated" and not i.get("why"):
        return "a stated tolerance needs its reason"
    return ""


def audited(verdicts, float64: bool = True) -> list:
    """The rows with every check whose structured tolerance fails :func:`audit` marked failed
    (``passed=False``, the reason first in the note). Rows without a :class:`Tolerance` pass
    through unchanged."""
    out = []
    for v in verdicts:
        if v.kind == "check" and isinstance(getattr(v, "tol", None), Tolerance):
            problem = audit(v.tol, float64)
            if problem:
                v = dataclasses.replace(v, passed=False,
                                        note=f"tolerance audit failed: {problem}; {v.note}")
        out.append(v)
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One row of the verification table.

    Attributes:
      claim: claim id from the theory document, e.g. ``"C3"``.
      quantity: what was measured, in words (e.g. ``"max ||A_hat-A*||_F/||A*||_F, T=3, pop."``).
      predicted: the theory's value (number) or statement (string, e.g. ``"< 1e-6"``, ``"measured"``).
      measured: the measured value (mean over seeds where there are several).
      spread: spread over seeds (max - min), 0 for a single measurement, NaN when not applicable.
      tolerance: the tolerance the comparison used: text, or a :class:`Tolerance` (then the text
        is its ``text`` and the structured tolerance is kept in ``tol``).
      passed: whether the measurement agrees with the prediction within the tolerance. For
        quantities that are only mapped (unconfirmed statements), ``passed`` says whether the
        measurement ran and is finite, and ``kind`` is ``"measured"``.
      kind: ``"check"`` (a prediction is tested) or ``"measured"`` (no theory predicts the value).
      note: free text (setting, seeds, dtype).
      tol: the structured :class:`Tolerance` (value, rule, inputs), or None.
    """

    claim: str
    quantity: str
    predicted: Any
    measured: Any
    spread: float = 0.0
    tolerance: Any = ""
    passed: bool = True
    kind: str = "check"
    note: str = ""
    tol: Any = None

    def __post_init__(self):
        if isinstance(self.tolerance, Tolerance):
            object.__setattr__(self, "tol", self.tolerance)
            object.__setattr__(self, "tolerance", self.tolerance.text)

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tol"}
        for k in ("predicted", "measured", "spread"):
            v = d[k]
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)
            d[k] = v
        d["passed"] = bool(d["passed"])
        if isinstance(self.tol, Tolerance):
            t = self.tol.as_dict()
            d["tolerance_value"] = t["value"]
            d["tolerance_rule"] = t["rule"]
            d["tolerance_inputs"] = t["inputs"]
            if "lower" in t:
                d["tolerance_lower"] = t["lower"]
        return d


def fmt(x) -> str:
    """Compact text for a number or a string."""
    if isinstance(x, str):
        return x
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if x == 0 or (1e-3 <= abs(x) < 1e4):
        return f"{x:.4g}"
    return f"{x:.3e}"
