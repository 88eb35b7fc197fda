"""Side by side: forward + backward wall time and peak memory of SimCLR's NT-Xent loss.

Three implementations of the same loss over 2N views (z1, z2: (N, 128) random-normal leaf
tensors with requires_grad, temperature 0.5):

    dense      twotower.contrastive.nt_xent(z1, z2): holds the full (2N, 2N) logits.
    chunked    nt_xent(z1, z2, chunk_size=C): row blocks with a custom backward that
               recomputes each block's logits, so no (2N, 2N) matrix is ever held.
    reference  the loss as SimCLR repositories usually write it (written here): the full
               (2N, 2N) similarity matrix, a boolean mask dropping the diagonal,
               sim[mask].view(2N, 2N - 1) and F.cross_entropy.

Before timing, one subprocess checks on the smallest size that the three agree (loss and
gradients). Then every (implementation, size) case runs in a fresh subprocess:

    peak memory  CPU: growth of getrusage(RUSAGE_SELF).ru_maxrss over one fwd+bwd, after the
                 inputs exist; CUDA: max_memory_allocated() minus memory_allocated() before.
    time         median of --repeats timed fwd+bwd after that first (warm-up) one; at most 3
                 from 2N = 16384 on.

The parent process never imports torch: a child's ru_maxrss starts at its parent's high-water
mark (Linux keeps it across fork and exec), so a heavy parent would hide a child's growth.
Sizes default to 2N in {1024, 4096, 16384} in float32, plus 65536 in bfloat16 inputs on
CUDA, where achieved TFLOP/s is printed too. Needs only torch; the repo need not be installed.

    python benchmarks/bench_contrastive.py --device cpu
    python benchmarks/bench_contrastive.py --device cuda --markdown
    python benchmarks/bench_contrastive.py --sizes 1024 4096 --repeats 3 --chunk-size 512
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import twotower` uninstalled

from benchmarks.args import positive
from benchmarks.machine import cpu_model, gpu_peak_tflops
from benchmarks.tables import markdown_table, plain_table

if TYPE_CHECKING:
    import torch
    from torch import Tensor

IMPLS = ("dense", "chunked", "reference")
DIM = 128
TEMPERATURE = 0.5
CPU_SIZES = (1024, 4096, 16384)
CUDA_SIZES = (*CPU_SIZES, 65536)
BIG_SIZE = 16384  # from this 2N on, at most BIG_REPEATS timed runs
BIG_REPEATS = 3
CPU_TARGET_SIZE = 16384
MATMULS = {"dense": 3, "chunked": 4, "reference": 3}
"""(2N, d) x (d, 2N)-sized matmuls per fwd+bwd: logits, then grad wrt both operands; chunked
recomputes the logits in backward. Each is 2·(2N)²·d FLOPs."""
MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024  # ru_maxrss unit


@dataclass(frozen=True)
class Case:
    """One measured (size, implementation): time in ms and peak extra memory in MiB."""

    two_n: int
    impl: str
    dtype: str
    status: str  # "ok", "OOM" or "failed (exit N)"
    ms: float | None = None
    mib: float | None = None


# ---------------------------------------------------------------------------------------------
# Run inside the subprocesses: the only code that imports torch.


def reference_nt_xent(z1: Tensor, z2: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """NT-Xent the usual SimCLR way: (2N, 2N) cosine similarities, diagonal masked out."""
    import torch
    import torch.nn.functional as F

    n, two_n = z1.shape[0], 2 * z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    off_diagonal = ~torch.eye(two_n, dtype=torch.bool, device=z.device)
    logits = sim[off_diagonal].view(two_n, two_n - 1)
    rows = torch.arange(two_n, device=z.device)
    partner = (rows + n) % two_n
    # Dropping the diagonal moves every column right of it one place to the left.
    labels = partner - (partner > rows).long()
    return F.cross_entropy(logits, labels)


def make_loss(impl: str, chunk_size: int) -> Callable[[Tensor, Tensor], Tensor]:
    from twotower.contrastive import nt_xent

    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "dense": lambda z1, z2: nt_xent(z1, z2, temperature=TEMPERATURE),
        "chunked": lambda z1, z2: nt_xent(z1, z2, temperature=TEMPERATURE, chunk_size=chunk_size),
        "reference": reference_nt_xent,
    }
    return losses[impl]


def make_inputs(two_n: int, device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    z1, z2 = (
        torch.randn(two_n // 2, DIM, generator=gen, device=device, dtype=dtype).requires_grad_()
        for _ in range(2)
    )
    return z1, z2


def fwd_bwd(loss_fn: Callable[[Tensor, Tensor], Tensor], z1: Tensor, z2: Tensor) -> Tensor:
    z1.grad = z2.grad = None
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach()


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_extra_mib(step: Callable[[], object], device: str) -> float:
    """Peak memory `step` needs beyond what is allocated when it starts, in MiB."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * MAXRSS_BYTES / 2**20


def seconds(step: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def run_case(impl: str, two_n: int, device: str, dtype_name: str, chunk_size: int,
             repeats: int) -> dict[str, Any]:
    """Peak memory of the first fwd+bwd, then the median time of `repeats` more."""
    import torch

    dtype = getattr(torch, dtype_name)
    loss_fn = make_loss(impl, chunk_size)
    fwd_bwd(loss_fn, *make_inputs(64, device, dtype))  # library start-up outside the measurement
    z1, z2 = make_inputs(two_n, device, dtype)
    try:
        mib = peak_extra_mib(lambda: fwd_bwd(loss_fn, z1, z2), device)
        ms = 1e3 * statistics.median(
            seconds(lambda: fwd_bwd(loss_fn, z1, z2), device) for _ in range(repeats)
        )
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    return {"status": "ok", "ms": ms, "mib": mib}


def run_check(device: str, two_n: int, dtype_name: str, chunk_size: int) -> dict[str, Any]:
    """Loss and gradient of the three implementations on the same inputs, and how they differ."""
    import torch

    dtype = getattr(torch, dtype_name)
    losses, grads = {}, {}
    for impl in IMPLS:
        z1, z2 = make_inputs(two_n, device, dtype)
        losses[impl] = float(fwd_bwd(make_loss(impl, chunk_size), z1, z2))
        grads[impl] = torch.cat([z1.grad, z2.grad]).float()
    pairs = [(a, b) for i, a in enumerate(IMPLS) for b in IMPLS[i + 1:]]
    return {
        "losses": losses,
        "loss_diff": max(abs(losses[a] - losses[b]) for a, b in pairs),
        "grad_diff": max(float((grads[a] - grads[b]).abs().max()) for a, b in pairs),
    }


def describe_device(requested: str) -> dict[str, Any]:
    """Resolve --device and say what it is."""
    import torch

    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no CUDA device")
    device = "cuda" if requested == "cuda" or (requested == "auto" and cuda) else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else cpu_model()
    return {"device": device, "name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# The parent: starts the subprocesses, prints the report. Standard library only.


def dtype_for(two_n: int, device: str, bf16_from: int) -> str:
    return "bfloat16" if device == "cuda" and two_n >= bf16_from else "float32"


def repeats_for(two_n: int, repeats: int) -> int:
    return repeats if two_n < BIG_SIZE else min(repeats, BIG_REPEATS)


def child(argv: Sequence[str]) -> tuple[int, dict[str, Any] | None]:
    """Run this script in a fresh interpreter; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        stdout=subprocess.PIPE, text=True, check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return proc.returncode, None
    return 0, json.loads(lines[-1])


def measure(two_n: int, impl: str, device: str, args: argparse.Namespace) -> Case:
    dtype = dtype_for(two_n, device, args.bf16_from)
    rc, result = child([
        "--_case", impl, str(two_n), "--device", device, "--dtype", dtype,
        "--chunk-size", str(args.chunk_size), "--repeats", str(repeats_for(two_n, args.repeats)),
    ])
    if result is None:
        return Case(two_n, impl, dtype, f"failed (exit {rc})")
    return Case(two_n, impl, dtype, result["status"], result.get("ms"), result.get("mib"))


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def fmt(x: float | None, missing: str = "-") -> str:
    return missing if x is None else f"{x:.1f}"


def achieved_tflops(case: Case) -> float | None:
    if case.ms is None:
        return None
    return MATMULS[case.impl] * 2 * case.two_n**2 * DIM / (case.ms * 1e9)


def table_rows(cases: list[Case], peak_tflops: float | None, cuda: bool) -> list[list[str]]:
    header = ["2N", "impl", "dtype", "time ms", "peak MiB",
              "time/dense", "time/ref", "mem/dense", "mem/ref"]
    if cuda:
        header += ["TFLOP/s", "% peak"]
    rows = [header]
    by_key = {(c.two_n, c.impl): c for c in cases}
    for c in cases:
        dense, ref = by_key[c.two_n, "dense"], by_key[c.two_n, "reference"]
        row = [str(c.two_n), c.impl, c.dtype, fmt(c.ms, c.status), fmt(c.mib),
               ratio(c.ms, dense.ms), ratio(c.ms, ref.ms),
               ratio(c.mib, dense.mib), ratio(c.mib, ref.mib)]
        if cuda:
            tflops = achieved_tflops(c)
            percent = None if tflops is None or peak_tflops is None else 100 * tflops / peak_tflops
            row += [fmt(tflops), "n/a" if peak_tflops is None else fmt(percent)]
        rows.append(row)
    return rows


def verdict(ok: bool) -> str:
    return "HOLDS" if ok else "FAILS"


def cpu_verdicts(by_key: dict[tuple[int, str], Case]) -> list[str]:
    """At 2N = 16384: chunked peak memory <= reference / 4 and chunked time <= 1.5x dense."""
    prefix = f"target (cpu, 2N={CPU_TARGET_SIZE})"
    if (CPU_TARGET_SIZE, "dense") not in by_key:
        return [f"{prefix}: not measured ({CPU_TARGET_SIZE} not in --sizes)"]
    chunked = by_key[CPU_TARGET_SIZE, "chunked"]
    dense = by_key[CPU_TARGET_SIZE, "dense"]
    ref = by_key[CPU_TARGET_SIZE, "reference"]
    if chunked.mib is None or ref.mib is None or chunked.ms is None or dense.ms is None:
        return [f"{prefix}: a case did not finish, see the table"]
    mem, slow = chunked.mib / ref.mib, chunked.ms / dense.ms
    return [
        f"{prefix} chunked peak memory <= reference/4: {mem:.3f}x -> {verdict(mem <= 0.25)}",
        f"{prefix} chunked time <= 1.5x dense: {slow:.2f}x -> {verdict(slow <= 1.5)}",
    ]


def cuda_verdicts(by_key: dict[tuple[int, str], Case]) -> list[str]:
    """At the largest 2N: chunked runs, reference is OOM or needs >= 10x chunked's memory."""
    largest = max(two_n for two_n, _ in by_key)
    chunked, ref = by_key[largest, "chunked"], by_key[largest, "reference"]
    prefix = (f"target (cuda, 2N={largest}) chunked runs and reference is OOM or needs "
              ">= 10x its memory")
    if chunked.mib is None:
        return [f"{prefix}: chunked {chunked.status} -> FAILS"]
    if ref.mib is None:
        return [f"{prefix}: reference {ref.status} -> {verdict(ref.status == 'OOM')}"]
    mem = ref.mib / chunked.mib
    return [f"{prefix}: reference/chunked memory {mem:.1f}x -> {verdict(mem >= 10)}"]


def print_header(env: dict[str, Any], args: argparse.Namespace) -> None:
    memory = "max_memory_allocated" if env["device"] == "cuda" else "ru_maxrss growth"
    print(f"NT-Xent forward+backward, d={DIM}, temperature={TEMPERATURE}, "
          f"chunk_size={args.chunk_size}")
    print(f"device {env['device']}: {env['name']}, {env['threads']} torch threads, "
          f"torch {env['torch']}")
    print(f"time: median of {args.repeats} timed runs after one warm-up (at most {BIG_REPEATS} "
          f"from 2N={BIG_SIZE}); memory: peak beyond the inputs, {memory}")


def print_agreement(two_n: int, device: str, args: argparse.Namespace) -> None:
    rc, check = child(["--_check", str(two_n), "--device", device,
                       "--dtype", dtype_for(two_n, device, args.bf16_from),
                       "--chunk-size", str(args.chunk_size)])
    if check is None:
        raise SystemExit(f"agreement check failed (exit {rc})")
    losses = ", ".join(f"{k} {v:.6f}" for k, v in check["losses"].items())
    print(f"\nagreement at 2N={two_n}: loss {losses}")
    print(f"  max abs difference: loss {check['loss_diff']:.2e}, gradient {check['grad_diff']:.2e}")


def measure_all(sizes: Sequence[int], device: str, args: argparse.Namespace) -> list[Case]:
    cases = []
    for two_n in sizes:
        for impl in IMPLS:
            cases.append(measure(two_n, impl, device, args))
            print(f"  measured 2N={two_n} {impl}", file=sys.stderr, flush=True)
    return cases


def print_results(cases: list[Case], device: str, peak_tflops: float | None,
                  markdown: bool) -> None:
    rows = table_rows(cases, peak_tflops, device == "cuda")
    print("\n" + plain_table(rows))
    if device == "cuda":
        print("TFLOP/s counts executed matmul FLOPs: dense and reference 6*(2N)^2*d (logits + "
              "2 backward matmuls), chunked 8*(2N)^2*d (logits recomputed in backward); "
              f"% peak against {peak_tflops or 'n/a (pass --peak-tflops)'} TFLOP/s bf16 dense")
    print()
    by_key = {(c.two_n, c.impl): c for c in cases}
    for line in (cuda_verdicts if device == "cuda" else cpu_verdicts)(by_key):
        print(line)
    if markdown:
        print("\n" + markdown_table(rows))


def report(args: argparse.Namespace) -> None:
    rc, env = child(["--_describe", "--device", args.device])
    if env is None:
        raise SystemExit(f"could not start torch on --device {args.device} (exit {rc})")
    device = env["device"]
    sizes = sorted(args.sizes or (CUDA_SIZES if device == "cuda" else CPU_SIZES))
    peak_tflops = args.peak_tflops
    if peak_tflops is None and device == "cuda":
        peak_tflops = gpu_peak_tflops(env["name"], "bfloat16")
    print_header(env, args)
    print_agreement(sizes[0], device, args)
    print_results(measure_all(sizes, device, args), device, peak_tflops, args.markdown)


def even_size(text: str) -> int:
    value = int(text)
    if value < 4 or value % 2:
        raise argparse.ArgumentTypeError(f"2N must be an even integer >= 4, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--sizes", type=even_size, nargs="+", metavar="2N",
                        help="total views 2N (default: 1024 4096 16384, plus 65536 on CUDA)")
    parser.add_argument("--chunk-size", type=positive, default=1024)
    parser.add_argument("--repeats", type=positive, default=5,
                        help=f"timed runs per case (at most {BIG_REPEATS} from 2N={BIG_SIZE})")
    parser.add_argument("--bf16-from", type=even_size, default=65536, metavar="2N",
                        help="on CUDA, sizes from this 2N on use bfloat16 inputs")
    parser.add_argument("--peak-tflops", type=float,
                        help="GPU bf16 dense matmul peak (default: 989 for H100 SXM / H200)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown too")
    # Internal: what a subprocess runs.
    parser.add_argument("--_case", nargs=2, metavar=("IMPL", "2N"), help=argparse.SUPPRESS)
    parser.add_argument("--_check", type=even_size, metavar="2N", help=argparse.SUPPRESS)
    parser.add_argument("--_describe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args._describe:
        print(json.dumps(describe_device(args.device)))
    elif args._check:
        print(json.dumps(run_check(args.device, args._check, args.dtype, args.chunk_size)))
    elif args._case:
        impl, two_n = args._case
        print(json.dumps(run_case(impl, int(two_n), args.device, args.dtype, args.chunk_size,
                                  args.repeats)))
    else:
        report(args)


if __name__ == "__main__":
    main()
