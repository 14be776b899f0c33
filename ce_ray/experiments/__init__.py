"""The Ray layer: it shards, schedules and collects. One module per command (fit_alpha with
its shards, sweep with its trial, nmk, drift); how they run work (tasks, cluster, local_head);
what a sweep prints and logs (console, trackers); and every private Ray API and Ray workaround
in one place (ray_compat). Imports every layer below (``worker``, ``results``, ``configs``,
``presets``, ``theory``); nothing imports it but the CLI.
"""
