"""Class names in Hangul or CJK: drawn with an installed font that has the
glyphs, or one warning when none is installed (not one per glyph)."""

from __future__ import annotations

import warnings

import numpy as np

from kerasalex import reports

NAMES = ["고양이", "개", "猫"]


def _plots(tmp_path):
    reports.plot_confusion_matrix(np.eye(3, dtype=int), NAMES, tmp_path / "cm.png")
    reports.plot_prediction_grid(np.zeros((2, 8, 8, 3), np.uint8), [0, 1], [0.5, 0.5], NAMES, tmp_path / "g.png", true=[0, 1])


def test_without_a_font_that_has_the_glyphs_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "_FONT_WARNED", False)
    monkeypatch.setattr(reports, "fonts_covering", lambda chars: [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _plots(tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no installed font has glyphs" in messages[0], messages
    assert (tmp_path / "cm.png").is_file() and (tmp_path / "g.png").is_file()


def test_an_installed_font_with_the_glyphs_is_used(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    used = []
    monkeypatch.setattr(reports, "fonts_covering", lambda chars: used.append(chars) or ["DejaVu Serif"])
    fig, ax = plt.subplots()
    ax.set_title("고양이 vs cat")
    reports.fit_fonts(fig)
    assert ax.title.get_fontfamily()[-1] == "DejaVu Serif"
    assert used and {"고", "양", "이"} <= set(used[0])
    plt.close(fig)


def test_the_placeholder_font_does_not_count_as_having_glyphs():
    assert not any(name.startswith("Last Resort") for name in reports.fonts_covering({"고"}))
