"""A fitted gradient-boosted tree ensemble as tensor operations, so that a ``gbdt`` head runs in
the same torch graph and the same ONNX export as the network under it (no skl2onnx, no second
runtime). Every tree is walked ``depth`` steps at once for the whole batch with gathers; a leaf
points to itself, so shallower paths simply stay put."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TreeEnsemble(nn.Module):
    """Raw scores [B, outputs] = baseline + the sum of each output's trees' leaf values.

    Nodes of all trees live in flat arrays; ``roots`` holds each tree's first node and
    ``tree_output`` [trees, outputs] is one-hot: which output a tree adds to.
    """

    def __init__(self, nodes: int, trees: int, outputs: int, depth: int):
        super().__init__()
        self.depth = depth
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(nodes))
        self.register_buffer("left", torch.zeros(nodes, dtype=torch.long))
        self.register_buffer("right", torch.zeros(nodes, dtype=torch.long))
        self.register_buffer("value", torch.zeros(nodes))
        self.register_buffer("roots", torch.zeros(trees, dtype=torch.long))
        self.register_buffer("tree_output", torch.zeros(trees, outputs))
        self.register_buffer("baseline", torch.zeros(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = self.roots.unsqueeze(0).expand(x.shape[0], -1)  # [B, trees]
        for _ in range(self.depth):
            at = torch.gather(x, 1, self.feature[node])
            node = torch.where(at <= self.threshold[node], self.left[node], self.right[node])
        return self.value[node] @ self.tree_output + self.baseline


def from_sklearn(model: object, features: int) -> TreeEnsemble:
    """A :class:`TreeEnsemble` equal to a fitted ``HistGradientBoostingClassifier``'s raw decision
    function (it reads the fitted trees; verified against ``decision_function`` by the caller)."""
    predictors = model._predictors  # noqa: SLF001 -- the fitted trees; sklearn has no public accessor
    per_iter = len(predictors[0])
    trees = [tree for it in predictors for tree in it]
    sizes = [len(t.nodes) for t in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ens = TreeEnsemble(int(sum(sizes)), len(trees), per_iter, depth=int(max(t.nodes["depth"].max() for t in trees)))
    feature, threshold, left, right, value = [], [], [], [], []
    for tree, off in zip(trees, offsets):
        n = tree.nodes
        leaf = n["is_leaf"].astype(bool)
        own = np.arange(len(n)) + off
        feature.append(np.where(leaf, 0, n["feature_idx"]).clip(0, features - 1))
        threshold.append(np.where(leaf, 0.0, n["num_threshold"]))
        left.append(np.where(leaf, own, n["left"] + off))
        right.append(np.where(leaf, own, n["right"] + off))
        value.append(np.where(leaf, n["value"], 0.0))
    with torch.no_grad():
        for name, parts in (("feature", feature), ("left", left), ("right", right)):
            getattr(ens, name).copy_(torch.from_numpy(np.concatenate(parts).astype(np.int64)))
        ens.threshold.copy_(torch.from_numpy(np.concatenate(threshold).astype(np.float32)))
        ens.value.copy_(torch.from_numpy(np.concatenate(value).astype(np.float32)))
        ens.roots.copy_(torch.from_numpy(offsets.astype(np.int64)))
        ens.tree_output.copy_(torch.from_numpy(np.tile(np.eye(per_iter, dtype=np.float32), (len(predictors), 1))))
        ens.baseline.copy_(torch.as_tensor(np.ravel(model._baseline_prediction), dtype=torch.float32))  # noqa: SLF001
    return ens
