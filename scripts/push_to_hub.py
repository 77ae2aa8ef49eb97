#!/usr/bin/env python
"""Publish a relzoo variant (or a folder) on the Hugging Face Hub.

    python scripts/push_to_hub.py --list
    python scripts/push_to_hub.py --variant san10_patch.in1k --weights model_best.pth --dry-run out/san10_patch
    python scripts/push_to_hub.py --variant san10_patch.in1k --weights model_best.pth            # uploads
    python scripts/push_to_hub.py --variant resnet18_apinet.fashion-mnist --weights runs/apinet/model
    python scripts/push_to_hub.py --folder out/san10_patch --repo-id me/san10_patch                # a written folder
    python scripts/push_to_hub.py --variant hsnet_resnet50.pascal5i --weights best_model.pt --space --dry-run out/hs
                                                 # also the Space (app.py, requirements.txt) running relzoo's app

--variant names a file of hub_configs/ (architecture, preprocessing, card metadata). --weights is an official
checkpoint file (converted strictly by the family's converter: SAN model_best.pth, HSNet best_model.pt) or a relzoo
model folder (OUTPUT_DIR/model of scripts/train_*.py; its results.json gives the card the command and the measured
numbers). Without --weights only --dry-run is allowed: the folder then holds a random initialisation, flagged in its
card, and is never uploaded.

--dry-run OUT writes exactly the folder that would be uploaded and sends nothing. Before any upload the folder is
checked: links, sub-folders, credential-like files (.env, tokens, keys) and files that are not part of an export are
refused with the reason. The token comes from --token, HF_TOKEN or `hf auth login`; HF_ENDPOINT selects the Hub.

--space [SPACE_ID] (few-shot variants): also a Gradio Space running relzoo's app on the model repo (default id:
REPO_ID-app); with --dry-run OUT it is written to OUT-space. --space-requirement sets how the Space installs relzoo.
"""
import argparse
import sys

from relzoo.hub import push_to_hub
from relzoo.variants import export_variant, list_models, load_variant


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--variant", help="a variant of hub_configs/ (see --list)")
    what.add_argument("--folder", help="push this already written folder (e.g. an earlier --dry-run)")
    what.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--weights", help="official checkpoint file or relzoo model folder (with --variant)")
    parser.add_argument("--repo-id", help="namespace/name (default: the variant's repo_id; required with --folder)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--dry-run", metavar="OUT", help="write the folder to OUT and upload nothing")
    parser.add_argument("--overwrite", action="store_true", help="with --dry-run: replace OUT if it is not empty")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--space", nargs="?", const="", default=None, metavar="SPACE_ID",
                        help="also the Gradio Space of the app for this few-shot variant (default REPO_ID-app)")
    parser.add_argument("--space-requirement", default=None,
                        help="the requirements.txt line that installs relzoo in the Space (default: relzoo[app] from "
                             "its git repository)")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    if args.list:
        for row in list_models():
            print(f"{row['variant']:45s} {row['family']:17s} {row['params']:>12,d}  {row['repo_id']:50s} "
                  f"weights: {row['weights']}")
        return 0
    try:
        if args.folder:
            if args.weights or args.dry_run:
                return fail("--weights and --dry-run go with --variant (a --folder is pushed as it is)")
            if not args.repo_id:
                return fail("--folder needs --repo-id")
            url = push_to_hub(args.folder, args.repo_id, private=args.private, token=args.token,
                              revision=args.revision, commit_message=args.commit_message or "Upload from relzoo")
            print(f"pushed {args.folder} -> {url}")
            return 0
        spec = load_variant(args.variant)
        repo_id = args.repo_id or spec["repo_id"]
        space = None
        if args.space is not None:
            from relzoo.app.space import DEFAULT_REQUIREMENT, TASK_ARGUMENT
            from relzoo.registry import get_family

            task = get_family(spec["family"]).task
            if task not in TASK_ARGUMENT:
                return fail(f"--space: the app serves few-shot models, {args.variant} is {task}")
            space = dict(space_id=args.space or f"{repo_id}-app", task=task,
                         title=f"relzoo app: {args.variant}",
                         requirement=args.space_requirement or DEFAULT_REQUIREMENT)
        if args.dry_run:
            folder = export_variant(spec, args.dry_run, args.weights, repo_id=repo_id, overwrite=args.overwrite)
            print(f"wrote {folder} (nothing uploaded)" + ("" if args.weights else
                  "; no --weights: random initialisation, flagged in the card, never uploaded"))
            if space:
                from relzoo.app.space import write_space

                where = write_space(f"{str(args.dry_run).rstrip('/')}-space", repo_id=repo_id, task=space["task"],
                                    title=space["title"], requirement=space["requirement"], overwrite=args.overwrite)
                print(f"wrote the Space {space['space_id']} to {where} (nothing uploaded)")
            return 0
        if not args.weights:
            return fail(f"--weights is required to push {args.variant} (there is nothing to publish without weights; "
                        f"--dry-run OUT writes the folder). Official weights: {spec['weights'].get('official')}")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="relzoo-export-") as tmp:
            folder = export_variant(spec, f"{tmp}/export", args.weights, repo_id=repo_id)
            url = push_to_hub(folder, repo_id, private=args.private, token=args.token, revision=args.revision,
                              commit_message=args.commit_message or f"Upload {args.variant} from relzoo")
        print(f"pushed {args.variant} -> {url}")
        if space:
            from relzoo.app.space import push_space, write_space

            with tempfile.TemporaryDirectory(prefix="relzoo-space-") as tmp:
                where = write_space(f"{tmp}/space", repo_id=repo_id, task=space["task"], title=space["title"],
                                    requirement=space["requirement"])
                url = push_space(where, space["space_id"], token=args.token, private=args.private)
            print(f"pushed the Space {space['space_id']} -> {url}")
        return 0
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        return fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
