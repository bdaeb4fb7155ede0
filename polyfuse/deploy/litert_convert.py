"""`python -m polyfuse.deploy.litert_convert MODEL_DIR OUT [--with-preprocessing]`: litert-torch's conversion
of one artifact, run by :func:`polyfuse.deploy.litert.convert` in the Python that has the converter.

The graph traced is the one every other export takes (the network with its heads' activations, or with the
preprocessing in front, clips zero-padded to a fixed length), on one row at the collated sizes: LiteRT's
converter lowers fixed shapes.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--with-preprocessing", action="store_true")
    args = parser.parse_args()

    import litert_torch
    import torch

    from polyfuse.deploy import device_graph
    from polyfuse.deploy.exporter import verification_rows
    from polyfuse.deploy.onnx import ProbabilityModel, example_batch
    from polyfuse.estimator import load

    model = load(args.model)
    if args.with_preprocessing:
        wrapper, example = device_graph.DeviceModel(model).eval(), device_graph.example(model, 1, fixed_clips=True)
    else:
        wrapper = ProbabilityModel(model.net, model.spec).eval()
        example = {k: v[:1].clone(memory_format=torch.contiguous_format)
                   for k, v in example_batch(model, verification_rows(model, limit=1)).items()}
    with warnings.catch_warnings(), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        litert_torch.convert(wrapper, sample_kwargs={"inputs": example}).export(str(Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
