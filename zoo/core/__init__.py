"""What every paper package builds on: errors (``errors``), the registry of models and shipped
checkpoints (``registry``), the ``ZooModule`` base (``module``), callbacks (``callbacks``), plots
(``plots``) and the command line (``cli``: the command table; ``lightning_cli``: fit/validate/
test/predict; ``register``, ``seeds``). Importing this package imports nothing else."""
