"""The four reference method pieces, registered through entry points exactly like a third-party plugin.

Quantizers: ``none``, ``pact``. Objectives: ``cross_entropy``, ``saliency_guided``.
"""
