"""Dense FLOPs per image of an exported detector, counted from its ONNX graph.

Counted: MatMul, Gemm and Conv (grouped and depthwise included), 2 FLOPs per multiply-accumulate, which
is where a detector's arithmetic is (attention's QK^T and AV are MatMuls in the exported graph).
Not counted: elementwise ops, normalisation, softmax, pooling; they are memory-bound and a few percent
of the total. Shapes come from ONNX shape inference with data propagation at a fixed batch: the
exporter's own value_info leaves some dimensions blank (its decomposed attention), and weights are
set aside first so inference stays quick on a 350 MB model.
"""

from __future__ import annotations

import ast
import math
import operator
import os
from dataclasses import dataclass

COUNTED = ("MatMul", "Gemm", "Conv")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Div: operator.truediv, ast.Mod: operator.mod}


@dataclass(frozen=True)
class NodeFlops:
    name: str
    op_type: str
    flops: int
    has_constant_weight: bool  # B (MatMul/Gemm) or W (Conv) is an initializer: quantisable by dynamic INT8


def _eval_dim(expr: str, batch: int) -> int:
    """A symbolic dimension ("batch", "2*batch", "s0 + 1") at the given batch; every symbol is the batch."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return batch
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported symbolic dimension {expr!r}")

    return int(walk(ast.parse(expr, mode="eval")))


def _shapes(graph, batch: int) -> dict[str, tuple[int, ...]]:
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape"):
            try:
                shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else _eval_dim(d.dim_param, batch)
                                           for d in dims)
            except (ValueError, SyntaxError):
                continue
    return shapes


def _matmul_flops(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """numpy matmul semantics: 1-D operands promoted, batch dimensions broadcast."""
    if len(a) == 1:
        a = (1, *a)
    if len(b) == 1:
        b = (*b, 1)
    m, k = a[-2:]
    n = b[-1]
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = (1,) * (width - len(batch_a)) + batch_a
    batch_b = (1,) * (width - len(batch_b)) + batch_b
    batch = math.prod(max(x, y) for x, y in zip(batch_a, batch_b))
    return 2 * batch * m * k * n


def _infer_at_batch(model, batch: int):
    """A weight-less copy of `model` with the batch axis fixed and every intermediate shape inferred."""
    import onnx

    light = onnx.ModelProto()
    light.CopyFrom(model)
    graph = light.graph
    for init in graph.initializer:
        # Large tensors are weights: shape inference needs their dims, data propagation only small
        # constants (reshape targets), so dropping the bytes changes nothing but the time.
        if len(init.raw_data) > 4096:
            init.ClearField("raw_data")
        elif init.data_location == onnx.TensorProto.EXTERNAL:
            del init.external_data[:]
            init.data_location = onnx.TensorProto.DEFAULT
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(light, data_prop=True)


def node_flops(model, batch: int = 1) -> list[NodeFlops]:
    """FLOPs of every counted node at `batch` images. `model`: an onnx.ModelProto."""
    import onnx

    graph = _infer_at_batch(model, batch).graph
    shapes = _shapes(graph, batch)
    constants = {init.name for init in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    out = []
    for node in graph.node:
        if node.op_type not in COUNTED:
            continue
        missing = [t for t in (*node.input[:2], node.output[0]) if t not in shapes]
        if missing:
            raise ValueError(f"{node.name} ({node.op_type}): no shape for {missing}; cannot count FLOPs")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        a, b, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        if node.op_type == "MatMul":
            flops = _matmul_flops(a, b)
        elif node.op_type == "Gemm":
            m, k = (a[1], a[0]) if attrs.get("transA") else a
            n = b[0] if attrs.get("transB") else b[1]
            flops = 2 * m * k * n
        else:  # Conv: weight [Cout, Cin/group, *kernel], output [N, Cout, *spatial]
            flops = 2 * math.prod(y) * math.prod(b[1:])
        out.append(NodeFlops(node.name, node.op_type, int(flops), node.input[1] in constants))
    return out


def load_graph(path):
    """The model's graph without reading large weights into memory (shapes only)."""
    import onnx

    return onnx.load(os.fspath(path), load_external_data=False)


def flops_per_image(path_or_model) -> int:
    """Dense FLOPs for one image: counted at batch 2 and 1 and differenced, so anything that does not
    scale with the batch (none in these models) is left out."""
    model = path_or_model if hasattr(path_or_model, "graph") else load_graph(path_or_model)
    return sum(n.flops for n in node_flops(model, 2)) - sum(n.flops for n in node_flops(model, 1))


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m genguard.export.flops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files")
    args = parser.parse_args(argv)
    for path in args.models:
        print(f"{path}: {flops_per_image(path) / 1e9:.2f} GFLOP/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
