"""Where the test suite's CPU goes: a py-spy profile of every process it starts, summed by what ran.

Record the suite with py-spy (``pip install py-spy``; it follows pytest's workers, the searches
they start, the searches' worker processes, Ray and the MLflow server), then read the file:

    py-spy record --subprocesses --rate 40 --format raw -o suite.raw -- python -m pytest -q -n 2 --dist loadgroup
    python bench/suite_profile.py suite.raw

Each sample is put in one kind of work: importing (any stack inside the import machinery),
training, MLflow, the exports, and so on, and in one kind of process. Shares of all samples, so of
the CPU time the suite used (py-spy samples running threads; idle waits are left out).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

WORK = (  # the first that a stack's frames mention names the work
    ("trainer/fit.py", "training"),
    ("trainer/teacher.py", "teacher training"),
    ("trainer/targets.py", "teacher targets"),
    ("trainer/proxies.py", "zero-cost scores"),
    ("trainer/ops.py", "operations counting (thop)"),
    ("litert", "LiteRT export"),
    ("onnx", "ONNX export"),
    ("search/export.py", "export"),
    ("matplotlib", "plots"),
    ("mlflow", "MLflow"),
    ("sqlalchemy", "MLflow"),
    ("alembic", "MLflow"),
    ("site-packages/ray", "Ray"),
    ("optuna", "Optuna"),
    ("trainer/data.py", "data"),
    ("_pytest", "pytest"),
    ("xdist", "pytest"),
    ("execnet", "pytest"),
    ("multiprocessing", "multiprocessing"),
    ("torch", "other torch"),
)


def process_kind(command: str, frames: list[str]) -> str:
    if any("spawn_main" in f for f in frames) or "multiprocessing" in command:
        return "trial worker process"
    if "rkd-search" in command or (frames and "rkd-search" in frames[0]):
        return "rkd-search command"
    if "ray" in command.lower():
        return "Ray process"
    if any(k in command for k in ("mlflow server", "bin/mlflow", "mlflow.server", "huey", "uvicorn")):
        return "MLflow server"
    if "exec(eval(sys.stdin" in command or "pytest" in command:
        return "pytest worker"
    return "other (scripts the tests run)"


def imported_package(frames: list[str]) -> str:
    """The outermost third-party module being imported (our own modules are passed through)."""
    modules = [m.group(1) for f in frames if (m := re.match(r"<module> \(([^:]+)", f))]
    outside = [m for m in modules if not m.startswith(("search/", "trainer/", "spaces/", "rkd-search", "<string>", "tests/"))]
    return outside[0].split("/")[0] if outside else "(our own modules)"


def summarise(path: Path) -> tuple[int, collections.Counter, collections.Counter, collections.Counter]:
    work, processes, imports = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            total += samples
            # py-spy writes the process chain first, each as process PID:"COMMAND" (a command may hold ';')
            chain = re.match(r'((?:process \d+:"[^"]*";?)*)(.*)', stack)
            commands = re.findall(r'process \d+:"([^"]*)"', chain.group(1))
            frames = chain.group(2).split(";")
            processes[process_kind(commands[-1] if commands else "", frames)] += samples
            if any("_find_and_load" in f for f in frames):
                work["importing"] += samples
                imports[imported_package(frames)] += samples
            else:
                work[next((name for key, name in WORK if any(key in f for f in frames)), "other")] += samples
    return total, work, processes, imports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy's --format raw output")
    parser.add_argument("--top", type=int, default=8, help="imported packages to list")
    args = parser.parse_args()
    total, work, processes, imports = summarise(args.raw)
    if not total:
        raise SystemExit(f"{args.raw}: no samples (record with py-spy --format raw)")
    print(f"{total} samples\n\n| work | share of CPU |\n|---|---|")
    for name, samples in work.most_common():
        print(f"| {name} | {samples / total:.1%} |")
    print("\n| process | share of CPU |\n|---|---|")
    for name, samples in processes.most_common():
        print(f"| {name} | {samples / total:.1%} |")
    print(f"\n| imported package (top {args.top}) | share of CPU |\n|---|---|")
    for name, samples in imports.most_common(args.top):
        print(f"| {name} | {samples / total:.1%} |")


if __name__ == "__main__":
    main()
