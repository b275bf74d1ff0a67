from ptycho_fast import demo


def test_demo_runs_and_agrees_with_reference(capsys):
    assert demo.main(["--size", "96", "--patch", "16", "--step", "5.5"]) == 0
    out = capsys.readouterr().out
    assert "demo OK" in out and "max |ours - reference| = 0.00e+00" in out
