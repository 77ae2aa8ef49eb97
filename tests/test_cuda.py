"""The GPU paths, on a CUDA device against the CPU references (``scripts/gpu_check.sh`` runs them with the benchmark
tables). Skipped where torch sees no CUDA device: CI and the 2-core development machine have none, so these tests
only run where a GPU is lent; the README says when they last ran.

Every SAN operator and module path is compared in float64 (CUDA fast path against the CPU pad+unfold reference:
forward, every gradient, BatchNorm running statistics after a training step); whole models in float32 with a
tolerance (cuDNN / cuBLAS reduce in another order than the CPU)."""
import os
import runpy
from pathlib import Path

import pytest
import torch
from test_san_layers import _randomise_bn  # the CPU tests' BatchNorm randomiser

from relzoo.layers.san import (
    SelfAttention2d,
    aggregation,
    aggregation_reference,
    output_size,
    subtraction2,
    subtraction2_reference,
)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA device (scripts/gpu_check.sh on a GPU machine)")]
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 products on the GPU (TF32 would differ from the CPU by ~1e-3 relative); restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _pair(*shape):
    """The same float64 values on the CPU and on the GPU, both leaves requiring grad."""
    cpu = torch.randn(*shape, dtype=torch.float64)
    return cpu.clone().requires_grad_(), cpu.to(CUDA).requires_grad_()


@pytest.mark.parametrize("k,s,d,pad_mode", [(7, 1, 1, "reflect"), (5, 2, 2, "reflect"), (3, 2, 1, "zeros")])
def test_operators_on_cuda_equal_the_cpu_reference_fp64(k, s, d, pad_mode):
    torch.manual_seed(k + s + d)
    h, w = 13, 11
    ho, wo = output_size(h, k, s, d), output_size(w, k, s, d)
    for fast, ref, shapes in ((aggregation, aggregation_reference, [(2, 8, h, w), (2, 4, k * k, ho * wo)]),
                              (subtraction2, subtraction2_reference, [(2, 3, h, w), (2, 3, h, w)])):
        (a_cpu, a_gpu), (b_cpu, b_gpu) = (_pair(*s_) for s_ in shapes)
        y_ref, y = ref(a_cpu, b_cpu, k, s, d, pad_mode), fast(a_gpu, b_gpu, k, s, d, pad_mode)
        assert y.device.type == CUDA.type
        torch.testing.assert_close(y.cpu(), y_ref, rtol=0, atol=1e-12)
        g = torch.randn_like(y_ref)
        y_ref.backward(g)
        y.backward(g.to(CUDA))
        for t_cpu, t_gpu in ((a_cpu, a_gpu), (b_cpu, b_gpu)):
            torch.testing.assert_close(t_gpu.grad.cpu(), t_cpu.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sa_type", ["pairwise", "patchwise"])
@pytest.mark.parametrize("training", [True, False])
def test_self_attention_on_cuda_equals_the_cpu_reference_fp64(sa_type, training):
    """Training mode: forward, input and parameter gradients, running statistics; eval: the fused inference path
    (no autograd) and the differentiable one."""
    torch.manual_seed(0)
    ref = SelfAttention2d(sa_type, 32, 4, 16, 8, 7, implementation="reference").double()
    _randomise_bn(ref)
    fast = SelfAttention2d(sa_type, 32, 4, 16, 8, 7).double()
    fast.load_state_dict(ref.state_dict())
    fast.to(CUDA).train(training)
    ref.train(training)
    x_cpu, x_gpu = _pair(2, 32, 15, 14)
    y_ref, y = ref(x_cpu), fast(x_gpu)
    torch.testing.assert_close(y.cpu(), y_ref, rtol=0, atol=1e-10)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g.to(CUDA))
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=0, atol=1e-10)
    for (name, p), p_ref in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.cpu(), p_ref.grad, rtol=0, atol=1e-10, msg=name)
    for (name, b), b_ref in zip(fast.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b.cpu(), b_ref, rtol=0, atol=1e-12, msg=name)
    if not training:
        with torch.no_grad():   # the fused inference path
            torch.testing.assert_close(fast(x_gpu).cpu(), y_ref.detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["san10_pair", "san10_patch"])
def test_san_training_step_on_cuda_matches_the_cpu(name):
    """A whole SAN on the GPU (fp32) against the CPU: inference (the fused paths), then one SGD step (loss, every
    parameter and buffer after it)."""
    import timm

    import relzoo  # noqa: F401

    torch.manual_seed(0)
    cpu = timm.create_model(name, num_classes=10)
    gpu = timm.create_model(name, num_classes=10)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    x, target = torch.randn(2, 3, 128, 128), torch.randint(0, 10, (2,))
    cpu.eval()
    gpu.eval()
    with torch.inference_mode():   # the fused inference paths on the GPU (before the step: one step at this
        torch.testing.assert_close(gpu(x.to(CUDA)).cpu(), cpu(x), rtol=1e-3, atol=1e-3)  # rate spoils BN stats)
    cpu.train()
    gpu.train()
    for model, dev in ((cpu, "cpu"), (gpu, CUDA)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss = torch.nn.functional.cross_entropy(model(x.to(dev)), target.to(dev))
        loss.backward()
        opt.step()
        model.loss = loss.item()
    assert abs(cpu.loss - gpu.loss) < 1e-4
    for (name_, p), p_gpu in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(p_gpu.cpu(), p, rtol=1e-3, atol=1e-4, msg=name_)


def test_fewshot_models_on_cuda_match_the_cpu():
    from relzoo import (
        CrossTransformerConfig,
        CrossTransformerForFewShotClassification,
        HSNetConfig,
        HSNetForFewShotSegmentation,
    )

    torch.manual_seed(0)
    hsnet = HSNetForFewShotSegmentation(HSNetConfig(backbone="resnet18", image_size=64)).eval()
    q, s, m = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        ref = hsnet(q, s, m).logits
        out = hsnet.to(CUDA)(q.to(CUDA), s.to(CUDA), m.to(CUDA)).logits
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
    ctx = CrossTransformerForFewShotClassification(CrossTransformerConfig(
        key_dim=16, value_dim=8, backbone="test_resnet", backbone_kwargs={"output_stride": 8})).eval()
    support, labels, query = torch.randn(6, 3, 64, 64), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = ctx(query, support_pixel_values=support, support_labels=labels).logits
        out = ctx.to(CUDA)(query.to(CUDA), support_pixel_values=support.to(CUDA),
                           support_labels=labels.to(CUDA)).logits
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)


def test_benchmarks_run_on_cuda(tmp_path):
    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    result = main(["san", "--quick", "--device", "cuda"])
    assert all(r["images_per_s"] > 0 and r["inference_peak_mib"] > 0 for r in result["models"])
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for family in ("hsnet", "ctx"):
        assert main([family, "--quick", "--device", "cuda"])
