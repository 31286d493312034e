"""Pack an ImageFolder tree's image files into one file, byte for byte, and unpack it elsewhere.

    python bench/pack_images.py pack ../shared/data/cifar10 .devdata/cifar10.npz --val-per-class 500
    python bench/pack_images.py unpack .devdata/cifar10.npz /tmp/cifar10

A GPU machine takes the working tree and at most 64 MiB with it; CIFAR-10's 55,000 JPEG files are
52 MB of bytes but 84 MB as a tar (a 512-byte header and padding per file). Each 32x32 JPEG is
about 930 bytes, 623 of them the same header (JFIF, quantisation and Huffman tables, frame and
scan headers): this keeps each distinct header once and each file's remaining bytes in one array
with offsets (17 MB for the 55,000 files). The unpacked tree has the same files, bytes and names. ``--val-per-class N`` moves the last N files (in name order) of each class of
``train/`` into ``val/``, when the tree has no ``val/`` of its own (the search then selects on it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def jpeg_header_length(data: bytes) -> int:
    """The length of a baseline JPEG's segments up to and including its start-of-scan header (0: not a JPEG)."""
    if data[:2] != b"\xff\xd8":
        return 0
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        at += 2 + length
        if marker == 0xDA:
            return min(at, len(data))
    return 0


def pack(root: Path, out: Path, val_per_class: int) -> None:
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, list[tuple[str, str, bytes]]] = {split: [] for split in SPLITS}
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            names = sorted(p.name for p in folder.iterdir() if p.is_file())
            moved = names[len(names) - val_per_class:] if split == "train" and val_per_class and not (root / "val").is_dir() else []
            for name in names:
                target = "val" if name in moved else split
                files[target].append((folder.name, name, (folder / name).read_bytes()))
    headers: dict[bytes, int] = {b"": 0}
    for split, entries in files.items():
        if not entries:
            continue
        cut = [jpeg_header_length(data) for _, _, data in entries]
        arrays[f"{split}.header"] = np.array([headers.setdefault(data[:n], len(headers)) for (_, _, data), n in zip(entries, cut)])
        rest = [data[n:] for (_, _, data), n in zip(entries, cut)]
        arrays[f"{split}.bytes"] = np.frombuffer(b"".join(rest), dtype=np.uint8)
        arrays[f"{split}.offsets"] = np.cumsum([0] + [len(r) for r in rest]).astype(np.int64)
        arrays[f"{split}.paths"] = np.array([f"{label}/{name}".encode() for label, name, _ in entries])
    table = sorted(headers, key=headers.get)
    arrays["headers.bytes"] = np.frombuffer(b"".join(table), dtype=np.uint8)
    arrays["headers.offsets"] = np.cumsum([0] + [len(h) for h in table]).astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"{out}: " + ", ".join(f"{s} {len(files[s])}" for s in SPLITS if files[s])
          + f", {len(headers) - 1} distinct JPEG headers, {out.stat().st_size / 1e6:.1f} MB")


def unpack(packed: Path, root: Path) -> None:
    with np.load(packed) as arrays:
        table, ends = arrays["headers.bytes"], arrays["headers.offsets"]
        headers = [table[ends[i]:ends[i + 1]].tobytes() for i in range(len(ends) - 1)]
        for split in SPLITS:
            if f"{split}.bytes" not in arrays:
                continue
            blob, offsets, paths = arrays[f"{split}.bytes"], arrays[f"{split}.offsets"], arrays[f"{split}.paths"]
            header = arrays[f"{split}.header"]
            for i, path in enumerate(paths):
                target = root / split / path.decode()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(headers[header[i]] + blob[offsets[i]:offsets[i + 1]].tobytes())
            print(f"{root / split}: {len(paths)} files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--val-per-class", type=int, default=0)
    u = sub.add_parser("unpack")
    u.add_argument("packed", type=Path)
    u.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.root, args.out, args.val_per_class)
    else:
        unpack(args.packed, args.root)


if __name__ == "__main__":
    main()
