"""alignment_matrix.onnx (export/alignment_matrix_graph.py, shipped in whisper_export/assets/) against the host's
numpy (runtime/words.alignment_matrix, itself tested against openai-whisper's find_alignment pieces) on fresh random
scores: rows of different token counts and frame counts (a whole window, odd counts, the median filter's edge
cases), frames no token attends to (openai's NaN); its sorting network; the packaged file is the builder's."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest

from whisper_export import graph_io as io
from whisper_export.export.alignment_matrix_graph import SORT7, alignment_matrix_graph, median_comparators
from whisper_export.runtime.words import alignment_matrix


@pytest.fixture(scope="module")
def session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(io.ALIGNMENT_MATRIX_PATH), options, providers=["CPUExecutionProvider"])


def test_the_packaged_graph_is_the_builders():
    assert io.ALIGNMENT_MATRIX_PATH.read_bytes() == alignment_matrix_graph().SerializeToString(), (
        "rewrite it: python -m whisper_export.export.alignment_matrix_graph")


def test_the_sorting_network_sorts_and_its_pruned_median_is_the_median():
    for bits in itertools.product((0, 1), repeat=7):  # the 0-1 principle: sorts every input
        wires = list(bits)
        for low, high in SORT7:
            wires[low], wires[high] = min(wires[low], wires[high]), max(wires[low], wires[high])
        assert wires == sorted(bits)
    rng = np.random.default_rng()
    values = rng.integers(-3, 4, (7, 5000)).astype(np.float32)  # ties everywhere
    wires = list(values)
    kept = median_comparators()
    assert len(kept) < len(SORT7)
    for low, high, need_min, need_max in kept:
        smaller = np.minimum(wires[low], wires[high]) if need_min else wires[low]
        if need_max:
            wires[high] = np.maximum(wires[low], wires[high])
        wires[low] = smaller
    np.testing.assert_array_equal(wires[3], np.median(values, axis=0))


def _rows(rng, lengths, frames, heads=6, n_ctx=1500):
    qk = (rng.standard_normal((len(lengths), heads, max(lengths) + 3, n_ctx)) * 4).astype(np.float32)
    return qk, np.array(lengths, np.int64), np.array(frames, np.int64)


@pytest.mark.parametrize("frames", [[1500, 701, 4], [3, 1, 1500], [5, 6, 7]])
def test_the_graph_gives_the_hosts_matrix(session, frames):
    """Within 1e-5 (float32 sums in another order) of the numpy matrix, padding tokens and frames past each row's
    count ignored; a row of <= 3 frames is not filtered, as openai's median_filter leaves it."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    qk, lengths, frames = _rows(rng, [40, 25, 9], frames)
    matrix, = session.run(None, {io.IN_ALIGNMENT_QK: qk, io.IN_LENGTHS: lengths, io.IN_FRAMES: frames})
    assert matrix.shape == (3, qk.shape[2], 1500)
    for r in range(3):
        want = alignment_matrix(qk[r, :, : lengths[r]], 2 * int(frames[r]))
        got = matrix[r, : lengths[r], : frames[r]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}, row {r}")


def test_frames_no_token_attends_to_are_nan_as_on_the_host(session):
    """Where every token's softmax is 0 at a frame in some heads: NaN after the heads' mean exactly where the host
    (openai) has NaN, and the same numbers elsewhere."""
    rng = np.random.default_rng()
    qk, lengths, frames = _rows(rng, [30, 12], [1500, 900])
    qk[0, :3, :, 600:620] = -1e30  # three heads: a 20-frame gap, wider than the median filter
    qk[1, :, :, 10] = -1e30  # every head, one frame: the median filter fills it
    matrix, = session.run(None, {io.IN_ALIGNMENT_QK: qk, io.IN_LENGTHS: lengths, io.IN_FRAMES: frames})
    for r in range(2):
        want = alignment_matrix(qk[r, :, : lengths[r]], 2 * int(frames[r]))
        got = matrix[r, : lengths[r], : frames[r]]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isnan(matrix[0, :30, 600:620]).all() and not np.isnan(matrix[1, :12, :900]).any()
