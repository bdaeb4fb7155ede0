"""Linear ensemble members inside the network: logistic regressions on cheap features of the inputs,
computed in the graph from the same tensors the encoders read, mixed with the network's own answer
by weights chosen on validation rows (:mod:`polyfuse.training.ensemble`).

Member 0 is the network; then one member on all inputs together and one per input alone. Features:
hashed n-grams or token ids for text (IDF-weighted where the state has IDF, L2-normalised per text),
one-hot categories, standardised numbers, an 8x8 grey thumbnail with channel means and deviations for
images, per-channel mean/std/min/max over the real steps of a time series, and MFCC mean/std over the
real frames of a clip; a frozen pretrained backbone's pooled vector (the one the network caches). Video
inputs and trained backbones are the network's alone. Every member sees a
missing input as zeros plus a missing indicator; a member none of whose inputs is present in a row
drops out of its mix and the other weights renormalise, so a model answers with any input left out
(and with only a pretrained input, the network answers alone).

The mix averages probabilities (Caruana et al., 2004); the output is its log (category) or logit
(binary, and each label of a multilabel output), so temperature scaling and every runtime read it as
they read the network's logits.
"""
from __future__ import annotations

import torch
from torch import nn

from polyfuse.spec.inputs import hf_encoder

DENSE = ("number", "category", "image", "audio", "timeseries")
THUMB = 8  # the image thumbnail's side


def pooled_member(cfg: object) -> bool:
    """Whether a pretrained input gets a linear member: a frozen backbone whose pooled vector is what the
    network caches (cls or mean pooling; attention pooling is learned). Frozen multilingual-e5-small
    vectors with a logistic regression beat TF-IDF on zhtext and mvsa, and averaged with it gained
    more (the zoo issue's measurements). Not audio: nothing measured it, and on a tiny Whisper a member on
    its raw vectors turned the int8 build's small backbone errors into 0.3 of probability."""
    enc = hf_encoder(cfg)
    return enc is not None and enc.cached and cfg.type in ("text", "image") and (
        (enc.pooling or ("cls" if cfg.type == "image" else "mean")) != "attention")


def member_inputs(spec: object) -> list[str]:
    """The inputs a linear member reads: built-in ones but video, and frozen pretrained ones by their
    pooled vectors."""
    return [n for n, c in spec.inputs.items()
            if hf_encoder(c) is None and (c.type in DENSE or c.type == "text") or pooled_member(c)]


def member_outputs(spec: object, state: dict) -> list[tuple[str, int]]:
    """(output, logits) of the outputs an ensemble mixes: category and multilabel (one per class or
    label) and binary (one). Multilabel joined after the medical example's findings, where the network
    alone lost 8 points of micro-F1 to a logistic regression per label."""
    return [(n, 1 if c.type == "binary" else len(state[n]["classes"]))
            for n, c in spec.outputs.items() if c.type in ("category", "binary", "multilabel")]


def dense_width(cfg: object, state: dict) -> int:
    """Features of a dense input, before its missing indicator."""
    if hf_encoder(cfg) is not None:  # the backbone's pooled vector
        conf = state["backbone"]
        conf = conf.get({"image": "vision_config"}.get(cfg.type, f"{cfg.type}_config")) or conf  # CLIP's tower
        return int(next(conf[k] for k in ("hidden_size", "d_model", "projection_dim", "hidden_sizes") if k in conf)
                   if "hidden_sizes" not in conf else conf["hidden_sizes"][-1])
    if cfg.type == "number":
        return 1
    if cfg.type == "category":
        return len(state["vocab"])
    if cfg.type == "image":
        return THUMB * THUMB + 2 * cfg.channels
    if cfg.type == "audio":
        return 2 * len(state["mean"])
    return 4 * cfg.n_channels  # timeseries


def dense_features(cfg: object, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """[B, dense_width] features of a number, image, audio or time-series input from its collated tensors."""
    x = batch[name]
    if cfg.type == "number":
        return x.reshape(-1, 1).float()
    if cfg.type == "image":
        grey = nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), THUMB).flatten(1)
        return torch.cat([grey, x.mean((2, 3)), x.std((2, 3))], 1)
    if cfg.type == "audio":
        valid = (torch.arange(x.shape[1])[None, :] < batch[f"{name}__length"][:, None]).unsqueeze(-1).float()
        n = valid.sum(1).clamp(min=1.0)
        mean = (x * valid).sum(1) / n
        std = ((x * x * valid).sum(1) / n - mean * mean).clamp(min=0.0).sqrt()
        return torch.cat([mean, std], 1)
    valid = batch[f"{name}__mask"].unsqueeze(-1)  # timeseries: real steps
    n = valid.sum(1).clamp(min=1.0)
    mean = (x * valid).sum(1) / n
    std = ((x * x * valid).sum(1) / n - mean * mean).clamp(min=0.0).sqrt()
    big = torch.finfo(x.dtype).max
    low = torch.where(valid > 0, x, torch.full_like(x, big)).amin(1)
    high = torch.where(valid > 0, x, torch.full_like(x, -big)).amax(1)
    seen = valid.amax(1) > 0
    return torch.cat([mean, std, torch.where(seen, low, 0.0), torch.where(seen, high, 0.0)], 1)


class DensePart(nn.Module):
    """Standardised features (fitted on the training rows) and a missing indicator -> logits [B, K]."""

    def __init__(self, width: int, k: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.register_buffer("weight", torch.zeros(width + 1, k))

    def forward(self, feats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        p = present.float().unsqueeze(1)
        x = (feats - self.mean) * self.scale * p
        return x @ self.weight[:-1] + (1.0 - p) * self.weight[-1]


class TextPart(nn.Module):
    """Ids [B, N] (0 = padding) -> L2-normalised (IDF-)weighted bag -> logits [B, K], with a missing indicator."""

    def __init__(self, size: int, k: int, idf: torch.Tensor | None):
        super().__init__()
        self.register_buffer("idf", idf.clone() if idf is not None else (torch.arange(size) > 0).float())
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("table", torch.zeros(size, k))
        self.register_buffer("missing", torch.zeros(k))

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.idf[ids]
        return w / w.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-6) * self.scale

    def forward(self, ids: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        p = present.float().unsqueeze(1)
        return (self.table[ids] * self.weights(ids).unsqueeze(-1)).sum(1) * p + (1.0 - p) * self.missing


class LinearMembers(nn.Module):
    """Member 1 (all inputs) and members 2.. (one input each) of the ensemble, and the mixing weights."""

    def __init__(self, spec: object, state: dict, extra: int = 0):
        """``extra``: the further networks mixed beside the first (FusionModel.extra)."""
        super().__init__()
        from polyfuse.preprocess.ngrams import idf_table

        self.inputs = member_inputs(spec)
        self.slices: dict[str, tuple[int, int]] = {}
        # binary and multilabel outputs mix per-logit probabilities (sigmoid), category ones a softmax
        self.sigmoid = {n: spec.outputs[n].type != "category" for n, _ in member_outputs(spec, state)}
        start = 0
        for name, k in member_outputs(spec, state):
            self.slices[name] = (start, start + k)
            start += k
        self.kinds = {n: "pretrained" if hf_encoder(spec.inputs[n]) else spec.inputs[n].type for n in self.inputs}
        self.members = ["all", *self.inputs]
        # one part per input, its columns [the all-inputs member's K | the input's own member's K]: one
        # gather of a text table or one matmul serves both (per member and input, batch-1 cost was 2.2x)
        self.width = start
        parts = {}
        for name in self.inputs:
            cfg = spec.inputs[name]
            if self.kinds[name] == "text":
                ngram = cfg.encoder == "ngram"
                size = cfg.buckets if ngram else len(state[name]["vocab"])
                idf = torch.from_numpy(idf_table(state[name], cfg.buckets)) if ngram else None
                parts[name] = TextPart(size, 2 * start, idf)
            else:
                parts[name] = DensePart(dense_width(cfg, state[name]), 2 * start)
        self.parts = nn.ModuleDict(parts)
        self.register_buffer("bias", torch.zeros(len(self.members), start))
        # [outputs, networks + linear members]: the first network, the further ones, then the linear members;
        # all weight on the first until an ensemble is selected
        n_out = len(spec.outputs)
        self.extra = extra
        self.register_buffer("weight", torch.zeros(n_out, 1 + extra + len(self.members)))
        self.weight[:, 0] = 1.0
        self.active = False  # a Python flag, not a tensor test: the exported graph has no branch on it
        self.vocab = {n: len(state[n]["vocab"]) for n in self.inputs if spec.inputs[n].type == "category"}
        self.cfgs = {n: spec.inputs[n] for n in self.inputs}

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.active = bool((self.weight[:, 1:] != 0).any())  # a saved model mixes as it was selected

    def features(self, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kinds[name] == "category":
            return nn.functional.one_hot(batch[name].long(), num_classes=self.vocab[name]).float()
        return dense_features(self.cfgs[name], batch, name)

    def forward(self, batch: dict[str, torch.Tensor], present: torch.Tensor, names: list[str],
                pooled: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """[B, members, K] logits of every linear member; ``names`` orders ``present``'s columns; ``pooled``:
        the pretrained inputs' pooled backbone vectors (computed once, for the network too)."""
        k, parts = self.width, []
        for name in self.inputs:
            p = present[:, names.index(name)]
            kind = self.kinds[name]
            x = batch[name] if kind == "text" else pooled[name] if kind == "pretrained" else self.features(name, batch)
            parts.append(self.parts[name](x, p))  # [B, 2K]
        # biases [K] broadcast over the rows: no batch size is fixed in the exported graph
        out = [self.bias[0] + sum(part[:, :k] for part in parts)]
        out += [self.bias[j + 1] + part[:, k:] for j, part in enumerate(parts)]
        return torch.stack(out, 1)

    def mix(self, i: int, name: str, logits: torch.Tensor, side: object, present: torch.Tensor,
            names: list[str]) -> torch.Tensor:
        """Output ``i``'s ensemble: the weighted mean of the members' probabilities, as logits."""
        a, b = self.slices[name]
        binary = self.sigmoid[name]
        prob = (lambda z: torch.sigmoid(z)) if binary else (lambda z: torch.softmax(z, -1))
        ones = torch.ones_like(logits[:, 0])
        probs = [prob(logits)] + [prob(out[name]) for out in side.extra]
        weights = [ones * self.weight[i, k] for k in range(1 + self.extra)]
        for m, member in enumerate(self.members):
            probs.append(prob(side.linear[:, m, a:b]))
            w = ones * self.weight[i, 1 + self.extra + m]
            reads = self.inputs if member == "all" else [member]  # a member answers where one of its inputs is
            weights.append(w * present[:, [names.index(n) for n in reads]].any(1).float())
        w = torch.stack(weights, 1)
        first = torch.zeros_like(w[:1])
        first[:, 0] = 1.0
        w = w + (w.sum(1, keepdim=True) <= 0).float() * first  # no chosen member answers: the network does
        w = w / w.sum(1, keepdim=True)
        p = (torch.stack(probs, 1) * w.unsqueeze(-1)).sum(1).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p) if binary else torch.log(p)
