"""What runs inside a Ray Train worker: datasets, the input pipeline, the training loop and
the trial record. Imports ``results.storage``, ``configs``, ``presets`` and ``theory``; of Ray,
only Ray Train's worker API (``ray.train``), inside the loop -- never Ray Tune.
"""
