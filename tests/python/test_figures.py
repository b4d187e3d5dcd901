"""docs/figures.py still draws every picture from the real server (into a
temporary folder: the committed PNGs under docs/img are left alone), each
a PNG under 150 KB, and what it reports holds."""

import hashlib
import re
import subprocess
import sys

import pytest

from conftest import ROOT, server_bin

pytest.importorskip("matplotlib", reason="needs python3-matplotlib")
NAMES = ["hippo_memory.png", "s4_kernels.png", "stream_vs_infer.png", "bench.png"]
COMMITTED = ROOT / "docs" / "img"


def digests():
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(COMMITTED.glob("*.png"))}


def test_figures_script_draws_every_picture(tmp_path):
    before = digests()
    assert set(NAMES) <= set(before), "docs/img lacks a committed picture"
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "figures.py"),
                          "--server", server_bin(), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=100,
                         env={"MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
                              "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    for name in NAMES:
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert 10_000 < len(png) < 150_000, (name, len(png))
    m = re.search(r"stream vs Infer: max relative difference (\S+); bench: (\d+) rows", run.stdout)
    assert m, run.stdout
    assert float(m.group(1)) <= 1e-5 and int(m.group(2)) >= 4
    assert digests() == before, "the script rewrote the committed pictures"


def test_bench_table_parser_reads_ranges_and_units():
    sys.path.insert(0, str(ROOT / "docs"))
    import figures  # noqa: E402 - the script, as a module
    assert figures.seconds("22.4 ms") == pytest.approx((0.0224, 0.0224))
    assert figures.seconds("4.2–4.6 µs") == pytest.approx((4.2e-6, 4.6e-6))
    assert figures.seconds("1270 µs (dense)") == pytest.approx((1.27e-3, 1.27e-3))
    assert figures.seconds("") is None
    table = ("| benchmark | ours | S4 reference | target |\n|---|---|---|---|\n"
             "| `BM_A/1` (the first) | 2 ms | 1 s | ≤ 3 ms |\n"
             "| `BM_B/2` | 76 ms | | |\n"
             "| `BM_C/3` | 33 ms · 63 ms | 1 s | |\n\n"
             "| other | ours |\n|---|---|\n| `BM_D` | 1 ms |\n")
    rows = figures.reference_table(table)
    assert [(r[0], r[1], r[2]) for r in rows] == [("A/1\nthe first", (2e-3, 2e-3), (1.0, 1.0))]
