"""The Hugging Face Hub and transformers integrations (not part of the model's remote code): pushing a folder
(push.py), the model card (model_card.py), transformers pipelines (pipelines.py), and refreshing the remote-code
copies in pretrained/ (refresh_remote_code.py)."""

from .push import files_to_push, push_folder

__all__ = ["files_to_push", "push_folder"]
