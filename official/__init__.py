"""Runtime around the models: training, evaluation, export (the entry points)."""
