"""Training support for examples/train_zonkey.py (not part of the model's remote code): the run's launch on its
processes (launch.py), the model and level-0 documents from text corpora (model_and_data.py, data.py), the optimizer
steps (steps.py), checkpoints that resume exactly and the run's folder (checkpointing.py, run_folder.py), processes
that stop together (agreement.py), the validation run during training, and CPU threads for busy machines."""
