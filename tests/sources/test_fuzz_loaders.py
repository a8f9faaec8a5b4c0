"""Fuzzing the CSV and NPZ loaders: any input gives a valid Dataset or a DataError, never
another exception (issue 6)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from auditor.data import Dataset
from auditor.errors import DataError
from auditor.sources.tabular import load_csv, load_npz

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(loader, suffix: str, payload: bytes) -> None:
    """Load ``payload`` from a file; it must give a sane Dataset or raise DataError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(payload)
        try:
            ds = loader(path)
        except DataError as exc:
            assert str(exc).startswith(str(path)), exc  # the message names the file
            return
    assert isinstance(ds, Dataset)
    assert ds.features.ndim == 2 and ds.features.dtype == torch.float32 and ds.n_features > 0
    assert len(ds) == len(ds.ids) == ds.targets.shape[0] > 0
    assert torch.isfinite(ds.features).all()
    if ds.task == "classification":
        assert ds.targets.dtype == torch.int64
        assert int(ds.targets.min()) >= 0 and int(ds.targets.max()) < len(ds.class_names)
    else:
        assert torch.isfinite(ds.targets).all()


CELL = st.one_of(
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e999", "1e-999", "0x10", "1_000", " 3 "]),
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=6),
)
HEADER = st.lists(
    st.one_of(st.sampled_from(["label", "target", "x", " label ", "a", ""]), st.text(max_size=4)),
    min_size=1,
    max_size=4,
)


@st.composite
def csv_text(draw) -> bytes:
    header = draw(HEADER)
    width = len(header)
    rows = draw(
        st.lists(
            st.lists(CELL, min_size=max(width - 1, 0), max_size=width + 1), min_size=0, max_size=6
        )
    )
    sep = draw(st.sampled_from([",", ";", "\t"]))
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@FUZZ
@given(csv_text())
@example(b"x,label,x\n340282356779733642748073463979561713664,,")  # just above float32 max
def test_csv_structured_fuzz(payload):
    check(load_csv, ".csv", payload)


@FUZZ
@given(st.binary(max_size=300))
def test_csv_arbitrary_bytes(payload):
    check(load_csv, ".csv", payload)


@FUZZ
@given(st.binary(max_size=300))
def test_npz_arbitrary_bytes(payload):
    check(load_npz, ".npz", payload)


DTYPES = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
)


def arrays(min_dims: int, max_dims: int):
    return DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            dtype, hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=4)
        )
    )


@st.composite
def npz_payload(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(["X", "y", "x", "Y", "z"]), max_size=3, unique=True))
    if draw(st.booleans()):
        names = sorted(set(names) | {"X", "y"})
    contents = {name: draw(arrays(0, 4) if name == "X" else arrays(0, 2)) for name in names}
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    data = buffer.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@FUZZ
@given(npz_payload())
def test_npz_odd_dtypes_shapes_nan_and_truncation(payload):
    check(load_npz, ".npz", payload)


@FUZZ
@given(st.binary(max_size=200))
def test_npz_zip_with_garbage_members(member):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("X.npy", member)
        z.writestr("y.npy", member[::-1])
    check(load_npz, ".npz", buffer.getvalue())
