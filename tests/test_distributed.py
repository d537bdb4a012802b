"""torchrun with 2 CPU processes (gloo): one DDP step with SyncBatchNorm equals one step on the
full batch in one process; a streamed folder lists the bad files that every rank met, and is
embedded on 2 ranks as in one process."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as td

from byol import distributed
from byol.checkpoint import load_checkpoint
from byol.config import ConfigError
from byol.precision import resolve_device
from conftest import CIFAR10, extract_jpegs, tiny_overrides
from test_cli import byol, main_error


# torchrun's agent binds its store to port 0, the system's pick, as --standalone does: a port picked here and closed
# again could be taken before torchrun bound it (a busy machine, other tests' gloo sockets), and torchrun then
# joined, as a client, whatever held it, and hung there or failed
RENDEZVOUS = ["--nnodes=1", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0"]


def torchrun_command(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *RENDEZVOUS,
            "-m", "byol", *map(str, args)]


@pytest.fixture(autouse=True)
def temporary_files_in_tmp_path(tmp_path, monkeypatch):
    """torchrun makes a torchelastic_* folder in the temporary directory at each start and leaves it there
    (hundreds piled up in /tmp): the processes a test starts make theirs in its tmp_path."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def torchrun_env() -> dict:
    """The environment of a process that runs a script from elsewhere (a tmp_path), which imports byol from this
    checkout as the tests do, not an installed one (a mutation audit: another checkout's, unnoticed)."""
    path = [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(path)}


def torchrun(nproc, *args, check=True, timeout=600):
    proc = subprocess.run(torchrun_command(nproc, *args), capture_output=True, text=True, env=torchrun_env(),
                          timeout=timeout)
    assert proc.returncode == 0 or not check, proc.stdout + proc.stderr
    return proc


def test_ddp_step_with_syncbn_equals_one_process_step(tmp_path):
    if not CIFAR10.is_dir():
        pytest.skip("real CIFAR-10 not found")
    # No augmentation, so the views are a known function of the images on any number of ranks; float32,
    # whose sums agree to the tolerance below however the batch is split (bf16's do not).
    common = [f"--data.root={CIFAR10}", "--augment.preset=none", "--train.knn_every=1", "--train.knn_limit=64",
              "--optim.name=lars", "--data.limit=64", "--train.precision=fp32"]
    byol("pretrain", *tiny_overrides(tmp_path / "one", **{"train.max_steps": 1}), *common)
    proc = torchrun(2, "pretrain", *tiny_overrides(tmp_path / "two", **{"train.max_steps": 1}), *common)
    assert proc.stdout.count("pretraining done") == 1  # only rank 0 reports
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert one["model"].keys() == two["model"].keys()
    compared = 0
    for key, a in one["model"].items():  # includes the BatchNorm running statistics
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            torch.testing.assert_close(two["model"][key], a, rtol=1e-4, atol=1e-5, msg=key)
            compared += 1
    assert compared > 100
    # The distributed kNN (features sharded, gathered with their indices) equals one process's.
    knn = [json_last(tmp_path / name, "eval/knn_top1") for name in ("one", "two")]
    assert knn[0] == knn[1]
    # Only rank 0 wrote files: one metrics line per logged step.
    steps = [r["step"] for r in read(tmp_path / "two") if "train/loss" in r]
    assert steps == [1]


def read(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def json_last(run, key):
    return [r[key] for r in read(run) if key in r][-1]


def test_ddp_streamed_folder_lists_the_bad_files_of_every_rank_and_embeds_it_as_one_process(tmp_path):
    # 30 JPEGs + 2 bad files = 32, so each of 2 ranks streams 16 of them in 2 batches of 8: every
    # file is visited once, but each rank meets only the bad files that fell in its own share
    # (with seed 1 the sampler gives one bad file to each rank; with seed 0 both go to rank 0).
    root = extract_jpegs(tmp_path / "images", per_class=3)
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    run = tmp_path / "run"
    torchrun(2, "pretrain", "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32",
             "--data.workers=0", "--data.on_device=false",
             *tiny_overrides(run, **{"train.batch_size": 8, "train.knn_every": -1, "data.limit": "null",
                                         "train.seed": 1}))
    skipped = (run / "skipped_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["corrupt.jpg", "empty.jpg"]
    # Embedding the folder on 2 ranks (each decodes its share, streamed) gives one process's
    # embeddings, labels and paths, in folder order, without the bad files.
    ckpt = run / "checkpoints" / "last.pt"
    byol("embed", ckpt, "--out", tmp_path / "one.pt", "--train.device=cpu")
    torchrun(2, "embed", ckpt, "--out", tmp_path / "two.pt", "--train.device=cpu")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(one["paths"]) == 30 and not any(p.endswith(("corrupt.jpg", "empty.jpg")) for p in one["paths"])
    assert two["paths"] == one["paths"] and torch.equal(two["labels"], one["labels"])
    torch.testing.assert_close(two["embeddings"], one["embeddings"], rtol=1e-4, atol=1e-5)


def test_ddp_checkpoint_lists_the_bad_files_of_every_rank_before_the_run_ends(tmp_path):
    # The list written beside each checkpoint is what survives a run killed with -9 (and what
    # --resume starts from), so it must hold every rank's bad files, not rank 0's alone. The same
    # folder and seed as above give one bad file to each rank in the first epoch; the run is
    # killed once the first epoch's list is there.
    root = extract_jpegs(tmp_path / "images", per_class=3)
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    run = tmp_path / "run"
    cmd = torchrun_command(2, "pretrain", "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32",
                           "--data.workers=0", "--data.on_device=false",
                           *tiny_overrides(run, **{"train.batch_size": 8, "train.knn_every": -1, "data.limit": "null",
                                                   "train.seed": 1, "train.epochs": 200}))
    proc = subprocess.Popen(cmd, env=torchrun_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listed = run / "skipped_files.txt"
    try:
        deadline = time.monotonic() + 300
        while not listed.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listed.is_file(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        skipped = listed.read_text().splitlines()  # written whole, then renamed into place
        assert proc.poll() is None  # read while the run goes on, not the list written at its end
    finally:
        proc.terminate()  # torchrun passes SIGTERM on to its workers (their own process groups)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in skipped) == ["corrupt.jpg", "empty.jpg"]


WRITES_LOGGED = '''
import os
import sys
import time

from byol import cli, files

replace = files._replace


def logged(tmp, path, *args):
    time.sleep(0.5)  # slow storage (a network file system, a large model): rank 0 still writes when the others are done
    with open(sys.argv[1], "a") as log:
        log.write(f"{os.environ['RANK']} {path.name}\\n")
    replace(tmp, path, *args)


files._replace = logged
code = cli.main(sys.argv[2:])
with open(sys.argv[1], "a") as log:
    log.write(f"{os.environ['RANK']} returned\\n")
sys.exit(code)
'''


@pytest.mark.slow
def test_ddp_export_writes_its_files_once(tmp_path, cifar10_root):
    """Under torchrun every process exported, each writing every file over the other's (a user test); and no
    process returns before rank 0 has written the files (byol.export's caller may read them next, on any rank)."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    byol("pretrain", "--config", "cifar10-cpu", f"--data.root={cifar10_root}", "--augment.preset=none",
         "--train.knn_every=-1", *tiny_overrides(tmp_path / "run", **{"train.max_steps": 1}))
    script, log = tmp_path / "logged.py", tmp_path / "writes.txt"
    script.write_text(WRITES_LOGGED)
    command = torchrun_command(2, "export", ckpt, "--out", tmp_path / "export")
    command[command.index("-m", 2):command.index("export")] = [str(script), str(log)]
    proc = subprocess.run(command, capture_output=True, text=True, env=torchrun_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = log.read_text().split("\n")[:-1]
    assert sorted(lines[:4]) == ["0 config.yaml", "0 encoder.pt", "0 encoder_torchscript.pt", "0 export.json"], lines
    assert sorted(lines[4:]) == ["0 returned", "1 returned"], lines
    assert proc.stdout.count("exported") == 1
    # From Python, rank 0 alone may export (no collective in it): it waited for rank 1 in a barrier, which came
    # only as rank 1 ended ('Connection closed by peer'), or paired with rank 1's next collective
    script = tmp_path / "rank_0_exports.py"
    script.write_text(RANK_0_EXPORTS)
    command = [*torchrun_command(2)[:-2], str(script), str(ckpt), str(tmp_path / "alone")]
    proc = subprocess.run(command, capture_output=True, text=True, env=torchrun_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "alone" / "export.json").is_file()


RANK_0_EXPORTS = '''
import os
import sys
import time

import byol
from byol import distributed

distributed.init()  # a script's own process group, up
done = sys.argv[2] + ".done"
if distributed.rank() == 0:
    byol.export(sys.argv[1], sys.argv[2])
    open(done, "w").close()
else:
    deadline = time.monotonic() + 300  # (a hang's bound, not a speed's: an export on a loaded machine takes a while)
    while not os.path.exists(done):
        if time.monotonic() > deadline:
            sys.exit("rank 0 did not return from byol.export in 300 s")
        time.sleep(0.1)
'''


RANK_1_FAILS = '''
import os
import sys

from byol import cli, reporting

next_batch, batches = reporting.Clock.next_batch, [0]


def failing(self, *args, **kwargs):
    batches[0] += 1
    if os.environ["RANK"] == "1" and batches[0] == 3 and sys.argv[2] == "fail":
        raise RuntimeError("rank 1 fails at its third batch")
    return next_batch(self, *args, **kwargs)


reporting.Clock.next_batch = failing
code = "raised"
try:
    code = cli.main(sys.argv[3:])
finally:
    with open(sys.argv[1], "a") as log:
        log.write(f"{os.environ['RANK']} {code}\\n")
sys.exit(code)
'''


@pytest.mark.slow
def test_ddp_errors_are_said_once_and_a_rank_s_failure_is_not_said_as_a_termination(tmp_path, cifar10_root):
    """A wrong data.root was said by each rank; and where rank 1 alone failed, rank 0 said 'byol: terminated
    (SIGTERM)' (torchrun's stop of the others) or printed the traceback of the collective it waited in."""
    script, log = tmp_path / "rank_1_fails.py", tmp_path / "codes.txt"
    script.write_text(RANK_1_FAILS)

    def run(fail, root):
        command = torchrun_command(2, "pretrain", "--config", "cifar10-cpu", f"--data.root={root}",
                                   "--train.knn_every=-1", *tiny_overrides(tmp_path / fail))
        command[command.index("-m", 2):command.index("pretrain")] = [str(script), str(log), fail]
        log.write_text("")
        proc = subprocess.run(command, capture_output=True, text=True, env=torchrun_env(), timeout=600)
        assert proc.returncode != 0, proc.stderr
        codes = dict(line.split() for line in log.read_text().splitlines())
        assert "0" not in codes.values() and len(codes) <= 2, (codes, proc.stderr)  # (one killed: not logged)
        assert "byol: terminated" not in proc.stderr and "[rank0]" not in proc.stderr, proc.stderr
        return proc.stderr
    err = run("root", tmp_path / "nowhere")
    assert err.count("cifar10 train files not found") == 1, err
    err = run("fail", cifar10_root)
    assert err.count("RuntimeError: rank 1 fails at its third batch") == 1, err  # its traceback, once
    assert err.count("byol: stopped: rank 1 of this torchrun run failed (its error is said above)\n") == 1, err


@pytest.mark.slow
def test_ddp_resume_without_a_checkpoint_is_said_once(tmp_path, cifar10_root):
    """A --resume into a folder without checkpoints/last.pt: rank 0 said how to go on, and rank 1, which
    tried to load it, a second sentence ('checkpoint ... does not exist'; a user test)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_0001.pt").write_bytes(b"")  # a kept epoch: the sentence says to copy it
    proc = torchrun(2, "pretrain", "--resume", f"--data.root={cifar10_root}", *tiny_overrides(run), check=False)
    said = (f"cannot resume: no checkpoint at {run / 'checkpoints' / 'last.pt'}; to resume from "
            "checkpoints/epoch_0001.pt, copy it to checkpoints/last.pt first\n")
    assert proc.returncode != 0 and proc.stderr.count("byol: ") == 1, proc.stderr
    assert proc.stderr.count(said) == 1 and "does not exist" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_ddp_resume_in_a_folder_epoch_with_undecodable_batches_trains_as_the_uninterrupted_run(tmp_path):
    """Each rank starts its resumed epoch at its batch without decoding those before; where whole
    batches of its share cannot be decoded, it knows them from skipped_files.txt (every rank's)."""
    root = extract_jpegs(tmp_path / "images", per_class=2)  # 20 files, and 60 that cannot be decoded
    for n in range(60):
        (root / "cat" / f"junk{n:02d}.jpg").write_bytes(b"not a jpeg")

    def pretrain(run, steps, *resume):
        torchrun(2, "pretrain", *resume, "--data.dataset=folder", f"--data.root={root}", "--data.image_size=32",
                 "--data.workers=0", "--data.on_device=false",
                 *tiny_overrides(tmp_path / run, **{"train.batch_size": 8, "train.knn_every": -1, "data.limit": "null",
                                                    "train.epochs": 2, "optim.name": "sgd", "train.max_steps": steps}))
        return load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["model"]
    straight = pretrain("a", 14)  # 10 steps an epoch, each rank 4 images a step
    pretrain("b", 7)
    resumed = pretrain("b", 14, "--resume")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight if isinstance(straight[k], torch.Tensor))


def test_ddp_knn_monitor_on_a_folder_shares_the_decoding_and_equals_one_process(tmp_path):
    # ROOT/train and ROOT/val: each rank decodes its share of both splits for the kNN monitor, and
    # the gathered kNN (here at random init, the same weights on 1 and 2 processes) is one process's.
    train = extract_jpegs(tmp_path / "imagenet" / "train", per_class=3)
    extract_jpegs(tmp_path / "imagenet" / "val", per_class=2)
    (train / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    common = ["--data.dataset=folder", f"--data.root={train}", "--data.image_size=32", "--data.workers=0",
              "--data.on_device=false", "--train.knn_every=0", "--train.knn_limit=null", "--data.limit=16"]
    byol("pretrain", *tiny_overrides(tmp_path / "one", **{"train.batch_size": 8, "train.max_steps": 1}), *common)
    torchrun(2, "pretrain", *tiny_overrides(tmp_path / "two", **{"train.batch_size": 8, "train.max_steps": 1}),
             *common)
    first = [[r for r in read(tmp_path / name) if "eval/knn_top1" in r][0] for name in ("one", "two")]
    assert first[0]["step"] == first[1]["step"] == 0
    assert first[0] == first[1]


def test_ddp_knn_monitor_with_an_empty_share_and_with_nothing_decodable(tmp_path):
    # val/ holds one good file (rank 0's share) and one bad one (rank 1's): rank 1 has nothing to
    # embed and still takes part, and the kNN equals one process's. With both bad, every rank
    # stops at start-up with the same one-sentence error, said once, none waits for the others.
    src = extract_jpegs(tmp_path / "jpgs", per_class=4)
    root = tmp_path / "set"
    for cls in ("cat", "dog"):
        files = sorted((src / cls).iterdir())
        (root / "train" / cls).mkdir(parents=True)
        (root / "val" / cls).mkdir(parents=True)
        for f in files[:3]:
            shutil.copy(f, root / "train" / cls / f.name)
    shutil.copy(sorted((src / "cat").iterdir())[3], root / "val" / "cat" / "a.jpg")
    (root / "val" / "dog" / "b.jpg").write_bytes(b"not a jpeg")
    common = ["--data.dataset=folder", f"--data.root={root / 'train'}", "--data.image_size=32", "--data.workers=0",
              "--data.on_device=false", "--train.knn_every=0", "--train.knn_limit=null", "--data.limit=null"]
    byol("pretrain", *tiny_overrides(tmp_path / "one", **{"train.batch_size": 2, "train.max_steps": 1}), *common)
    torchrun(2, "pretrain", *tiny_overrides(tmp_path / "two", **{"train.batch_size": 2, "train.max_steps": 1}),
             *common)
    first = [[r for r in read(tmp_path / name) if "eval/knn_top1" in r][0] for name in ("one", "two")]
    assert first[0] == first[1]
    (root / "val" / "cat" / "a.jpg").write_bytes(b"not a jpeg either")
    proc = torchrun(2, "pretrain", *tiny_overrides(tmp_path / "three", **{"train.batch_size": 2}), *common,
                    check=False, timeout=120)
    assert proc.returncode != 0
    # each rank meets it, the first to say it says it (each said it, a user test)
    assert proc.stderr.count("none of the image files of a kNN monitor split") == 1, proc.stderr
    assert re.search(r"^byol: error( \(rank 1\))?: none of the image files", proc.stderr, re.M), proc.stderr
    assert not re.search(r'File ".*/byol/', proc.stderr)  # torchrun's own report of exit 2 aside, no traceback


@pytest.mark.parametrize("world, said", [
    ("two", re.escape("the environment variable WORLD_SIZE is 'two', not a whole number >= 1: torchrun sets it for "
                      "each process; unset it to run as one process")),
    ("0", re.escape("the environment variable WORLD_SIZE is '0', not a whole number >= 1: torchrun sets it for "
                    "each process; unset it to run as one process")),
    ("2", r"WORLD_SIZE=2 asks for 2 processes, but the process group could not be joined \(.*RANK.*\); start byol "
          r"with torchrun, which sets that and the rest, or unset WORLD_SIZE to run as one process")])
def test_a_torchrun_environment_that_is_not_whole_is_one_sentence(tmp_path, capsys, monkeypatch, world, said):
    """WORLD_SIZE set by something else than torchrun (not a number; or without RANK) was a traceback."""
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.delenv("RANK", raising=False)
    _, line = main_error(capsys, "pretrain", "--config", "cifar10-cpu", f"--data.root={CIFAR10}",
                         *tiny_overrides(tmp_path / "run"))
    assert re.fullmatch(f"byol: error: {said}", line), line  # (torch's own words, in the brackets, may change)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tasks", ["2", "8"])
def test_a_slurm_step_of_several_tasks_without_torchrun_gets_a_note_once(capsys, monkeypatch, tasks):
    """srun --ntasks=2 byol pretrain ...: each task trained a run of its own in one process (byol reads torchrun's
    variables, not Slurm's), without a word; one of them said another run was writing the folder, or, without a
    shared file system, every node trained its own run unnoticed. A note from task 0, once a process (a sweep's
    tasks are several on purpose: not refused)."""
    monkeypatch.setattr(distributed, "_slurm_noted", False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", tasks)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", tasks)
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert distributed.init() == (0, 1) and capsys.readouterr().err == ""  # said by task 0 alone
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.init() == (0, 1)
    said = capsys.readouterr().err
    assert said.startswith(f"note: Slurm started this command as {tasks} tasks (SLURM_STEP_NUM_TASKS={tasks}), and "
                           "byol runs several processes as one run only under torchrun"), said
    assert "srun --ntasks-per-node=1 torchrun --nnodes=$SLURM_NNODES" in said, said
    assert distributed.init() == (0, 1) and capsys.readouterr().err == ""  # once a process


def test_a_job_scripts_own_step_of_a_slurm_job_of_several_tasks_gets_no_note(capsys, monkeypatch):
    """The batch script's step (SLURM_NTASKS and SLURM_PROCID=0, no SLURM_STEP_NUM_TASKS) runs one command: one
    process, and nothing to say; nor where srun started one task."""
    monkeypatch.setattr(distributed, "_slurm_noted", False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.init() == (0, 1)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert distributed.init() == (0, 1)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")  # srun --ntasks=2 torchrun --nproc_per_node=1: under torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert distributed.init() == (0, 1)
    assert capsys.readouterr().err == ""


def test_noted_blocks_keep_their_own_notes_nested_and_in_threads(capsys):
    """A review: a nested block's exit took the enclosing block's list out (list.remove took the first equal one),
    whose later notes were lost, and then failed with "x not in list"; a block kept another thread's notes too."""
    with distributed.noted() as outer:
        with distributed.noted() as inner:
            pass
        distributed.note("after")
        other = threading.Thread(target=distributed.note, args=("another thread's",))
        other.start()
        other.join()
    assert outer == ["after"] and inner == []
    assert capsys.readouterr().err == "note: after\nnote: another thread's\n"


GATHER = '''
import sys

import torch
import torch.distributed as td
import torch.multiprocessing as mp

from byol.distributed import gather_rows
from byol.features import extract_features, extract_features_sharded


def run(rank, store):
    td.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    indices = torch.arange(rank, 5, 2)  # rank 0 holds 3 of the 5 rows, rank 1 two (eval --limit 5, say)
    out = gather_rows(indices.float().view(-1, 1) * 10, indices, 5, torch.device("cpu"))
    assert out.flatten().tolist() == [0.0, 10.0, 20.0, 30.0, 40.0], out
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2)  # the kNN monitor's split of 5, say
    features = extract_features_sharded(torch.nn.Flatten(), images, torch.device("cpu"))
    assert torch.equal(features, extract_features(torch.nn.Flatten(), images)), features
    td.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=2)
'''


def test_rows_the_ranks_hold_unevenly_are_gathered_in_order(tmp_path):
    """5 rows over 2 processes: every rank gets all 5, each at its index (a mutation audit: the ranks' common
    size rounded down, which fails as soon as a rank holds more, survived; the tests' splits were even). The
    images' features too, as extract_features_sharded gathers them (a mutation audit: a rank's share that left
    out the last image, its row then zeros, survived every test)."""
    script = tmp_path / "gather.py"
    script.write_text(GATHER)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True,
                          env=torchrun_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_a_torch_without_nccl_joins_with_gloo_on_a_gpu_and_a_process_past_the_gpus_takes_none(monkeypatch):
    """From reading the code for Windows, whose torch has CUDA but no NCCL: torchrun on its GPUs asked for
    NCCL, and init_process_group failed ("Distributed package doesn't have NCCL built in")."""
    joined = []

    def init_process_group(backend):
        joined.append(backend)
        raise ValueError("stop here")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: joined.append(f"cuda:{device}"))
    monkeypatch.setattr(td, "is_initialized", lambda: False)
    monkeypatch.setattr(td, "init_process_group", init_process_group)
    for nccl, backend in ((True, "cpu:gloo,cuda:nccl"), (False, "gloo")):
        monkeypatch.setattr(td, "is_nccl_available", lambda: nccl)
        with pytest.raises(ValueError, match="could not be joined"):
            distributed.init()
        assert joined == ["cuda:0", backend]
        joined.clear()
    # A process past the machine's GPUs takes none (precision.resolve_device says why, where it is to use one)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="could not be joined"):
        distributed.init()
    assert joined == ["gloo"]


def test_a_local_rank_outside_torchrun_is_one_process_on_the_first_gpu(monkeypatch):
    """LOCAL_RANK left in the environment of one process (a cluster's, another launcher's) with the one GPU a
    scheduler gave it (a user test: "this is torchrun's process LOCAL_RANK=1, but this machine has 1 CUDA GPU")."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.local_rank() == 0
    assert resolve_device("auto") == torch.device("cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's: the process past the GPUs is refused, as before
    with pytest.raises(ConfigError, match="LOCAL_RANK=1, but this machine has 1 CUDA GPU"):
        resolve_device("auto")


def test_synchronized_batchnorm_with_momentum_none_keeps_a_cumulative_average(monkeypatch):
    """A network of the user's with BatchNorm(momentum=None) (a cumulative average of the batches' statistics, as
    torch's SyncBatchNorm keeps on a GPU): a torchrun on CPUs took it for momentum 0.1 (a review)."""
    monkeypatch.setattr(distributed, "sum_over_ranks", lambda t: t)  # one process
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm1d(3, momentum=None)
    synced = distributed.GlobalBatchNorm.like(torch.nn.BatchNorm1d(3, momentum=None))
    for i in range(5):
        x = torch.randn(16, 3) * (i + 1) + i
        synced(x), ref(x)
    torch.testing.assert_close((synced.running_mean, synced.running_var), (ref.running_mean, ref.running_var))
    assert int(synced.num_batches_tracked) == 5


def test_a_batchnorm_the_user_froze_in_eval_mode_stays_frozen_when_synchronized():
    """A network of the user's with a BatchNorm put in eval mode (frozen statistics): its synchronized one, under
    torchrun, normalizes with those statistics and leaves them, as the layer did (a mutation audit: one made in
    training mode survived every test)."""
    frozen = torch.nn.BatchNorm1d(3).eval()
    synced = distributed.GlobalBatchNorm.like(frozen)
    assert not synced.training
    x = torch.randn(8, 3) * 4 + 2
    torch.testing.assert_close(synced(x), frozen(x))  # (no collective: eval mode sums nothing over ranks)
    assert int(frozen.num_batches_tracked) == 0 and torch.equal(frozen.running_mean, torch.zeros(3))
