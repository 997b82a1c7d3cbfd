"""`mosaic demo`: the whole pipeline on the embedded teacher, written up as a report folder."""

from __future__ import annotations

import json
import os
import re
import stat

import matplotlib.image
import numpy as np
import pytest

from mosaic_search import demo
from mosaic_search.cli import main
from mosaic_search.demo import MARKER
from mosaic_search.operators import Candidate, plot_color
from mosaic_search.quality import scorer

UMASK = 0o027  # not the usual 022: every file of the report must follow the user's umask


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One real demo run under UMASK, with a lighter scoring pass (fewer tokens, 2 alignment steps) and 2
    distillation steps per stage to keep the suite fast."""
    mp = pytest.MonkeyPatch()
    mp.setattr(scorer, "DEFAULT_TOKENS", 2048)
    mp.setattr(scorer, "DEFAULT_ALIGN_STEPS", 2)
    mp.setattr(demo, "DISTILL_STEPS", 2)
    out = tmp_path_factory.mktemp("demo") / "report"
    old = os.umask(UMASK)
    try:
        assert main(["demo", "--out", str(out)]) == 0
    finally:
        os.umask(old)
        mp.undo()
    return out


@pytest.mark.slow
def test_report_has_every_stage_and_plot(report):
    text = (report / "report.md").read_text()
    for section in ("## Latency per decoder layer", "## Sensitivity", "## Plans", "### 1.25x TPOT",
                    "### 1.5x TPOT", "## Quality: predicted, measured as built, measured after recovery",
                    "## Pareto frontier"):
        assert section in text
    assert text.count("Through `model.generate`") == 2  # each plan measured as a user runs it
    assert ("Patterns: one letter per layer, its token mixer (G=gqa, S=swa, M=mla, D=gdn, K=kda, N=none, X=drop); "
            "lower case where the layer's MLP is narrower or removed") in text
    assert len(re.findall(r"^\| 1024 \| ", text, flags=re.M)) == 2  # the batch-1 decode context, once per plan
    for png in ("sensitivity.png", "plans.png", "pareto.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / MARKER).is_file()
    for target in ("1.25x", "1.5x"):
        mip = json.loads((report / f"plan-tpot-{target}.json").read_text())
        plan = json.loads((report / f"plan-tpot-{target}-refined.json").read_text())
        assert mip["kind"] == plan["kind"] == "mosaic/layer-plan"
        model = report / "models" / f"tiny-tpot-{target}"
        assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
        # what is built is the refined plan, and the report puts both plans' predicted and measured KL side by side
        assert json.loads((model / "mosaic_plan.json").read_text())["layers"] == plan["layers"]
        seeds, measured = plan["solver"]["seeds"], plan["solver"]["measured"]
        assert measured["kl"] <= seeds["mip-1"]  # never worse than the MIP's plan on the windows refine measures
        assert f"| MIP | `{mip['pattern']}` | {mip['objective']:.4f} | {seeds['mip-1']:.4f} |" in text
        assert (f"| refined (from {plan['solver']['origin']}; built) | `{plan['pattern']}` | "
                f"{plan['objective']:.4f} | {measured['kl']:.4f} |") in text
        assert plan["solver"]["evaluations"] <= demo.REFINE_EVALUATIONS
        record = json.loads((report / "models" / f"tiny-tpot-{target}-distilled" / "distill_record.json").read_text())
        q = record["quality"]
        assert len(record["losses"]) == 4 and q["before"]["kl"] > 0
        # the report's rows are the record's numbers
        assert f"| {target} built | {plan['objective']:.4f} | {q['before']['kl']:.4f} | " in text
        assert f"| {target} distilled (`models/tiny-tpot-{target}-distilled`) | - | {q['after']['kl']:.4f} | " in text
    assert "| teacher | 0 | 0 | " in text


@pytest.mark.slow
def test_report_names_its_data_and_colours_each_operator_once(report):
    text = (report / "report.md").read_text()
    assert not re.search(r"[{}]|'\w+': ", text), "a raw Python repr in the report"
    assert not re.search(r"(^|[\s`(|])/[\w.-]", text) and str(report.parent) not in text, "a path of this machine"
    data = json.loads((report / "sensitivity.json").read_text())["data"]
    assert (f"| `mosaic_search/assets/tiny/calibration.txt` | {data['tokens']} | {data['seq_len']} | "
            f"{data['align_windows']} | {data['seed']} |") in text

    def colours(png):
        rgb = (matplotlib.image.imread(report / png)[..., :3] * 255).round().astype(int).reshape(-1, 3)
        return {"#%02x%02x%02x" % tuple(p) for p in np.unique(rgb, axis=0)}

    planned = {c["op"] for t in ("1.25x", "1.5x")
               for c in json.loads((report / f"plan-tpot-{t}-refined.json").read_text())["layers"]}
    # a layer is drawn in its mixer's colour (a narrower MLP beside it is not a colour of its own)
    swept = {Candidate.parse(c).op for pt in json.loads((report / "pareto.json").read_text())["points"]
             for c in pt.get("layers", [])}
    assert {plot_color(op) for op in planned} <= colours("plans.png")
    assert {plot_color(op) for op in swept} <= colours("pareto.png")


@pytest.mark.slow
def test_every_file_of_the_report_has_the_umask_mode(report):
    """The report, its plots, artifacts, models and their folders: written with the user's umask."""
    modes = {str(p.relative_to(report)): (p.is_dir(), stat.S_IMODE(p.lstat().st_mode)) for p in report.rglob("*")}
    assert {"report.md", "sensitivity.png", "plans.png", "pareto.png", "pareto.csv", MARKER} <= set(modes)
    assert modes == {name: (d, (0o777 if d else 0o666) & ~UMASK) for name, (d, _) in modes.items()}
    assert stat.S_IMODE(report.stat().st_mode) == 0o777 & ~UMASK


@pytest.mark.slow
def test_rerun_replaces_an_earlier_report(report):
    (report / "stale.txt").write_text("from an earlier run")
    mp = pytest.MonkeyPatch()
    mp.setattr("mosaic_search.demo._run", lambda d, *rest: (d / "report.md").write_text("again\n"))
    try:
        assert main(["demo", "--out", str(report)]) == 0
    finally:
        mp.undo()
    assert (report / "report.md").read_text() == "again\n" and not (report / "stale.txt").exists()


def test_refuses_a_folder_that_is_not_a_demo_report(tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    assert main(["demo", "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a mosaic demo report" in err
    assert [p.name for p in mine.iterdir()] == ["chapter1.tex"]
    assert not [p for p in tmp_path.iterdir() if p.name != "thesis"]  # no temporary folder left behind


def test_refuses_a_teacher_that_is_not_embedded_naming_the_flag(tmp_path, capsys):
    assert main(["demo", "--teacher", "Qwen/Qwen3-VL-4B-Instruct", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--teacher must be an embedded teacher (tiny, tiny-vl)" in err
    assert not list(tmp_path.iterdir())


def test_a_failing_stage_leaves_the_earlier_report_untouched(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / MARKER).write_text("written by mosaic demo\n")
    (out / "report.md").write_text("the earlier report\n")

    def broken(d, seed, progress):
        (d / "half.md").write_text("half")
        raise RuntimeError("scoring exploded")

    monkeypatch.setattr("mosaic_search.demo._run", broken)
    assert main(["demo", "--out", str(out)]) == 1
    assert (out / "report.md").read_text() == "the earlier report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


class NoisyTimer:
    """A timer whose samples of one closure spread 1x..5x (a machine busy with other jobs): p80/p20 is far above
    the profile's noisy limit for every entry."""

    def __call__(self, fn, phase):
        fn()
        return [1.0, 1.2, 2.0, 4.0, 5.0]


def test_a_noisy_profile_is_said_at_the_top_of_the_report_and_beside_what_it_affects(tmp_path):
    from mosaic_search.latency.profiler import profile

    prof = profile("tiny", workloads=["decode:64"], ops="gqa,none", timer=NoisyTimer(), rounds=1,
                   out=tmp_path / "p.json")
    noise = demo._noise(prof, [None, "warning: the machine was busy (load average 5.0 on 2 cores): timings ..."])
    assert noise["noisy"] and noise["entries"]
    notice = demo._noise_notice(noise)[0]
    assert notice.startswith("> **⚠ Timings were noisy**: the machine was busy (load average 5.0 on 2 cores); the "
                             "typical profile entry's p80/p20 is ")
    # a measured speedup far from its prediction is flagged with the likely cause; a close one is not
    assert demo._far(1.08, 1.50, noise) == "⚠ 28% off the prediction; likely cause: noisy timings (see the warning " \
                                           "at the top)"
    assert demo._far(1.45, 1.50, noise) == "" and demo._far(None, 1.5, noise) == ""
    quiet = dict(noise, noisy=False, busy=[], entries=set())
    assert demo._noise_notice(quiet) == []
    assert "time outside the decoder layers" in demo._far(1.08, 1.50, quiet)
