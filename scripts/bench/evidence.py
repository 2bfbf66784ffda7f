"""What the tamper-evidence of an evaluation costs: unit digests (HMAC) and the ledger signature.

The default ``advtrain-eval`` run (AutoAttack standard and its eps grid, IBP and CROWN, on the
digits test split) of a PGD-trained SmallCNN, with a signing key (``ledger_key=``: every
resumable unit carries an HMAC-SHA256, the ledger entry an Ed25519 signature). Measured in the
same process: the run's wall time, and the time to recompute the digest of every unit it stored
(``unit_digest``, what ``UnitStore.put`` adds per unit) plus one signature and one verification
(what ``append_entry`` and a reviewer add). Target (issue 18): under 1% of the run.

Usage (from the repository root)::

    python -m scripts.bench.evidence              # the default evaluation (a few minutes on CPU)
    python -m scripts.bench.evidence --quick      # 64 examples, a shorter grid
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from advtrain.attacks import PGD
from advtrain.cli.config import compose
from advtrain.cli.evaluate import run
from advtrain.data import DigitsDataModule
from advtrain.evaluation.state import unit_digest
from advtrain.models import SmallCNN
from advtrain.report.signing import (
    generate_keypair,
    load_private_key,
    mac_key,
    sign,
    verify_signature,
)

from .timing import print_machine, set_threads, timed


def trained_model() -> SmallCNN:
    """PGD-AT (Madry et al. 2018), eps 0.2, PGD-3, 4 epochs on the digits training split."""
    torch.manual_seed(0)
    dm = DigitsDataModule()
    dm.setup("fit")
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    attack = PGD(eps=0.2, steps=3, seed=0)
    for epoch in range(4):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            xb, yb = x[perm[i : i + 64]], y[perm[i : i + 64]]
            x_in = attack(model, xb, yb) if epoch > 0 else xb
            loss = F.cross_entropy(model(x_in), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    set_threads(1)
    print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        private, _ = generate_keypair(work / "keys")
        weights = work / "model.pt"
        torch.save(trained_model().state_dict(), weights)
        overrides = [
            f"ckpt_path={weights}",
            "threat.eps=0.2",
            f"ledger={work / 'ledger.jsonl'}",
            f"ledger_key={private}",
            "progress=false",
        ]
        if args.quick:
            overrides += ["n_examples=64", "eps_grid.factors=[0.5,1.0]"]
        out = work / "eval"
        report, wall, _ = timed(lambda: run(compose("eval", overrides, str(out))))

        key = load_private_key(private)
        mac = mac_key(key)
        fingerprint = json.loads((out / "eval_state" / "manifest.json").read_text())["fingerprint"]
        units = sorted((out / "eval_state").rglob("batch_*.pt"))
        values = [
            (
                p.relative_to(out / "eval_state").with_suffix("").as_posix(),
                torch.load(p, weights_only=True)["value"],
            )
            for p in units
        ]
        digests = timed(lambda: [unit_digest(fingerprint, n, v, mac) for n, v in values]).wall
        message = json.loads((work / "ledger.jsonl").read_text().splitlines()[-1])["sha256"]

        def sign_and_verify() -> None:
            signature = sign(key, message.encode())
            assert verify_signature(key.public_key(), message.encode(), signature)

        signing = timed(sign_and_verify).wall
    cost = digests + signing
    print(f"evaluation: {report['n_examples']} examples, {len(units)} units, {wall:.1f} s wall")
    print(
        f"unit digests (HMAC-SHA256): {1e3 * digests:.2f} ms; sign + verify: {1e3 * signing:.2f} ms"
    )
    verdict = "ok" if cost / wall < 0.01 else "OVER 1%"
    print(f"tamper-evidence cost: {100 * cost / wall:.4f}% of the run ({verdict}; target < 1%)")


if __name__ == "__main__":
    main()
