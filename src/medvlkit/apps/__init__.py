"""The applications: what a person runs.

``cli`` (the ``medvlkit`` command: parses flags, calls one task, prints through ``display``), ``serve`` (the HTTP
server and its page), ``report`` (the HTML report of a run folder), ``config_file`` (``--config`` files) and
``plugins`` (third-party backbones and adapters found through entry points). Nothing below imports this layer.
"""
