"""On a CUDA GPU: one trial's images/s eager against compiled for three student families, several
trials sharing the GPU, and ``fit`` against a newcomer's loop.

    python bench/gpu_trials.py [--images 50000] [--epochs 3] [--students wrn28_0.5 resnet20 mbv2-2-3-3_0.5_e6k3]
                               [--concurrent 1 2 4 8] [--device cuda]

The images are random CIFAR-shaped uint8 tensors (a step's cost does not depend on the pixels),
held on the device with their labels, as ``fit`` moves a dataset to the training device. Each
student trains with graph-RKD from cached teacher targets (a WRN-28-1 with random weights: the cost
does not depend on them), precision auto (bf16 autocast on CUDA), batch 128. Each figure is the
training steps of the last of ``--epochs`` epochs (the first includes compiling, cuDNN's autotuning
and allocations), without the validation pass; the compile seconds are ``fit``'s own count.

Runs, in order: the newcomer's loop (``bench/_bare.py``, teacher live) and ``fit`` with the teacher
live, for the first student; every student eager and compiled, one trial; then the first student
with 2, 4, 8... trials sharing the device, in the mode that was faster alone. Several trials are
separate processes started together, each training its own student: the table gives each one's
epoch time and the images per second of all of them together. Prints a markdown table; writes
nothing (copy it into docs/benchmarks.md with the card). ``--device cpu --images 2000 --epochs 2``
checks the script without a GPU.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics

import torch

from _bare import bare_loop


def make_data(images: int, seed: int = 0):
    from rkd_search.trainer import dataset_from_tensors

    generator = torch.Generator().manual_seed(seed)
    test_images = min(10_000, images)
    x = torch.randint(0, 256, (images + images // 9 + test_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (len(x),), generator=generator)
    train = (x[:-test_images], y[:-test_images])  # 10% of it becomes the validation split
    test = (x[-test_images:], y[-test_images:])
    return dataset_from_tensors("random-cifar", train, test, [str(i) for i in range(10)], val_fraction=0.1)


def one_trial(queue, images: int, epochs: int, seed: int, mode: str, student: str, device: str) -> None:
    """mode: "newcomer", "live", "eager" or "compiled" (the last two read cached targets)."""
    try:
        from rkd_search.trainer import LossConfig, ModelSpec, TeacherTargets, TrainConfig, build_model, fit

        torch.manual_seed(seed)
        data = make_data(images)
        teacher = build_model(ModelSpec("wrn", 28, 1.0))
        config = TrainConfig(student=ModelSpec.parse(student), loss=LossConfig(graph_weight=25.0), epochs=epochs, seed=seed,
                             compile="on" if mode == "compiled" else "off")
        compile_seconds = 0.0
        if mode == "newcomer":
            seconds = bare_loop(config, data, teacher, device)
        else:
            data = data.to(device)
            source = teacher if mode == "live" else TeacherTargets.compute(teacher, data, epochs=epochs, seed=seed, device=device)
            result = fit(config, data, teacher=source, device=device)
            seconds = [h.seconds - h.eval_seconds for h in result.history]  # training steps only
            compile_seconds = result.compile_seconds
        queue.put((len(data.train_labels), seconds, compile_seconds))
    except BaseException as error:  # never leave the parent waiting
        queue.put((0, [f"{type(error).__name__}: {error}"], 0.0))
        raise


def run(concurrent: int, args, mode: str, student: str) -> tuple[float, float, float]:
    """(median last-epoch seconds of the trials, images per second of them all together, median compile seconds)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=one_trial, args=(queue, args.images, args.epochs, seed, mode, student, args.device))
                 for seed in range(concurrent)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    failed = [seconds[0] for n, seconds, _ in results if n == 0]
    if failed:
        raise RuntimeError(f"a trial failed: {failed[0]}")
    last = [seconds[-1] for _, seconds, _ in results]
    trained = sum(n for n, _, _ in results)
    return statistics.median(last), trained / max(last), statistics.median(c for _, _, c in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--students", nargs="+", default=["wrn28_0.5", "resnet20", "mbv2-2-3-3_0.5_e6k3"])
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{name}, torch {torch.__version__}, {args.images} training images resident on the device", flush=True)
    header = "| student | loop | trials at once | epoch seconds (each) | images/s (all) | compile seconds |\n|---|---|---|---|---|---|"
    rows = []

    def row(student, what, concurrent, mode):
        seconds, rate, compiled = run(concurrent, args, mode, student)
        rows.append(f"| {student} | {what} | {concurrent} | {seconds:.2f} | {rate:,.0f} | {compiled:.1f} |")
        print(rows[-1], flush=True)
        return rate

    first = args.students[0]
    newcomer = row(first, "newcomer's loop, teacher live (bench/_bare.py)", 1, "newcomer")
    live = row(first, "`fit`, teacher live, eager", 1, "live")
    alone = {}
    for student in args.students:
        for mode in ("eager", "compiled"):
            alone[student, mode] = row(student, f"`fit`, cached targets, {mode}", 1, mode)
    faster = max(("eager", "compiled"), key=lambda mode: alone[first, mode])
    for concurrent in args.concurrent:
        if concurrent > 1:
            row(first, f"`fit`, cached targets, {faster}", concurrent, faster)
    print("\n" + header)
    print("\n".join(rows))
    print(f"\nfit/newcomer images per second = {live / newcomer:.2f} (teacher live in both), "
          f"{max(alone[first, 'eager'], alone[first, 'compiled']) / newcomer:.2f} (fit reading the cache, {faster})")
    for student in args.students:
        print(f"{student}: compiled/eager images per second = {alone[student, 'compiled'] / alone[student, 'eager']:.2f}")


if __name__ == "__main__":
    main()
