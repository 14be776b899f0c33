"""What runs inside a Ray Train worker: datasets, the input pipeline, the training loop and
the trial record. Imports ``theory``, ``presets`` and ``results.storage``; never Ray Tune.
"""
