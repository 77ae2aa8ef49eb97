"""SAN's self-attention module (SAM) over the relation operators of :mod:`relzoo.layers.san_ops` (aggregation,
subtraction, the fused inference paths), which this module re-exports.

:class:`SelfAttention2d` computes ``y_i = sum_{j in R(i)} alpha(x_R(i))_j * beta(x_j)`` over a ``k x k`` footprint,
pairwise or patchwise, with the official parameter names. This module only imports torch.
"""
import torch
from torch import nn

from .san_native import usable as native_usable
from .san_ops import (
    _PAD_MODES,
    Conv1x1,
    _check_geometry,
    _pad,
    aggregation,
    aggregation_reference,
    bn0_blocks,
    bn_scale_shift,
    conv1x1,
    footprint_padding,
    official_bn0_order,
    output_size,
    pairwise_subtraction_attention_eval,
    pairwise_subtraction_attention_train,
    patchwise_blocks,
    patchwise_concat_attention_eval,
    patchwise_concat_attention_train,
    patchwise_concat_hidden_eval,
    position_grid,
    subtraction,
    subtraction2,
    subtraction2_reference,
    subtraction_reference,
    unfold_footprint,
    update_running_stats,
)

__all__ = ["SelfAttention2d", "PAIRWISE_RELATIONS", "PATCHWISE_RELATIONS", "OFFICIAL_RELATIONS", "IMPLEMENTATIONS",
           "check_attention_args", "onnx_exporting", "relation_channels", "set_fused_inference",
           # the operators, from san_ops
           "Conv1x1", "aggregation", "aggregation_reference", "bn_scale_shift", "conv1x1", "footprint_padding",
           "output_size", "pairwise_subtraction_attention_eval", "patchwise_concat_hidden_eval", "position_grid",
           "subtraction", "subtraction2", "subtraction2_reference", "subtraction_reference", "unfold_footprint"]

# the operators stay torch.fx leaves when called from this module (fx.wrap patches the calling module's names)
for _name in ("aggregation", "aggregation_reference", "subtraction2", "subtraction2_reference", "subtraction",
              "subtraction_reference", "unfold_footprint", "conv1x1", "position_grid",
              "pairwise_subtraction_attention_eval", "patchwise_concat_hidden_eval"):
    torch.fx.wrap(_name)


# ----------------------------------------------------------------------------------------------------------------
# the self-attention module (SAM)
# ----------------------------------------------------------------------------------------------------------------
PAIRWISE_RELATIONS = ("subtraction", "summation", "concatenation", "hadamard", "dot_product")
PATCHWISE_RELATIONS = ("concatenation", "star_product", "clique_product")
OFFICIAL_RELATIONS = {"pairwise": "subtraction", "patchwise": "concatenation"}
IMPLEMENTATIONS = ("fast", "reference")


@torch.jit.unused
def _onnx_exporting() -> bool:
    """Inside ``torch.onnx.export`` (both exporters); TorchScript never calls it (guarded by ``is_scripting``)."""
    return torch.onnx.is_in_onnx_export()


def onnx_exporting() -> bool:
    """Whether an ONNX export is tracing the model: the custom operators then give way to standard ones."""
    if torch.jit.is_scripting():
        return False
    return _onnx_exporting()


def check_attention_args(sa_type: str, relation: str | None, implementation: str, pad_mode: str) -> str:
    """Validate the self-attention choices; returns the relation (``None`` -> the released one)."""
    if sa_type not in OFFICIAL_RELATIONS:
        raise ValueError(f"`sa_type` must be one of {tuple(OFFICIAL_RELATIONS)}, got {sa_type!r}")
    allowed = PAIRWISE_RELATIONS if sa_type == "pairwise" else PATCHWISE_RELATIONS
    if relation is not None and relation not in allowed:
        raise ValueError(f"`relation` for sa_type={sa_type!r} must be one of {allowed} or None, got {relation!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"`pad_mode` must be one of {_PAD_MODES}, got {pad_mode!r}")
    return relation or OFFICIAL_RELATIONS[sa_type]


def set_fused_inference(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the fused inference paths of every :class:`SelfAttention2d` in ``model`` on (default) or off.

    Off, inference runs the same tap-loop operators as training (the pre-fusion path; outputs are equal up to
    rounding). Useful to compare speed and memory; returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, SelfAttention2d):
            module.fuse_inference = enabled
    return model


def relation_channels(sa_type: str, relation: str, rel_planes: int, kernel_size: int) -> int:
    """Channels of the relation tensor that the weight network ``gamma`` consumes (position channels excluded)."""
    k2 = kernel_size * kernel_size
    return {
        ("pairwise", "subtraction"): rel_planes,
        ("pairwise", "summation"): rel_planes,
        ("pairwise", "hadamard"): rel_planes,
        ("pairwise", "concatenation"): 2 * rel_planes,
        ("pairwise", "dot_product"): 1,
        ("patchwise", "concatenation"): rel_planes * (k2 + 1),
        ("patchwise", "star_product"): k2,
        ("patchwise", "clique_product"): k2 * k2,
    }[(sa_type, relation)]


class SelfAttention2d(nn.Module):
    """SAN self-attention module: ``y_i = sum_{j in R(i)} alpha(x_R(i))_j * beta(x_j)`` over a ``k x k`` footprint.

    Parameter names follow the official ``SAM`` (``conv1 = phi``, ``conv2 = psi``, ``conv3 = beta``,
    ``conv_w = gamma``, ``conv_p`` = position encoding), so official weights load by key.

    * ``sa_type="pairwise"``: ``alpha = softmax_j(gamma([delta(phi(x_i), psi(x_j)), p_i - p_j]))`` with the relation
      ``delta`` one of ``PAIRWISE_RELATIONS``. ``"subtraction"`` is the released one; the others are paper-only.
    * ``sa_type="patchwise"``: ``alpha = gamma(delta(x_R(i)))`` reshaped to ``(Cw, K)``, unnormalised, with ``delta``
      one of ``PATCHWISE_RELATIONS``. ``"concatenation"`` is the released one; star/clique products are paper-only.

    Weight channels ``Cw = out_planes // share_planes``; output channel ``c`` uses weight group ``c mod Cw``.

    Input ``(N, in_planes, H, W)``; output ``(N, out_planes, H, W)``.
    """

    def __init__(self, sa_type: str, in_planes: int, rel_planes: int, out_planes: int, share_planes: int,
                 kernel_size: int = 3, relation: str | None = None, implementation: str = "fast",
                 pad_mode: str = "reflect", device=None, dtype=None):
        super().__init__()
        relation = check_attention_args(sa_type, relation, implementation, pad_mode)
        if out_planes % share_planes != 0:
            raise ValueError(f"`out_planes` ({out_planes}) must be divisible by `share_planes` ({share_planes})")
        _check_geometry(kernel_size, 1, 1, pad_mode)
        dd = dict(device=device, dtype=dtype)
        self.sa_type, self.relation, self.implementation, self.pad_mode = sa_type, relation, implementation, pad_mode
        self.kernel_size, self.rel_planes = kernel_size, rel_planes
        self.fuse_inference = True  # see set_fused_inference
        k2 = kernel_size * kernel_size
        cw = out_planes // share_planes
        self.conv1 = Conv1x1(in_planes, rel_planes, **dd)
        self.conv2 = Conv1x1(in_planes, rel_planes, **dd)
        self.conv3 = Conv1x1(in_planes, out_planes, **dd)
        c_rel = relation_channels(sa_type, relation, rel_planes, kernel_size)
        if sa_type == "pairwise":
            c_rel += 2  # position channels
            hidden, c_out = rel_planes, cw
            self.conv_p = Conv1x1(2, 2, **dd)
        else:
            hidden, c_out = cw, k2 * cw
        self.conv_w = nn.Sequential(
            nn.BatchNorm2d(c_rel, **dd), nn.ReLU(inplace=True), Conv1x1(c_rel, hidden, bias=False, **dd),
            nn.BatchNorm2d(hidden, **dd), nn.ReLU(inplace=True), Conv1x1(hidden, c_out, **dd),
        )

    def extra_repr(self) -> str:
        return (f"sa_type={self.sa_type}, relation={self.relation}, kernel_size={self.kernel_size}, "
                f"implementation={self.implementation}, pad_mode={self.pad_mode}")

    def _fast(self) -> bool:
        """Whether the fast (custom-operator) paths run: ``implementation="fast"``, except inside an ONNX export
        (``torch.onnx.export``, timm's ``onnx_export``), where the reference operators give ONNX a graph of standard
        operators with the same weights (ONNX does not know ``relzoo::san_*``)."""
        return self.implementation == "fast" and not onnx_exporting()

    def _inference_fusable(self) -> bool:
        """Fused paths run without autograd, with both BatchNorms of ``gamma`` normalising by running statistics."""
        bn0, bn3 = self.conv_w[0], self.conv_w[3]
        return (self._fast() and self.fuse_inference and not torch.is_grad_enabled()
                and not bn0.training and not bn3.training and bn0.running_var is not None
                and bn3.running_var is not None)

    def _bn_tensors(self, first: bool) -> list[torch.Tensor]:
        """``[weight, bias, running_mean, running_var]`` of ``conv_w[0]`` (``first``) or ``conv_w[3]``."""
        if first:
            bn0 = self.conv_w[0]
            w, b, m, v = bn0.weight, bn0.bias, bn0.running_mean, bn0.running_var
        else:
            bn3 = self.conv_w[3]
            w, b, m, v = bn3.weight, bn3.bias, bn3.running_mean, bn3.running_var
        assert w is not None and b is not None and m is not None and v is not None  # affine, running statistics
        return [w, b, m, v]

    def _footprint(self, t: torch.Tensor) -> torch.Tensor:
        return unfold_footprint(t, self.kernel_size, pad_mode=self.pad_mode)  # (N, C, K, L)

    def _pairwise_relation(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``delta(phi(x_i), psi(x_j))`` as ``(N, C_rel, K, L)``."""
        if self.relation == "subtraction":
            if self._fast():
                return subtraction2(x1, x2, self.kernel_size, pad_mode=self.pad_mode)
            return subtraction2_reference(x1, x2, self.kernel_size, pad_mode=self.pad_mode)
        n, c = x1.shape[0], x1.shape[1]
        nbrs = self._footprint(x2)
        centre = x1.reshape(n, c, 1, x1.shape[2] * x1.shape[3])
        if self.relation == "summation":
            return centre + nbrs
        if self.relation == "hadamard":
            return centre * nbrs
        if self.relation == "dot_product":
            return torch.einsum("nckl,nckl->nkl", centre.expand_as(nbrs), nbrs).unsqueeze(1)
        return torch.cat([centre.expand_as(nbrs), nbrs], dim=1)  # concatenation

    def _position(self, x: torch.Tensor) -> torch.Tensor:
        """``p_i - p_j`` after the trainable linear map ``conv_p``: ``(1, 2, K, L)`` (reflection-padded like x)."""
        p = position_grid(x.shape[2], x.shape[3], x.device, x.dtype)
        if hasattr(self, "conv_p"):
            p = self.conv_p(p)
        if self._fast():
            return subtraction(p, self.kernel_size, pad_mode=self.pad_mode)
        return subtraction_reference(p, self.kernel_size, pad_mode=self.pad_mode)

    def _patchwise_relation(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``delta(x_R(i))`` as ``(N, C_rel, 1, L)``."""
        n, c, h, w = x1.shape
        if self.relation == "concatenation":  # [phi(x_i), [psi(x_j)]_j], footprint channels ordered c * K + j
            nbrs = self._footprint(x2)
            return torch.cat([x1.reshape(n, c, 1, h * w), nbrs.reshape(n, c * nbrs.shape[2], 1, h * w)], 1)
        if self.relation == "star_product":  # [phi(x_i)^T psi(x_j)]_j
            rel = torch.einsum("ncl,nckl->nkl", x1.reshape(n, c, h * w), self._footprint(x2))
        else:  # clique_product: [phi(x_j)^T psi(x_k)]_{j,k}
            rel = torch.einsum("ncjl,nckl->njkl", self._footprint(x1), self._footprint(x2)).flatten(1, 2)
        return rel.unsqueeze(2)

    def _patchwise_weight(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Unnormalised patchwise weights ``(N, Cw, K, L)``."""
        n, _, h, w = x1.shape
        k2 = self.kernel_size * self.kernel_size
        if self.relation == "concatenation" and self._inference_fusable():
            hidden = patchwise_concat_hidden_eval(x1, x2, self.conv_w[2].weight, self._bn_tensors(True),
                                                  self.conv_w[0].eps, self.kernel_size, self.pad_mode)
            hidden = self.conv_w[4](self.conv_w[3](hidden.unsqueeze(2)))  # (N, hidden, 1, L)
            weight = self.conv_w[5](hidden)
        else:
            weight = self.conv_w(self._patchwise_relation(x1, x2))
        return weight.view(n, weight.shape[1] // k2, k2, h * w)

    def _pairwise_fused(self, x: torch.Tensor) -> torch.Tensor:
        qkv_weight = torch.cat([self.conv1.weight, self.conv2.weight, self.conv3.weight]).flatten(1)
        conv1_bias, conv2_bias, conv3_bias = self.conv1.bias, self.conv2.bias, self.conv3.bias
        assert conv1_bias is not None and conv2_bias is not None and conv3_bias is not None
        qkv_bias = torch.cat([conv1_bias, conv2_bias, conv3_bias])
        conv_p_bias, w2_bias = self.conv_p.bias, self.conv_w[5].bias
        assert conv_p_bias is not None and w2_bias is not None
        return pairwise_subtraction_attention_eval(
            x, qkv_weight, qkv_bias, self.rel_planes, self.conv_p.weight, conv_p_bias, self._bn_tensors(True),
            self.conv_w[0].eps, self.conv_w[2].weight, self._bn_tensors(False), self.conv_w[3].eps,
            self.conv_w[5].weight, w2_bias, self.kernel_size, self.pad_mode)

    @torch.jit.unused
    def _native_training(self, x: torch.Tensor) -> bool:
        """Whether the weight network runs with batch statistics through the CPU kernels: the released relation,
        fast operators, both BatchNorms of ``gamma`` normalising by batch statistics (training mode, affine), and
        tensors the kernels take (CPU, float32 / float64; see :mod:`relzoo.layers.san_native`). Never while
        ``torch.fx`` traces the module (its graph keeps the PyTorch operators, which are fx leaves)."""
        bn0, bn3 = self.conv_w[0], self.conv_w[3]
        return (self.relation == OFFICIAL_RELATIONS[self.sa_type] and self._fast() and bn0.training and bn3.training
                and bn0.affine and bn3.affine and native_usable(x, self.conv1.weight))

    @torch.jit.unused
    def _native_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``conv1(x)``, and ``conv2(x)``, ``conv3(x)`` padded by ``kernel_size // 2``: the three 1x1 convolutions in
        one product."""
        cr, pad = self.rel_planes, footprint_padding(self.kernel_size)
        qkv = conv1x1(x, torch.cat([self.conv1.weight, self.conv2.weight, self.conv3.weight]),
                      torch.cat([self.conv1.bias, self.conv2.bias, self.conv3.bias]))
        return (qkv[:, :cr].contiguous(), _pad(qkv[:, cr : 2 * cr], pad, self.pad_mode),
                _pad(qkv[:, 2 * cr :], pad, self.pad_mode))

    @torch.jit.unused
    def _pairwise_native_train(self, x: torch.Tensor) -> torch.Tensor:
        """Pairwise attention with batch statistics through :func:`pairwise_subtraction_attention_train`; the two
        position channels (the same for every sample) are normalised by their statistics over taps and pixels here,
        with autograd; the running statistics are updated as ``nn.BatchNorm2d`` updates them."""
        n, _, h, w = x.shape
        k, cr = self.kernel_size, self.rel_planes
        bn0, bn3 = self.conv_w[0], self.conv_w[3]
        x1, x2p, x3p = self._native_inputs(x)
        p = self.conv_p(position_grid(h, w, x.device, x.dtype))
        diff = subtraction(p, k, pad_mode=self.pad_mode)[0]                  # (2, K, L)
        mean_p, var_p = diff.mean(dim=(1, 2)), diff.var(dim=(1, 2), unbiased=False)
        scale_p = torch.rsqrt(var_p + bn0.eps) * bn0.weight[cr:]
        hp = torch.addcmul((bn0.bias[cr:] - mean_p * scale_p).view(2, 1, 1), diff, scale_p.view(2, 1, 1))
        w2 = self.conv_w[5].weight
        out, stats = pairwise_subtraction_attention_train(
            x1, x2p, x3p, hp.relu().view(2, k * k, h, w), bn0.weight[:cr], bn0.bias[:cr],
            self.conv_w[2].weight.view(cr, cr + 2), bn3.weight, bn3.bias, w2.view(w2.shape[0], cr),
            self.conv_w[5].bias, bn0.eps, bn3.eps, k)
        count = n * k * k * h * w
        self._update_running_stats(torch.cat([stats[0], mean_p.to(stats.dtype)]),
                                   torch.cat([stats[1], var_p.to(stats.dtype)]), stats[3], stats[4], count)
        return out

    @torch.jit.unused
    def _patchwise_native_train(self, x: torch.Tensor) -> torch.Tensor:
        """Patchwise attention with batch statistics through :func:`patchwise_concat_attention_train`."""
        n, _, h, w = x.shape
        k, cr = self.kernel_size, self.rel_planes
        bn0, bn3 = self.conv_w[0], self.conv_w[3]
        x1, x2p, x3p = self._native_inputs(x)
        gamma0, w1, w2, b2 = patchwise_blocks(bn0.weight, self.conv_w[2].weight.flatten(1),
                                              self.conv_w[5].weight.flatten(1), self.conv_w[5].bias, cr, k)
        out, stats0, stats3 = patchwise_concat_attention_train(
            x1, x2p, x3p, gamma0, bn0_blocks(bn0.bias, cr, k), w1, bn3.weight, bn3.bias, w2, b2, bn0.eps, bn3.eps, k)
        self._update_running_stats(official_bn0_order(stats0[0]), official_bn0_order(stats0[1]), stats3[0],
                                   stats3[1], n * h * w)
        return out

    @torch.jit.unused
    def _update_running_stats(self, mean0: torch.Tensor, var0: torch.Tensor, mean3: torch.Tensor,
                              var3: torch.Tensor, count: int) -> None:
        """Both BatchNorms of ``gamma`` from their batch statistics (biased variances over ``count`` values each)."""
        for bn, mean, var in ((self.conv_w[0], mean0, var0), (self.conv_w[3], mean3, var3)):
            if bn.track_running_stats:
                update_running_stats(bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.momentum, mean,
                                     var, count)

    @torch.jit.unused
    def _patchwise_fused_native(self, x: torch.Tensor) -> torch.Tensor:
        cr = self.rel_planes
        qkv_weight = torch.cat([self.conv1.weight, self.conv2.weight, self.conv3.weight]).flatten(1)
        qkv_bias = torch.cat([self.conv1.bias, self.conv2.bias, self.conv3.bias])
        return patchwise_concat_attention_eval(x, qkv_weight, qkv_bias, cr, self._bn_tensors(True),
                                               self.conv_w[0].eps, self.conv_w[2].weight, self._bn_tensors(False),
                                               self.conv_w[3].eps, self.conv_w[5].weight, self.conv_w[5].bias,
                                               self.kernel_size, self.pad_mode)

    @torch.jit.unused
    def _native_inference(self, x: torch.Tensor) -> bool:
        """Whether the patchwise fused inference runs through the CPU kernel (the pairwise one decides inside its
        operator)."""
        return (self.relation == "concatenation" and self._inference_fusable()
                and native_usable(x, self.conv1.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, out_planes, H, W)``."""
        if hasattr(self, "conv_p"):
            if self.relation == "subtraction" and self._inference_fusable():
                return self._pairwise_fused(x)
            if not torch.jit.is_scripting() and self._native_training(x):
                return self._pairwise_native_train(x)
        elif not torch.jit.is_scripting():
            if self._native_inference(x):
                return self._patchwise_fused_native(x)
            if self._native_training(x):
                return self._patchwise_native_train(x)
        x1, x2, x3 = self.conv1(x), self.conv2(x), self.conv3(x)
        if self.sa_type == "pairwise":
            rel = self._pairwise_relation(x1, x2)
            pos = self._position(x).expand(x.shape[0], -1, -1, -1)
            weight = self.conv_w(torch.cat([rel, pos], dim=1)).softmax(dim=-2)  # (N, Cw, K, L), sums to 1 over K
        else:
            weight = self._patchwise_weight(x1, x2)
        if self._fast():
            return aggregation(x3, weight, self.kernel_size, pad_mode=self.pad_mode)
        return aggregation_reference(x3, weight, self.kernel_size, pad_mode=self.pad_mode)
