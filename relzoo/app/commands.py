"""``relzoo segment``, ``relzoo classify`` and ``relzoo app``: the app's inference path without a browser.

    relzoo segment --model DIR --support a.png --support-mask a_mask.png [--support b.png --support-mask b_mask.png]
                   --query q.jpg [--query-dir queries/] --output out/
    relzoo classify --model DIR --support-dir classes/ --query-dir queries/ [--output out/] [--correspondence]
    relzoo app [--segmentation-model DIR] [--classification-model DIR] [--port 7860]

``classes/`` holds one folder of images per class (the folder name is the class name). Outputs: PNG masks and
overlays (segment), ``results.json`` (both); errors are one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(folder: str | Path, name: str) -> list[Path]:
    """The images of ``folder`` (by suffix, sorted); an error names the folder when there are none."""
    from .inference import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{name}: no such folder {str(folder)!r}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{name}: {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def add_parsers(commands) -> None:
    seg = commands.add_parser("segment", help="few-shot segmentation of your images (HSNet folder)",
                              description="Masks of query images from support images and their masks.")
    seg.add_argument("--model", required=True, help="an HSNet folder (relzoo fine-tuning output, converted "
                                                    "official checkpoint) or Hub id")
    seg.add_argument("--support", action="append", required=True, help="a support image (repeat for more shots)")
    seg.add_argument("--support-mask", action="append", required=True, dest="support_mask",
                     help="its mask: white object on black, or painted pixels on a transparent layer (same order)")
    seg.add_argument("--query", action="append", default=[], help="a query image (repeatable)")
    seg.add_argument("--query-dir", dest="query_dir", help="a folder of query images")
    seg.add_argument("--output", required=True, help="folder for <query>_mask.png, <query>_overlay.png, results.json")
    cls = commands.add_parser("classify", help="few-shot classification of your images (ProtoNet / CTX folder)",
                              description="Class probabilities of query images from a few images per class.")
    cls.add_argument("--model", required=True, help="a ProtoNet or CrossTransformers folder or Hub id")
    cls.add_argument("--support-dir", required=True, dest="support_dir",
                     help="one sub-folder of images per class; the sub-folder's name is the class name")
    cls.add_argument("--query", action="append", default=[], help="a query image (repeatable)")
    cls.add_argument("--query-dir", dest="query_dir", help="a folder of query images")
    cls.add_argument("--output", help="folder for results.json (and the correspondence pictures)")
    cls.add_argument("--correspondence", action="store_true",
                     help="CrossTransformers: also write <query>_correspondence.png (needs --output)")
    for parser in (seg, cls):
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--batch-size", type=int, default=4, dest="batch_size", help="queries per forward")
    app = commands.add_parser("app", help="the browser app (Gradio) for both tasks",
                              description="Serve the few-shot app; needs `pip install relzoo[app]`.")
    app.add_argument("--segmentation-model", dest="segmentation_model", help="HSNet folder or Hub id")
    app.add_argument("--classification-model", dest="classification_model", help="ProtoNet / CTX folder or Hub id")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--device", default="cpu")


def _queries(args) -> list[Path]:
    from .inference import InputError

    queries = [Path(q) for q in args.query]
    if args.query_dir:
        queries += image_files(args.query_dir, "--query-dir")
    if not queries:
        raise InputError("--query / --query-dir: at least one query image is needed, got none")
    return queries


def _progress(total: int, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="image", disable=total < 2, file=sys.stderr)


def run_segment(args) -> int:
    from .inference import InputError, load_fewshot_model, mask_overlay, read_image, segment

    if len(args.support) != len(args.support_mask):
        raise InputError(f"--support-mask: one mask per --support image is needed, got {len(args.support)} images "
                         f"and {len(args.support_mask)} masks")
    if args.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {args.batch_size}")
    queries = _queries(args)
    fm = load_fewshot_model(args.model, args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    with _progress(len(queries), "segment") as bar:   # the supports are read once for all queries
        results = segment(fm, list(zip(args.support, args.support_mask)), queries, args.batch_size, bar.update)
    rows = []
    for path, result in zip(queries, results):
        stem = path.stem
        Image.fromarray(result.mask.astype("uint8") * 255).save(out / f"{stem}_mask.png")
        mask_overlay(read_image(path), result.mask).save(out / f"{stem}_overlay.png")
        rows.append(dict(query=str(path), mask=f"{stem}_mask.png", overlay=f"{stem}_overlay.png",
                         size=list(result.size), coverage=round(result.coverage, 6), seconds=round(result.seconds, 4)))
    summary = dict(model=fm.describe(), shots=len(args.support), support=args.support, queries=rows)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in rows:
        print(f"{r['query']}: {100 * r['coverage']:.1f} % of the image, {r['seconds']:.2f} s -> {out / r['mask']}")
    return 0


def run_classify(args) -> int:
    from .inference import InputError, classify, correspondence_picture, load_fewshot_model

    if args.correspondence and not args.output:
        raise InputError("--correspondence: the pictures need an --output folder, got none")
    if args.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {args.batch_size}")
    root = Path(args.support_dir)
    if not root.is_dir():
        raise InputError(f"--support-dir: no such folder {str(root)!r}")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"--support-dir: {str(root)!r} has no class sub-folders (one folder of images per class)")
    support = {c.name: image_files(c, f"--support-dir class {c.name!r}") for c in classes}
    queries = _queries(args)
    fm = load_fewshot_model(args.model, args.device)
    with _progress(len(queries), "classify") as bar:   # the supports are embedded once for all queries
        results = classify(fm, support, queries, args.batch_size, bar.update)
    rows = [dict(query=str(path), predicted=r.predicted, probabilities={k: round(v, 6) for k, v in
                                                                        r.probabilities.items()},
                 seconds=round(r.seconds, 4)) for path, r in zip(queries, results)]
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        if args.correspondence:
            for r in rows:
                name = f"{Path(r['query']).stem}_correspondence.png"
                correspondence_picture(fm, support, r["query"]).save(out / name)
                r["correspondence"] = name
        summary = dict(model=fm.describe(), classes=list(support), shots={k: len(v) for k, v in support.items()},
                       queries=rows)
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in rows:
        top = ", ".join(f"{k} {100 * v:.1f} %" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
        print(f"{r['query']}: {r['predicted']} ({top})")
    return 0


def run_app(args) -> int:
    from .inference import InputError

    if not (args.segmentation_model or args.classification_model):
        raise InputError("--segmentation-model / --classification-model: give at least one model folder, got none")
    try:
        import gradio  # noqa: F401  (the optional extra)

        from .gradio_app import build_app
    except ImportError as err:
        raise InputError(f"the app needs Gradio, which is not installed ({err}): pip install 'relzoo[app]'") from None
    demo = build_app(args.segmentation_model, args.classification_model, device=args.device)
    print(f"relzoo app: http://{args.host}:{args.port}/", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=False)
    return 0


RUNNERS = {"segment": run_segment, "classify": run_classify, "app": run_app}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .inference import InputError

    try:
        return RUNNERS[args.command](args)
    except InputError as err:
        parser.exit(2, f"relzoo {args.command}: error: {err}\n")
