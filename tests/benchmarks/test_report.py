"""The benchmark report is rendered from the result records, never edited by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bnpdeep_bench_report",
                                                  ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


META = {"date": "2026-01-02", "machine": "test machine", "commit": "abc1234",
        "command": "python benchmarks/run_benchmarks.py accuracy --methods a b"}


def accuracy_rows(k_b_on_s2):
    """Two sets, two methods; method a within tolerance on both, b on s1 only when
    ``k_b_on_s2`` is off by more than one."""
    return [
        {"data": "s1", "method": "a", "k_true": 15, "k": 15, "nmi": 0.9, "ari": 0.8,
         "acc": 0.85, "seconds": 1.0},
        {"data": "s1", "method": "b", "k_true": 15, "k": 16, "nmi": 0.7, "ari": 0.6,
         "acc": 0.65, "seconds": 2.0},
        {"data": "s2", "method": "a", "k_true": 3, "k": 4, "nmi": 0.5, "ari": 0.4,
         "acc": 0.45, "seconds": 3.0},
        {"data": "s2", "method": "b", "k_true": 3, "k": k_b_on_s2, "nmi": 0.3, "ari": 0.2,
         "acc": 0.25, "seconds": 4.0},
    ]


def test_a_record_renders_as_its_provenance_and_table(report, tmp_path):
    report.save_record("acc", "accuracy", accuracy_rows(6), {**META, "seed": 0}, tmp_path)
    text = report.render("Intro.\n\n{{result acc}}\n\nOutro.", tmp_path)
    assert text.startswith("Intro.\n\n2026-01-02, commit abc1234, test machine: "
                           "`python benchmarks/run_benchmarks.py accuracy --methods a b`")
    assert "| s1 | 15 | 15 / 0.900 / 1.0 | 16 / 0.700 / 2.0 |" in text
    assert "| s2 | 3 | 4 / 0.500 / 3.0 | 6 / 0.300 / 4.0 |" in text
    # the summaries are computed from the rows: b misses s2 (|6 - 3| > 1)
    assert "- a: K within max(1, 10%) on 2/2 sets, mean NMI 0.700, median time 2.00 s" in text
    assert "- b: K within max(1, 10%) on 1/2 sets, mean NMI 0.500, median time 3.00 s" in text
    assert text.endswith("\n\nOutro.")


def test_seeds_summary_counts_each_record(report, tmp_path):
    report.save_record("s0", "accuracy", accuracy_rows(6), {**META, "seed": 0}, tmp_path)
    report.save_record("s1", "accuracy", accuracy_rows(3), {**META, "seed": 1}, tmp_path)
    text = report.render("{{seeds s0 s1}}", tmp_path)
    assert "| method | seed 0 | seed 1 |" in text
    assert "| b | 1/2, NMI 0.500 | 2/2, NMI 0.500 |" in text


def test_seeds_summary_adds_per_set_medians_from_three_seeds(report, tmp_path):
    """Per set the median K and NMI over the seeds, then counted: b's K on s2 is
    3, 4, 9 (median 4, within 1 of 3; the mean, 5.3, is not)."""
    for seed, k_b in ((0, 3), (1, 4), (2, 9)):
        report.save_record(f"s{seed}", "accuracy", accuracy_rows(k_b), {**META, "seed": seed},
                           tmp_path)
    text = report.render("{{seeds s0 s1 s2}}", tmp_path)
    assert "| method | seed 0 | seed 1 | seed 2 | per-set medians over the seeds |" in text
    assert "| b | 2/2, NMI 0.500 | 2/2, NMI 0.500 | 1/2, NMI 0.500 | 2/2, NMI 0.500 |" in text


def test_paper_sets_render_with_ari_and_acc(report, tmp_path):
    rows = [{"data": "mnist_umap", "method": "bgm", "k_true": 10, "k": 12, "nmi": 0.93,
             "ari": 0.94, "acc": 0.96, "seconds": 10.0}]
    report.save_record("paper", "accuracy", rows, META, tmp_path)
    assert "| mnist_umap | bgm | 12 | 0.930 | 0.940 | 0.960 | 10.0 |" in \
        report.render("{{result paper}}", tmp_path)


def test_hyperpriors_table_pairs_the_fixed_and_hierarchical_fits(report, tmp_path):
    """Each method's fixed -> hierarchical K and NMI per set; the counts cover the
    benchmark sets only (not the synthetic case)."""
    rows = []
    for data, k_true, ks in [("s1", 15, (15, 22)), ("wine", 3, (7, 3)),
                             ("synthetic 128-d", 10, (3, 10))]:
        for model, k in zip(("fixed", "hierarchical"), ks, strict=True):
            rows.append({"data": data, "N": 100, "d": 2, "k_true": k_true, "method": "movb",
                         "model": model, "k": k, "nmi": 0.5 if model == "fixed" else 0.75,
                         "seconds": 1.0, "hyper": {} if model == "fixed" else
                         {"psi_scale": 0.25, "kappa": 1.0, "alpha": 2.0}})
    rows += [{**rows[0], "data": "ecoli", "k_true": 8, "k": 8, "nmi": 0.5},
             {**rows[1], "data": "ecoli", "k_true": 8, "k": None, "nmi": 0.0,
              "seconds": float("nan"), "hyper": {}, "error": "not positive definite"}]
    rows[1]["warned"] = ["psi_scale"]
    report.save_record("hp", "hyperpriors", rows, META, tmp_path)
    text = report.render("{{result hp}}", tmp_path)
    assert "| s1 | 15 | 15 -> 22 | 0.500 -> 0.750 | 0.25 |" in text
    assert "| synthetic 128-d | 10 | 3 -> 10 | 0.500 -> 0.750 | 0.25 |" in text
    assert "| ecoli | 8 | 8 -> failed | 0.500 -> 0.000 | - |" in text
    assert ("- movb on the 3 benchmark sets: fixed 2/3, mean NMI 0.500, median 1.0 s; "
            "hierarchical 1/3, mean NMI 0.500, median 1.0 s") in text
    assert "- failed (counted as misses with NMI 0): movb on ecoli (hierarchical): " \
        "not positive definite" in text
    assert "collapsed (a conditional without a maximum or proper law): movb on s1: " \
        "psi_scale" in text


def test_a_missing_record_is_named(report, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        report.render("{{result nothere}}", tmp_path)


def test_the_readme_is_the_rendering_of_the_template_and_records(report):
    """benchmarks/README.md is what benchmarks/report.py makes of the committed records:
    a figure in it that no record holds fails here."""
    assert report.main(["--check"]) == 0


def test_paper_seeds_show_each_seed_and_the_medians(report, tmp_path):
    """On the paper's embeddings the seeds table lists K / NMI per seed and the
    medians of K, NMI, ARI, ACC and seconds; a method absent at a seed gets '-'."""
    for seed, (k, nmi) in enumerate([(12, 0.90), (10, 0.95), (10, 0.94)]):
        rows = [{"data": "mnist_umap", "method": "deepdpm", "k_true": 10, "k": k, "nmi": nmi,
                 "ari": nmi, "acc": nmi, "seconds": 60.0 + seed}]
        if seed == 0:
            rows.append({"data": "mnist_umap", "method": "bgm", "k_true": 10, "k": 13,
                         "nmi": 0.9, "ari": 0.9, "acc": 0.9, "seconds": 5.0})
        report.save_record(f"p{seed}", "accuracy", rows, {**META, "seed": seed}, tmp_path)
    text = report.render("{{seeds p0 p1 p2}}", tmp_path)
    assert ("| mnist_umap | deepdpm | 12 / 0.900 | 10 / 0.950 | 10 / 0.940 | 10 | 0.940 | "
            "0.940 | 0.940 | 61.0 |") in text
    assert "| mnist_umap | bgm | 13 / 0.900 | - | - | 13 | 0.900 |" in text


def test_deepdpm_speed_lists_its_paired_rounds_beside_their_medians(report):
    """The DeepDPM speed text gives the ratio of the medians and every round's pair; a
    single-round record renders without the rounds line."""
    res = {"device": "cpu", "target_nmi": 0.95,
           "deepdpm": {"epochs_to_target": 42, "seconds_to_target": 20.0, "epochs": 57,
                       "seconds_total": 38.0, "k": 20, "nmi": 1.0},
           "subcluster": {"iters": 20, "seconds": 5.0, "nmi": 0.99, "k": 21,
                          "seconds_to_target": 5.0},
           "estep": {"k": 20, "seconds": 0.1, "gflops": 40.0, "fraction_of_matmul": 0.2,
                     "matmul_f32_gflops": 200.0},
           "rounds": [[22.0, 6.0], [20.0, 5.0], [19.0, 4.0]]}
    text = report.deepdpm_text(res)
    assert "the sampler's: 4.0x" in text
    assert "3 paired rounds" in text and "22.0 s / 6.0 s, 20.0 s / 5.0 s, 19.0 s / 4.0 s" in text
    assert "paired rounds" not in report.deepdpm_text({**res, "rounds": [[20.0, 5.0]]})
    # the first fit's one-time seconds, excluded from the rounds, are stated when recorded
    assert "first fit" not in text
    warmed = report.deepdpm_text({**res, "first_fit_extra_seconds": {"deepdpm": 1.24,
                                                                     "subcluster": 0.31}})
    assert "first fit takes 1.2 s longer for DeepDPM and 0.3 s for the sampler" in warmed
