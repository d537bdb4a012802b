"""The collapse monitor in a real run: a collapsing configuration warns, a healthy one does not.

Both runs go through the real command line (``byol.cli.main``) on real CIFAR-10 images with a
narrow network. The collapsing configuration is the paper's ablation (table 5): no predictor and
a target that is the online network itself (tau = 0). The schedules span 100 epochs while the run
stops after 40 steps, so tau stays below 0.004 throughout (its cosine only starts to rise).
Without a predictor the loss then falls to ~0 in a few dozen steps: every image maps to one vector.
"""

import json
import math

import byol
from byol.cli import main
from byol.resume import resume_config
from conftest import shown_lines, tiny_overrides

STEPS = 40
DIM = 64  # projection width: a healthy normalized std is about 1/sqrt(64) = 0.125


def pretrain(cifar10_root, out_dir, capsys, **extra):
    """Run ``byol pretrain`` in this process; return (stdout, stderr, metrics records of the training steps)."""
    values = {"model.projection_hidden_size": 256, "model.projection_size": DIM, "train.batch_size": 64,
              "data.limit": 640, "train.epochs": 100, "train.max_steps": STEPS, "train.log_every": 5,
              "train.knn_every": -1, "optim.warmup_epochs": 0, **extra}
    code = main(["pretrain", "--config", "cifar10", f"--data.root={cifar10_root}",
                 *tiny_overrides(out_dir, **values)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return captured.out, captured.err, [r for r in records if "monitor/z_std" in r]


def summary_rows(out: str, name: str) -> list[str]:
    """The values of the rows called ``name`` in the summary table that ``byol pretrain`` prints."""
    return [line.strip().removeprefix(name).strip() for line in out.splitlines() if line.startswith(f"  {name}  ")]


def test_no_predictor_and_tau_zero_collapses_and_the_monitor_warns(cifar10_root, tmp_path, capsys):
    run = tmp_path / "collapse"
    out, err, records = pretrain(cifar10_root, run, capsys, **{"model.use_predictor": False, "train.tau_base": 0.0,
                                                               "train.progress": True})
    assert max(r["train/tau"] for r in records) < 0.01  # the target really is the online network
    last = records[-1]
    # Really collapsed, not just near a threshold: the std is far below healthy (~1/sqrt(DIM)).
    assert last["monitor/z_std"] < 0.05 / math.sqrt(DIM), last
    assert last["train/loss"] < 0.05, last  # the trivial solution: a falling loss that means nothing
    # Warned once, on entering collapse, on a line of its own (not at the end of the progress bar's).
    warnings = [line for line in shown_lines(err) if "warning: " in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: step "), err
    line = warnings[0].removeprefix("warning: ")
    step = int(line.removeprefix("step ").split(":")[0])
    assert line.startswith(f"step {step}: representation collapse: the std") and "predictor" in line
    assert (run / "warnings.txt").read_text() == f"{line}\n"  # the step said once
    # The summary says so beside the final loss, which looks excellent.
    assert summary_rows(out, "warnings") == [f"1 (representation collapse at step {step}; see {run}/warnings.txt)"]
    # and TensorBoard's Text tab, beside the curves (a user test found nothing there)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    (said,) = events.Tensors("warnings/text_summary")
    assert said.step == step and said.tensor_proto.string_val[0].decode().startswith("representation collapse: ")

    # Resumed, the run reports the warnings of all of it: the earlier start's; the monitor goes on from the
    # checkpoint's state, so projections still collapsed are not warned of again (as the uninterrupted run).
    results = byol.pretrain(resume_config(None, [f"--train.out_dir={run}", f"--train.max_steps={STEPS + 10}"]),
                            resume=True)
    capsys.readouterr()
    assert results["warnings"] == (run / "warnings.txt").read_text().splitlines()
    assert [w.split(":")[0] for w in results["warnings"]] == [f"step {step}"]


def test_healthy_run_does_not_warn(cifar10_root, tmp_path, capsys):
    run = tmp_path / "healthy"
    # No warm-up here, so LARS as the paper has it (eta 0.001, unclipped): the cifar10 preset's solo-learn
    # settings need their warm-up, and without one all but collapse (docs/cifar10_preset.md).
    out, err, records = pretrain(cifar10_root, run, capsys, **{"train.tau_base": 0.99, "optim.trust_coefficient": 0.001,
                                                                "optim.lars_clip": "false"})
    assert records[-1]["step"] == STEPS
    assert "warning" not in err, err
    assert not (run / "warnings.txt").exists()
    assert summary_rows(out, "final loss") and not summary_rows(out, "warnings"), out
    assert min(r["monitor/z_std"] for r in records) > 0.5 / math.sqrt(DIM), records
    assert min(r["monitor/effective_rank"] for r in records) > 5, records


def test_a_network_blown_up_by_a_huge_learning_rate_warns_of_no_learning_signal(cifar10_root, tmp_path, capsys):
    """A user's report: a run at a learning rate far too high logged a loss of exactly 4.0 that neither collapse
    statistic flagged. Measured here: at step 5 the predictions' coordinates reach ~1e19, their float32 norm is
    inf, F.normalize makes them 0 (loss exactly 4.0, finite: the non-finite guard keeps the step), while the
    online projections' std is a quarter of healthy, above the collapse threshold."""
    run = tmp_path / "blown"
    main(["pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}",
          *tiny_overrides(run, **{"optim.name": "sgd", "optim.lr": 1e7, "train.epochs": 2, "train.max_steps": 5,
                                  "train.log_every": 1, "train.knn_every": -1,
                                  "train.precision": "fp32"})])  # (bf16 reaches it at step 5 too, where native)
    capsys.readouterr()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train/loss" in r][-1]
    assert last["step"] == 5 and last["train/loss"] == 4.0, last
    assert last["monitor/z_std_ratio"] > 0.1 and last["monitor/effective_rank"] > 1.5, last  # the statistics: fine
    said = [line for line in (run / "warnings.txt").read_text().splitlines() if "no learning signal" in line]
    assert said == [said[0]] and said[0].startswith("step 5: no learning signal: the loss is exactly 4.0"), said
