"""Mutants of linmeta.families.representation.theory that no verify row can see (issue 18).

Verify's rows compare each closed form with an independent computation (claims R1-R6); what is left
here is API behaviour a row has no reason to exercise: documented default arguments and the traced
path (inside ``jit`` the domain checks are skipped and the formula's value is returned).
"""
import jax
import numpy as np
import pytest

from linmeta.families.representation import theory

jax.config.update("jax_enable_x64", True)


def _instance():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((4, 2))
    betas = rng.standard_normal((3, 4))
    return B, betas


def test_gap_limit_default_gamma_is_zero():
    B, betas = _instance()
    assert float(theory.adaptrep_gap_limit(B, betas)) == pytest.approx(
        float(theory.adaptrep_gap_limit(B, betas, 0.0)), rel=1e-14)
    assert float(theory.adaptrep_gap_limit(B, betas)) != pytest.approx(
        float(theory.adaptrep_gap_limit(B, betas, 0.5)), rel=1e-3)


def test_frozen_heads_default_gamma_is_zero():
    B, betas = _instance()
    np.testing.assert_allclose(theory.frozen_heads(B, betas), theory.frozen_heads(B, betas, 0.0),
                               rtol=1e-14)
