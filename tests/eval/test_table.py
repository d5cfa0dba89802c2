"""eval.table: gathering results.json files, and the paper's numbers only where the setting matches."""
import json

import pytest

from eval.linear import results_markdown, summarise, write_results
from eval.paper_results import is_imagenet10, paper_reference
from eval.table import main, make_table


# the shipped configs' schedules (Table 2's setting): 78,100 steps of 64 images
CIFAR_SCHEDULE = {"step": 78_100, "num_samples": 50_000, "global_batch": 64}
STL_SCHEDULE = {"step": 78_100, "num_samples": 100_000, "global_batch": 64}


def _result(name, task, estimator, encoder, pre_ds, probe_ds, *, source=None, pre_source=None, random_init=False, top1=(50.0, 60.0),
            step=100, num_samples=None, global_batch=None, seed=None, num_classes=10):
    meta = {
        "checkpoint": f"/runs/{name}/checkpoint_000000100/checkpoint.pt", "checkpoint_name": name, "step": step,
        "random_init": random_init, "run_dir": None, "dataset": probe_ds, "dataset_source": source, "data": f"/shards/{probe_ds}",
        "pretraining": {"task": task, "estimator": estimator, "encoder": encoder, "depth": 2 if encoder == "dcgan" else None,
                        "dataset": pre_ds, "dataset_source": pre_source, "shards": f"/shards/{pre_ds}", "seed": seed,
                        "global_batch": global_batch, "num_samples": num_samples},
        "train_split": "train", "test_split": "test", "num_train": 100, "num_test": 50, "num_classes": num_classes,
        "feature_dim": 8192, "kind": "infomax", "feature_cache": {"train": None, "test": None, "hit": False},
        "skipped": {"train": {"samples": [], "shards": []}, "test": {"samples": [], "shards": []}},
        "feature_seconds": 1.0,
    }
    per_seed = [{"seed": i, "epochs": 3, "top1": t, "top5": t + 20, "top10": 100.0, "train_loss": 1.0, "history": {}}
                for i, t in enumerate(top1)]
    return summarise(meta, per_seed, {"k": 20, "temperature": 0.07, "top1": 40.0, "top5": 80.0}, epochs=3, lr=1e-4, batch_size=256)


IMNET10 = {"fraction": 0.1, "per_class": None, "subset_list": None}


def test_paper_numbers_only_where_the_setting_matches():
    assert paper_reference(_result("a", "infomax", "eta-mine", "dcgan", "cifar10", "stl10")) == {"table": "Table 2", "top1": (56.4, None)}
    assert paper_reference(_result("b", "infomax", "dv-mine", "dcgan", "stl10", "stl10"))["top1"] == (61.8, None)
    assert paper_reference(_result("s", "supervised", None, "dcgan", "stl10", "stl10"))["top1"] == (61.3, None)
    assert paper_reference(_result("t", "supervised", None, "dcgan", "stl10", "cifar10")) is None  # not in the paper
    # another dataset, another bound, another encoder, or a random encoder: nothing to compare with
    assert paper_reference(_result("c", "infomax", "eta-mine", "dcgan", "digits", "digits")) is None
    assert paper_reference(_result("d", "infomax", "infonce", "dcgan", "cifar10", "cifar10")) is None
    assert paper_reference(_result("e", "infomax", "eta-mine", "resnet18", "cifar10", "cifar10")) is None
    assert paper_reference(_result("f", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10", random_init=True)) is None
    ce = _result("g", "jigsaw-ce", None, "resnet50", "imagenet", "imagenet", source=IMNET10, pre_source=IMNET10)
    assert paper_reference(ce) == {"table": "Table 3", "top1": (12.9, 0.3), "top5": (28.1, 0.6), "top10": (37.7, 0.6)}
    eta = _result("h", "jigsaw-mi", "eta-mine", "resnet50", "imagenet", "imagenet", source=IMNET10, pre_source=IMNET10)
    assert paper_reference(eta)["top10"] == (32.7, 2.2)
    full = {"fraction": 1.0, "per_class": None, "subset_list": None}
    assert paper_reference(_result("i", "jigsaw-ce", None, "resnet50", "imagenet", "imagenet", source=full, pre_source=full)) is None
    assert not is_imagenet10("imagenet", {"per_class": 128})  # kept all of validation: not the setting


def test_table_rows_and_means(tmp_path):
    a = _result("eta-run-step100", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10", top1=(70.0, 72.0), **CIFAR_SCHEDULE)
    b = _result("digits-run-step100", "infomax", "dv-mine", "dcgan", "digits", "digits", top1=(33.0, 35.0))
    write_results(tmp_path / "one", a)
    write_results(tmp_path / "nested" / "two", b)
    assert "71.00 ± 1.41" in (tmp_path / "one" / "results.md").read_text()
    assert json.loads((tmp_path / "one" / "results.json").read_text())["top1"]["mean"] == pytest.approx(71.0)
    table = make_table([a, b])
    lines = table.splitlines()
    row_a = next(l for l in lines if l.startswith("| eta-run-step100"))
    row_b = next(l for l in lines if l.startswith("| digits-run-step100"))
    assert "71.0 ± 1.4" in row_a and "74.8 (Table 2)" in row_a
    assert "34.0 ± 1.4" in row_b and "74.8" not in row_b and row_b.rstrip().endswith("| – | – | – |")
    assert len({l.count("|") for l in lines if l.startswith("|")}) == 1  # every row has every column
    assert "| 64 |" in row_a and "| paper |" in row_a  # the global pretraining batch and the probe protocol
    assert "Table 2 (Table 2" not in table and "Table 2 is Deep InfoMax" in table


def test_a_paper_number_stands_beside_a_row_only_with_the_papers_schedule():
    """An 8-step run on 300 images has the paper's setting (task, bound, encoder, datasets) but not its
    schedule: the paper's 74.8 goes to a footnote that says what differs; top-10 of 10 classes is "—"."""
    toy = _result("toy-step8", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10", step=8, num_samples=300, global_batch=64)
    unknown = _result("old-step100", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10")  # no schedule recorded
    full = _result("full-step78100", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10", **CIFAR_SCHEDULE)
    table = make_table([toy, unknown, full])
    row = {name: next(l for l in table.splitlines() if l.startswith(f"| {name} ")) for name in ("toy-step8", "old-step100", "full-step78100")}
    assert "74.8" not in row["toy-step8"] and "see [" in row["toy-step8"]
    assert "74.8" not in row["old-step100"] and "74.8 (Table 2)" in row["full-step78100"]
    assert "toy-step8: Table 2 reports top-1 74.8 for this setting, not shown beside it: pretrained 8 steps × 64 images on 300 images" in table
    assert "old-step100: Table 2 reports top-1 74.8" in table and "not recorded" in table
    for r in row.values():  # top-10 of 10 classes: "—" (always 100)
        assert r.split("|")[14].strip() == "—"
    hundred = _result("many", "infomax", "eta-mine", "dcgan", "digits", "digits", num_classes=100)
    assert next(l for l in make_table([hundred]).splitlines() if l.startswith("| many ")).split("|")[14].strip() == "100.0 ± 0.0"


def test_spread_over_pretraining_seeds_is_labelled_apart_from_probe_seeds():
    runs = [_result(f"eta-s{seed}", "infomax", "eta-mine", "dcgan", "digits", "digits", seed=seed, num_samples=1000,
                    global_batch=64, top1=(t, t + 2.0)) for seed, t in ((0, 40.0), (1, 50.0), (2, 60.0))]
    other_step = _result("eta-s3-longer", "infomax", "eta-mine", "dcgan", "digits", "digits", seed=3, num_samples=1000,
                         global_batch=64, step=200)
    table = make_table(runs + [other_step])
    assert "Over pretraining seeds" in table and "mean ± std over probe seeds" in table
    (group,) = [l for l in table.split("Over pretraining seeds")[1].splitlines() if l.startswith("| infomax")]
    assert "| 0, 1, 2 |" in group and "| 51.0 ± 10.0 |" in group  # runs' means 41, 51, 61; the step-200 run is apart
    assert "Over pretraining seeds" not in make_table(runs[:1] + [other_step])  # one seed a config: no spread to show


def test_cli_gathers_directories_and_rejects_bad_input(tmp_path, capsys):
    write_results(tmp_path / "r1", _result("x", "infomax", "eta-mine", "dcgan", "stl10", "cifar10", **STL_SCHEDULE))
    write_results(tmp_path / "r2", _result("y", "infomax", "dv-mine", "dcgan", "stl10", "cifar10", **STL_SCHEDULE))
    write_results(tmp_path / "r3", _result("z", "infomax", "dv-mine", "dcgan", "stl10", "cifar10", random_init=True))
    assert main([str(tmp_path), "--out", str(tmp_path / "table.md")]) == 0
    out = capsys.readouterr().out
    assert "68.3 (Table 2)" in out and "67.5 (Table 2)" in out
    assert (tmp_path / "table.md").read_text() == out
    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "table.png")  # the plot beside the Markdown
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 400
    assert main([str(tmp_path / "missing")]) == 2
    assert "neither a results directory" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"top1": 1}')
    assert main([str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "not an eval.linear results file" in err and "no eval.linear results under" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_other_results_files_are_skipped_with_a_note(tmp_path, capsys):
    """Directories that also hold the experiments' own results.json (a list, another object, broken
    JSON) give the table of the probe results, and a note per skipped file."""
    write_results(tmp_path / "probe", _result("x", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10"))
    (tmp_path / "mi_gaussian").mkdir()
    (tmp_path / "mi_gaussian" / "results.json").write_text('[{"estimator": "eta-mine", "dim": 2}]')
    (tmp_path / "mi_gan").mkdir()
    (tmp_path / "mi_gan" / "results.json").write_text('{"config": {}, "summary": {}}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"top1": ')
    assert main([str(tmp_path), "--out", str(tmp_path / "table.md")]) == 0
    captured = capsys.readouterr()
    assert "| x |" in captured.out and (tmp_path / "table.md").read_text() == captured.out
    notes = [line for line in captured.err.strip().splitlines() if not line.startswith("table: ")]
    assert len(notes) == 3 and all(n.startswith("note: skipped ") for n in notes)
    assert any("mi_gaussian" in n and "a JSON list" in n for n in notes)


def test_results_markdown_mentions_setting():
    md = results_markdown(_result("z", "infomax", "eta-mine", "dcgan", "cifar10", "cifar10"))
    assert "eta-mine" in md and "| top-1 |" in md and "seeds [0, 1]" in md
