#!/usr/bin/env python
"""Push a saved Zonkey folder to the Hugging Face Hub (model, configs, tokenizer, remote code, evaluation,
and the model card last).

    python examples/push_to_hub.py runs/zonkey-tiny --repo_id your-name/zonkey-tiny
    python examples/push_to_hub.py runs/zonkey-tiny --repo_id org/zonkey --private --revision v0.1
    python examples/push_to_hub.py runs/zonkey-tiny --repo_id org/zonkey --dry_run      # list the files only

The token comes from --token, HF_TOKEN or `hf auth login`. The local folder is never modified.
"""

import argparse
import sys

from modeling_zonkey.hub.push import files_to_push, push_folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a folder written by save_pretrained (e.g. the training script's --output_dir)")
    parser.add_argument("--repo_id", required=True, help="organisation/name or user/name")
    parser.add_argument("--token", default=None)
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="a branch to push to (created if needed)")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--dry_run", action="store_true", help="list what would be pushed, push nothing")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:
            files = files_to_push(args.folder)
            print("\n".join(files))
            print(f"({len(files)} files would be pushed to {args.repo_id})")
            return 0
        result = push_folder(args.folder, args.repo_id, token=args.token, private=args.private,
                             revision=args.revision, commit_message=args.commit_message, create_pr=args.create_pr)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {len(result.files)} files to https://huggingface.co/{result.repo_id}"
          + (f" (branch {result.revision})" if result.revision else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
