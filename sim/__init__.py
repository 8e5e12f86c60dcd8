"""A deterministic simulation of the whole system: portal, client, gateway, coturn-like relays.

See ``sim/world.py`` for the world, ``sim/schedule.py`` for fault schedules and their JSON,
``sim/invariants.py`` for what is checked, ``sim/runner.py`` for runs, shrinking and replay, and
``python -m sim --help`` for the CLI.
"""
