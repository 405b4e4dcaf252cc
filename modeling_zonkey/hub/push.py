"""Publish a saved Zonkey folder to the Hugging Face Hub: two commits, the model first, its card last.

What goes up (`files_to_push`): the weights (*.safetensors), config.json (with auto_map), the tokenizer and
generation configs, the remote-code .py files, train_results.json and evaluation/ (tables and pictures);
training checkpoints (step_N/, epoch_N/), TensorBoard logs and temporary folders stay local. README.md,
the model card (rendered from model_card.md with the repo id and the folder's training and evaluation
records), is pushed alone in a second commit, because every push_to_hub rewrites README.md (with create_pr, both go
in one pull request).
Nothing in the local folder is changed or deleted, whether the push succeeds or not.
"""

import json
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json")
PUSHED_SUFFIXES = (".safetensors", ".json", ".py", ".md", ".png", ".html")
PUSHED_SUBFOLDERS = ("evaluation",)  # other subfolders (checkpoints, TensorBoard logs) stay local


@dataclass
class PushResult:
    repo_id: str
    revision: str | None
    files: list[str]  # paths in the repository, card last
    commit_urls: list[str]


def files_to_push(folder: str | Path) -> list[str]:
    """Relative paths of the folder's files that a push sends, README.md (the card) last. Errors name what
    is missing from a folder that is not a complete saved model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no folder {folder}: give a folder written by save_pretrained (e.g. the training "
                         "script's --output_dir).")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a complete saved model: {', '.join(missing)} missing (save the model "
                         "and its tokenizer with save_pretrained).")
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    code = {reference.partition(".")[0] + ".py" for reference in auto_map.values()}
    absent = sorted(name for name in code if not (folder / name).is_file())
    if absent:
        raise ValueError(f"config.json's auto_map names {absent}, not in {folder}: save with the zonkey package "
                         "imported, so that save_pretrained copies the remote code.")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        parts = relative.split("/")
        if (path.is_file() and path.suffix in PUSHED_SUFFIXES and relative != "README.md"
                and (len(parts) == 1 or (len(parts) == 2 and parts[0] in PUSHED_SUBFOLDERS))):
            files.append(relative)
    return files + (["README.md"] if (folder / "README.md").is_file() else [])


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                revision: str | None = None, commit_message: str | None = None, create_pr: bool = False,
                ) -> PushResult:
    """Create (or reuse) the model repository and upload the folder: one commit with everything but the card,
    then the card. Raises ValueError with what to do when there is no token or the Hub cannot be reached."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    from .model_card import render_model_card

    folder = Path(folder)
    files = files_to_push(folder)
    card = render_model_card(folder, repo_id)  # the card with this repo id; the local README.md is left as is
    if card is not None and "README.md" not in files:
        files.append("README.md")
    if "/" not in repo_id:
        raise ValueError(f"repo_id must be 'organisation/name' or 'user/name', got {repo_id!r}.")
    token = token or get_token()
    if not token:
        raise ValueError(f"no Hugging Face token: run `hf auth login`, set HF_TOKEN or pass a token. Nothing was "
                         f"uploaded; {folder} is unchanged.")
    api = HfApi(token=token)
    message = commit_message or f"Upload Zonkey model from {folder.name}"
    body = [f for f in files if f != "README.md"]
    urls = []
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commits = [([CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in body], message)]
        if "README.md" in files:
            content = card.encode("utf-8") if card is not None else str(folder / "README.md")
            card_operation = CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=content)
            if create_pr:  # one pull request with everything (two commits would open two PRs)
                commits[0][0].append(card_operation)
            else:
                commits.append(([card_operation], "Update model card"))
        for operations, text in commits:
            info = api.create_commit(repo_id, operations=operations, commit_message=text, revision=revision,
                                     create_pr=create_pr)
            urls.append(getattr(info, "commit_url", str(info)))
    except Exception as error:  # noqa: BLE001 - Hub HTTP errors, the HTTP client's network errors, offline mode
        raise ValueError(f"pushing {folder} to {repo_id} failed ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no detail'}). "
                         f"Check the network, the token's write access and the repo id; {folder} is unchanged, "
                         "run the push again.") from error
    return PushResult(repo_id, revision, files, urls)
