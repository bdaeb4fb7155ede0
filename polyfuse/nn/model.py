"""The fusion model: a dict of encoders, a fusion module and a dict of heads, composed in forward."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from polyfuse.nn.build import build_encoder
from polyfuse.nn.fusion import build_fusion
from polyfuse.nn.heads import build_head
from polyfuse.nn.hf import leave_shared_out, shares_backbone
from polyfuse.nn.members import LinearMembers, member_inputs, member_outputs
from polyfuse.nn.wide import WideText, wide_inputs, wide_outputs
from polyfuse.preprocess.targets import MODALITY_WEIGHTS
from polyfuse.spec.schema import Spec

TIME_ALIGNED = ("timeseries", "video", "audio")  # inputs whose encoders can give per-step sequences (fusion sequence)


@dataclass
class Side:
    """What the inputs give besides their vectors: each input's wide logits (None for inputs without a
    wide path) and the linear ensemble members' logits [B, members, K] (None without an ensemble)."""

    wide: list
    linear: torch.Tensor | None = None
    extra: list = field(default_factory=list)  # the further networks' outputs, while the ensemble mixes

    def rows(self, mask: torch.Tensor) -> "Side":
        return Side([None if w is None else w[mask] for w in self.wide],
                    None if self.linear is None else self.linear[mask],
                    [{k: v[mask] for k, v in out.items()} for out in self.extra])


class FusionModel(nn.Module):
    """Late-fusion model.

    Takes the flat batch that ``Preprocessor.collate`` produces, as tensors: for each input
    ``name`` its tensor, ``name__present`` [B] (bool) and, for sequences, ``name__length`` [B].
    Returns ``{output: logits}``. In training, each present input is dropped per sample with
    its modality-dropout probability (never all of a row's inputs), so the model learns to
    answer when a camera or microphone fails; ``alone`` scores each input on its own for the
    optional single-input loss (``fusion.alone_loss``).
    """

    def __init__(self, spec: Spec, state: dict[str, dict], member: bool = False, backbones: dict | None = None):
        """``member``: one of the ensemble's further networks (no linear members, no networks of its own);
        ``backbones``: the first network's frozen pretrained backbones, which a further network reads too."""
        super().__init__()
        self.names = list(spec.inputs)
        private = spec.train.privacy is not None  # DP-SGD-trainable layers (polyfuse.nn.encoders)
        self.backbones = {} if backbones is None else backbones  # a plain dict: not a second address of the modules
        self.encoders = nn.ModuleDict({n: build_encoder(c, state[n], private, self.backbones)
                                       for n, c in spec.inputs.items()})
        self.drop_p = [c.modality_dropout if c.modality_dropout is not None else spec.fusion.modality_dropout
                       for c in spec.inputs.values()]
        dims = [c.dim for c in spec.inputs.values()]
        self.steps = None  # sequence fusion: time-aligned inputs reach it as grids of this many steps
        if spec.fusion.method == "sequence":
            from polyfuse.nn.sequence_fusion import SequenceFusion

            temporal = [getattr(self.encoders[n], "seq_dim", None) if c.type in TIME_ALIGNED else None
                        for n, c in spec.inputs.items()]
            self.steps = spec.fusion.steps
            self.fusion = SequenceFusion(dims, temporal, spec.fusion.dim, spec.fusion.dropout,
                                         spec.fusion.rnn, spec.fusion.steps)
        else:
            self.fusion = build_fusion(spec.fusion.method, dims, spec.fusion.dim, spec.fusion.dropout)
        self.heads = nn.ModuleDict({n: build_head(c, state[n], spec.fusion.dim) for n, c in spec.outputs.items()})
        self.wide = build_wide(spec, state)
        self.wide_slices = {}
        start = 0
        for name, k in wide_outputs(spec, state) if len(self.wide) else []:
            self.wide_slices[name] = (start, start + k)
            start += k
        self.register_buffer("wide_bias", torch.zeros(start))
        # how much of the wide logits is added: 0 while the deep half trains (it learns the task on its
        # own, not the linear model's training-set residuals), then fitted on validation (polyfuse.training.wide)
        self.register_buffer("wide_weight", torch.zeros(len(spec.outputs)))
        # temperature scaling, fitted after training (1 until then); a buffer, so it is saved with the
        # weights and exported into the ONNX graph
        self.register_buffer("temperature", torch.ones(len(spec.outputs)))
        # the validation-selected ensemble of linear members with the network (polyfuse.training.ensemble)
        on = ensemble_enabled(spec, state) and not member
        # further networks, trained with other seeds after the first (train.networks): members of the ensemble
        self.extra = nn.ModuleList([FusionModel(spec, state, member=True, backbones=self.backbones)
                                    for _ in range(extra_networks(spec))] if on else [])
        self.members = LinearMembers(spec, state, len(self.extra)) if on else None
        if not member:
            leave_shared_out(self)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, Side]:
        """Each input's vector, the [B, n_inputs] presence mask (before any modality dropout) and
        what else the inputs give (:class:`Side`)."""
        vectors, present, wide, pooled = self._encode_inputs(batch)
        mixing = self._mixing()
        linear = self.members(batch, present, self.names, pooled) if mixing else None
        extra = [e(with_features(batch, pooled)) for e in self.extra] if mixing else []
        return vectors, present, Side(wide, linear, extra)

    def masked(self, batch: dict[str, torch.Tensor], keeps: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The outputs with only the inputs each ``keeps[j]`` ([n_inputs] bool) marks left present, as if the
        others were missing: the encoders (and further networks' encoders) run once for all of them."""
        vectors, present, wide, pooled = self._encode_inputs(batch)
        mixing = self._mixing()
        extras = [e.encode(with_features(batch, pooled)) for e in self.extra] if mixing else []
        outs = []
        for keep in keeps:
            p = present & keep
            linear = self.members(batch, p, self.names, pooled) if mixing else None
            extra = [e.decide(v, p, side) for e, (v, _, side) in zip(self.extra, extras)]
            outs.append(self.decide(vectors, p, Side(wide, linear, extra)))
        return outs

    def _mixing(self) -> bool:
        return self.members is not None and self.members.active

    def _encode_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[list, torch.Tensor, list, dict]:
        """(vectors, presence [B, n_inputs], wide logits, pretrained members' pooled vectors): what the
        inputs give before any mask; one backbone run serves a pretrained input's vector and its member."""
        present = torch.stack([batch[f"{n}__present"].bool() for n in self.names], dim=1)
        pooled: dict[str, torch.Tensor] = {}
        want = {n for n, k in self.members.kinds.items() if k == "pretrained"} if self._mixing() else set()
        vectors = [self.encode_input(n, batch, pooled if n in want else None) for n in self.names]
        wide = [self.wide[n](batch[n]) if n in self.wide else None for n in self.names]
        return vectors, present, wide, pooled

    def encode_input(self, name: str, batch: dict[str, torch.Tensor],
                     pooled: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One input's vector; from a frozen backbone's cached output (``name__features``) when the batch has it.
        ``pooled``: where a pretrained input's pooled backbone vector is kept (for its ensemble member)."""
        cached = batch.get(f"{name}__features")
        temporal = self.steps is not None and self.fusion.temporal[self.names.index(name)] is not None
        if pooled is not None:
            h, length = (cached, None) if cached is not None else self.encoders[name].features(
                batch[name], batch.get(f"{name}__length"))
            pooled[name] = h
            return self.encoders[name].head(h, length)
        if cached is not None and not temporal:
            return self.encoders[name].head(cached, batch.get(f"{name}__length"))
        mask = batch.get(f"{name}__mask")  # per-step validity (time series with gaps)
        if temporal:
            from polyfuse.nn.sequence_fusion import pack

            if cached is not None:  # a frozen video backbone's cached frame vectors
                seq, step_mask = self.encoders[name].cached_sequence(cached, batch[f"{name}__length"])
            else:
                seq, step_mask = self.encoders[name].sequence(batch[name], batch.get(f"{name}__length"), mask)
            return pack(seq, step_mask, self.steps)  # the input's grid, flattened (polyfuse.nn.sequence_fusion)
        if mask is not None:
            return self.encoders[name](batch[name], batch.get(f"{name}__length"), mask)
        return self.encoders[name](batch[name], batch.get(f"{name}__length"))

    def drop_inputs(self, present: torch.Tensor) -> torch.Tensor:
        """Modality dropout: each present input dropped per sample, never all of a row's inputs."""
        if not (self.training and any(self.drop_p)):
            return present
        p = torch.tensor(self.drop_p, device=present.device)
        dropped = present & (torch.rand(present.shape, device=present.device) >= p)
        return torch.where(dropped.any(1, keepdim=True), dropped, present)

    def decide(self, vectors: list[torch.Tensor], present: torch.Tensor, side: Side | None = None) -> dict[str, torch.Tensor]:
        """Fuse the present inputs' vectors, run every head, add the present inputs' wide logits and
        mix in the ensemble's linear members."""
        fused = self.fusion(vectors, present)
        linear = None
        if side is not None and self.wide_slices:
            linear = self.wide_bias + sum(present[:, i : i + 1] * w for i, w in enumerate(side.wide) if w is not None)
        out = {}
        for i, (n, head) in enumerate(self.heads.items()):
            logits = head(fused)
            if linear is not None and n in self.wide_slices:
                logits = logits + self.wide_weight[i] * linear[:, slice(*self.wide_slices[n])]
            if side is not None and side.linear is not None and n in self.members.slices:
                logits = self.members.mix(i, n, logits, side, present, self.names)
            out[n] = logits / self.temperature[i]
        weights = getattr(self.fusion, "last_weights", None)
        if weights is not None:
            out[MODALITY_WEIGHTS] = weights
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vectors, present, side = self.encode(batch)
        return self.decide(vectors, self.drop_inputs(present), side)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(fused vector [B, fusion.dim], each input's vector, presence [B, n_inputs]): the features
        the heads see, for classic heads and ``polyfuse embed``."""
        vectors, present, _ = self.encode(batch)
        return self.fusion(vectors, present), vectors, present

    def alone(self, vectors: list[torch.Tensor], present: torch.Tensor, side: Side | None = None
              ) -> list[tuple[str, torch.Tensor, dict[str, torch.Tensor]]]:
        """For each input, (its name, rows where it is present, outputs with only it present) --
        what the network answers when every other input is missing (in training, before any linear
        member mixes in: ``side``'s member logits are the full rows'; :meth:`masked` recomputes them)."""
        result = []
        for i in range(len(self.names)):
            rows = present[:, i]
            if bool(rows.any()):
                only = torch.zeros_like(present[rows])
                only[:, i] = True
                sub = None if side is None else side.rows(rows)
                result.append((self.names[i], rows, self.decide([v[rows] for v in vectors], only, sub)))
        return result


def extra_networks(spec: Spec) -> int:
    """Further networks of the ensemble: ``train.networks - 1``; none where a pretrained input's backbone
    would have to be one per network (trained in part, or giving sequences: :func:`shares_backbone`)."""
    from polyfuse.spec.inputs import hf_encoder

    alone = any(hf_encoder(c) and not shares_backbone(c) for c in spec.inputs.values())
    return 0 if alone else getattr(spec.train, "networks", 1) - 1


def with_features(batch: dict[str, torch.Tensor], pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with the first network's pooled backbone vectors as cached features, so the further
    networks (which share its frozen backbones) do not run them again."""
    return {**batch, **{f"{n}__features": h for n, h in pooled.items() if f"{n}__features" not in batch}}


def ensemble_enabled(spec: Spec, state: dict[str, dict]) -> bool:
    """Linear members are built when ``train.ensemble`` is auto, training is not private (they are fitted
    without noise, which DP-SGD's guarantee would not cover) and some output and input can have them."""
    return (getattr(spec.train, "ensemble", "off") == "auto" and spec.train.privacy is None
            and bool(member_outputs(spec, state)) and bool(member_inputs(spec)))


def build_wide(spec: Spec, state: dict[str, dict]) -> nn.ModuleDict:
    """A frozen wide path per ngram text input with ``wide`` (filled by polyfuse.training.wide before training)."""
    from polyfuse.preprocess.ngrams import idf_table

    width = sum(k for _, k in wide_outputs(spec, state))
    if not width:
        return nn.ModuleDict()
    return nn.ModuleDict({n: WideText(spec.inputs[n].buckets, width,
                                      torch.from_numpy(idf_table(state[n], spec.inputs[n].buckets)))
                          for n in wide_inputs(spec)})


def to_tensors(batch: dict, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    if device is None or device.type == "cpu":
        return {k: torch.from_numpy(v) for k, v in batch.items()}
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


@torch.inference_mode()
def embed_arrays(net: FusionModel, batch: dict, chunk: int = 256) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Fused vectors, per-input vectors and presence for a collated numpy batch, in eval mode."""
    net.eval()
    n = len(next(iter(batch.values())))
    parts = [net.embed(to_tensors({k: v[s : s + chunk] for k, v in batch.items()})) for s in range(0, n, chunk)]
    fused = torch.cat([p[0] for p in parts]).numpy()
    vectors = [torch.cat([p[1][i] for p in parts]).numpy() for i in range(len(net.names))]
    return fused, vectors, torch.cat([p[2] for p in parts]).numpy()


@torch.inference_mode()
def predict_masked(net: FusionModel, batch: dict, keeps: list[np.ndarray], chunk: int = 256) -> list[dict[str, torch.Tensor]]:
    """Logits with only the inputs each ``keeps[j]`` marks present (FusionModel.masked), in chunks, in eval mode."""
    net.eval()
    n = len(next(iter(batch.values())))
    device = next(net.parameters()).device
    masks = [torch.as_tensor(k, dtype=torch.bool, device=device) for k in keeps]
    parts: list[dict[str, list[torch.Tensor]]] = [{} for _ in keeps]
    for start in range(0, n, chunk):
        outs = net.masked(to_tensors({k: v[start : start + chunk] for k, v in batch.items()}, device), masks)
        for part, out in zip(parts, outs):
            for name, logits in out.items():
                part.setdefault(name, []).append(logits.float().cpu())
    return [{name: torch.cat(p) for name, p in part.items()} for part in parts]


@torch.inference_mode()
def predict_arrays(net: FusionModel, batch: dict, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Logits for a collated numpy batch, in chunks, in eval mode."""
    net.eval()
    n = len(next(iter(batch.values())))
    device = next(net.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, chunk):
        out = net(to_tensors({k: v[start : start + chunk] for k, v in batch.items()}, device))
        for name, logits in out.items():
            parts.setdefault(name, []).append(logits.float().cpu())
    return {name: torch.cat(p) for name, p in parts.items()}
