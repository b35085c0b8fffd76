"""Graph-level fusion of the exported bge-m3 graph for onnxruntime's CPU provider.

torch.onnx's (dynamo) export spells attention out op by op, and onnxruntime's own transformer
optimizer does not recognise that spelling, so `fuse_attention` rewrites it: per layer,

    q = Transpose(Reshape(Add(MatMul(x, Wq), bq)))                                  [B, H, S, d]
    kT = Reshape(Transpose(Reshape(Transpose(Reshape(Add(MatMul(x, Wk), bk))))))   (K transposed)
    v = Transpose(Reshape(Add(MatMul(x, Wv), bv)))
    p = Softmax(Add(MatMul(Mul(q, c), Mul(kT, c)), mask)), optionally Where(IsNaN(p), 0, p)
    out = Reshape(Transpose(MatMul(p, v)))                                          [B, S, hidden]

becomes one com.microsoft.Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_mask as int32) with
scale c*c: one GEMM for Q, K and V, and attention in one kernel. `fuse_graph` then lets
onnxruntime.transformers fuse bias + GELU. Residual + LayerNorm stay two ops (Add,
LayerNormalization): onnxruntime's fused SkipLayerNormalization is 2.5x slower on the CPU
(`DISABLED_OPTIMIZERS`, which the session must pass too). Outputs agree with the
unfused graph to ~4e-6; on bge-m3's shape fp32 runs ~17% faster and int8 (with the attention
quantized too) ~30% faster (benchmarks/RESULTS.md).

The pattern is the one torch 2.13's exporter writes for transformers 5's XLM-RoBERTa; if a
version writes another, `fuse_graph` finds fewer blocks than layers and raises FusionError (the
caller then keeps the unfused graph).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np


class FusionError(RuntimeError):
    """The graph does not have the expected attention pattern."""


def fuse_attention(model, num_heads: int, mask_input: str = "attention_mask") -> int:
    """Rewrite every matching attention block of `model` (an onnx.ModelProto, weights loaded) in
    place; returns how many were fused."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def const(name):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def made_by(name, op):
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def projection(name):
        """name = Transpose(Reshape(Add(MatMul(x, W), b))) -> (x, W, b), else None."""
        transpose = made_by(name, "Transpose")
        reshape = transpose and made_by(transpose.input[0], "Reshape")
        add = reshape and made_by(reshape.input[0], "Add")
        if not add:
            return None
        matmul, bias = made_by(add.input[0], "MatMul"), add.input[1]
        if matmul is None:
            matmul, bias = made_by(add.input[1], "MatMul"), add.input[0]
        if matmul is None:
            return None
        weight, bias = const(matmul.input[1]), const(bias)
        if weight is None or bias is None:
            return None
        return matmul.input[0], weight, bias

    mask_int32 = None
    removed, added, count = set(), [], 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = made_by(softmax.input[0], "Add")
        scores = add and (made_by(add.input[0], "MatMul") or made_by(add.input[1], "MatMul"))
        if not scores:
            continue
        mul_q, mul_k = made_by(scores.input[0], "Mul"), made_by(scores.input[1], "Mul")
        if not (mul_q and mul_k):
            continue
        c_q, c_k = const(mul_q.input[1]), const(mul_k.input[1])
        if c_q is None or c_k is None or c_q.size != 1 or c_k.size != 1:
            continue
        q = projection(mul_q.input[0])
        reshape2 = made_by(mul_k.input[0], "Reshape")
        transpose2 = reshape2 and made_by(reshape2.input[0], "Transpose")
        reshape1 = transpose2 and made_by(transpose2.input[0], "Reshape")
        k = reshape1 and projection(reshape1.input[0])
        where = [n for n in consumers[softmax.output[0]] if n.op_type == "Where"]
        probabilities = where[0].output[0] if where else softmax.output[0]
        weighted = [n for n in consumers[probabilities] if n.op_type == "MatMul"]
        if not (q and k and len(weighted) == 1):
            continue
        v = projection(weighted[0].input[1])
        transpose = [n for n in consumers[weighted[0].output[0]] if n.op_type == "Transpose"]
        merge = transpose and [n for n in consumers[transpose[0].output[0]] if n.op_type == "Reshape"]
        if not (v and merge) or not (q[0] == k[0] == v[0]):
            continue
        if mask_int32 is None:
            mask_int32 = "attention_mask_int32"
            added.append(helper.make_node("Cast", [mask_input], [mask_int32], to=TensorProto.INT32,
                                          name="attention_mask_cast"))
        weight = np.concatenate([q[1], k[1], v[1]], axis=1).astype(np.float32)
        bias = np.concatenate([q[2], k[2], v[2]]).astype(np.float32)
        graph.initializer.extend([numpy_helper.from_array(weight, f"attention_{count}_qkv_weight"),
                                  numpy_helper.from_array(bias, f"attention_{count}_qkv_bias")])
        added.append(helper.make_node(
            "Attention", [q[0], f"attention_{count}_qkv_weight", f"attention_{count}_qkv_bias", mask_int32],
            [merge[0].output[0]], name=f"Attention_{count}", domain="com.microsoft", num_heads=num_heads,
            scale=float(c_q.reshape(-1)[0] * c_k.reshape(-1)[0])))
        removed.add(id(merge[0]))
        count += 1
    if not count:
        return 0
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept + added)
    _sort_topologically(graph)
    _drop_dead_nodes(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def fuse_graph(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict:
    """Write the fused graph of the unfused export `source` to `target` (+ `target`.data); returns
    counts of the fused operators. Raises FusionError when not every attention block matched."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_by_onnxruntime, optimize_model

    model = onnx.load(str(source))
    layers = sum(1 for n in model.graph.node if n.op_type == "Softmax")
    fused = fuse_attention(model, num_heads)
    if fused != layers or not layers:
        raise FusionError(f"fused {fused} attention blocks of {layers}: the export's pattern is not the expected one")
    stage = target.with_name(target.stem + ".attention.onnx")
    basic = target.with_name(target.stem + ".basic.onnx")
    onnx.save(model, str(stage), save_as_external_data=True, all_tensors_to_one_file=True,
              location=stage.name + ".data", size_threshold=1024)
    del model
    try:
        # onnxruntime's basic optimisation (constant folding, ...) first, so that the fusions match. Its
        # copy goes next to `target`, not where optimize_model(opt_level=1) puts it (the system temp
        # folder, often too small for bge-m3's 2.2 GB: the fusion then failed and the slow unfused graph
        # was cached for good); each copy is deleted as soon as the next one exists.
        optimize_by_onnxruntime(str(stage), optimized_model_path=str(basic), opt_level=1,
                                disabled_optimizers=["ConstantSharing"], save_as_external_data=True)
        _remove_onnx(stage)
        optimized = optimize_model(str(basic), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   optimization_options=_fusion_options(), opt_level=0)  # the weights are in memory now
        _remove_onnx(basic)
        stats = {name: n for name, n in optimized.get_fused_operator_statistics().items() if n}
        optimized.save_model_to_file(str(target), use_external_data_format=True, all_tensors_to_one_file=True)
    finally:
        _remove_onnx(stage)
        _remove_onnx(basic)
    return {**stats, "Attention": fused}


#: onnxruntime's graph optimisations the session must not run (`disabled_optimizers` of
#: InferenceSession): SkipLayerNormFusion would turn residual Add + LayerNormalization back into
#: SkipLayerNormalization, which onnxruntime 1.32's CPU kernel runs 2.5x slower than the two ops
#: (4.8 against 1.9 ns per element at hidden 384 and 1024, one or two threads; it is 20% of int8's
#: time at 6 x 384).
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def _fusion_options():
    """onnxruntime.transformers' fusions for this graph: bias + GELU yes, residual + LayerNorm no
    (see DISABLED_OPTIMIZERS)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    return options


def _remove_onnx(path: Path) -> None:
    """Delete an ONNX file and its external data file (`<name>.data`), if they exist."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def _drop_dead_nodes(graph) -> None:
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)
    used = {i for n in graph.node for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    infos = [v for v in graph.value_info if v.name in used or v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _sort_topologically(graph) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                order.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise FusionError("the fused graph has a cycle or a missing input")
        pending = rest
    del graph.node[:]
    graph.node.extend(order)
