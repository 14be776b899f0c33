"""The mathematics: spaces (ce-ray's blocks and networks, and your own member), models, NTK
sampling (ce-ray's exact samplers and the generic one for any member), the alpha fit, the
curves, the NMK and the NTK drift. Pure NumPy/PyTorch; imports only ``ce_ray.choices`` and
``ce_ray.limits`` -- never Ray, storage or I/O.
"""
