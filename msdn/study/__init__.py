"""The study wiring: the only part of msdn that knows Ray Tune, Optuna and MLflow exist.

`msdn.study.search_space` reads and validates the search space files in search_spaces/*.yaml.
Submodules are imported explicitly, so importing this package stays cheap for Ray workers.
"""
