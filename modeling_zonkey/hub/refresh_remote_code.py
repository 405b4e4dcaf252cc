"""Refresh the remote-code copies of the model files in saved model folders (`pretrained/*/` by default).

    python -m modeling_zonkey.hub.refresh_remote_code                 # every pretrained/*/ folder
    python -m modeling_zonkey.hub.refresh_remote_code runs/tiny ...   # given folders

`save_pretrained` writes the model's own modules (every top-level `modeling_zonkey/*.py`: the model, config and
tokenizer files and what they import) next to the weights, so that a folder loads with `trust_remote_code=True`
without this package. Those copies are generated: after a change to a model file, this command writes the package's
current version into each folder (and removes copies of modules the package no longer has).
"""

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
REPOSITORY = PACKAGE.parent


def remote_code_files() -> list[Path]:
    """The package's model modules: what save_pretrained copies into a saved folder."""
    return sorted(path for path in PACKAGE.glob("*.py") if path.name != "__init__.py")


def refresh(folder: str | Path) -> list[str]:
    """Bring `folder`'s copies of the model modules up to date; returns the file names written or removed."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a saved model folder (no config.json).")
    sources = {path.name: path for path in remote_code_files()}
    changed = []
    for name, source in sources.items():
        target = folder / name
        if not target.is_file() or not filecmp.cmp(source, target, shallow=False):
            shutil.copyfile(source, target)
            changed.append(name)
    for stale in sorted(folder.glob("*.py")):
        if stale.name not in sources:
            stale.unlink()
            changed.append(f"{stale.name} (removed)")
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="saved model folders (default: pretrained/*/ of the repository)")
    args = parser.parse_args(argv)
    folders = args.folders or sorted(p for p in (REPOSITORY / "pretrained").glob("*") if (p / "config.json").is_file())
    for folder in folders:
        try:
            changed = refresh(folder)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"{folder}: {', '.join(changed) if changed else 'up to date'}")


if __name__ == "__main__":
    main()
