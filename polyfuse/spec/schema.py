"""The spec: which columns are which modality, how each is encoded, fused and predicted.

One YAML file or the same dict; the input sections (one per modality) are in
:mod:`polyfuse.spec.inputs`. Validation is done by pydantic; ``load_spec`` turns its
errors into a :class:`SpecError` whose every line names the field path, the bad value and
what is allowed. Every field has a default, so ``inputs`` + ``outputs`` + ``data`` suffice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from polyfuse.errors import SpecError
from polyfuse.spec.inputs import InputSpec, Strict


# ----------------------------------------------------------------------------- data
class SplitSpec(Strict):
    valid: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of train rows held out for validation")
    test: float = Field(0.0, ge=0.0, lt=1.0, description="fraction held out for test when data.test is absent")
    group_by: str | None = Field(None, description="column whose values never straddle two splits (e.g. speaker)")
    seed: int = 0


class DataSpec(Strict):
    train: str | None = Field(None, description="table path, relative to the spec's folder")
    valid: str | None = None
    test: str | None = None
    split: SplitSpec = SplitSpec()
    on_bad_row: Literal["skip", "error"] = Field("skip", description="skip bad rows (listed at the end) or stop")
    cache_dir: str | None = Field(None, description="where decoded shards and frozen pretrained backbones' outputs "
                                  "are cached (relative to the spec's folder); default: $POLYFUSE_CACHE, else "
                                  "~/.cache/polyfuse")
    storage: Literal["auto", "memory", "disk"] = Field(
        "auto", description="where decoded records live while training: memory (fastest), disk (memory-mapped shards "
        "built by a process pool and reused across runs; for tables larger than memory), auto: disk when the decoded "
        "table would take more than half of memory_budget_mb")
    memory_budget_mb: int = Field(4096, gt=0, description="what the run's data may take in memory: storage: auto "
                                  "decodes to disk past half of it, and the training rows are collated once for every "
                                  "epoch only where that copy takes at most a quarter of it")
    workers: int | None = Field(None, ge=1, description="processes that build disk shards; default: the usable CPUs")


# ----------------------------------------------------------------------------- model, outputs, training
class FusionSpec(Strict):
    """How the inputs' vectors become one. concat: the default, strong when inputs are usually all
    present; mean/max: order-free pooling over present inputs; gated: learned per-record input
    weights (shown in predictions), good when one input is often noisy; attention: a small
    transformer over input tokens, for many inputs with interactions; lowrank: low-rank tensor
    fusion, multiplicative interactions between inputs at linear cost; sequence: time-aligned inputs
    (timeseries, video) resampled onto one grid of ``steps`` steps and fused step by step by a GRU or
    LSTM (MM-RNN), the other inputs joined to its final state."""

    method: Literal["concat", "mean", "max", "gated", "attention", "lowrank", "sequence"] = "concat"
    dim: int = Field(128, gt=0, description="width of the fused representation")
    modality_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="chance of dropping each input per sample in training")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout in the fused layers; 0 by default under "
                           "train.privacy, where DP-SGD's noise already regularises and the model underfits")
    alone_loss: float = Field(0.0, ge=0.0, description="weight of an extra training loss that scores each input on "
                              "its own (every other input absent), so each answers well when the others fail")
    rnn: Literal["gru", "lstm"] = Field("gru", description="sequence: the recurrent cell run over the steps")
    steps: int = Field(16, ge=1, le=512, description="sequence: steps of the common time grid the time-aligned "
                       "inputs are resampled onto")


class HeadSpec(Strict):
    """The classifier on the fused features. softmax: trained with the network; svm, logistic and gbdt
    (the classic heads) are fitted by scikit-learn on the trained network's fused features afterwards,
    compared with the softmax head in metrics.json, and exported inside the same ONNX graph."""

    type: Literal["softmax", "svm", "logistic", "gbdt"] = "softmax"
    C: float = Field(1.0, gt=0, description="svm/logistic: inverse regularisation strength")
    trees: int = Field(100, ge=1, le=2000, description="gbdt: boosting iterations (trees per class)")
    max_depth: int = Field(4, ge=1, le=12, description="gbdt: depth of each tree")
    learning_rate: float = Field(0.1, gt=0, le=1.0, description="gbdt: shrinkage")


class OutputSpec(Strict):
    type: Literal["category", "binary", "multilabel", "number"]
    column: str | None = None
    weight: float = Field(1.0, gt=0, description="weight of this output's loss")
    class_weights: Literal["balanced"] | dict[str, float] | None = None
    separator: str = Field("|", description="multilabel: separator between labels in one cell")
    abstain_below: float | None = Field(None, gt=0.0, lt=1.0, description="answer null ('low confidence') when the "
                                        "top calibrated probability is below this")
    head: HeadSpec = HeadSpec()

    @field_validator("head", mode="before")
    @classmethod
    def _head_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v  # `head: svm` for `head: {type: svm}`

    @model_validator(mode="after")
    def _head_fits_type(self) -> "OutputSpec":
        if self.head.type != "softmax" and self.type not in ("category", "binary"):
            raise ValueError(f"head {self.head.type!r} is for category and binary outputs, not {self.type!r}; "
                             "use head: softmax")
        return self


class PrivacySpec(Strict):
    """Differential privacy in training (DP-SGD, Opacus): each row's gradient is clipped to
    max_grad_norm and Gaussian noise is added to every step; batches are Poisson-sampled. Give a
    target epsilon (the noise is chosen to spend it by the last epoch) or a fixed noise_multiplier
    (the epsilon it spends is reported), not both."""

    epsilon: float | None = Field(None, gt=0, description="target privacy budget (smaller: more private, less "
                                  "accurate; 1-10 is the usual range)")
    delta: float = Field(1e-5, gt=0, lt=1, description="probability the guarantee fails; keep it well below "
                         "1 / (training rows)")
    noise_multiplier: float | None = Field(None, gt=0, description="noise std relative to max_grad_norm, instead "
                                           "of epsilon")
    max_grad_norm: float = Field(1.0, gt=0, description="each row's gradient is clipped to this L2 norm (chosen "
                                 "with settings: auto unless set here)")
    settings: Literal["auto", "train"] = Field("auto", description="auto: batch size, epochs, learning rate and "
                                               "clipping chosen for DP-SGD from the training rows and epsilon "
                                               "(polyfuse/spec/dp_defaults.py; a value set here is kept; the log "
                                               "says each); train: the train section's values and max_grad_norm")
    batch_size: int | None = Field(None, ge=1, description="expected batch size under privacy (default: chosen)")
    epochs: int | None = Field(None, ge=1, description="epochs under privacy (default: chosen)")
    lr: float | None = Field(None, gt=0, description="learning rate under privacy (default: chosen)")
    accountant: Literal["rdp", "prv"] = Field("prv", description="how the epsilon spent is computed: prv (privacy "
                                              "random variables, tight: less noise for the same epsilon; opacus' "
                                              "default) or rdp (Renyi DP, a looser upper bound)")

    @model_validator(mode="after")
    def _one_budget(self) -> "PrivacySpec":
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of epsilon (a target budget; the noise is chosen to spend it) or "
                             "noise_multiplier (a fixed noise; the epsilon it spends is reported), e.g. "
                             "{epsilon: 8, delta: 1.0e-5}")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> "PrivacySpec":
        own = [k for k in ("batch_size", "epochs", "lr") if getattr(self, k) is not None]
        if self.settings == "train" and own:
            raise ValueError(f"settings: train uses the train section's values, but {', '.join(own)} is set here too; "
                             "move it to train: or drop settings: train")
        return self


class TrackingSpec(Strict):
    mlflow: str | None = Field(None, description="MLflow tracking URI: http(s)://host:port of a tracking server, "
                               "sqlite:///path.db (polyfuse train --track: ./mlflow.db) or file:/path (MLflow 3 wants "
                               "MLFLOW_ALLOW_FILE_STORE=true for that)")
    experiment: str = Field("polyfuse", description="the MLflow experiment runs are logged under")
    tensorboard: str | None = Field(None, description="a folder for TensorBoard event files (per-epoch scalars)")


class TrainSpec(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "plateau"] = "cosine"
    early_stopping: int | None = Field(5, ge=1, description="epochs without improvement before stopping")
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="keep an exponential moving average of the weights "
                              "with this decay per step (e.g. 0.9 to 0.999: about 1 / (1 - decay) steps averaged); "
                              "validation and the saved model use it. Smooths noisy updates: small batches, DP-SGD")
    metric: str | None = Field(None, description="validation metric to select on; default: loss")
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; default: the CPUs this process may use, "
                                "fewer while other processes keep some of them busy (re-checked every epoch)")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: a CUDA GPU, else Apple's MPS, "
                                                          "else the CPU")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision of training steps: "
                                                       "bf16 on CPUs and recent GPUs, fp16 on CUDA GPUs (with loss "
                                                       "scaling)")
    calibrate: bool = Field(True, description="fit temperature scaling on the validation split")
    baseline: bool = Field(True, description="fit the linear baseline floor (per input and all together) and warn "
                           "when it beats the network")
    time_limit: float | None = Field(None, gt=0, description="seconds for the whole run (reading, training, the "
                                     "ensemble, calibration, evaluation, the baseline): training stops before an "
                                     "epoch that would not fit in 85% of it, and a later stage that no longer fits is "
                                     "skipped; metrics.json says what was skipped")
    ensemble: Literal["auto", "off"] = Field("auto", description="auto: linear models on cheap features of the "
                                             "inputs (all together and each alone) are mixed with the network, "
                                             "weights chosen on the validation rows (greedy selection with "
                                             "replacement); the mix is part of the exported model. Off under privacy")
    networks: int = Field(1, ge=1, le=8, description="networks in the ensemble: the first, and networks - 1 more "
                          "trained with other seeds after it (each within time_limit); they are members beside the "
                          "linear ones. Needs ensemble auto; frozen pretrained backbones are shared by all networks "
                          "(not ones trained in part or pooled by attention: those would need one per network)")
    privacy: PrivacySpec | None = Field(None, description="differential privacy (DP-SGD with Opacus); default off")
    tracking: TrackingSpec | None = Field(None, description="log the run to MLflow and/or TensorBoard: the spec as "
                                          "params, per-epoch and final metrics, the card and plots; a tracking server "
                                          "that is down is reported once and the run goes on")


class Spec(Strict):
    data: DataSpec = DataSpec()
    inputs: dict[str, InputSpec]
    fusion: FusionSpec = FusionSpec()
    outputs: dict[str, OutputSpec]
    train: TrainSpec = TrainSpec()

    @field_validator("inputs", "outputs")
    @classmethod
    def _not_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("at least one entry is required")
        for name in v:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"name {name!r} must be an identifier (letters, digits, _) not starting with _")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> "Spec":
        clash = set(self.inputs) & set(self.outputs)
        if clash:
            raise ValueError(f"{sorted(clash)} is both an input and an output")
        return self

    @model_validator(mode="after")
    def _sequence_inputs(self) -> "Spec":
        aligned = [n for n, c in self.inputs.items()
                   if c.type in ("timeseries", "video") or c.type == "audio" and isinstance(c.encoder, str)]
        if self.fusion.method == "sequence" and not aligned:
            raise ValueError("fusion.method: sequence needs at least one time-aligned input (type timeseries, video, "
                             "or audio with a built-in encoder); inputs are "
                             + ", ".join(f"{n} ({c.type})" for n, c in self.inputs.items()))
        return self

    @model_validator(mode="after")
    def _private(self) -> "Spec":
        """What DP-SGD cannot cover: parts fitted on the training rows without noise, or losses whose
        per-row gradients depend on other rows (then clipping no longer bounds one row's influence)."""
        if self.train.privacy is None:
            return self
        problems = []
        if self.fusion.alone_loss:
            problems.append("fusion.alone_loss reruns the fusion on row subsets; set it to 0")
        if self.train.precision != "fp32":
            problems.append(f"train.precision {self.train.precision!r}: DP-SGD runs in fp32 only")
        for name, out in self.outputs.items():
            if out.head.type != "softmax":
                problems.append(f"outputs.{name}.head {out.head.type!r} is fitted on the training rows without "
                                "noise; use head: softmax")
            if out.class_weights is not None and out.type == "category":
                problems.append(f"outputs.{name}.class_weights: a weighted mean loss makes each row's gradient "
                                "depend on the others' labels; remove it")
        if problems:
            raise ValueError("train.privacy: " + "; ".join(problems))
        if "dropout" not in self.fusion.model_fields_set:  # DP-SGD underfits: dropout only slows it further
            self.fusion.dropout = 0.0
        return self

    def column(self, name: str) -> str:
        """The table column that feeds input or output ``name``."""
        item = self.inputs.get(name) or self.outputs[name]
        return item.column or name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _relevant(err: dict) -> bool:
    """Of a union's branches, only the one the user wrote: for an encoder a name or a pretrained
    {hf: ...} mapping; for ``true | [list]`` fields (deidentify) the boolean or the list."""
    loc = [str(p) for p in err["loc"]]
    if loc and loc[-1] == "bool" and isinstance(err.get("input"), list):  # loc names the branch in a union only
        return False
    if loc and loc[-1].startswith("list[") and isinstance(err.get("input"), bool):
        return False
    if "HFEncoder" in loc:
        return not (err["type"] == "model_type" and not isinstance(err.get("input"), dict))
    return not (any(p.startswith("literal[") for p in loc) and isinstance(err.get("input"), dict))


def _describe(err: dict) -> str:
    loc = [p for p in err["loc"] if p != "HFEncoder" and not str(p).startswith(("literal[", "list["))
           and not (p == "bool" and p == err["loc"][-1])]
    if len(loc) > 2 and loc[0] == "inputs" and loc[2] in _TYPE_TAGS:
        del loc[2]  # pydantic's discriminator tag, not part of the user's path (an input may be named "image")
    path = ".".join(str(p) for p in loc)
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        msg = f"expected one of {ctx['expected']}"
        if loc[-1] == "encoder":
            msg += ", or {hf: MODEL_DIR_OR_NAME} for a pretrained backbone"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown type; expected one of {ctx.get('expected_tags')}"
    elif err["type"] == "union_tag_not_found":
        msg = "missing 'type'; expected one of 'image', 'audio', 'text', 'number', 'category', 'timeseries', 'video'"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling; `polyfuse schema` lists every field)"
    value = "" if err["type"] == "missing" else f" (got {repr(err.get('input'))[:80]})"
    return f"  {path or '<spec>'}: {msg}{value}"


_TYPE_TAGS = {"image", "audio", "text", "number", "category", "timeseries", "video"}


def load_spec(source: str | Path | dict | Spec) -> tuple[Spec, Path]:
    """Validate a spec from a YAML path or a dict; returns it with the folder paths are relative to."""
    if isinstance(source, Spec):
        return source, Path.cwd()
    base = Path.cwd()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} not found")
        try:
            source = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpecError(f"spec file {str(path)!r} is not valid YAML: {e}") from None
        base = path.resolve().parent
        if not isinstance(source, dict):
            raise SpecError(f"spec file {str(path)!r} must hold a mapping with inputs/outputs/data")
    try:
        return Spec.model_validate(source), base
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors() if _relevant(err)]
        raise SpecError("invalid spec:\n" + "\n".join(lines)) from None


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec, for editors (`polyfuse schema`)."""
    schema = Spec.model_json_schema()
    schema["title"] = "polyfuse spec"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
