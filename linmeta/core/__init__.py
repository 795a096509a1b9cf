"""The core model (bottom layer): what every family and method stands on.

- :mod:`.problem`: the ground truth (``A*``, ``U*_t``, unseen tasks) and its samplers;
- :mod:`.data`: task statistics ``(S_xx, S_yx, S_yy)`` per task, population or sampled;
  :mod:`.sampling`: the random streams and memory-bounded data draws of the protocols;
- :mod:`.losses`: the quadratic task loss on statistics and its gradients;
- :mod:`.lora`: adapter parameterisations (``U U^T``, ``U V^T``) and their degrees of freedom;
- :mod:`.metrics`: base, adapter and subspace errors;
- :mod:`.theory`: the base model's closed forms (SR minimiser, residual, Eckart-Young bias,
  fine-tuning rate); imports no solver;
- :mod:`.kernels`: LAPACK-free least squares and objectives for compiled programs;
- :mod:`._validate`, :mod:`.divergence`, :mod:`.files` (atomic writes with the user's umask),
  :mod:`.version`.

The core imports nothing else of linmeta (a test checks the layers: ``pyproject.toml``,
``[tool.importlinter]``).
"""
