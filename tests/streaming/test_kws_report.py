"""Report helpers: strict JSON writes NaN as null, and the markdown must still render (quick runs hit this)."""

from leaninfer.streaming.kws.report import _fmt, _seed_frr


def test_fmt_handles_null_and_nan():
    assert _fmt(None) == "—" and _fmt(float("nan"), ".0f") == "—"
    assert _fmt(57.534) == "57.5" and _fmt(76.46, ".0f") == "76"
    assert _seed_frr({"points": [{"frr": 48.2}, {"frr": None}]}) == "48, —"
