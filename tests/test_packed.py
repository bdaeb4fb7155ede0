"""Decoded images packed as uint8 in memory: exactly the decoder's float32 values, decoded chunk by
chunk, split as views; and the training rows collated once only when that copy fits the memory budget."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_toy, toy_spec

import polyfuse
from polyfuse.data.io import read_table
from polyfuse.preprocess.pipeline import decode_table
from polyfuse.spec.schema import load_spec
from polyfuse.training import packed


@pytest.fixture()
def toy(tmp_path):
    csv = make_toy(tmp_path / "toy", n=60)
    spec, _ = load_spec(toy_spec(csv))
    return csv, spec, read_table(csv)


def test_chunked_packed_decoding_equals_decoding_at_once(toy, monkeypatch):
    _, spec, table = toy
    monkeypatch.setattr(packed, "CHUNK_ROWS", 16)  # four chunks
    whole = decode_table(spec, table, with_targets=True)
    chunked = packed.decode_packed(spec, table, "skip")
    photo = chunked.inputs["photo"]
    assert isinstance(photo, packed.PackedColumn) and photo.data.dtype == np.uint8
    assert chunked.rows == whole.rows and chunked.targets == whole.targets
    assert [str(b) for b in chunked.bad] == [str(b) for b in whole.bad]
    for name in spec.inputs:
        for a, b in zip(chunked.inputs[name], whole.inputs[name]):
            assert (a is None and b is None) or np.array_equal(a, b), name  # bit for bit, float32 both
    view = chunked.subset([7, 2, 40])
    assert isinstance(view.inputs["photo"], packed.PackedColumn) and view.inputs["photo"].data is photo.data
    assert np.array_equal(view.inputs["photo"][2], whole.inputs["photo"][40])


def test_pack_keeps_missing_and_refuses_what_it_cannot_hold_exactly():
    img = np.arange(12, dtype=np.float32).reshape(1, 3, 4) / np.float32(255.0)
    col = packed.pack([img, None, img[:, ::-1].copy()])
    assert col[1] is None and np.array_equal(col[0], img) and col[0].dtype == np.float32 and len(col) == 3
    assert packed.pack([img * 0.5 + 0.001]) is None  # not multiples of 1/255 (a pretrained processor's pixels)
    assert packed.pack([img, np.zeros((1, 4, 4), np.float32)]) is None  # shapes differ


def test_collated_once_only_within_the_budget_and_training_is_the_same(toy, capfd):
    csv, _, _ = toy
    nets = {}
    for budget in (4096, 1):
        spec = toy_spec(csv, epochs=2, baseline=False)
        spec["data"]["memory_budget_mb"] = budget  # 1 MB: a quarter is less than the rows' 64x64 pixels
        spec["inputs"]["photo"]["size"] = [64, 64]
        model = polyfuse.train(spec, show_progress=False)
        assert not model.preprocessor.augments()
        nets[budget] = model.net.state_dict()
    said = capfd.readouterr().err
    assert said.count("training rows collated batch by batch") == 1 and "data.memory_budget_mb (1)" in said
    # the same batches in the same order; padded to each batch's longest value instead of the split's,
    # sums run in another order: float32 rounding after 2 epochs, no more
    assert max(float((nets[4096][k].float() - nets[1][k].float()).abs().max()) for k in nets[1]) <= 1e-4


HEAP_PROBE = """
import ctypes, sys
from polyfuse.training import memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "pad":
    memory.keep_freed_heap_top()
blocks = [libc.malloc(64 << 10) for _ in range(320)]  # 20 MB below the mmap threshold: from the heap's top
for b in reversed(blocks):
    libc.free(b)
print(libc.mallinfo2().arena >> 20)
"""


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"), reason="glibc >= 2.33 only (mallinfo2)")
def test_training_heap_keeps_freed_top_instead_of_returning_it_every_step():
    import subprocess
    import sys

    def heap_mb(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    # without the pad, freeing 20 MB at the top trims the heap back; with it, the pad stays mapped for the next step
    assert heap_mb("none") < 64
    assert heap_mb("pad") >= 256
