"""Differential privacy in training: DP-SGD (Abadi et al., 2016) with Opacus.

Each step draws a Poisson sample of the training rows (each row on its own, with chance
q = batch_size / rows), clips every row's gradient to ``max_grad_norm``, sums them and adds
Gaussian noise of std ``noise_multiplier * max_grad_norm``. An accountant (RDP or PRV) turns
(noise, q, steps) into the epsilon spent at the spec's delta.

Three stages, each called once by the recipe (:mod:`polyfuse.training.recipe`):
:func:`start` checks that every trained layer has per-row gradients (or refuses, naming the layer)
and swaps in what Opacus needs while training (DPGRU/DPLSTM for recurrent layers);
:meth:`Private.wrap` turns the plain :class:`~polyfuse.training.epochs.Stepper` into a
:class:`PrivateStepper` (Poisson batches, per-row gradients, clipping and noise);
:meth:`Private.finish` removes the hooks, puts torch's recurrent layers back and reports the
epsilon spent. The layers DP-SGD needs for good (GroupNorm, a dense n-gram table) are chosen from
the spec when the network is built (:mod:`polyfuse.nn.encoders`), so a loaded or exported model
has the same architecture without Opacus installed.

What the guarantee covers: the network's trained weights. The fitted preprocessing (vocabularies,
means, IDF weights) and the baseline scores in metrics.json are computed from the training rows
without noise; the temperature is fitted on validation rows. The wide n-gram half and classic
heads, fitted on training rows, are not built under privacy (:mod:`polyfuse.spec.schema`).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from polyfuse.errors import SpecError
from polyfuse.extras import require
from polyfuse.spec.dp_defaults import TABLE_BYTES, poisson_batch
from polyfuse.spec.schema import PrivacySpec, Spec
from polyfuse.training.epochs import Stepper
from polyfuse.training.trainset import log

RECURRENT = (nn.GRU, nn.LSTM, nn.RNN)
HINTS = {  # what to do about a layer Opacus has no per-row gradient for
    "AttentionFusion": "use fusion.method concat, mean, max or gated",
    "LowRankFusion": "use fusion.method concat, mean, max or gated",
    "TreeEnsemble": "use head: softmax",
}


@dataclass
class Private:
    """One private run: its budget, sampling and noise, and the layers swapped while training."""

    cfg: PrivacySpec
    rows: int
    batch_size: int
    epochs: int
    sample_rate: float
    steps_per_epoch: int
    noise_multiplier: float
    swapped: list[tuple[nn.Module, str, type]] = field(default_factory=list)
    stepper: "PrivateStepper | None" = None

    def epsilon(self, steps: int) -> float:
        """The epsilon spent after ``steps`` noisy steps, at the spec's delta."""
        from opacus.accountants import create_accountant

        accountant = create_accountant(self.cfg.accountant)
        if not steps:
            return 0.0
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)]
        with _quiet_accountant():
            return float(accountant.get_epsilon(delta=self.cfg.delta))

    def wrap(self, plain: Stepper, net: nn.Module, history: list[dict]) -> "PrivateStepper":
        """The DP-SGD stepper in place of ``plain``: per-row gradient hooks on ``net`` and the DP
        optimiser around its (single, dense) optimiser; steps already taken come from a resumed
        run's ``history``."""
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        register_grad_samplers()
        parts = getattr(plain.optimizer, "parts", [plain.optimizer])
        if len(parts) != 1:
            raise SpecError("train.privacy: the network has parameters that need a second optimiser (sparse tables "
                            "or backbone groups); DP-SGD clips and noises one optimiser's gradients")
        hooks = GradSampleModule(net, batch_first=True, loss_reduction="mean", strict=True)
        optimizer = DPOptimizer(parts[0], noise_multiplier=self.noise_multiplier, max_grad_norm=self.cfg.max_grad_norm,
                                expected_batch_size=self.batch_size, loss_reduction="mean")
        done = int(history[-1].get("dp_steps", 0)) if history else 0
        self.stepper = PrivateStepper(plain.loss, optimizer, plain.place, plain.dist, None, plain.batch_size, plain.average,
                                      private=self, hooks=hooks, steps=done)
        return self.stepper

    def finish(self, net: nn.Module) -> dict[str, Any]:
        """Hooks removed, torch's recurrent layers back (same weights); returns what metrics.json
        records under ``privacy``."""
        steps = self.stepper.steps if self.stepper is not None else 0
        if self.stepper is not None:
            self.stepper.hooks.remove_hooks()
            for p in net.parameters():  # what the hooks left on the parameters
                for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "summed_grad"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        to_torch_layers(self.swapped)
        spent = self.epsilon(steps)
        report = {"epsilon": round(spent, 4), "delta": self.cfg.delta, "target_epsilon": self.cfg.epsilon,
                  "noise_multiplier": round(self.noise_multiplier, 5), "max_grad_norm": self.cfg.max_grad_norm,
                  "sample_rate": round(self.sample_rate, 6), "expected_batch_size": self.batch_size,
                  "steps": steps, "epochs": round(steps / self.steps_per_epoch, 2), "rows": self.rows,
                  "accountant": self.cfg.accountant, "settings": self.cfg.settings, "sampling": "poisson", "library": f"opacus {_version()}"}
        log(f"privacy: epsilon {spent:.3f} spent (delta {self.cfg.delta:g}, noise {self.noise_multiplier:.3f}, "
            f"{steps} steps, {self.cfg.accountant} accountant)")
        return report


@dataclass
class PrivateStepper(Stepper):
    """A Stepper whose batches are Poisson samples and whose optimiser is Opacus' DPOptimizer (per-row
    clipping, then noise); the loss and the update are the plain Stepper's."""

    private: Private | None = None
    hooks: Any = None  # the GradSampleModule whose hooks compute per-row gradients
    steps: int = 0

    def batches(self, order: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        p = self.private
        for _ in range(p.steps_per_epoch):
            self.steps += 1  # counted even when the draw is empty (a pure-noise step): the accountant assumes it
            idx = np.flatnonzero(rng.random(len(order)) < p.sample_rate)
            if len(idx):
                yield idx

    def step(self, xb: dict, yb: dict) -> torch.Tensor:
        with warnings.catch_warnings():
            # the hooks on the first layers, whose inputs are data that needs no gradient: torch notes it
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return super().step(xb, yb)

    def summary(self) -> dict[str, Any]:
        return {"dp_steps": self.steps, "epsilon": round(self.private.epsilon(self.steps), 4)}


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """Opacus' RDP analysis (PRV uses it too, for its domain) warns at large noise that the best
    order is its largest alpha: the bound is then looser, still an upper bound on epsilon. Said once
    per epoch (every catch_warnings in a step resets the once-registry), it buried the epoch lines."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # PRV at sample rate 1 (every row in every step) takes log(1 - q): the bound it then returns is right
        warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)
        yield


def start(spec: Spec, net: nn.Module, rows: int, dist: Any) -> Private:
    """Check that ``net`` can be trained privately, swap in Opacus' recurrent layers, and fix the
    noise: the spec's noise_multiplier, or the one that spends its epsilon in train.epochs."""
    require("train", "train.privacy (DP-SGD)", modules=("opacus",))
    if dist.enabled:
        raise SpecError("train.privacy under torchrun (DDP) is not supported; train on one process")
    cfg, train = spec.train.privacy, spec.train
    trainable_backbones(spec, net)
    swapped = to_opacus_layers(net)
    refuse_unsupported(net)
    batch = min(train.batch_size, rows)  # the expected batch: the noisy sum is divided by it
    if batch < train.batch_size:
        log(f"privacy: batch size {train.batch_size} is more than the {rows} training rows: every row in every step")
    q = batch / rows
    steps = max(1, round(1 / q))
    check_tables(spec, net, batch, rows)
    if cfg.noise_multiplier is not None:
        sigma = cfg.noise_multiplier
    else:
        from opacus.accountants.utils import get_noise_multiplier

        with _quiet_accountant():
            sigma = get_noise_multiplier(target_epsilon=cfg.epsilon, target_delta=cfg.delta, sample_rate=q,
                                         steps=steps * train.epochs, accountant=cfg.accountant)
    if cfg.delta >= 1.0 / rows:
        log(f"WARNING: train.privacy.delta {cfg.delta:g} is not below 1 / {rows} training rows: the guarantee "
            "allows leaking a whole row with that chance; use a smaller delta")
    log(f"privacy: DP-SGD, noise multiplier {sigma:.3f}, max_grad_norm {cfg.max_grad_norm}, Poisson sample rate "
        f"{q:.4f} ({steps} steps per epoch)" + (f", target epsilon {cfg.epsilon}" if cfg.epsilon else ""))
    return Private(cfg, rows, batch, train.epochs, q, steps, float(sigma), swapped)


def trainable_backbones(spec: Spec, net: nn.Module) -> None:
    """Pretrained backbones train privately only when frozen (their outputs are then fixed features)."""
    from polyfuse.spec.inputs import hf_encoder

    for name, cfg in spec.inputs.items():
        enc = hf_encoder(cfg)
        if enc is not None and any(p.requires_grad for p in net.encoders[name].backbone.parameters()):
            raise SpecError(f"train.privacy: inputs.{name}: the pretrained backbone {enc.name!r} is trained "
                            "(freeze: false, train_last or lora); under DP-SGD keep it frozen (freeze: true)")


def to_opacus_layers(net: nn.Module) -> list[tuple[nn.Module, str, type]]:
    """GRU/LSTM -> Opacus' DPGRU/DPLSTM (same weights and outputs, per-row gradients) via
    ``ModuleValidator.fix``, and ReLUs no longer in place (the per-row gradient hooks refuse outputs
    changed in place; nothing saved changes). Returns what :func:`to_torch_layers` puts back."""
    from opacus.validators import ModuleValidator

    swapped = []
    for name, parent in list(net.named_modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                child.inplace = False
            if type(child) in RECURRENT and any(p.requires_grad for p in child.parameters()):
                fixed = ModuleValidator.fix(child)
                torch_names_only(fixed, f"{name}.{attr}." if name else f"{attr}.")
                setattr(parent, attr, fixed)
                swapped.append((parent, attr, type(child)))
    return swapped


def torch_names_only(layer: nn.Module, prefix: str) -> None:
    """Opacus' recurrent layers list each weight under torch's name and their own: keep torch's alone
    in the network's state dicts (checkpoints and the best epoch's weights are then those of torch's
    layer, and safetensors refuses aliases), and do not miss their own when loading."""
    own = set(layer.old_to_new)

    def drop(module: nn.Module, state: dict, at: str, _meta: Any) -> None:
        for key in own:
            state.pop(at + key, None)

    def not_missing(module: nn.Module, incompatible: Any) -> None:
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k[len(prefix):] not in own
                                        or not k.startswith(prefix)]

    # in place of Opacus' own hook, which filters a copy and so only works on a layer saved on its own
    layer._state_dict_hooks.clear()
    layer._register_state_dict_hook(drop)
    layer.register_load_state_dict_post_hook(not_missing)


def to_torch_layers(swapped: list[tuple[nn.Module, str, type]]) -> None:
    """Torch's own recurrent layers back in place of Opacus' (which keep torch's weight names), so the
    saved and exported model is the one a spec builds."""
    for parent, attr, cls in swapped:
        dp = getattr(parent, attr)
        plain = cls(dp.input_size, dp.hidden_size, num_layers=dp.num_layers, bias=dp.bias,
                    batch_first=dp.batch_first, dropout=dp.dropout, bidirectional=dp.bidirectional)
        plain.load_state_dict(dp.state_dict())
        setattr(parent, attr, plain.to(next(dp.parameters()).device))


def refuse_unsupported(net: nn.Module) -> None:
    """Every trained layer must have a per-row gradient in Opacus (or be one of Opacus' own layers);
    otherwise name it and say what to use instead."""
    from opacus.grad_sample import GradSampleModule
    from opacus.layers import DPGRU, DPLSTM, DPRNN
    from opacus.validators import ModuleValidator

    register_grad_samplers()
    inside_dp = set()
    for name, m in net.named_modules():
        if isinstance(m, (DPGRU, DPLSTM, DPRNN)):
            inside_dp |= {f"{name}.{sub}" for sub, _ in m.named_modules() if sub}
        if name in inside_dp:
            continue
        trained = any(p.requires_grad for p in m.parameters(recurse=False))
        if type(m) in ModuleValidator.VALIDATORS and m.training and any(p.requires_grad for p in m.parameters()):
            problem = "mixes the rows of a batch (or has no per-row gradient)"
        elif trained and type(m) not in GradSampleModule.GRAD_SAMPLERS and not isinstance(m, (DPGRU, DPLSTM, DPRNN)):
            problem = "has no per-row gradient in opacus"
        else:
            continue
        hint = HINTS.get(type(m).__name__, "use a built-in encoder and fusion, or train without train.privacy")
        raise SpecError(f"train.privacy: layer `{name or 'model'}` ({type(m).__name__}) {problem}; {hint}")


def check_tables(spec: Spec, net: nn.Module, batch_size: int, rows: int | None = None) -> None:
    """Opacus holds each embedding table's gradient once per row of a batch: refuse tables that would
    need more than TABLE_BYTES, naming the input and a size that fits."""
    batch = poisson_batch(batch_size, rows)
    field = "train.privacy.batch_size" if spec.train.privacy and spec.train.privacy.settings == "auto" else \
        "train.batch_size"
    for name, m in net.named_modules():
        if isinstance(m, nn.Embedding) and m.weight.requires_grad:
            need = batch * m.num_embeddings * m.embedding_dim * 4
            if need > TABLE_BYTES:
                input_name = name.split(".")[1] if name.startswith("encoders.") else name
                cfg = spec.inputs.get(input_name)
                what = "buckets" if getattr(cfg, "encoder", None) == "ngram" else "max_vocab"
                fits = 1 << int(np.log2(TABLE_BYTES / (batch * m.embedding_dim * 4)))
                raise SpecError(f"train.privacy: inputs.{input_name}: per-row gradients of its {m.num_embeddings} x "
                                f"{m.embedding_dim} table take {need / 1e9:.1f} GB for a batch of ~{batch}; set "
                                f"inputs.{input_name}.{what} to {fits} or less (or a smaller dim or {field})")


def absent_grad_sample(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
                       ) -> dict[nn.Parameter, torch.Tensor]:
    """Per-row gradients of the concat fusion's "absent" vectors: a row's output gradient where that
    input is missing, zero where it is present."""
    present, vectors = activations[0], activations[1:]
    out, start = {}, 0
    for i, (v, a) in enumerate(zip(vectors, layer)):
        width = v.shape[-1]
        if a.requires_grad:
            out[a] = backprops[:, start : start + width] * (~present[:, i : i + 1].bool()).to(backprops.dtype)
        start += width
    return out


def embedding_grad_sample(layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor
                          ) -> dict[nn.Parameter, torch.Tensor]:
    """Opacus' per-row embedding gradients with the padding row's zeroed, as torch's own backward
    does: otherwise clipping counts it and the noisy update moves the padding vector."""
    from opacus.grad_sample.embedding import compute_embedding_grad_sample

    out = compute_embedding_grad_sample(layer, activations, backprops)
    if layer.padding_idx is not None and layer.weight in out:
        out[layer.weight][:, layer.padding_idx] = 0.0
    return out


def register_grad_samplers() -> None:
    """Polyfuse's per-row gradients in Opacus' table: the concat fusion's absent vectors, and
    embeddings that respect their padding row."""
    from opacus.grad_sample import GradSampleModule

    from polyfuse.nn.fusion import AbsentVectors

    GradSampleModule.GRAD_SAMPLERS[AbsentVectors] = absent_grad_sample
    GradSampleModule.GRAD_SAMPLERS[nn.Embedding] = embedding_grad_sample


def _version() -> str:
    import opacus

    return opacus.__version__
