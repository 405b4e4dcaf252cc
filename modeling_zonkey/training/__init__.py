"""Training support (not part of the model's remote code): level-0 documents from text corpora, checkpoints
that resume exactly, the validation run during training, and CPU threads for busy machines."""
