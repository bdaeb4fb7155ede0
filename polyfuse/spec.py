"""The spec: which columns are which modality, how each is encoded, fused and predicted.

One YAML file or the same dict. Validation is done by pydantic; ``load_spec`` turns its
errors into a :class:`SpecError` whose every line names the field path, the bad value and
what is allowed. Every field has a default, so ``inputs`` + ``outputs`` + ``data`` suffice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from polyfuse.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ----------------------------------------------------------------------------- data
class SplitSpec(_Strict):
    valid: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of train rows held out for validation")
    test: float = Field(0.0, ge=0.0, lt=1.0, description="fraction held out for test when data.test is absent")
    group_by: str | None = Field(None, description="column whose values never straddle two splits (e.g. speaker)")
    seed: int = 0


class DataSpec(_Strict):
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
    memory_budget_mb: int = Field(4096, gt=0, description="what storage: auto may spend on decoded records")
    workers: int | None = Field(None, ge=1, description="processes that build disk shards; default: the usable CPUs")


# ----------------------------------------------------------------------------- pretrained encoders
class LoraSpec(_Strict):
    r: int = Field(8, ge=1, description="rank of the low-rank update")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="module names to adapt; default: the attention "
                                             "query/value projections of the model type")


class HFEncoder(_Strict):
    """A pretrained transformers backbone as an input's encoder (text, image or audio)."""

    hf: str = Field(description="a local model folder (relative to the spec's folder) or a hub name already in the "
                    "local Hugging Face cache")
    freeze: bool = Field(True, description="keep the backbone's weights fixed (its outputs are then cached on disk)")
    train_last: int = Field(0, ge=0, description="with freeze: still train the last N transformer layers")
    lora: LoraSpec | None = Field(None, description="train low-rank adapters (peft) on the frozen backbone; merged "
                                  "into the weights before saving, so exports are plain models")
    pooling: Literal["cls", "mean", "attention"] | None = Field(
        None, description="how token/patch/frame vectors become one: cls (first token, or the model's pooler), mean "
        "over valid positions, attention (learned weights); default: mean for text and audio, cls for images")
    lr: float | None = Field(None, gt=0, description="learning rate of the backbone's trained weights (the rest "
                             "uses train.lr); default 5e-5 when fine-tuning layers, 5e-4 for LoRA adapters")
    cache: bool = Field(True, description="frozen: keep the backbone's outputs in the on-disk cache (data.cache_dir, "
                        "else $POLYFUSE_CACHE or ~/.cache/polyfuse); false: run the backbone every epoch")
    download: bool = Field(False, description="allow fetching the model from the hub when it is not local "
                           "(HF_HUB_OFFLINE=1 still forbids it)")
    # the model folder's preprocessing settings (tokenizer, image or audio processor) and its config.json,
    # bound at training start from the folder and at load time from preprocess.json (polyfuse.preprocess.hf)
    _processor: dict | None = PrivateAttr(None)
    _config: dict | None = PrivateAttr(None)

    @property
    def backbone_lr(self) -> float:
        return self.lr or (5e-4 if self.lora is not None else 5e-5)

    @property
    def cached(self) -> bool:
        """Whether the backbone's outputs are a fixed function of the input (so they can be cached)."""
        return self.freeze and not self.train_last and self.lora is None


def hf_encoder(cfg: Any) -> HFEncoder | None:
    """The pretrained encoder of an input, or None when it uses a built-in encoder."""
    enc = getattr(cfg, "encoder", None)
    return enc if isinstance(enc, HFEncoder) else None


# ----------------------------------------------------------------------------- inputs
class ImageAugment(_Strict):
    random_crop: float | None = Field(None, gt=0.0, le=1.0, description="crop this fraction of each side, then resize back")
    flip: bool = Field(False, description="random horizontal flip (not for digits or text!)")
    noise: float | None = Field(None, ge=0.0, description="Gaussian pixel noise, std drawn from [0, noise] per image")
    noise_p: float = Field(1.0, gt=0.0, le=1.0, description="share of training images that get the noise; the rest "
                                                           "stay clean, so the encoder still learns clean images well")
    erase: float | None = Field(None, gt=0.0, le=1.0, description="random erasing (cutout): with this chance a "
                                "rectangle of 2-50 % of the image (a video: of every frame, the same one) is blacked "
                                "out, so the encoder does not hang on any one part of it (occlusion robustness)")


class ImageInput(_Strict):
    type: Literal["image"]
    column: str | None = None
    size: tuple[int, int] = (64, 64)
    channels: Literal[1, 3] = 3
    mean: float | list[float] | None = Field(None, description="normalisation mean; default: fitted on train")
    std: float | list[float] | None = None
    augment: ImageAugment = ImageAugment()
    encoder: Literal["cnn", "resnet"] | HFEncoder = Field("cnn", description="cnn, resnet, or {hf: MODEL, ...}: a "
                                                          "pretrained vision backbone, whose own processor then "
                                                          "sets size, channels and normalisation")
    dim: int = Field(128, gt=0, description="encoder output size")
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 8:
            raise ValueError(f"each side must be >= 8 pixels, got {list(v)}")
        return v


class AudioAugment(_Strict):
    speed: tuple[float, float] | None = Field(None, description="random speed factor range, e.g. [0.9, 1.1]")
    random_crop: bool = False
    noise_snr_db: tuple[float, float] | None = Field(None, description="add white noise at an SNR in this range")
    noise_p: float = Field(1.0, gt=0.0, le=1.0, description="share of training clips that get the noise; the rest "
                                                           "stay clean, so the encoder still learns clean audio well")


class AudioInput(_Strict):
    type: Literal["audio"]
    column: str | None = None
    sample_rate: int = Field(16000, gt=0)
    features: Literal["mfcc", "logmel"] = "mfcc"
    n_mfcc: int = Field(40, gt=0)
    n_mels: int = Field(64, gt=0)
    window_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    max_seconds: float = Field(1.0, gt=0)
    deltas: bool = False
    denoise: bool = False
    track: Literal["audio"] | None = Field(None, description="audio: the cells are video files (e.g. `column:` naming a "
                                           "video input's column) and their audio track is decoded (PyAV)")
    augment: AudioAugment = AudioAugment()
    encoder: Literal["cnn", "cnn_lstm"] | HFEncoder = Field("cnn", description="cnn, cnn_lstm, or {hf: MODEL, ...}: "
                                                             "a pretrained audio backbone (wav2vec2/HuBERT, Whisper "
                                                             "encoder, AST) with its own feature extractor")
    dim: int = Field(128, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _mels(self) -> "AudioInput":
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        return self


class TextAugment(_Strict):
    word_drop: float = Field(0.0, ge=0.0, lt=1.0, description="drop each token with this chance in training")
    typo: float = Field(0.0, ge=0.0, lt=1.0, description="replace a character of each token with this chance")


class TextInput(_Strict):
    type: Literal["text"]
    column: str | None = None
    tokenizer: Literal["word", "char", "jieba"] = Field(
        "word", description="word: Unicode words + punctuation (space-delimited scripts); char: characters (any "
        "script, no segmentation needed); jieba: Chinese word segmentation")
    lowercase: bool = True
    deidentify: bool | list[Literal["email", "url", "ip", "cn_id", "bank_card", "phone"]] = Field(
        False, description="replace personal data with typed placeholders (<EMAIL>, <PHONE>, <CN_ID>, <BANK_CARD>, "
        "<IP>, <URL>) before tokenisation, in training, the runtime and the server alike: true for every type, or a "
        "list of types. Rule-based (checksums for IDs and cards); person names and addresses are not detected")
    max_length: int = Field(64, gt=0, description="tokens kept per text (the rest is cut)")
    min_count: int = Field(1, ge=1, description="tokens seen fewer times go to the unknown bucket")
    max_vocab: int = Field(20000, gt=0)
    word_ngrams: int = Field(2, ge=1, le=4, description="ngram encoder: token n-grams of order 1..N")
    char_ngrams: tuple[int, int] | None = Field(
        (1, 4), description="ngram encoder: character n-grams [min, max] inside each token (null: none)")
    buckets: int = Field(1 << 16, ge=1024, le=1 << 22, description="ngram encoder: hash buckets for n-grams")
    max_ngrams: int = Field(1024, gt=0, description="ngram encoder: n-grams kept per text (token n-grams first)")
    pooling: Literal["tfidf", "mean"] = Field("tfidf", description="ngram encoder: IDF-weighted or plain mean")
    wide: bool = Field(True, description="ngram encoder: also a linear path from the n-grams to each class output "
                       "(wide and deep), started from a logistic regression fitted on the training rows and kept "
                       "frozen, so the network learns what the linear model misses")
    augment: TextAugment = TextAugment()
    encoder: Literal["ngram", "cnn", "bigru", "bilstm"] | HFEncoder = Field(
        "ngram", description="ngram: hashed word+char n-gram bag (fastText-style; strong without pretraining); "
        "cnn: parallel convolutions over token embeddings; bigru/bilstm: recurrent, for long ordered text; "
        "{hf: MODEL, ...}: a pretrained transformer with its own tokenizer (tokenizer.json)")
    dim: int = Field(128, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @field_validator("encoder", mode="before")
    @classmethod
    def _bag_is_ngram(cls, v: Any) -> Any:
        return "ngram" if v == "bag" else v  # the old name of the n-gram bag

    @field_validator("char_ngrams")
    @classmethod
    def _char_range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 1 <= v[0] <= v[1] <= 8:
            raise ValueError(f"expected [min, max] with 1 <= min <= max <= 8, got {list(v)}")
        return v


class NumberAugment(_Strict):
    drop: float = Field(0.0, ge=0.0, lt=1.0, description="make the value missing with this chance in training")
    noise: float = Field(0.0, ge=0.0, description="add Gaussian noise of this many standard deviations")


class NumberInput(_Strict):
    type: Literal["number"]
    column: str | None = None
    impute: Literal["mean", "median", "zero"] = "mean"
    augment: NumberAugment = NumberAugment()
    encoder: Literal["mlp", "linear"] = "mlp"
    dim: int = Field(32, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)


class CategoryInput(_Strict):
    type: Literal["category"]
    column: str | None = None
    min_count: int = Field(1, ge=1)
    max_vocab: int = Field(10000, gt=0)
    encoder: Literal["embedding"] = "embedding"
    dim: int = Field(32, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)


class TimeseriesAugment(_Strict):
    jitter: float = Field(0.0, ge=0.0, description="Gaussian noise of this many (fitted) standard deviations")
    random_crop: bool = Field(False, description="a random `length`-step window of a longer series (else the "
                              "`window` one); a shorter series is shifted by up to 10 % of `length`")
    scale: float = Field(0.0, ge=0.0, lt=1.0, description="multiply each series by a factor in [1-scale, 1+scale]")


class TimeseriesInput(_Strict):
    """Sensor readings: a file (CSV, NPY or Parquet; rows = time steps, columns = channels) or an inline
    array [steps, channels] (or [steps] for one channel). NaN / empty values are gaps: masked steps."""

    type: Literal["timeseries"]
    column: str | None = None
    channels: int | list[str] = Field(1, description="the channel count, or the names of the file columns to read")
    sample_rate: float = Field(1.0, gt=0, description="Hz of the data")
    resample_to: float | None = Field(None, gt=0, description="Hz to resample to (linear interpolation)")
    length: int = Field(128, ge=2, le=65536, description="steps after resampling: longer series are cut, shorter "
                        "padded (padding is masked)")
    window: Literal["head", "tail", "center"] = Field("head", description="which steps a longer series keeps")
    max_steps: int = Field(1_000_000, gt=0, description="a series with more raw steps is a bad input")
    augment: TimeseriesAugment = TimeseriesAugment()
    encoder: Literal["cnn1d", "gru", "lstm", "transformer"] = "cnn1d"
    dim: int = Field(64, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @property
    def n_channels(self) -> int:
        return self.channels if isinstance(self.channels, int) else len(self.channels)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | list[str]) -> int | list[str]:
        if isinstance(v, int) and v < 1 or isinstance(v, list) and not v:
            raise ValueError("expected a positive channel count or a non-empty list of column names")
        return v


class VideoInput(_Strict):
    """Video files (mp4, webm, avi, mkv... anything FFmpeg reads, decoded by PyAV): frames sampled at
    ``fps`` by timestamp, at most ``max_frames`` (evenly spread over a longer clip), each resized and
    center-cropped to ``size`` x ``size`` RGB; a shorter clip is padded with masked frames."""

    type: Literal["video"]
    column: str | None = None
    fps: float = Field(4.0, gt=0, le=120, description="frames per second sampled from the video")
    max_frames: int = Field(16, ge=1, le=512, description="frames kept; a longer clip is sampled evenly over its length")
    size: int = Field(64, ge=8, le=512, description="side of the square frames (resize + center crop)")
    mean: float | list[float] | None = Field(None, description="normalisation mean; default: fitted on train")
    std: float | list[float] | None = None
    augment: ImageAugment = Field(ImageAugment(), description="training-time augmentation, drawn once per clip "
                                  "and applied alike to all its frames")
    encoder: Literal["cnn_pool", "cnn_gru", "cnn3d"] | HFEncoder = Field(
        "cnn_pool", description="cnn_pool: a small per-frame CNN, masked mean/max over frames; cnn_gru: the same "
        "CNN, then a GRU over frames; cnn3d: a small 3-D CNN over (time, height, width); or {hf: MODEL, ...}: a "
        "pretrained image backbone on each frame (its image processor's size and normalisation replace size, "
        "mean and std), masked mean over the real frames")
    dim: int = Field(128, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @property
    def channels(self) -> int:
        return 3


InputSpec = Annotated[
    Union[ImageInput, AudioInput, TextInput, NumberInput, CategoryInput, TimeseriesInput, VideoInput],
    Field(discriminator="type")
]


# ----------------------------------------------------------------------------- model, outputs, training
class FusionSpec(_Strict):
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


class HeadSpec(_Strict):
    """The classifier on the fused features. softmax: trained with the network; svm, logistic and gbdt
    (the classic heads) are fitted by scikit-learn on the trained network's fused features afterwards,
    compared with the softmax head in metrics.json, and exported inside the same ONNX graph."""

    type: Literal["softmax", "svm", "logistic", "gbdt"] = "softmax"
    C: float = Field(1.0, gt=0, description="svm/logistic: inverse regularisation strength")
    trees: int = Field(100, ge=1, le=2000, description="gbdt: boosting iterations (trees per class)")
    max_depth: int = Field(4, ge=1, le=12, description="gbdt: depth of each tree")
    learning_rate: float = Field(0.1, gt=0, le=1.0, description="gbdt: shrinkage")


class OutputSpec(_Strict):
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


class PrivacySpec(_Strict):
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
    max_grad_norm: float = Field(1.0, gt=0, description="each row's gradient is clipped to this L2 norm")
    accountant: Literal["rdp", "prv"] = Field("prv", description="how the epsilon spent is computed: prv (privacy "
                                              "random variables, tight: less noise for the same epsilon; opacus' "
                                              "default) or rdp (Renyi DP, a looser upper bound)")

    @model_validator(mode="after")
    def _one_budget(self) -> "PrivacySpec":
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of epsilon (a target budget; the noise is chosen to spend it) or "
                             "noise_multiplier (a fixed noise; the epsilon it spends is reported), e.g. "
                             "{epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0}")
        return self


class TrainSpec(_Strict):
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
    privacy: PrivacySpec | None = Field(None, description="differential privacy (DP-SGD with Opacus); default off")


class Spec(_Strict):
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
    """For an encoder (a name or a pretrained {hf: ...} mapping), only the branch the user wrote."""
    loc = [str(p) for p in err["loc"]]
    if "HFEncoder" in loc:
        return not (err["type"] == "model_type" and not isinstance(err.get("input"), dict))
    return not (any(p.startswith("literal[") for p in loc) and isinstance(err.get("input"), dict))


def _describe(err: dict) -> str:
    loc = [p for p in err["loc"] if p != "HFEncoder" and not str(p).startswith("literal[")]
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
