"""Long steps show their progress with an ETA (issue 29, item 6): the probe's fit (one step per C tried on validation
and one for the final fit; 17 C values on wide backbone features take minutes on a CPU) and captions embedded by the
batch (retrieval over thousands of captions). The eval sweep's bar over its grid: tests/integration/test_eval_sweep."""

import numpy as np

from medvlkit.tasks.probe import DEFAULT_CS, LinearProbe


def test_the_c_sweep_shows_a_bar(capsys):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), np.array([0, 1] * 20)
    LinearProbe(Cs=DEFAULT_CS[:3], progress=True).fit(X, y, X_val=X, Y_val=y)
    err = capsys.readouterr().err
    assert "probe: fit (C chosen on validation)" in err and "4/4" in err
    LinearProbe(Cs=DEFAULT_CS[:3]).fit(X, y, X_val=X, Y_val=y)
    assert "probe: fit" not in capsys.readouterr().err  # quiet by default (library use, -q)


def test_captions_by_the_batch_show_a_bar(tiny_clip_dir, capsys):
    from medvlkit import create_model
    from medvlkit.engine.features import embed_texts

    model = create_model(f"hf:{tiny_clip_dir}")
    texts = [f"finding number {i}" for i in range(10)]
    plain = embed_texts(model, texts, batch_size=4)
    assert "embed texts" not in capsys.readouterr().err
    shown = embed_texts(model, texts, batch_size=4, progress=True)
    assert "embed texts" in capsys.readouterr().err and np.allclose(plain, shown)  # the same vectors
