"""The engine: what every task is built from.

Embedding with its cache (``features``, ``cache``, ``pixels``, ``identity``, ``seen``), the one zero-shot answer
path (``answer``), labels and metrics (``labels``, ``metrics``, ``scores``, ``bootstrap``), the one training loop
(``training``, ``losses``, ``checkpoint``, ``distributed``, ``interrupt``), the options every task takes
(``options``) and the result writer (``results``, ``plots``). Imports models, data and the base modules, never a
task or an application (enforced by ``lint-imports``, see ``.importlinter``).
"""
