"""The Ray layer, one module per command (fit_alpha, sweep, nmk, drift) plus how they run
work (tasks, cluster, local_head): it shards, schedules and collects. Imports every layer below
(``worker``, ``results``, ``configs``, ``presets``, ``theory``); nothing imports it but the CLI.
"""
