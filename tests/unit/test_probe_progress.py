"""The probe's fit shows its progress with an ETA (issue 29, item 6): one step per C tried on validation and one for
the final fit; sweeping 17 C values on wide backbone features takes minutes on a CPU."""

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
