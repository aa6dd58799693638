"""The built-in plugins: the reference quantizers (``none``, ``pact``) and objectives (``cross_entropy``,
``saliency_guided``). They are registered through entry points exactly like a third-party plugin, and the
harness never imports this package by name."""
