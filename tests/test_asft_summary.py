"""The AsFT experiment table: values from results.json / train_log.json, targets, clear errors."""

from __future__ import annotations

import json

from safeft.asft.summary import main, summarise


def write_eval(out, name, direct, completion, correct, log=None):
    def cell(k):
        return {"asr": k / 50, "compliant": k, "n": 50, "ci95": [0.01, 0.2]}

    res = {
        "attacks": {"direct": cell(direct), "completion": cell(completion)},
        "tasks": {
            "sst2": {
                "accuracy": correct / 100,
                "correct": correct,
                "n": 100,
                "ci95": [0.7, 0.9],
                "unparsed": 3,
            }
        },
    }
    (out / f"eval_{name}").mkdir(parents=True)
    (out / f"eval_{name}" / "results.json").write_text(json.dumps(res))
    if log is not None:
        (out / name).mkdir()
        (out / name / "train_log.json").write_text(json.dumps(log))


def test_table_and_targets(tmp_path):
    write_eval(tmp_path, "aligned", 1, 3, 22)
    write_eval(
        tmp_path,
        "plain",
        18,
        32,
        84,
        [{"loss": 1.0, "asft_penalty": 9.0}, {"loss": 0.5, "asft_penalty": 19.8}],
    )
    write_eval(tmp_path, "asft", 3, 10, 83, [{"loss": 1.0, "asft_penalty": 0.1, "anti_direction": 0.0}])
    rows = summarise(tmp_path, ["aligned", "plain", "asft"])
    plain, asft = rows[1], rows[2]
    assert plain["asft_penalty"] == 19.8 and "targets" not in plain
    t = asft["targets"]
    assert t["direct"] == {"points_above_aligned": 4.0, "met": True, "plain_lora_lost": 34.0}
    assert t["completion"]["points_above_aligned"] == 14.0 and not t["completion"]["met"]
    assert t["task"] == {"points_below_plain_lora": 1.0, "met": True}
    table = (tmp_path / "summary.md").read_text()
    row = "| asft | 6% (3/50) [1-20] | 20% (10/50) [1-20] | 83% [70-90], 3 unparsed | 0.1 | 0 |"
    assert row + " direct +4 pts met; completion +14 pts missed; task -1 pts met | - |" in table
    assert "completion +14 pts missed" in table
    assert json.loads((tmp_path / "summary.json").read_text())[2]["targets"]["task"]["met"] is True


def test_missing_results_exit_2(tmp_path, capsys):
    write_eval(tmp_path, "aligned", 1, 3, 22)
    assert main([str(tmp_path), "aligned", "plain"]) == 2
    assert "eval_plain/results.json: no results" in capsys.readouterr().err
    assert main([str(tmp_path), "aligned"]) == 2


def test_stem_names_the_table_files_so_two_baselines_keep_two_tables(tmp_path, capsys):
    write_eval(tmp_path, "aligned", 1, 3, 22)
    write_eval(tmp_path, "plain_lora_official", 20, 30, 80)
    write_eval(tmp_path, "asft_official", 19, 30, 81)
    args = [str(tmp_path), "aligned", "plain_lora_official", "asft_official", "--stem", "summary_official"]
    assert main(args) == 0
    assert "| asft_official | 38% (19/50)" in capsys.readouterr().out
    rows = json.loads((tmp_path / "summary_official.json").read_text())
    assert [r["name"] for r in rows] == ["aligned", "plain_lora_official", "asft_official"]
    assert rows[2]["targets"]["direct"]["plain_lora_lost"] == 38.0
    assert "| asft_official |" in (tmp_path / "summary_official.md").read_text()
    assert not (tmp_path / "summary.md").exists()
