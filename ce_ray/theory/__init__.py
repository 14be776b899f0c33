"""The mathematics: spaces, models, NTK sampling, the alpha fit, the curves, the NMK and the
NTK drift. Pure NumPy/PyTorch; imports only ``ce_ray.choices`` -- never Ray, storage or I/O.
"""
