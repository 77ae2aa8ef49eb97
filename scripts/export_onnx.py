#!/usr/bin/env python
"""Export a classifier to ONNX and check it with onnxruntime against PyTorch.

    python scripts/export_onnx.py --model runs/san/model --output san.onnx
    python scripts/export_onnx.py --model san10_patch --no-pretrained --image-size 224 --output san10_patch.onnx
    python scripts/export_onnx.py --model hf-hub:relzoo/resnet18_apinet.fashion-mnist --output apinet.onnx

--model: a relzoo model folder (SAN, BatchFormer, API-Net: the timm network inference runs), a timm folder, or
anything timm.create_model takes (a name, hf-hub:..., local-dir:...). The graph takes `pixel_values` (batch, C, H, W)
with a dynamic batch and returns `logits`; SAN layers are exported through their reference implementation (standard
operators, same weights). The check runs both on random batches of 1 and 3 images and fails (exit 1) when the
largest difference exceeds --atol.
"""
import argparse
import sys

from relzoo.onnx_export import check_onnx, export_onnx, load_classifier


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--no-pretrained", action="store_true", help="a timm name without its weights (random init)")
    parser.add_argument("--num-classes", type=int, default=None, help="with a timm name: the classifier's classes")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's pretrained_cfg input size")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnx - torch| on the logits")
    args = parser.parse_args(argv)
    try:
        extra = {} if args.num_classes is None else {"num_classes": args.num_classes}
        model = load_classifier(args.model, pretrained=not args.no_pretrained, **extra).eval()
        path = export_onnx(model, args.output, image_size=args.image_size, opset=args.opset, exporter=args.exporter)
        report = check_onnx(model, path, image_size=args.image_size)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    worst = max(r["max_abs_diff"] for r in report.values())
    for batch, r in report.items():
        print(f"batch {batch}: max |onnxruntime - torch| = {r['max_abs_diff']:.3g} (logits up to {r['max_abs_logit']:.3g})")
    if worst > args.atol:
        print(f"FAILED: {worst:.3g} > --atol {args.atol}", file=sys.stderr)
        return 1
    print(f"wrote {path}; onnxruntime matches PyTorch within {args.atol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
