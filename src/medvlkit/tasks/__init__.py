"""The tasks: one module or package per job a user asks for.

Each task is a function ``<name>_task(model, data, ..., options) -> result dict`` (or, for the library,
``zeroshot_classify``, ``audit`` ...) that writes its run folder through ``medvlkit.engine.results``. Tasks import the
engine, models and data; they may call one another (``benchmark`` runs ``zeroshot`` and ``probe``), never an
application (enforced by ``lint-imports``, see ``.importlinter``).
"""
