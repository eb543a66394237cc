"""The main job's machinery: one training run, its metrics, checkpoints, diagnostics and the report."""
