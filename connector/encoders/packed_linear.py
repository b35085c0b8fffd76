"""Linear layers through oneDNN with pre-packed weights, for the torch encoder on the CPU.

torch's default CPU path for `nn.Linear` in fp32 is a BLAS call (MKL in the PyPI wheels). On AMD
CPUs MKL runs its AVX2 code, about half of what AVX-512 hardware can do: measured on this
project's 2-core AMD EPYC, a 8192x1024 @ 1024x4096 linear ran at 201 GFLOP/s through MKL and
394 GFLOP/s through oneDNN with the weight packed once (`benchmarks/RESULTS.md`). oneDNN picks
its kernels by instruction set, not by vendor, and is part of every x86 torch wheel.

`pack_linears(model)` swaps every `nn.Linear` of a transformer for a `PackedLinear` and fuses
the feed-forward block's exact GELU into its first matmul. The arithmetic stays fp32; only the
summation order differs (outputs agree to ~1e-6). Where torch has no oneDNN, nothing is swapped.
"""

from __future__ import annotations

import os

# oneDNN keeps a compiled kernel per input shape, and a sync sees thousands of shapes (batch x
# length): with the default caches (1024 entries each) memory grew by ~600 MB over 90 000 texts.
# 32 entries keep it flat (measured: +39 MB, as without packing); a miss costs ~1 ms per shape
# per batch, next to a forward pass of tens of ms. Read when oneDNN first runs, so set here.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
os.environ.setdefault("LRU_CACHE_CAPACITY", "32")  # torch's ideep layer keeps its own cache

import torch  # noqa: E402 - after the cache settings


def onednn_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(torch.nn.Module):
    """`nn.Linear` (optionally followed by exact GELU) as one oneDNN call with a packed weight."""

    def __init__(self, linear: torch.nn.Linear, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], self.algorithm)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fused={self.attr}"


def pack_linears(model: torch.nn.Module) -> int:
    """Swap the model's `nn.Linear` layers for `PackedLinear` in place (for inference only: the
    packed weights take no gradients). A module with `dense` and an exact-GELU
    `intermediate_act_fn` (BERT / XLM-RoBERTa's feed-forward block) gets the GELU fused.
    Returns how many layers were swapped (0 without oneDNN)."""
    if not onednn_available():
        return 0
    swapped = 0
    for module in list(model.modules()):
        fuse_gelu = _is_exact_gelu(getattr(module, "intermediate_act_fn", None)) and isinstance(
            getattr(module, "dense", None), torch.nn.Linear)
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                gelu = fuse_gelu and name == "dense"
                setattr(module, name, PackedLinear(child, gelu=gelu))
                swapped += 1
        if fuse_gelu:
            module.intermediate_act_fn = torch.nn.Identity()
    return swapped


def _is_exact_gelu(fn) -> bool:
    """True for transformers' GELUActivation / nn.GELU with the erf form (not the tanh approximation)."""
    if isinstance(fn, torch.nn.GELU):
        return fn.approximate == "none"
    # transformers.activations.GELUActivation ("gelu" in a config) calls torch's exact GELU
    return type(fn).__name__ == "GELUActivation" and getattr(fn, "act", None) is torch.nn.functional.gelu
