"""Declare the static output shapes of an exported attnwatch model.

The TorchScript exporter does not always infer the static dimensions of the
outputs; the attnwatch contract checks shapes at startup, so this writes
them into the graph: forecast_mean/forecast_std [batch, H, F],
attention [batch, L, heads, T], novelty [batch, 2].

    python models/declare_shapes.py models/attnwatch-encoder.onnx
"""
import sys

import onnx


def declare(model: onnx.ModelProto) -> onnx.ModelProto:
    meta = {p.key: p.value for p in model.metadata_props}
    f = len(meta["attnwatch.features"].split(","))
    h = int(meta["attnwatch.horizon"])
    t = int(meta["attnwatch.context"]) // int(meta["attnwatch.patch"])
    dims = {
        "forecast_mean": [h, f], "forecast_std": [h, f],
        "attention": [int(meta["attnwatch.layers"]), int(meta["attnwatch.heads"]), t],
        "novelty": [2],
    }
    for out in model.graph.output:
        want = dims[out.name]
        shape = out.type.tensor_type.shape
        while len(shape.dim) < len(want) + 1:
            shape.dim.add()
        shape.dim[0].dim_param = "batch"
        for d, n in zip(shape.dim[1:], want):
            d.ClearField("dim_param")
            d.dim_value = n
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    for path in sys.argv[1:]:
        onnx.save(declare(onnx.load(path)), path)
        print(f"declared output shapes in {path}")
