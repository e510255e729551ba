"""The training loop, one idea per module: `loop` (`Trainer`, whose ``run()`` owns a run's
lifecycle), `cli`, `resolve` (a config against its data), `resume` (where to continue from and
whether the settings allow it), `lr_schedule`, `validation`, `evaluation` (sample metrics and
grids), `data_stream`, `rng`, `signals` and `progress`. `dit_core.train` is the public entry point."""
