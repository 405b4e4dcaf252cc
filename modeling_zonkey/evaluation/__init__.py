"""Evaluation (not part of the model's remote code): the evaluation suite of a trained model (suite.py), its
metrics, text statistics, Markdown tables and pictures, the same-size byte GPT-2 baseline, the collapse diagnostics,
and segmentation inspection (segment_text, mark_boundaries)."""
