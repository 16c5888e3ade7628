"""heavyball's SOAP step time on given shapes: run by benchmarks/kronecker.py under a Python with torch and heavyball.

    python benchmarks/heavyball_step.py '{"shapes": [[512, 2048], [2048]], "repeats": 5, "frequency": 10, "max_precond_dim": 1024}'

Prints the median seconds per step (on the GPU when torch sees one) over ``repeats`` runs of ``frequency`` steps, the gradients cycling through
``frequency`` fixed random ones as in kronecker.py. Settings as close to ours as heavyball allows: SOAP's betas and
rate, the bases refreshed every ``frequency`` steps (no frequency schedule), factors for the dimensions up to
``max_precond_dim`` (heavyball leaves larger ones unrotated; ours are blocked), no merged dimensions, no torch.compile.
"""

import json
import statistics
import sys
import time

import heavyball
import torch


def main(request: str) -> None:
    spec = json.loads(request)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the device JAX takes too
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    params = [torch.nn.Parameter(0.02 * torch.randn(*shape, device=device)) for shape in spec["shapes"]]
    grads = [[1e-3 * torch.randn(*shape, device=device) for shape in spec["shapes"]] for _ in range(spec["frequency"])]
    opt = heavyball.SOAP(params, lr=3e-3, betas=(0.95, 0.95), precondition_frequency=spec["frequency"],
                         use_precond_schedule=False, max_precond_dim=spec["max_precond_dim"], merge_dims=False, compile_step=False)

    def run() -> float:
        start = time.perf_counter()
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g  # not copied: a copy would cost as much as a plain step's elementwise work
            opt.step()
        synchronize()
        return (time.perf_counter() - start) / len(grads)

    run()  # the first steps: factors, first bases, allocations
    print(statistics.median(run() for _ in range(spec["repeats"])))


if __name__ == "__main__":
    main(sys.argv[1])
