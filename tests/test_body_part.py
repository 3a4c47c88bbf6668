"""xray_ai.serving.body_part: the auxiliary body-part head beside a model."""

import numpy as np

from xray_ai.serving import body_part
from xray_ai.serving.artifacts import body_part_path


def _head(sha="a" * 64):
    kernel = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return body_part.BodyPartHead(("elbow", "hand", "wrist"), kernel, np.array([0.0, 0.5, 0.0]), sha)


def test_probabilities_are_the_softmax_of_the_linear_head():
    pooled = np.array([[1.0, 0.0], [0.0, 2.0]])
    z = pooled @ _head().kernel + _head().bias
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_head().probabilities(pooled), expected)
    (part0, p0), (part1, p1) = _head().predict(pooled)
    assert (part0, part1) == ("elbow", "hand")
    np.testing.assert_allclose([p0, p1], [expected[0, 0], expected[1, 1]])


def test_saved_head_loads_only_for_its_own_model(tmp_path):
    path = body_part.save(_head(), body_part_path(tmp_path / "m.keras"))
    assert path.name == "m.bodypart.npz"
    head, reason = body_part.load(path, "a" * 64)
    assert reason is None and head.classes == _head().classes
    np.testing.assert_allclose(head.kernel, _head().kernel)
    assert body_part.load(path, "b" * 64) == (None, "m.bodypart.npz was fitted for another model file")
    assert body_part.load(tmp_path / "none.npz", "a" * 64) == (None, "the model has no body-part head")
    (tmp_path / "bad.bodypart.npz").write_bytes(b"not a zip")
    head, reason = body_part.load(tmp_path / "bad.bodypart.npz", "a" * 64)
    assert head is None and "could not be read" in reason
