"""On a CUDA GPU: a ~15 M-MAC student's epoch on 50,000 images resident on the GPU, several trials
sharing the GPU, and ``fit`` against a bare loop on the same batches.

    python bench/gpu_trials.py [--images 50000] [--concurrent 1 2 4] [--epochs 2]

The images are random CIFAR-shaped uint8 tensors (a step's cost does not depend on the pixels;
CIFAR-10 cannot be downloaded where this runs), held on the GPU with their labels, as
``fit`` moves a dataset to the training device. The student is WRN-28-0.5 (15.4 M MACs), trained
with graph-RKD from cached teacher targets (a WRN-28-1 with random weights: the cost does not
depend on them), precision auto (bf16 autocast on CUDA) and channels_last, batch 128. Each figure
is the training steps of the last of ``--epochs`` epochs (the first includes cuDNN's autotuning
and allocations), without the validation pass, as in the bare loop it is compared with.

Several trials sharing the GPU are separate processes started together, each training its own
student: the table gives each one's epoch time and the images per second of all of them
together. Prints a markdown table; writes nothing (copy it into docs/benchmarks.md with the card).
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
    x = torch.randint(0, 256, (images + 10_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (images + 10_000,), generator=generator)
    train = (x[: images + images // 9], y[: images + images // 9])  # 10% of it becomes the validation split
    test = (x[-10_000:], y[-10_000:])
    return dataset_from_tensors("random-cifar", train, test, [str(i) for i in range(10)], val_fraction=0.1)


def one_trial(queue, images: int, epochs: int, seed: int, mode: str) -> None:
    try:
        from rkd_search.trainer import LossConfig, ModelSpec, TeacherTargets, TrainConfig, build_model, fit

        torch.manual_seed(seed)
        data = make_data(images).to("cuda")
        teacher = build_model(ModelSpec("wrn", 28, 1.0))
        targets = TeacherTargets.compute(teacher, data, epochs=epochs, seed=seed, device="cuda")
        config = TrainConfig(student=ModelSpec("wrn", 28, 0.5), loss=LossConfig(graph_weight=25.0), epochs=epochs, seed=seed)
        if mode == "bare":
            seconds = bare_loop(config, data, targets, "cuda")
        else:
            result = fit(config, data, teacher=targets, device="cuda")
            seconds = [h.seconds - h.eval_seconds for h in result.history]  # training steps only, as the bare loop
        queue.put((len(data.train_labels), seconds))
    except BaseException as error:  # never leave the parent waiting
        queue.put((0, [f"{type(error).__name__}: {error}"]))
        raise


def run(concurrent: int, images: int, epochs: int, mode: str = "fit") -> tuple[float, float]:
    """(median last-epoch seconds of the trials, images per second of them all together)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=one_trial, args=(queue, images, epochs, seed, mode)) for seed in range(concurrent)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    failed = [seconds[0] for n, seconds in results if n == 0]
    if failed:
        raise RuntimeError(f"a trial failed: {failed[0]}")
    last = [seconds[-1] for _, seconds in results]
    trained = sum(n for n, _ in results)
    return statistics.median(last), trained / max(last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.images} training images resident on the GPU")
    rows = []
    bare, bare_rate = run(1, args.images, args.epochs, "bare")
    rows.append(f"| bare PyTorch loop (same batches and loss) | 1 | {bare:.2f} | {bare_rate:,.0f} |")
    for concurrent in args.concurrent:
        seconds, rate = run(concurrent, args.images, args.epochs)
        rows.append(f"| `fit`, {concurrent} trial(s) sharing the GPU | {concurrent} | {seconds:.2f} | {rate:,.0f} |")
        if concurrent == 1:
            single = seconds
        print(rows[-1], flush=True)
    print("\n| what | trials at once | epoch seconds (each) | images/s (all) |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nfit/bare images per second = {bare / single:.2f}")


if __name__ == "__main__":
    main()
