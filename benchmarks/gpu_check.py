"""``make gpu-check``: one prepared, offline, time-boxed check on a (lent) GPU machine.

Runs, in order, each stage in its own process (a crash, a hang or a kernel path resolved
once per process costs only that stage), within a wall-clock budget (``--minutes``,
``GPU_CHECK_MINUTES``, default 9):

1. ``correctness``: every fused kernel forward and backward against the PyTorch references
   (:mod:`gpt1_benchmarks.checks`) in bf16, fp16 and fp32 at GPT-1's shapes, with fixed
   (non-autotuned) launch configurations (``GPT1_ATTENTION_AUTOTUNE=0``) for a fast compile;
2. ``model``: one GPT-1 training step (bf16 autocast) through the Triton path against the torch
   path: same weights and batch, loss and every gradient compared;
3. ``pytest``: ``pytest tests/kernels -m "gpu or not gpu"`` (the ``gpu``-marked tests first),
   bounded by its share of the time;
4. ``kernels``: copy bandwidth, an autotuned attention spot check, then the kernel benchmarks
   (:mod:`gpt1_benchmarks.kernels`), the cases the targets are judged on first;
5. ``train``: the training-step benchmark (:mod:`gpt1_benchmarks.train`) of GPT-1: eager,
   compile, ours, ours+compile;
6. ``generate``: the generation benchmark (:mod:`gpt1_benchmarks.generate`).

Each stage gets a share of the time left (what one leaves unused passes on) and is skipped
with reason ``budget`` when less than its minimum is left; its process is stopped at the end of
its share. After every stage, and every few seconds while one runs, the results file (a
``gpt1-bench`` file that ``python -m gpt1_benchmarks.report`` reads, with the check in the
top-level ``gpu_check`` key), the log and the summary are rewritten atomically (the charts after
each benchmark stage), so a run cut off at any point leaves what it measured. The exit status is 1 when a correctness check failed (kernels, model
step or pytest), 2 for a usage problem (such as no GPU without ``--dry-run``), 3 when stopped by
a signal, else 0.

``--dry-run`` (``GPU_CHECK_DRY=1``) runs the same control flow on the CPU in about a minute:
tiny shapes, the correctness stages under the Triton interpreter (fp32 and fp16 only), the
benchmarks in ``--quick`` form without Triton (interpreted times are no speeds), the charts
drawn once at the end.

Nothing is installed and nothing is fetched: run as ``python benchmarks/gpu_check.py`` it
imports the working tree it sits in (``kernels/`` as ``gpt1_kernels``, ``benchmarks/`` as
``gpt1_benchmarks``) without installing it.

``--stages`` (``GPU_CHECK_STAGES``) runs a subset of the stages, ``--kernels``
(``GPU_CHECK_KERNELS``) checks a subset of the kernels and ``--stage-seconds``
(``GPU_CHECK_STAGE_SECONDS``, e.g. ``pytest=60,train=200``) caps stages' shares.

Hooks for the tests of this module (environment variables, all optional):
``GPU_CHECK_INJECT_FAILURE=KERNEL`` (or ``--inject-failure``) perturbs that kernel's output in
the correctness stage; ``GPU_CHECK_TEST_SPEND=STAGE=SECONDS[,...]`` spends budget after a stage;
``GPU_CHECK_TEST_HANG_AFTER=N`` makes the correctness process hang after N checks;
``GPU_CHECK_BLOCK_IMPORTS=a,b`` makes those modules unimportable in every process (as on a
machine without them).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

_STARTED = time.monotonic()
_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
_SCRIPT = _HERE / "gpu_check.py"
_ALIASES = (("gpt1_kernels", "kernels"), ("gpt1_benchmarks", "benchmarks"))


class _BlockedImports:
    """A meta-path finder that makes the named top-level modules unimportable."""

    def __init__(self, names):
        self.names = {n.strip() for n in names if n.strip()}

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (GPU_CHECK_BLOCK_IMPORTS)", name=fullname)
        return None


def _block_imports() -> None:
    names = os.environ.get("GPU_CHECK_BLOCK_IMPORTS", "")
    if names and not any(isinstance(f, _BlockedImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _BlockedImports(names.split(",")))


def _bootstrap() -> None:
    """Import this working tree's packages under their installed names, installing nothing."""
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _HERE]
    sys.path.insert(0, str(_REPO))
    _block_imports()
    for name, folder in _ALIASES:
        if name in sys.modules:
            continue
        init = _REPO / folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


if __name__ == "__main__" and not __package__:
    # Run as a script: no installation needed. Everything below imports through the package.
    _bootstrap()
    from gpt1_benchmarks.gpu_check import main as _main

    sys.exit(_main())

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import xml.etree.ElementTree as ElementTree  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from gpt1cli.errors import Gpt1Error  # noqa: E402
from gpt1cli.fileio import atomic_write_json, atomic_write_text  # noqa: E402

from .env import RESULTS_DIR, environment, utc_now  # noqa: E402
from .harness import Budget, Settings, error_text, parse_dtype, triton_mode  # noqa: E402

SCHEMA = "gpt1-bench"
SCHEMA_VERSION = 1
CHECK_VERSION = 1
DEFAULT_MINUTES = 9.0
DRY_OUT = Path("build") / "gpu-check-dry"
# Pins the attention kernels to their fixed launch configurations (no autotuning), read at
# each launch by gpt1_kernels.attention. LayerNorm and cross-entropy have fixed configs anyway.
FIXED_CONFIG_ENV = {"GPT1_ATTENTION_AUTOTUNE": "0"}
FIXED_CONFIG_NOTE = "fixed: " + " ".join(f"{k}={v}" for k, v in FIXED_CONFIG_ENV.items())
PYTEST_ARGS = ("tests/kernels", "-m", "gpu or not gpu")
PYTEST_ENV = {"GPT1_ATTENTION_AUTOTUNE": "0"}
# A dry run collects one file and runs only its GPU tests, which a CPU skips: pytest's start,
# collection and counting are exercised in seconds, whatever the state of the other tests.
DRY_PYTEST_ARGS = ("tests/kernels/test_model_paths.py", "-m", "gpu or not gpu", "-k", "on_cuda")
# Training paths run in two processes, one per kernel path: (GPT1_KERNELS, paths, share of the stage).
TRAIN_GROUPS = (("torch", ("eager", "compile"), 0.45), ("triton", ("ours", "ours+compile"), 0.55))
TRAIN_MIN_S = {"real": 25.0, "dry": 1.0}
PROGRESS_S = {"real": 10.0, "dry": 2.0}  # how often a running stage's partial results are written out
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    share: float  # of the time left, among the stages still to run
    min_s: float  # skipped ("budget") when less than this is left
    dry_min_s: float


STAGES = (
    Stage("correctness", "kernel correctness, fixed configs", 0.16, 45.0, 2.0),
    Stage("model", "GPT-1 train step, Triton path vs torch path", 0.10, 40.0, 2.0),
    Stage("pytest", "pytest tests/kernels -m 'gpu or not gpu', gpu-marked tests first", 0.09, 20.0, 2.0),
    Stage("kernels", "kernel benchmarks", 0.27, 45.0, 2.0),
    Stage("train", "training-step benchmark", 0.30, 60.0, 2.0),
    Stage("generate", "generation benchmark", 0.08, 20.0, 2.0),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
BENCH_STAGES = ("kernels", "train", "generate")
FINISHED = ("ok", "failed")


def _parse_seconds(text: str) -> dict[str, float]:
    """``"name=seconds,name=seconds"`` as a dict (raises ValueError on a malformed item)."""
    values = {}
    for item in text.split(","):
        if item.strip():
            name, seconds = item.split("=", 1)
            values[name.strip()] = float(seconds)
    return values


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _seconds(value: float) -> float:
    return round(float(value), 1)


# ============================================================================= child processes


@dataclass
class ChildResult:
    rc: int | None
    timed_out: bool
    seconds: float
    data: dict | None
    lines: list[str] = field(default_factory=list)


class ChildOutput:
    """The JSON a child process rewrites atomically as it goes (read back even if it is killed)."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.data: dict = {}

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.data)


def _child_settings(args) -> Settings:
    from gpt1cli.runtime import pick_device

    device = pick_device("cpu" if args.dry_run else "cuda")
    deadline = float(args.deadline) if args.deadline else math.inf
    budget = Budget(max(0.0, deadline - time.time()) if math.isfinite(deadline) else math.inf)
    return Settings(device=device, dtype=parse_dtype("auto", device), quick=args.dry_run,
                    triton_mode=triton_mode(device), budget=budget, log=lambda message: print(message, flush=True))


def _child_correctness(args, out: ChildOutput) -> None:
    from .checks import CHECKED_DTYPES, free, kernel_checks, planned_checks, run_check, strict_fp32

    settings = _child_settings(args)
    strict_fp32()
    dtypes = list(CHECKED_DTYPES["dry" if args.dry_run else "real"])
    checks = [c for c in kernel_checks(settings.device, dtypes, args.dry_run) if c.kernel in args.kernels]
    out.data = {"config": FIXED_CONFIG_NOTE, "cases": [], "current": None}
    out.data["cases"] = [{"kernel": k, "dtype": d, "config": "fixed", "status": "skipped", "reason": reason}
                         for k, d, reason in planned_checks(args.dry_run, args.kernels) if reason]
    out.save()
    hang_after = int(os.environ.get("GPU_CHECK_TEST_HANG_AFTER", "-1") or -1)
    for index, check in enumerate(checks):
        if index == hang_after:
            print(f"GPU_CHECK_TEST_HANG_AFTER={hang_after}: hanging", flush=True)
            while True:
                time.sleep(60)
        out.data["current"] = [check.kernel, check.dtype]
        out.save()
        record = run_check(check, inject_failure=args.inject_failure)
        out.data["cases"].append(record)
        out.data["current"] = None
        out.save()
        print(_case_line(record), flush=True)
        free(settings.device)


def _case_line(record: dict) -> str:
    text = f"{record['kernel']} {record['dtype']} ({record.get('config', 'fixed')}): {record['status']}"
    if record.get("worst_ratio") is not None:
        text += f", worst error/tolerance {record['worst_ratio']:.3g}"
    if record.get("failed_tensors"):
        text += f", failed: {', '.join(record['failed_tensors'])}"
    if record.get("error"):
        text += f": {record['error']}"
    return text + f" ({record.get('seconds', 0):.1f} s)"


def _child_model(args, out: ChildOutput) -> None:
    from .checks import compare_model_steps, model_step

    settings = _child_settings(args)
    step = model_step(settings.device, args.dry_run)
    expected = "triton" if args.path == "triton" else "torch"
    out.data = {key: step[key] for key in ("loss", "path", "dtype", "batch", "parameters", "step_s")}
    out.data["requested"] = expected
    out.data["path_ok"] = str(step["path"]).startswith(expected)
    print(f"{expected} path: loss {step['loss']:.6g} ({step['path']})", flush=True)
    if args.grads_out:  # safetensors, never pickle: the reference step travels between processes as data
        from safetensors.torch import save_file

        save_file({name: grad.contiguous() for name, grad in step["grads"].items()}, args.grads_out,
                  metadata={"loss": repr(step["loss"]), "dtype": str(step["dtype"])})
    if args.ref:
        from safetensors import safe_open

        with safe_open(args.ref, framework="pt") as handle:
            meta = handle.metadata()
            reference = {"loss": float(meta["loss"]), "dtype": meta["dtype"],
                         "grads": {name: handle.get_tensor(name) for name in handle.keys()}}
        comparison = compare_model_steps(reference, step)
        if not out.data["path_ok"]:
            comparison["status"] = "fail"
            comparison["problems"].insert(0, f"the {expected} path was not taken: {step['path']}")
        out.data["comparison"] = comparison
    out.save()


def _child_kernels(args, out: ChildOutput) -> None:
    from .checks import attention_check, free, run_check
    from .dispatch import run_dispatch
    from .harness import guarded
    from .kernels import CONVENTIONS, copy_bandwidth, run_kernels, standard_specs, target_attention_shapes, target_specs

    settings = _child_settings(args)
    section = {"conventions": dict(CONVENTIONS), "cases": [], "copy_bandwidth": None}
    out.data = {"section": section, "correctness": []}
    out.save()
    section["copy_bandwidth"] = guarded(settings, lambda: copy_bandwidth(settings))
    out.save()
    bandwidth = section["copy_bandwidth"]
    print(f"copy bandwidth: {bandwidth['gbps']:,.0f} GB/s" if "gbps" in bandwidth else f"copy bandwidth: {bandwidth}",
          flush=True)
    # Host time per call first: the first GPU run found it, not the kernels, setting small shapes'
    # times and the training step's (about 1 ms per attention or LayerNorm forward+backward).
    dispatch = guarded(settings, lambda: {"records": run_dispatch(settings)})
    section["dispatch"] = dispatch.get("records", [])
    if "records" not in dispatch:
        section["dispatch_problem"] = dispatch.get("error") or dispatch.get("skipped")
    out.save()
    # The attention kernels as the benchmarks run them (autotuned, the benchmark's first shape,
    # so the tuned configuration is the one timed next), checked before they are timed.
    shape = target_attention_shapes(settings)[0]
    for dropout, kernel in ((0.0, "attention"), (0.1, "attention+dropout")):
        check = attention_check(settings.device, settings.dtype_name, shape, dropout=dropout, kernel=kernel,
                                config="autotuned")
        if settings.triton_skip_reason():
            record = {"kernel": kernel, "dtype": settings.dtype_name, "config": "autotuned", "status": "skipped",
                      "reason": settings.triton_skip_reason()}
        elif settings.budget.expired():
            record = {"kernel": kernel, "dtype": settings.dtype_name, "config": "autotuned", "status": "skipped",
                      "reason": "budget"}
        else:
            record = run_check(check, inject_failure=args.inject_failure)
        out.data["correctness"].append(record)
        out.save()
        print(_case_line(record) if record["status"] != "skipped"
              else f"{kernel} autotuned: skipped ({record['reason']})", flush=True)
        free(settings.device)

    def on_case(case: dict) -> None:
        section["cases"].append(case)
        out.save()

    run_kernels(settings, [*target_specs(settings), *standard_specs(settings)], on_case=on_case)


def _child_train(args, out: ChildOutput) -> None:
    from .train import MFU_FORMULA, run_train, train_cases

    settings = _child_settings(args)
    case = train_cases(settings)[0]
    out.data = {"section": {"mfu_formula": MFU_FORMULA, "cases": []}}
    for name in args.paths.split(","):
        part = run_train(settings, cases=[case], paths=[name])["cases"][0]
        cases = out.data["section"]["cases"]
        if cases:
            cases[0]["impls"].update(part["impls"])
        else:
            cases.append(part)
        out.save()


def _child_generate(args, out: ChildOutput) -> None:
    from .generate import run_generate

    settings = _child_settings(args)
    out.data = {"section": {"cases": []}}
    out.save()
    out.data["section"] = run_generate(settings)
    out.save()


_CHILDREN: dict[str, Callable] = {
    "correctness": _child_correctness,
    "model": _child_model,
    "kernels": _child_kernels,
    "train": _child_train,
    "generate": _child_generate,
}


def child_main(args) -> int:
    out = ChildOutput(args.child_out)
    try:
        _CHILDREN[args.child](args, out)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        out.data["error"] = error_text(exc)
        out.save()
        import traceback

        traceback.print_exc()
        return 1
    return 0


def pytest_main(args: list[str]) -> int:
    import pytest

    os.chdir(_REPO)
    return int(pytest.main(args))


# ============================================================================= the check


def stage_status_line(name: str, record: dict) -> str:
    status = record.get("status", "?")
    text = f"{name} {status}"
    if record.get("reason"):
        text += f": {record['reason']}"
    if record.get("seconds") is not None and status not in ("skipped", "pending"):
        text += f" ({record['seconds']:.0f} s)"
    return text


class GpuCheck:
    """The orchestrating process: runs the stages' processes and owns every output file."""

    def __init__(self, opts):
        self.opts = opts
        self.dry = opts.dry_run
        self.lines: list[str] = []
        self.budget = Budget(opts.minutes * 60.0)
        self.budget.deadline = _STARTED + opts.minutes * 60.0
        self.reserve = 1.0 if self.dry else 8.0  # left for the charts and the summary
        self.spend = _parse_seconds(os.environ.get("GPU_CHECK_TEST_SPEND", ""))
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))  # big scratch files, never in the output
        self.charts_note: str | None = None
        self.charts_drawn: str | None = None
        self.current_stage: str | None = None

    # ------------------------------------------------------------------ set-up and files

    def setup(self) -> int | None:
        from .env import device_slug

        if self.dry:
            os.environ["TRITON_INTERPRET"] = "1"
            self.device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                print(f"gpu-check: no CUDA GPU is visible to {sys.executable} (torch {torch.__version__}, "
                      f"CUDA build {torch.version.cuda}). On a machine without one run the dry run: "
                      "make gpu-check GPU_CHECK_DRY=1", file=sys.stderr)
                return EXIT_USAGE
            if os.environ.get("TRITON_INTERPRET") == "1":
                print("gpu-check: TRITON_INTERPRET=1 is ignored on the GPU (the kernels are compiled)", flush=True)
                os.environ.pop("TRITON_INTERPRET")
            self.device = torch.device("cuda")
        self.mode = triton_mode(self.device)
        self.dtype = parse_dtype("auto", self.device)
        self.settings = Settings(device=self.device, dtype=self.dtype, quick=self.dry, triton_mode=self.mode)
        env = environment(self.device, self.mode)
        stem = f"{device_slug(self.device)}-{utc_now().date().isoformat()}" + ("-dry-run" if self.dry else "")
        self.out_dir = Path(self.opts.out)
        self.json_path = self.out_dir / f"{stem}.json"
        self.log_path = self.out_dir / f"{stem}-gpu-check.log"
        self.summary_path = self.out_dir / f"{stem}-gpu-check-summary.txt"
        self.pytest_log_path = self.out_dir / f"{stem}-gpu-check-pytest.log"
        selected = [s for s in STAGE_NAMES if s in self.opts.stages]
        self.results = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "complete": False,
            "env": env,
            "command": {
                "section": "gpu-check", "sections": [s for s in BENCH_STAGES if s in selected], "device": self.device.type,
                "dtype": "auto", "resolved_dtype": self.settings.dtype_name, "quick": self.dry,
                "max_minutes": self.opts.minutes, "out": str(self.json_path), "plot": True, "gpu_check": True,
                "attention_autotune_env": os.environ.get("GPT1_ATTENTION_AUTOTUNE"),
            },
            "sections": {},
            "gpu_check": {
                "version": CHECK_VERSION,
                "dry_run": self.dry,
                "budget_s": self.opts.minutes * 60.0,
                "elapsed_s": 0.0,
                "started": env["date"],
                "stages": {"env": {"status": "ok"}, **{
                    s: ({"status": "pending"} if s in selected else {"status": "skipped", "reason": "not selected"})
                    for s in STAGE_NAMES}},
                "correctness": {"tolerances": _tolerances(), "config": None, "cases": []},
                "model_check": None,
                "pytest": None,
                "targets": [],
                "failures": [],
                "passed": None,
                "files": {"results": self.json_path.name, "log": self.log_path.name,
                          "summary": self.summary_path.name, "charts": []},
                "summary": [],
            },
        }
        self.gc = self.results["gpu_check"]
        self.save()
        self.print_versions(env)
        return None

    def log(self, message: str = "") -> None:
        print(message, flush=True)
        self.lines.append(message)

    def save(self) -> None:
        """Rewrite the results, the log and the summary (each atomically)."""
        self.gc["elapsed_s"] = _seconds(time.monotonic() - _STARTED)
        self.finalize_results()
        atomic_write_json(self.json_path, self.results)
        atomic_write_text(self.log_path, "\n".join(self.lines) + "\n")
        atomic_write_text(self.summary_path, "\n".join(self.gc["summary"]) + "\n")

    def print_versions(self, env: dict) -> None:
        self.log(f"gpu-check {'DRY RUN (CPU, Triton interpreter, tiny shapes)' if self.dry else 'on the GPU'}: "
                 f"budget {self.opts.minutes:g} min, output {self.out_dir}")
        cuda = self.device.type == "cuda"
        self.log(f"python   {env['python']} ({sys.executable})")
        self.log(f"torch    {env['torch']}   CUDA runtime {env['cuda_version']}   cuDNN {env['cudnn_version']}")
        self.log(f"triton   {env['triton']} ({env['triton_mode']})")
        if cuda:
            props = torch.cuda.get_device_properties(self.device)
            self.log(f"GPU      {env['device_name']} x{env['device_count']}   sm_{props.major}{props.minor}   "
                     f"{props.total_memory / 2**30:.0f} GiB   {props.multi_processor_count} SMs")
            self.log(f"driver   {env['driver_version']}")
        else:
            self.log(f"CPU      {env['device_name']} ({env['cpu_count']} cores)")
        self.log(f"device   {self.device}   dtype {self.settings.dtype_name}   commit {env['git_commit'] or 'unknown'}")
        self.log(f"results  {self.json_path}")

    # ------------------------------------------------------------------ running processes

    def child_env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TRITON_CACHE_AUTOTUNING", "1")  # stages share their tuning results
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.pop("GPT1_KERNELS", None)
        if self.dry:
            env["TRITON_INTERPRET"] = "1"
        env.update(extra or {})
        return env

    def child_args(self, name: str, out: Path, seconds: float, *extra: str) -> list[str]:
        argv = [sys.executable, str(_SCRIPT), "--child", name, "--child-out", str(out),
                "--deadline", f"{time.time() + max(seconds * 0.9 - 2.0, 0.5):.3f}"]
        if self.dry:
            argv.append("--dry-run")
        if self.opts.inject_failure:
            argv += ["--inject-failure", self.opts.inject_failure]
        return argv + ["--kernels", ",".join(self.opts.kernels)] + list(extra)

    def run_process(self, label: str, argv: list[str], env: dict, timeout: float,
                    show: Callable[[str], bool] = lambda line: True, out: Path | None = None,
                    progress: Callable[[dict], None] | None = None) -> ChildResult:
        """Run ``argv`` in its own process group, echo its output into the log, stop it at ``timeout``.

        Every few seconds (``PROGRESS_S``) the child's partial output (``out``) goes to ``progress`` and
        the files are rewritten, so even a run killed from outside keeps what the stage measured."""
        lines: list[str] = []
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=_REPO,
                                text=True, errors="replace", bufsize=1, start_new_session=True)

        def pump() -> None:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                if show(line):
                    self.log(f"  [{label}] {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        deadline = start + max(timeout, 0.1)
        try:
            while True:
                try:
                    tick = PROGRESS_S["dry" if self.dry else "real"]
                    proc.wait(timeout=max(0.05, min(tick, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        timed_out = True
                        self.log(f"  [{label}] stopped: its share of the budget ({timeout:.0f} s) ran out")
                        break
                    data = _read_json(out)
                    if progress is not None and data:
                        progress(data)
                    self.save()
        except KeyboardInterrupt:  # stopped by a signal: keep what the stage has measured
            self._stop_group(proc)
            data = _read_json(out)
            if progress is not None and data:
                progress(data)
            raise
        finally:
            self._stop_group(proc)
        reader.join(timeout=5)
        return ChildResult(proc.returncode, timed_out, time.monotonic() - start, _read_json(out), lines)

    @staticmethod
    def _stop_group(proc: subprocess.Popen) -> None:
        """Stop a stage process that is still running, with what it started in its own process
        group (compile workers, say): SIGTERM, then SIGKILL after 5 s. A process that has ended
        is left alone (its group id may no longer be ours)."""
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()

    def child(self, name: str, seconds: float, env: dict | None = None, *extra: str, label: str | None = None,
              progress: Callable[[dict], None] | None = None) -> ChildResult:
        out = self.tmp / f"{label or name}.json"
        out.unlink(missing_ok=True)
        env = dict(env or {})
        if self.dry and name in BENCH_STAGES:
            # Interpreted kernels give no speeds: a dry run's benchmarks skip them (as on a CPU
            # without the interpreter), which keeps it short; the correctness stages interpret.
            env["TRITON_INTERPRET"] = "0"
        return self.run_process(label or name, self.child_args(name, out, seconds, *extra), self.child_env(env),
                                seconds, out=out, progress=progress)

    # ------------------------------------------------------------------ stages

    def run(self) -> int:
        try:
            self.run_stages()
        except KeyboardInterrupt:
            if self.current_stage:
                record = self.gc["stages"][self.current_stage]
                record.update(status="interrupted", reason="stopped by a signal")
            self.log("gpu-check: stopped by a signal; what was measured is kept")
            self.interrupted = True
        else:
            self.interrupted = False
        finally:
            self.finish()
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.gc["failures"]:
            return EXIT_FAILED
        return EXIT_INTERRUPTED if self.interrupted else EXIT_OK

    def run_stages(self) -> None:
        selected = [s for s in STAGES if s.name in self.opts.stages]
        for index, stage in enumerate(selected):
            record = self.gc["stages"][stage.name]
            left = self.budget.remaining() - self.reserve
            cap = self.opts.stage_seconds.get(stage.name, math.inf)
            minimum = min(stage.dry_min_s if self.dry else stage.min_s, cap)
            if left < minimum:
                record.update(status="skipped", reason="budget", needed_s=minimum, left_s=_seconds(max(left, 0.0)))
                self.log(f"== {stage.name}: skipped (budget: {max(left, 0):.0f} s left, needs {minimum:.0f} s)")
                self.save()
                continue
            shares = sum(s.share for s in selected[index:])
            allotted = min(left, cap, max(minimum, left * stage.share / shares))
            record.update(status="running", allotted_s=_seconds(allotted))
            self.current_stage = stage.name
            self.log(f"== {stage.name}: {stage.title} (up to {allotted:.0f} s; {left:.0f} s left)")
            self.save()
            start = time.monotonic()
            try:
                getattr(self, f"stage_{stage.name}")(record, allotted)
            except KeyboardInterrupt:
                record["seconds"] = _seconds(time.monotonic() - start)
                raise
            except Exception as exc:  # a bug of the check itself: recorded, the next stage still runs
                record.update(status="error", reason=error_text(exc))
            record["seconds"] = _seconds(time.monotonic() - start)
            self.current_stage = None
            self.log(f"== {stage_status_line(stage.name, record)}")
            if stage.name in self.spend:
                self.budget.deadline -= self.spend[stage.name]
                self.log(f"   (GPU_CHECK_TEST_SPEND: {self.spend[stage.name]:g} s of budget spent)")
            if stage.name in BENCH_STAGES and not self.dry:  # a dry run draws them once, at the end
                self.write_charts()
            self.save()

    def stage_correctness(self, record: dict, allotted: float) -> None:
        from .checks import planned_checks

        section = self.gc["correctness"]

        def merge(data: dict) -> None:
            section["config"] = data.get("config")
            section["cases"] = [c for c in section["cases"] if c.get("config") != "fixed"] + list(data.get("cases", []))

        res = self.child("correctness", allotted, FIXED_CONFIG_ENV, progress=merge)
        data = res.data or {"config": FIXED_CONFIG_NOTE}
        cases = list(data.get("cases", []))
        done = {(c["kernel"], c["dtype"]) for c in cases}
        current = tuple(data["current"]) if data.get("current") else None
        for kernel, dtype, reason in planned_checks(self.dry, self.opts.kernels):
            if (kernel, dtype) in done:
                continue
            if reason:
                cases.append({"kernel": kernel, "dtype": dtype, "config": "fixed", "status": "skipped",
                              "reason": reason})
            elif (kernel, dtype) == current and not res.timed_out:
                cases.append({"kernel": kernel, "dtype": dtype, "config": "fixed", "status": "error",
                              "error": f"the check process died during this check (exit status {res.rc})"})
            else:
                cases.append({"kernel": kernel, "dtype": dtype, "config": "fixed", "status": "not run",
                              "reason": "timeout" if res.timed_out else f"process ended (exit status {res.rc})"})
        merge({**data, "cases": cases})
        bad = [c for c in cases if c["status"] in ("fail", "error")]
        if bad:
            record["status"] = "failed"
            record["reason"] = f"{len(bad)} check(s) failed"
        elif res.timed_out:
            record.update(status="timeout", reason=f"stopped after {res.seconds:.0f} s")
        elif res.rc != 0 or res.data is None:
            record.update(status="error", reason=data.get("error") or f"exit status {res.rc}")
        else:
            record["status"] = "ok"

    def stage_model(self, record: dict, allotted: float) -> None:
        start = time.monotonic()
        grads = self.tmp / "model-torch-grads.safetensors"
        first = self.child("model", allotted * 0.45, {"GPT1_KERNELS": "torch", **FIXED_CONFIG_ENV},
                           "--path", "torch", "--grads-out", str(grads), label="model-torch")
        check = {"config": "fixed attention configs (GPT1_ATTENTION_AUTOTUNE=0); dropout off", "torch": first.data,
                 "triton": None, "comparison": None, "status": None}
        self.gc["model_check"] = check
        if not grads.exists():  # the reference path did not run: nothing to compare, nothing failed
            error = (first.data or {}).get("error")
            record.update(status="timeout" if first.timed_out else "error",
                          reason="the torch path did not finish" + (f" ({error})" if error else ""))
            check["status"] = "not compared"
            return
        left = allotted - (time.monotonic() - start)
        second = self.child("model", left, {"GPT1_KERNELS": "triton", **FIXED_CONFIG_ENV},
                            "--path", "triton", "--ref", str(grads), label="model-triton")
        grads.unlink(missing_ok=True)
        check["triton"] = {k: v for k, v in (second.data or {}).items() if k != "comparison"}
        comparison = (second.data or {}).get("comparison")
        check["comparison"] = comparison
        if comparison is not None:
            check["status"] = comparison["status"]
            record["status"] = "ok" if comparison["status"] == "pass" else "failed"
            if comparison["status"] != "pass":
                record["reason"] = "; ".join(comparison["problems"][:2]) or "loss or gradients differ"
        elif second.timed_out:
            record.update(status="timeout", reason="the Triton path did not finish")
            check["status"] = "timeout"
        else:
            error = (second.data or {}).get("error") or f"exit status {second.rc}"
            record.update(status="failed", reason=f"the Triton path failed: {error}")
            check["status"] = "error"
            check["error"] = error

    def stage_pytest(self, record: dict, allotted: float) -> None:
        junit = self.tmp / "pytest-junit.xml"
        args = [*(DRY_PYTEST_ARGS if self.dry else PYTEST_ARGS), "-v", "-rfE", "--junitxml", str(junit),
                "-p", "no:cacheprovider", "-p", "gpt1_benchmarks.pytest_gpu_first"]
        argv = [sys.executable, str(_SCRIPT), "--pytest", "--", *args]
        status_re = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
        # Fixed launch configurations: autotuning every shape the tests use cost the first GPU
        # run its whole pytest share (46 s for one test). The autotuned configurations are
        # checked where they are timed, in the kernels stage.
        res = self.run_process("pytest", argv, self.child_env(PYTEST_ENV), allotted,
                               show=lambda line: not re.search(r"\s(PASSED|SKIPPED)\s", line))
        counts = _pytest_counts(junit, res.lines, status_re)
        shown = [a for a in args if a not in ("--junitxml", str(junit))]
        counts.update(command="pytest " + shlex.join(shown), env=dict(PYTEST_ENV), exit_code=res.rc,
                      timed_out=res.timed_out, seconds=_seconds(res.seconds))
        self.gc["pytest"] = counts
        atomic_write_text(self.pytest_log_path, "\n".join(res.lines) + "\n")
        self.gc["files"]["pytest_log"] = self.pytest_log_path.name
        if counts["failed"] or counts["errors"]:
            record.update(status="failed", reason=f"{counts['failed']} failed, {counts['errors']} errors")
        elif res.timed_out:
            record.update(status="timeout", reason=f"stopped after {res.seconds:.0f} s")
        elif res.rc not in (0, 5):  # 5: no tests collected
            record.update(status="error", reason=f"pytest exit status {res.rc}")
        else:
            record["status"] = "ok"

    def stage_kernels(self, record: dict, allotted: float) -> None:
        correctness = self.gc["correctness"]

        def merge(data: dict) -> dict:
            section = data.get("section") or {"cases": []}
            self.results["sections"]["kernels"] = section
            checks = data.get("correctness", [])
            correctness["cases"] = [c for c in correctness["cases"] if c.get("config") != "autotuned"] + checks
            return section

        res = self.child("kernels", allotted, progress=merge)
        section = merge(res.data or {})
        self._finish_section(section, res)
        bad = [c for c in correctness["cases"] if c.get("config") == "autotuned" and c.get("status") in ("fail", "error")]
        self._bench_status(record, res, section, bad)

    def stage_train(self, record: dict, allotted: float) -> None:
        from .train import MFU_FORMULA, PATHS, derive, skip_reason, train_cases

        start = time.monotonic()
        found: dict = {"entry": None}
        impls: dict[str, dict] = {}
        problems = []
        timed_out = False

        def publish() -> None:
            """The train section from the paths measured so far (the others: pending or why not)."""
            entry = dict(found["entry"] or {})
            if not entry:
                case = train_cases(self.settings)[0]
                entry = {"preset": case.preset, "vocab_size": case.vocab_size, "batch_size": case.batch_size,
                         "baseline": "eager"}
            entry["impls"] = {name: dict(impls.get(name, {"skipped": "not run"}), kernels=choice, compiled=compiled)
                              for name, choice, compiled in PATHS}
            if entry.get("tokens_per_step"):
                derive(entry)
            section = {"mfu_formula": MFU_FORMULA, "cases": [entry] if entry.get("tokens_per_step") else [],
                       "seconds": _seconds(time.monotonic() - start)}
            if timed_out:
                section["stopped"] = "a path ran out of its share of the budget"
            self.results["sections"]["train"] = section

        def merge(data: dict) -> None:
            cases = (data.get("section") or {}).get("cases") or []
            if cases:
                found["entry"] = found["entry"] or cases[0]
                impls.update(cases[0]["impls"])
                publish()

        for index, (choice, names, share) in enumerate(TRAIN_GROUPS):
            runnable = []
            for name in names:
                reason = skip_reason(self.settings, name)
                if reason:
                    impls[name] = {"skipped": reason}
                else:
                    runnable.append(name)
            if not runnable:
                continue
            left = allotted - (time.monotonic() - start)
            shares = sum(g[2] for g in TRAIN_GROUPS[index:])
            seconds = left if index == len(TRAIN_GROUPS) - 1 else left * share / shares
            if seconds < TRAIN_MIN_S["dry" if self.dry else "real"]:
                for name in runnable:
                    impls[name] = {"skipped": "budget"}
                continue
            res = self.child("train", seconds, {"GPT1_KERNELS": choice}, "--paths", ",".join(runnable),
                             label=f"train-{choice}", progress=merge)
            merge(res.data or {})
            for name in runnable:
                if name not in impls:
                    impls[name] = {"skipped": f"budget: stopped after {res.seconds:.0f} s"} if res.timed_out else \
                        {"error": (res.data or {}).get("error") or f"process ended (exit status {res.rc})"}
            timed_out = timed_out or res.timed_out
            if res.rc not in (0, None) and not res.timed_out:
                problems.append(f"train-{choice}: exit status {res.rc}")
        publish()
        if problems:
            record.update(status="error", reason="; ".join(problems))
        elif timed_out:
            record.update(status="timeout", reason="a path ran out of its share of the budget")
        else:
            record["status"] = "ok"

    def stage_generate(self, record: dict, allotted: float) -> None:
        res = self.child("generate", allotted, {"GPT1_KERNELS": "auto" if not self.dry else "torch"})
        section = (res.data or {}).get("section") or {"cases": []}
        self._finish_section(section, res)
        self.results["sections"]["generate"] = section
        self._bench_status(record, res, section, [])

    def _finish_section(self, section: dict, res: ChildResult) -> None:
        section["seconds"] = _seconds(res.seconds)
        if res.timed_out:
            section["stopped"] = f"stopped after {res.seconds:.0f} s (its share of the gpu-check budget)"
        elif res.rc != 0:
            section["error"] = (res.data or {}).get("error") or f"process ended (exit status {res.rc})"

    @staticmethod
    def _bench_status(record: dict, res: ChildResult, section: dict, bad: list) -> None:
        if bad:
            record.update(status="failed", reason=f"{len(bad)} autotuned check(s) failed")
        elif res.timed_out:
            record.update(status="timeout", reason=f"stopped after {res.seconds:.0f} s; measured cases kept")
        elif res.rc != 0:
            record.update(status="error", reason=section.get("error") or f"exit status {res.rc}")
        else:
            record["status"] = "ok"

    # ------------------------------------------------------------------ results

    def write_charts(self) -> None:
        """Draw the charts of the sections measured so far (unless already drawn for them)."""
        drawn = json.dumps(self.results["sections"], sort_keys=True, default=str)
        if drawn == self.charts_drawn or not self.results["sections"]:
            return
        self.charts_drawn = drawn
        try:
            from .plots import write_plots

            charts = write_plots(self.results, self.json_path)
            self.gc["files"]["charts"] = [p.name for p in charts]
        except Exception as exc:  # no matplotlib, or a chart that cannot be drawn: never fatal
            note = error_text(exc)
            if note != self.charts_note:
                self.log(f"charts: not written ({note})")
            self.charts_note = note
            self.gc["files"]["charts_error"] = note

    def finalize_results(self) -> None:
        self.gc["targets"] = evaluate_targets(self.results)
        self.gc["failures"] = correctness_failures(self.gc)
        ran = (any(c.get("status") in ("pass", "fail", "error") for c in self.gc["correctness"]["cases"])
               or (self.gc.get("model_check") or {}).get("comparison") is not None
               or (self.gc.get("pytest") or {}).get("total", 0) > 0)
        self.gc["passed"] = (not self.gc["failures"]) if (ran or self.gc["failures"]) else None
        stages = self.gc["stages"]
        self.results["complete"] = all(stages[s]["status"] in FINISHED for s in STAGE_NAMES if s in self.opts.stages)
        self.gc["summary"] = render_summary(self.results, self.json_path)

    def finish(self) -> None:
        self.write_charts()
        self.save()
        self.log("")
        for line in self.gc["summary"]:
            self.log(line)
        self.save()


def _read_json(path: Path | None) -> dict | None:
    """A child's output file, or None (absent, or not readable JSON)."""
    if path is None or not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tolerances() -> dict:
    from .checks import MODEL_TOLERANCES, TOLERANCES

    return {"kernels": TOLERANCES, "model": MODEL_TOLERANCES,
            "rule": "|actual - expected| <= atol * max(max|expected|, floor) + rtol * |expected|"}


def _pytest_counts(junit: Path, lines: list[str], status_re) -> dict:
    """Pass/fail counts from the JUnit XML (a finished run) or from the ``-v`` lines (a cut-off one)."""
    statuses: dict[str, str] = {}
    for line in lines:
        match = status_re.match(line)
        if match:
            node, status = match.groups()
            if statuses.get(node) not in ("FAILED", "ERROR"):
                statuses[node] = status
    failures = [node for node, status in statuses.items() if status in ("FAILED", "ERROR")]
    counts = {"source": "output", "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0, "xpassed": 0}
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped", "XFAIL": "xfailed",
             "XPASS": "xpassed"}
    for status in statuses.values():
        counts[names[status]] += 1
    if junit.exists():
        try:
            root = ElementTree.parse(junit).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
            counts.update(source="junit", failed=total["failures"], errors=total["errors"], skipped=total["skipped"],
                          passed=total["tests"] - total["failures"] - total["errors"] - total["skipped"])
        except (ElementTree.ParseError, OSError, ValueError):
            pass
    counts["total"] = counts["passed"] + counts["failed"] + counts["errors"] + counts["skipped"]
    counts["failures"] = failures[:30]
    return counts


def correctness_failures(gc: dict) -> list[str]:
    """One line per failed correctness check: kernels, the model step, pytest."""
    failures = []
    for case in gc["correctness"]["cases"]:
        if case.get("status") in ("fail", "error"):
            what = f"{case['kernel']} {case['dtype']} ({case.get('config', 'fixed')})"
            failures.append(what + (f": {case['error']}" if case.get("error") else
                                    f": {', '.join(case.get('failed_tensors', []))} out of tolerance"))
    model = gc.get("model_check") or {}
    if model.get("status") in ("fail", "error"):
        comparison = model.get("comparison") or {}
        failures.append("model train step (Triton vs torch): "
                        + ("; ".join(comparison.get("problems", [])[:2]) or model.get("error")
                           or f"loss rel {comparison.get('loss_rel_diff')}, min grad cosine "
                              f"{comparison.get('min_grad_cosine')}"))
    pytest = gc.get("pytest") or {}
    if pytest.get("failed") or pytest.get("errors"):
        failures.append(f"pytest tests/kernels: {pytest.get('failed', 0)} failed, {pytest.get('errors', 0)} errors")
    return failures


# ============================================================================= targets


def _timed(record: dict | None) -> bool:
    return bool(record) and "median_ms" in record and not record.get("interpreted") and record["median_ms"] > 0


def _why_not(record: dict | None) -> str:
    """Why a record has no usable time, in a few words."""
    if not record:
        return "not measured"
    if record.get("interpreted"):
        return "interpreter (no speed)"
    if record.get("skipped"):
        return "skipped: " + record["skipped"].split(" (")[0]
    if record.get("error"):
        return "error: " + record["error"][:80]
    return "not measured"


def _target(tid: str, title: str, need: str, met, value, detail: str) -> dict:
    return {"id": tid, "title": title, "need": need, "met": met, "value": value, "detail": detail}


def _attention_target(cases: list[dict], dtype: str, dropout: float, shapes: list[dict]) -> dict:
    lengths = [shape["T"] for shape in shapes]
    head_dim = shapes[0]["D"]
    tid = "attention" if not dropout else "attention-dropout"
    title = f"attention fwd+bwd vs SDPA flash ({dtype}, D={head_dim}" + (f", dropout {dropout:g})" if dropout else ")")
    values, parts, missing, met = {}, [], [], True
    for t in lengths:
        case = next((c for c in cases if c["op"] == "attention" and c["mode"] == "fwd+bwd" and c.get("dtype") == dtype
                     and c["shape"].get("D") == head_dim and c["shape"].get("T") == t
                     and float(c["shape"].get("dropout") or 0.0) == dropout), None)
        ours = case and case["impls"].get("ours")
        sdpa = case and case["impls"].get("sdpa")
        if not (_timed(ours) and _timed(sdpa)):
            missing.append((t, _why_not(ours if not _timed(ours) else sdpa)))
            met = False if met is False else None
            continue
        ratio = sdpa["median_ms"] / ours["median_ms"]
        values[str(t)] = ratio
        note = "" if sdpa.get("backend") == "flash" else f" (SDPA backend {sdpa.get('backend')})"
        parts.append(f"T={t} {ratio:.2f}x{note}")
        if ratio < 1.0:
            met = False
    if not values:
        met = None
    reasons = {why for _, why in missing}
    if len(reasons) == 1 and missing:
        parts.append(f"T={','.join(str(t) for t, _ in missing)}: {reasons.pop()}")
    else:
        parts += [f"T={t}: {why}" for t, why in missing]
    need = f">= 1.00x at T={lengths[0]}..{lengths[-1]}"
    return _target(tid, title, need, met, values, ", ".join(parts))


def run_settings(results: dict) -> Settings:
    """The settings a results file was measured with (device type, dtype, quick), for its shapes."""
    from .harness import DTYPES

    env, command = results.get("env", {}), results.get("command", {})
    device = torch.device("cuda" if env.get("device_type") == "cuda" else "cpu")
    return Settings(device=device, dtype=DTYPES.get(command.get("resolved_dtype"), torch.bfloat16),
                    quick=bool(command.get("quick")), triton_mode=env.get("triton_mode") or "unavailable")


def evaluate_targets(results: dict) -> list[dict]:
    """The performance targets, each ``met`` True, False or None (not measured).

    Judged at the run's own shapes and dtype: GPT-1's in bf16 on a GPU (a dry run's tiny ones
    give ``None`` everywhere, as interpreted or skipped kernels have no speed)."""
    from .kernels import TARGET_DROPOUT, cross_entropy_shapes, layernorm_shapes, target_attention_shapes
    from .train import train_cases

    settings = run_settings(results)
    dtype = settings.dtype_name
    kernels = results.get("sections", {}).get("kernels") or {}
    cases = kernels.get("cases", [])
    shapes = target_attention_shapes(settings)
    targets = [_attention_target(cases, dtype, 0.0, shapes), _attention_target(cases, dtype, TARGET_DROPOUT, shapes)]

    copy = kernels.get("copy_bandwidth") or {}
    copy_gbps = copy.get("gbps") if copy and not copy.get("skipped") and not copy.get("error") else None
    cols = layernorm_shapes(settings)[0]["cols"]
    for mode in ("fwd", "fwd+bwd"):
        case = next((c for c in cases if c["op"] == "layernorm" and c["mode"] == mode and c["shape"].get("cols") == cols
                     and c.get("dtype") == dtype), None)
        ours = case and case["impls"].get("ours")
        title = f"residual+LayerNorm {mode} ({dtype}, {cols} wide) vs copy bandwidth"
        if _timed(ours) and ours.get("gbps") and copy_gbps:
            share = ours["gbps"] / copy_gbps
            targets.append(_target(f"layernorm-{mode}", title, ">= 80%", share >= 0.8, share,
                                   f"{ours['gbps']:,.0f} GB/s = {share:.0%} of {copy_gbps:,.0f} GB/s"))
        else:
            why = _why_not(ours) if not _timed(ours) else "copy bandwidth not measured"
            targets.append(_target(f"layernorm-{mode}", title, ">= 80%", None, None, why))

    vocab = cross_entropy_shapes(settings)[0]["vocab"]
    case = next((c for c in cases if c["op"] == "cross-entropy" and c["shape"].get("vocab") == vocab
                 and c.get("dtype") == dtype), None)
    ours, eager = (case["impls"].get("ours"), case["impls"].get("eager")) if case else (None, None)
    title = f"linear+cross-entropy ({dtype}, V={vocab}): peak memory and time vs eager"
    need = "memory <= 25%, time <= 1.10x"
    if _timed(ours) and _timed(eager) and ours.get("peak_mem_bytes") and eager.get("peak_mem_bytes"):
        memory = ours["peak_mem_bytes"] / eager["peak_mem_bytes"]
        slower = ours["median_ms"] / eager["median_ms"]
        targets.append(_target("cross-entropy", title, need, memory <= 0.25 and slower <= 1.1,
                               {"memory": memory, "time": slower},
                               f"peak {memory:.0%} of eager, time {slower:.2f}x eager"))
    else:
        why = _why_not(ours if not _timed(ours) else eager) if not (_timed(ours) and _timed(eager)) \
            else "no peak memory (CUDA only)"
        targets.append(_target("cross-entropy", title, need, None, None, why))

    preset = train_cases(settings)[0].preset
    train = results.get("sections", {}).get("train") or {}
    entry = next((c for c in train.get("cases", []) if c.get("preset") == preset), None)
    impls = entry["impls"] if entry else {}
    ours_paths = [(name, impls[name]) for name in ("ours", "ours+compile") if _timed(impls.get(name))]
    best_name, best = max(ours_paths, key=lambda item: item[1].get("tokens_per_s") or 0) if ours_paths else (None, None)
    eager, compiled = impls.get("eager"), impls.get("compile")
    title = f"{preset} train step ({dtype}): ours vs eager and vs torch.compile"
    need = ">= 1.30x eager and >= 1.00x compile"
    if best and _timed(eager):
        vs_eager = eager["median_ms"] / best["median_ms"]
        vs_compile = compiled["median_ms"] / best["median_ms"] if _timed(compiled) else None
        if vs_compile is None:
            met = False if vs_eager < 1.3 else None
        else:
            met = vs_eager >= 1.3 and vs_compile >= 1.0
        detail = f"{best_name}: {vs_eager:.2f}x eager, " + (f"{vs_compile:.2f}x compile" if vs_compile is not None
                                                             else f"compile {_why_not(compiled)}")
        targets.append(_target("train", title, need, met,
                               {"path": best_name, "vs_eager": vs_eager, "vs_compile": vs_compile}, detail))
    else:
        targets.append(_target("train", title, need, None, None,
                               f"ours: {_why_not(impls.get('ours'))}" if not best else f"eager: {_why_not(eager)}"))
    mfu = best.get("mfu") if best else None
    title = f"{preset} train step MFU (dense bf16 peak)"
    if mfu is not None:
        targets.append(_target("mfu", title, ">= 45%", mfu >= 0.45, mfu, f"{best_name}: {mfu:.1%}"))
    else:
        why = "no known bf16 peak for this device" if best else f"ours: {_why_not(impls.get('ours'))}"
        targets.append(_target("mfu", title, ">= 45%", None, None, why))
    return targets


# ============================================================================= summary


def _cell(case: dict | None) -> str:
    if case is None:
        return "-"
    status = case.get("status")
    if status == "pass":
        return f"pass {case['worst_ratio']:.2f}" if case.get("worst_ratio") is not None else "pass"
    if status == "fail":
        return f"FAIL {case['worst_ratio']:.3g}" if case.get("worst_ratio") is not None else "FAIL"
    if status == "error":
        return "ERROR"
    if status == "skipped":
        return "skip"
    return status or "?"


def render_summary(results: dict, json_path: Path | None = None) -> list[str]:
    """The one-screen summary: stages, correctness per kernel and dtype, model step, pytest, targets."""
    from .checks import KERNELS

    gc = results["gpu_check"]
    env = results["env"]
    lines = ["=" * 30 + " gpu-check summary " + "=" * 30]
    device = env.get("device_name", "?")
    lines.append(f"{device} · torch {env.get('torch')} (CUDA {env.get('cuda_version')}) · triton {env.get('triton')} "
                 f"({env.get('triton_mode')}) · driver {env.get('driver_version') or '-'} · Python {env.get('python')}"
                 + (" · DRY RUN" if gc.get("dry_run") else ""))
    lines.append(f"budget {gc['budget_s'] / 60:.1f} min, used {gc['elapsed_s'] / 60:.1f} min"
                 + (f" · {json_path}" if json_path else ""))
    lines.append("stages: " + " · ".join(stage_status_line(n, r) for n, r in gc["stages"].items() if n != "env"))

    cases = gc["correctness"]["cases"]
    dtypes = ("bf16", "fp16", "fp32")
    lines.append("correctness, fixed configs (worst error / tolerance, <= 1 passes):")
    lines.append(f"  {'kernel':<22}" + "".join(f"{d:<12}" for d in dtypes))
    for kernel in KERNELS:
        row = f"  {kernel:<22}"
        for dtype in dtypes:
            case = next((c for c in cases if c["kernel"] == kernel and c["dtype"] == dtype
                         and c.get("config", "fixed") == "fixed"), None)
            row += f"{_cell(case):<12}"
        lines.append(row)
    tuned = [c for c in cases if c.get("config") == "autotuned"]
    if tuned:
        lines.append("  autotuned (as benchmarked): " + " · ".join(f"{c['kernel']} {c['dtype']} {_cell(c)}"
                                                                  for c in tuned))

    model = gc.get("model_check")
    stage = gc["stages"].get("model", {})
    comparison = (model or {}).get("comparison")
    if comparison:
        lines.append(f"model train step ({comparison['dtype']}, Triton vs torch): "
                     f"{'PASS' if comparison['status'] == 'pass' else 'FAIL'} · loss {comparison['triton_loss']:.5g} vs "
                     f"{comparison['torch_loss']:.5g} (rel {comparison['loss_rel_diff']:.1e}) · min grad cosine "
                     f"{comparison['min_grad_cosine'] if comparison['min_grad_cosine'] is None else round(comparison['min_grad_cosine'], 5)}")
    else:
        lines.append(f"model train step: {stage_status_line('model', stage).split(' ', 1)[1]}")

    pytest = gc.get("pytest")
    if pytest:
        note = " (stopped: time share ran out)" if pytest.get("timed_out") else ""
        lines.append(f"pytest tests/kernels: {pytest['passed']} passed, {pytest['failed']} failed, "
                     f"{pytest['errors']} errors, {pytest['skipped']} skipped{note}")
        for node in pytest.get("failures", [])[:3]:
            lines.append(f"  FAILED {node}")
    else:
        lines.append(f"pytest tests/kernels: {stage_status_line('pytest', gc['stages'].get('pytest', {})).split(' ', 1)[1]}")

    lines.append("targets (need):")
    marks = {True: "MET    ", False: "NOT MET", None: "n/a    "}
    for target in gc["targets"]:
        lines.append(f"  [{marks[target['met']]}] {target['title']} ({target['need']}): {target['detail']}")

    failures = gc["failures"]
    if failures:
        lines.append(f"RESULT: FAIL: {len(failures)} correctness check(s) failed")
        lines += [f"  - {f}" for f in failures[:6]]
        if len(failures) > 6:
            lines.append(f"  ... and {len(failures) - 6} more (see the results file)")
    elif gc.get("passed"):
        lines.append("RESULT: PASS: every correctness check that ran passed"
                     + ("" if results.get("complete") else " (some stages did not finish: see above)"))
    else:
        lines.append("RESULT: no correctness check ran")
    return lines


# ============================================================================= entry point


def _default_out(dry: bool) -> str:
    return os.environ.get("GPU_CHECK_OUT") or str(DRY_OUT if dry else RESULTS_DIR)


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="gpu_check", description="One offline, time-boxed check of the kernels, the model and the benchmarks "
                                      "on a GPU (or, with --dry-run, of the check itself on the CPU).")
    parser.add_argument("--dry-run", action="store_true", default=_flag(os.environ.get("GPU_CHECK_DRY")),
                        help="CPU, tiny shapes, Triton interpreter (also GPU_CHECK_DRY=1)")
    parser.add_argument("--out", default=None, help="output directory (GPU_CHECK_OUT; default benchmarks/results, "
                                                    f"or {DRY_OUT} for a dry run)")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"time budget (GPU_CHECK_MINUTES; default {DEFAULT_MINUTES:g})")
    parser.add_argument("--stages", default=os.environ.get("GPU_CHECK_STAGES") or "all",
                        help=f"comma-separated subset of {','.join(STAGE_NAMES)} (GPU_CHECK_STAGES; default all)")
    parser.add_argument("--kernels", default=os.environ.get("GPU_CHECK_KERNELS") or "all",
                        help="comma-separated subset of the correctness checks' kernels (GPU_CHECK_KERNELS)")
    parser.add_argument("--stage-seconds", default=os.environ.get("GPU_CHECK_STAGE_SECONDS") or "",
                        help="caps on stages' time, e.g. pytest=60,train=200 (GPU_CHECK_STAGE_SECONDS)")
    parser.add_argument("--inject-failure", default=os.environ.get("GPU_CHECK_INJECT_FAILURE") or None,
                        help="self-test: perturb this kernel's output in the correctness checks (or 'all')")
    # Internal: the stage processes.
    parser.add_argument("--child", choices=sorted(_CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    parser.add_argument("--grads-out", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = _default_out(args.dry_run)
    if args.minutes is None:
        try:
            args.minutes = float(os.environ.get("GPU_CHECK_MINUTES") or DEFAULT_MINUTES)
        except ValueError:
            parser.error(f"GPU_CHECK_MINUTES must be a number, not {os.environ.get('GPU_CHECK_MINUTES')!r}")
    if not args.minutes > 0:
        parser.error(f"the budget must be positive, not {args.minutes:g} minutes")
    names = STAGE_NAMES if args.stages.strip() == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_NAMES)}")
    args.stages = names
    from .checks import KERNELS

    kernels = KERNELS if args.kernels.strip() == "all" else tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        parser.error(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(KERNELS)}")
    args.kernels = kernels
    try:
        args.stage_seconds = _parse_seconds(args.stage_seconds)
    except ValueError:
        parser.error(f"--stage-seconds takes stage=seconds pairs, not {args.stage_seconds!r}")
    unknown = [s for s in args.stage_seconds if s not in STAGE_NAMES]
    if unknown:
        parser.error(f"unknown stage(s) in --stage-seconds: {', '.join(unknown)}")
    return args


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    _block_imports()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--pytest"]:
        return pytest_main(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    check = GpuCheck(args)
    try:
        problem = check.setup()
    except Gpt1Error as exc:  # such as an output directory that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        problem = EXIT_USAGE
    if problem is not None:
        shutil.rmtree(check.tmp, ignore_errors=True)
        return problem
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
