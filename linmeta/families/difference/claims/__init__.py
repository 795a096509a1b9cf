"""Claims D1-D5 of the difference family, one module each, with the contract of
:mod:`linmeta.engine.claims` (``run(setting, seed) -> ClaimResult``, ``plot(result, out_dir)``)."""
